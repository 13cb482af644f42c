"""Calibrating the step-cost model on the running machine.

One decode step of pastac's runner costs a forward over one query per thread,
each reading the cache.  ``calibrate`` times such steps for several thread
counts and cache lengths (random tokens: the cost does not depend on them) and
fits, per thread count, milliseconds = base + slope x context: the
``StepCost`` that ``critical_path`` turns into the cost-model bound.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from pastac.backend.decoder import FusedDecoder
from pastac.backend.visibility import Views
from pastac.passes.critical_path import StepCost
from pastac.runtime.options import SamplingOptions
from pastac.runtime.runner import Runner, StepPlan
from pastac.runtime.sampling import Sampler


@dataclass(frozen=True)
class Calibration:
    """The measured step times over the grid of thread counts and cache lengths, and the cost fitted to them."""

    threads: tuple[int, ...]
    contexts: tuple[int, ...]
    ms: tuple[tuple[float, ...], ...]  # ms[i][j]: median ms per step, threads[i] at contexts[j]
    cost: StepCost

    def to_json(self) -> dict[str, object]:
        """The grid, the median ms per step, and the fit's base and slope per thread count, under their names."""
        return {
            "threads": list(self.threads),
            "contexts": list(self.contexts),
            "ms_per_step": [list(row) for row in self.ms],
            "fit": {
                "ms": [list(p) for p in self.cost.table],
                "ms_per_1000_context": [list(p) for p in self.cost.per_context],
            },
        }


def _fit(contexts: tuple[int, ...], ms: tuple[float, ...]) -> tuple[float, float]:
    """Least squares: ms = base + slope * context / 1000."""
    if len(contexts) == 1:
        return ms[0], 0.0
    xs = [c / 1000 for c in contexts]
    mx, my = statistics.fmean(xs), statistics.fmean(ms)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ms, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, max(slope, 0.0)


def calibrate(
    model: torch.nn.Module,
    *,
    threads: tuple[int, ...] = (1, 2, 4, 8, 16),
    contexts: tuple[int, ...] = (128, 512, 1024),
    repeats: int = 5,
    seed: int = 0,
    label: str = "",
    attention: str = "sdpa",
    decode_step: str = "eager",
    decoder: FusedDecoder | None = None,
) -> Calibration:
    """Median milliseconds per decode step of ``Runner`` (with ``attention``, ``decode_step`` and the fused
    ``decoder``, None: the model's own forward) for each thread count and cache length."""
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(seed)
    sampler = Sampler(SamplingOptions())
    table: list[list[float]] = [[] for _ in threads]
    for context in contexts:
        capacity = context + max(threads) + 1
        runner = Runner(model, capacity=capacity, attention=attention, decode_step=decode_step, decoder=decoder)
        views = Views(capacity, threads=max(threads), device=runner.device)
        prompt = torch.randint(vocab, (context,), generator=generator).tolist()
        views.place(0, 0, context)
        runner.step(
            StepPlan(
                tokens=prompt,
                positions=list(range(context)),
                slots=list(range(context)),
                threads=[0] * context,
                sample=[context - 1],
            ),
            views,
            sampler,
        )
        for thread in range(1, max(threads)):  # every thread sees the whole prefix, and its own slot
            views.fork(0, thread, context)
        for thread in range(max(threads)):
            views.place(thread, context + thread, 1)
        for i, n in enumerate(threads):
            tokens = torch.randint(vocab, (n,), generator=generator).tolist()
            plan = StepPlan(
                tokens=tokens,
                positions=[context] * n,
                slots=list(range(context, context + n)),
                threads=list(range(n)),
                sample=list(range(n)),
            )
            runner.step(plan, views, sampler)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                runner.step(plan, views, sampler)  # one host sync: the sampled tokens
                times.append((time.perf_counter() - start) * 1000)
            table[i].append(statistics.median(times))
    fits = [_fit(contexts, tuple(row)) for row in table]
    cost = StepCost(
        tuple((n, base) for n, (base, _) in zip(threads, fits, strict=True)),
        label,
        tuple((n, slope) for n, (_, slope) in zip(threads, fits, strict=True)),
    )
    return Calibration(tuple(threads), tuple(contexts), tuple(tuple(row) for row in table), cost)
