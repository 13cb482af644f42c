"""The decoding strategies ``pastac bench`` compares, each run on the same work: one annotated response.

- ``hf-generate``: Hugging Face ``generate``, greedy, of as many new tokens as
  the sequential run places (the baseline users know);
- ``sequential``: pastac's engine with one thread (every promise inline);
- ``refork``: each async part a separate request that re-encodes its whole
  context (``RowRunner(fork="reencode")``);
- ``batched-copy``: threads as batch rows, a child's row a copy of its
  parent's keys and values (``RowRunner(fork="copy")``);
- ``pasta``: pastac's async decoding, one packed row over one shared cache.

The engine strategies replay the response (teacher-forced), so they place the
same tokens through the same scheduler; ``hf-generate`` writes its own tokens,
as many of them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pastac.bench import STRATEGIES
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
    steps: int  # decode steps (forward passes after the prompt's, for hf-generate)
    kv_bytes: int  # keys and values at the end of the run
    kv_peak_bytes: int  # the most keys and values held at once
    peak_memory_bytes: int | None  # accelerator memory high-water mark (None on the CPU)
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
    """Runs the strategies on one engine; ``run(strategy, prompt, text)`` measures one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.cuda = next(engine.model.parameters()).device.type == "cuda"
        self._runners: dict[str, tuple[str, RunnerFactory | None]] = {
            "sequential": ("sequential", None),
            "refork": ("async", functools.partial(RowRunner, fork="reencode")),
            "batched-copy": ("async", functools.partial(RowRunner, fork="copy")),
            "pasta": ("async", None),
        }
        self._hf_tokens: dict[tuple[str, str], int] = {}

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
        unknown strategy.  ``hf-generate`` writes as many tokens as ``sequential`` places (running it if it has
        not yet run on this response)."""
        if strategy == "hf-generate":
            return self._hf_generate(prompt, text)
        if strategy not in self._runners:
            raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
        mode, factory = self._runners[strategy]
        options = RunOptions(mode=mode, sampling=REPLAY, jump_forward=False)
        result, wall, peak = self._measure(lambda: self.engine.generate(prompt, options, replay=text, runner=factory))
        assert isinstance(result, Generation)
        if strategy == "sequential":
            self._hf_tokens[(prompt, text)] = result.stats.tokens
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

    def _hf_generate(self, prompt: str, text: str) -> Measurement:
        key = (prompt, text)
        if key not in self._hf_tokens:  # as many tokens as the sequential run places
            self._hf_tokens[key] = self.engine.generate(
                prompt, RunOptions(mode="sequential", sampling=REPLAY), replay=text
            ).stats.tokens
        n = self._hf_tokens[key]
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
