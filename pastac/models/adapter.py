"""PEFT adapters: which folder ``load_model`` merges, merging it, and the settings ``pastac train`` left beside it.

Invariants:

- The packaged adapter (``DEFAULT_ADAPTER``) goes with the default model only: asked for with any other model,
  it resolves to no adapter.
- A merged adapter leaves a plain transformers model: the runtime never sees a PEFT wrapper.
- Nothing is fetched: an adapter is a local folder with its config and its weights (``ADAPTER_WEIGHTS``),
  checked before PEFT sees it (PEFT asks the Hugging Face Hub for the weights a folder lacks, which for a
  folder named like a Hub repository would load that repository's), and PEFT is told to read local files only.
- An adapter whose weights cannot be read, or do not cover the modules its config adapts, is a ``ModelError``.
- ``pastac.json`` is written by ``pastac train``: the layout the runtime must decode with (position policy
  and unit, depth, chat template, repetition penalty). ``pastac.adapters.settings.AdapterSettings`` is its one
  definition; ``adapter_settings`` reads it for ``LoadedModel.settings``.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import warnings
from pathlib import Path

from transformers import PreTrainedModel

from pastac.adapters import DEFAULT_ADAPTER, packaged_adapter
from pastac.adapters.settings import AdapterSettings, SettingsError
from pastac.models.console import quiet_transformers
from pastac.models.errors import ModelError

#: The files a PEFT adapter folder keeps its weights in, in the order PEFT reads them.
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


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
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        raise ModelError(
            f"the adapter folder {folder} has no weights ({' or '.join(ADAPTER_WEIGHTS)}); "
            "nothing is fetched from the Hugging Face Hub"
        )
    return folder


def check_safetensors(file: Path) -> None:
    """Check that a safetensors file is whole: an 8-byte header size, a JSON header of tensors, and every
    tensor's data inside the file. Garbage or a file cut short raises ``ModelError`` naming it."""
    try:
        size = file.stat().st_size
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8)) if size >= 8 else (None,)
            if length is None or length > size - 8:
                raise ModelError(f"{file} is not a safetensors file (its header does not fit in its {size:,} bytes)")
            header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{file} is not a safetensors file (its header is not JSON)") from None
    except OSError as error:
        raise ModelError(f"cannot read {file}: {error}") from error
    if not isinstance(header, dict):
        raise ModelError(f"{file} is not a safetensors file (its header is not a JSON object)")
    data = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise ModelError(f"{file} is not a safetensors file (tensor {name!r} has no data offsets)")
        if not 0 <= offsets[0] <= offsets[1] <= data:
            raise ModelError(
                f"{file} is not a complete safetensors file: tensor {name!r} ends at byte {offsets[1]:,} of its "
                f"data, which has {data:,} bytes; it was cut short or is damaged"
            )


def merge_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """The model with a PEFT adapter applied and merged into its weights, so the runtime sees a plain model.
    ``adapter`` is a folder ``resolve_adapter`` checked; PEFT reads its files and nothing else."""
    from peft import PeftModel

    if (adapter / ADAPTER_WEIGHTS[0]).is_file():
        check_safetensors(adapter / ADAPTER_WEIGHTS[0])
    try:
        with quiet_transformers(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            peft_model = PeftModel.from_pretrained(model, str(adapter.resolve()), local_files_only=True)
    # What PEFT raises for weights it cannot read: a damaged pickle (UnpicklingError, EOFError), tensors of other
    # shapes or dtypes (RuntimeError, ValueError), a bad config (ValueError, KeyError, TypeError).
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ModelError(f"cannot apply the adapter {adapter}: {error}") from error
    for warning in caught:
        message = str(warning.message)
        if "missing adapter keys" in message:  # the weights do not cover the modules the config adapts
            raise ModelError(f"cannot apply the adapter {adapter}: its weights do not match its config ({message})")
        # PEFT asks transformers a deprecated question while it loads; that warning is theirs, not the user's
        if not message.startswith("`is_gradient_checkpointing` is deprecated"):
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return peft_model.merge_and_unload()
