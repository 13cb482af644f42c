"""The decoding strategies ``pastac bench`` compares, each run on the same work: one annotated response.

- ``hf-generate``: Hugging Face ``generate``, greedy, of as many new tokens as
  the sequential run places (the baseline users know);
- ``sequential``: pastac's engine with one thread (every promise inline);
- ``refork``: each async part a separate request that re-encodes its whole
  context (``RowRunner(fork="reencode")``);
- ``batched-copy``: threads as batch rows, a child's row a copy of its
  parent's keys and values (``RowRunner(fork="copy")``);
- ``pasta``: pastac's async decoding, one packed row over one shared cache;
- ``llamacpp`` (optional, on request): llama.cpp's greedy decode of the GGUF
  file the engine's model came from, as many new tokens as the sequential run
  places (``pastac.bench.llamacpp``).

The engine strategies replay the response (teacher-forced), so they place the
same tokens through the same scheduler; ``hf-generate`` and ``llamacpp`` write
their own tokens, as many of them, after the same prompt ids.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pastac.bench import KNOWN_STRATEGIES
from pastac.bench.llamacpp import LlamaCpp
from pastac.runtime.engine import Engine, RunnerFactory
from pastac.runtime.options import RunOptions, SamplingOptions
from pastac.runtime.results import Generation
from pastac.runtime.rows import RowRunner

# Replays force every token: no repetition penalty (whatever the model's own setting), so that no strategy
# pays for one and hf-generate, which has none, is compared on the same work.  Nor jump-forward: the suite's
# bound (critical-path) counts one token per thread and step, and the strategies are compared on that schedule.
REPLAY = SamplingOptions(repetition_penalty=1.0)


@dataclass(frozen=True)
class Measurement:
    """One strategy's run of one response: wall time, tokens and steps, cache and accelerator memory."""

    strategy: str
    wall_s: float
    tokens: int  # tokens placed after the prompt
    steps: int  # decode steps (tokens placed, for hf-generate and llamacpp)
    # keys and values at the end of the run; for hf-generate and llamacpp computed from the model's shape and the
    # cache's element type for the tokens evaluated (llama.cpp: f16 cells filled, 0 when the GGUF does not say)
    kv_bytes: int
    kv_peak_bytes: int  # the most keys and values held at once
    peak_memory_bytes: int | None  # accelerator memory high-water mark (None on the CPU, and for llamacpp)
    generation: Generation | None = None

    @property
    def tokens_per_s(self) -> float:
        """Tokens placed per second of wall time; 0 for a run that took no time."""
        return self.tokens / self.wall_s if self.wall_s else 0.0

    def to_json(self) -> dict[str, object]:
        """The figures under their names (not the strategy, nor the generation)."""
        return {
            "wall_s": self.wall_s,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            "steps": self.steps,
            "kv_bytes": self.kv_bytes,
            "kv_peak_bytes": self.kv_peak_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


def kv_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of keys and values one token takes in all layers."""
    config = model.config.get_text_config()
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * heads * head_dim * element


class Bench:
    """Runs the strategies on one engine (and ``llamacpp`` on its llama.cpp model); ``run(strategy, prompt,
    text)`` measures one.  Every strategy that writes its own tokens writes as many as ``sequential`` places on
    the response (``placed``)."""

    def __init__(self, engine: Engine, llamacpp: LlamaCpp | None = None) -> None:
        """``llamacpp``: the model the ``llamacpp`` strategy decodes with (``pastac.bench.llamacpp.load``), None
        without it; ``LlamaCppError`` when its vocabulary is not the engine's model's."""
        self.engine = engine
        self.llamacpp = llamacpp
        if llamacpp is not None:
            llamacpp.check_vocabulary(engine.model.get_input_embeddings().num_embeddings)
        self.cuda = next(engine.model.parameters()).device.type == "cuda"
        self._runners: dict[str, tuple[str, RunnerFactory | None]] = {
            "sequential": ("sequential", None),
            "refork": ("async", functools.partial(RowRunner, fork="reencode")),
            "batched-copy": ("async", functools.partial(RowRunner, fork="copy")),
            "pasta": ("async", None),
        }
        self._placed: dict[tuple[str, str], int] = {}

    def _measure(self, fn: Callable[[], object]) -> tuple[object, float, int | None]:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        if self.cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        return out, wall, torch.cuda.max_memory_allocated() if self.cuda else None

    def run(self, strategy: str, prompt: str, text: str) -> Measurement:
        """Replay ``text`` after ``prompt`` with ``strategy`` and measure it; raises ``ValueError`` for an
        unknown strategy, or ``llamacpp`` on a bench without its model.  ``hf-generate`` and ``llamacpp`` write
        as many tokens as ``sequential`` places (``placed``)."""
        if strategy == "hf-generate":
            return self._hf_generate(prompt, text)
        if strategy == "llamacpp":
            return self._llamacpp(prompt, text)
        if strategy not in self._runners:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(KNOWN_STRATEGIES)}")
        mode, factory = self._runners[strategy]
        options = RunOptions(mode=mode, sampling=REPLAY, jump_forward=False)
        result, wall, peak = self._measure(lambda: self.engine.generate(prompt, options, replay=text, runner=factory))
        assert isinstance(result, Generation)
        if strategy == "sequential":
            self._placed[(prompt, text)] = result.stats.tokens
        return Measurement(
            strategy,
            wall,
            result.stats.tokens,
            result.stats.steps,
            result.stats.kv_bytes,
            result.stats.kv_peak_bytes,
            peak,
            result,
        )

    def placed(self, prompt: str, text: str) -> int:
        """The tokens the ``sequential`` strategy places replaying ``text`` after ``prompt``: from its measured
        run, else from one run made now (not measured)."""
        key = (prompt, text)
        if key not in self._placed:
            self._placed[key] = self.engine.generate(
                prompt, RunOptions(mode="sequential", sampling=REPLAY), replay=text
            ).stats.tokens
        return self._placed[key]

    def _hf_generate(self, prompt: str, text: str) -> Measurement:
        n = self.placed(prompt, text)
        model = self.engine.model
        ids = torch.tensor([self.engine.prompt_ids(prompt)], device=next(model.parameters()).device)
        pad = self.engine.eos[0] if self.engine.eos else 0

        def generate() -> torch.Tensor:
            with torch.inference_mode():
                return model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=pad,
                )

        out, wall, peak = self._measure(generate)
        assert isinstance(out, torch.Tensor)
        new = out.shape[1] - ids.shape[1]
        kv = kv_bytes_per_token(model) * (ids.shape[1] + new - 1)
        return Measurement("hf-generate", wall, new, new, kv, kv, peak)

    def _llamacpp(self, prompt: str, text: str) -> Measurement:
        if self.llamacpp is None:
            raise ValueError("the llamacpp strategy needs a llama.cpp model: Bench(engine, llamacpp=load(...))")
        llama = self.llamacpp
        n = self.placed(prompt, text)
        ids = self.engine.prompt_ids(prompt)  # the very ids the engine strategies are prefilled with
        start = time.perf_counter()
        tokens = llama.decode(ids, n)
        wall = time.perf_counter() - start
        kv = llama.kv_bytes(len(ids), len(tokens))
        return Measurement("llamacpp", wall, len(tokens), len(tokens), kv, kv, None)
