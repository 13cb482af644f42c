"""The ``llamacpp`` strategy's engine: llama.cpp (through llama-cpp-python) decoding a GGUF file greedily.

    llama = load(default_gguf(), threads=torch.get_num_threads())
    tokens = llama.decode(engine.prompt_ids(prompt), n)

It is the reference a CPU user knows: one sequence, one token a step, greedy, on the same GGUF file that
pastac's engine was converted from.  The invariants that make the comparison fair:

- the prompt is the token ids pastac's tokenizer produced (chat template included), fed as they are: the
  GGUF holds the same model's vocabulary (``LlamaCpp.check_vocabulary``), so llama.cpp's own tokenizer is not
  consulted and cannot make the work differ;
- every ``decode`` starts from an empty cache (``reset``: the cells past position 0 are dropped before the
  prompt is evaluated), so no response reuses another's keys and values;
- it places exactly ``n`` tokens, end-of-sequence or not (as ``hf-generate`` with ``min_new_tokens``):
  the prompt's forward pass, then ``n - 1`` of one token, each token the argmax of the last logits
  (llama.cpp's greedy sampler, no repetition penalty);
- the model is loaded once (``load``); loading is not part of any response's time.

llama-cpp-python is an optional extra (``pip install 'pastac[llamacpp]'``), imported only by ``load`` and
``import_llama_cpp``; everything else here runs on any object with ``LlamaModel``'s methods, so that tests can
hand in their own.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

#: the distribution that provides ``llama_cpp``, and how to install it with pastac
INSTALL = "CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install 'pastac[llamacpp]'"
#: bytes of one key or value element in llama.cpp's cache (its default cache type, f16, which ``load`` keeps)
KV_ELEMENT_BYTES = 2
#: tokens evaluated per llama.cpp batch: a prompt longer than this is evaluated in several
N_BATCH = 512


class LlamaCppError(ValueError):
    """llama.cpp cannot run here: llama-cpp-python missing or broken, a file it cannot load, a model that is not
    the engine's, a response longer than its context."""


