"""PEFT adapters: which folder ``load_model`` merges, merging it, and the settings ``pastac train`` left beside it.

Invariants:

- The packaged adapter (``DEFAULT_ADAPTER``) goes with the default model only: asked for with any other model,
  it resolves to no adapter.
- A merged adapter leaves a plain transformers model: the runtime never sees a PEFT wrapper.
- ``ADAPTER_SETTINGS`` (``pastac.json``) is written by ``pastac train``: the position policy, unit and depth
  the runtime must decode with, so that positions at run time are those of training. ``adapter_settings``
  only reads it as a JSON object (``LoadedModel.settings``); ``pastac.adapters.settings.AdapterSettings``
  gives its fields their meaning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel

from pastac.adapters import DEFAULT_ADAPTER, packaged_adapter
from pastac.models.console import quiet_transformers
from pastac.models.errors import ModelError

#: Written by ``pastac train`` next to an adapter: the settings the runtime must decode with (position policy
#: and unit, depth), so that positions at run time are those of training.
ADAPTER_SETTINGS = "pastac.json"


def adapter_settings(folder: Path) -> dict[str, Any]:
    """The settings in an adapter folder's ``pastac.json``, or none when it has no such file."""
    path = folder / ADAPTER_SETTINGS
    if not path.is_file():
        return {}
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot read {path}: {error}") from error
    if not isinstance(settings, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return settings


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
        with quiet_transformers():
            peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot apply the adapter {adapter}: {error}") from error
    return peft_model.merge_and_unload()
