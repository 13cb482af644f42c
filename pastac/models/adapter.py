"""PEFT adapters: which folder ``load_model`` merges, merging it, and the settings ``pastac train`` left beside it.

Invariants:

- The packaged adapter (``DEFAULT_ADAPTER``) goes with the default model only: asked for with any other model,
  it resolves to no adapter.
- A merged adapter leaves a plain transformers model: the runtime never sees a PEFT wrapper.
- ``pastac.json`` is written by ``pastac train``: the layout the runtime must decode with (position policy
  and unit, depth, chat template, repetition penalty). ``pastac.adapters.settings.AdapterSettings`` is its one
  definition; ``adapter_settings`` reads it for ``LoadedModel.settings``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from transformers import PreTrainedModel

from pastac.adapters import DEFAULT_ADAPTER, packaged_adapter
from pastac.adapters.settings import AdapterSettings, SettingsError
from pastac.models.console import quiet_transformers
from pastac.models.errors import ModelError


def adapter_settings(folder: Path) -> AdapterSettings | None:
    """The settings ``pastac train`` left in an adapter folder (``pastac.json``); None when it has none.
    A file that cannot be read, or holds a value the runtime cannot decode with, is a ``ModelError``."""
    try:
        return AdapterSettings.read(folder)
    except SettingsError as error:
        raise ModelError(f"the adapter's settings cannot be used: {error}") from None


def resolve_adapter(adapter: str | os.PathLike[str] | None, model: str | os.PathLike[str] | None = None) -> Path | None:
    """The adapter folder ``load_model`` would merge: None for no adapter; ``DEFAULT_ADAPTER`` for the packaged
    one when ``model`` is None (the default model); otherwise a PEFT adapter folder, checked."""
    if adapter is None:
        return None
    if isinstance(adapter, str) and adapter == DEFAULT_ADAPTER:
        return packaged_adapter() if model is None else None
    folder = Path(adapter).expanduser()
    if not folder.is_dir():
        raise ModelError(f"adapter folder not found: {folder}")
    if not (folder / "adapter_config.json").is_file():
        raise ModelError(f"{folder} is not a PEFT adapter folder (it has no adapter_config.json)")
    return folder


def merge_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """The model with a PEFT adapter applied and merged into its weights, so the runtime sees a plain model."""
    from peft import PeftModel

    try:
        with quiet_transformers(), warnings.catch_warnings():
            # PEFT asks transformers a deprecated question while it loads; the warning is theirs, not the user's
            warnings.filterwarnings(
                "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
            )
            peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot apply the adapter {adapter}: {error}") from error
    return peft_model.merge_and_unload()