class LlamaModel(Protocol):
    """What ``LlamaCpp`` uses of a ``llama_cpp.Llama``."""

    metadata: dict[str, str]  # the GGUF file's metadata, every value as text

    def reset(self) -> None:
        """Forget the evaluated tokens: the next ``eval`` starts at position 0 (and drops the cache past it)."""

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` after those evaluated so far, keeping the last one's logits."""

    def sample(self, *, temp: float, repeat_penalty: float) -> int:
        """A token drawn from the last logits (``temp=0``: their argmax)."""

    def n_ctx(self) -> int:
        """The most tokens the context holds."""

    def n_vocab(self) -> int:
        """The vocabulary's size."""


def available() -> bool:
    """Whether llama-cpp-python is installed (found, not imported: importing it loads its library)."""
    return importlib.util.find_spec("llama_cpp") is not None


def import_llama_cpp() -> ModuleType:
    """The ``llama_cpp`` module; ``LlamaCppError`` with the way to install it when it is missing or its library
    does not load."""
    try:
        import llama_cpp
    except ImportError as error:
        raise LlamaCppError(
            f"the llamacpp strategy needs llama-cpp-python, which is not installed ({error}); install it with "
            f"`{INSTALL}` (it builds llama.cpp from source: 15 to 60 minutes on a small machine), or leave "
            "llamacpp out of --strategies"
        ) from None
    except (OSError, RuntimeError) as error:  # installed, but its shared library does not load
        raise LlamaCppError(f"llama-cpp-python is installed but does not load: {error}; reinstall it") from None
    return llama_cpp


def quantisation(metadata: dict[str, str]) -> str:
    """The GGUF's quantisation (``general.file_type``, e.g. ``Q4_1``); ``unknown`` where the file does not say."""
    from gguf import LlamaFileType

    try:
        return LlamaFileType(int(metadata["general.file_type"])).name.removeprefix("MOSTLY_")
    except (KeyError, ValueError):
        return "unknown"


def kv_bytes_per_token(metadata: dict[str, str]) -> int:
    """Bytes of keys and values one token takes in llama.cpp's cache (f16, all layers), from the GGUF's shape;
    0 where the metadata does not give it."""
    arch = metadata.get("general.architecture", "")

    def number(key: str) -> int | None:
        value = metadata.get(f"{arch}.{key}")
        return int(value) if value is not None and value.isdigit() else None

    layers, embedding, heads = number("block_count"), number("embedding_length"), number("attention.head_count")
    if layers is None or embedding is None or not heads:
        return 0
    kv_heads = number("attention.head_count_kv") or heads
    key = number("attention.key_length") or embedding // heads
    value = number("attention.value_length") or embedding // heads
    return layers * kv_heads * (key + value) * KV_ELEMENT_BYTES


class LlamaCpp:
    """One loaded llama.cpp model and what it runs with; ``decode(ids, n)`` is one response's timed work."""

    def __init__(self, llm: LlamaModel, *, file: str, version: str, threads: int) -> None:
        """``llm``: the loaded model (``load``), ``file``: its GGUF file's name, ``version``: llama-cpp-python's,
        ``threads``: the CPU threads it was loaded with (for the report)."""
        self.llm = llm
        self.file = file
        self.version = version
        self.threads = threads
        self.quantisation = quantisation(llm.metadata)
        self.kv_bytes_per_token = kv_bytes_per_token(llm.metadata)

    def check_vocabulary(self, size: int) -> None:
        """Raise ``LlamaCppError`` unless the model's vocabulary has ``size`` tokens (the engine's): pastac's
        token ids are fed as they are, so the two must be one model's."""
        if self.llm.n_vocab() != size:
            raise LlamaCppError(
                f"{self.file} has {self.llm.n_vocab()} tokens in its vocabulary and the engine's model {size}: "
                "llamacpp must decode the GGUF file of the engine's own model"
            )

    def decode(self, ids: Sequence[int], n: int) -> list[int]:
        """The ``n`` tokens greedy decoding places after the prompt ``ids``, from an empty cache: the prompt's
        forward pass, then one per token but the last.  ``LlamaCppError`` when they do not fit the context."""
        if n < 1:
            raise ValueError(f"a decode places at least one token, not {n}")
        if len(ids) + n > self.llm.n_ctx():
            raise LlamaCppError(
                f"{len(ids)} prompt tokens and {n} new ones do not fit llama.cpp's context of {self.llm.n_ctx()}"
            )
        llm = self.llm
        llm.reset()
        llm.eval(ids)
        out = [llm.sample(temp=0.0, repeat_penalty=1.0)]
        while len(out) < n:
            llm.eval(out[-1:])
            out.append(llm.sample(temp=0.0, repeat_penalty=1.0))
        return out

    def kv_bytes(self, prompt: int, tokens: int) -> int:
        """Keys and values held after ``decode`` of ``tokens`` after ``prompt`` tokens: every token but the last
        has been evaluated (llama.cpp allocates its whole context's cells up front; this counts those filled)."""
        return self.kv_bytes_per_token * (prompt + tokens - 1)

    def describe(self) -> dict[str, Any]:
        """What the report records of it: llama-cpp-python's version, the GGUF file, its quantisation, threads
        and context."""
        return {
            "llama_cpp_python": self.version,
            "gguf": self.file,
            "quantisation": self.quantisation,
            "threads": self.threads,
            "n_ctx": self.llm.n_ctx(),
            "n_batch": N_BATCH,
            "kv_cache": "f16",
        }


def load(path: str | Path, *, threads: int) -> LlamaCpp:
    """Load the GGUF file at ``path`` with llama.cpp on the CPU: ``threads`` threads for the prompt and for the
    decode, the file's own trained context, no logits kept but the last.  ``LlamaCppError`` when llama-cpp-python
    is missing or the file does not load."""
    llama_cpp = import_llama_cpp()
    path = Path(path)
    try:
        llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=0,  # the model's trained context: every response the engine can run fits
            n_threads=threads,
            n_threads_batch=threads,  # the binding's default is every core, for the prompt
            n_batch=N_BATCH,
            n_gpu_layers=0,
            logits_all=False,
            verbose=False,
        )
    except (ValueError, RuntimeError, OSError) as error:
        raise LlamaCppError(f"llama.cpp cannot load {path}: {error}") from None
    return LlamaCpp(llm, file=path.name, version=llama_cpp.__version__, threads=threads)
