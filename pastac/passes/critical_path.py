"""critical-path: decode steps, tokens and theoretical speedup; predicted wall-clock speedup.

- ``steps``: steps of the schedule (under its width cap);
- ``critical_path``: steps with no cap, the length of the longest chain of
  dependent tokens;
- ``theoretical_speedup`` = tokens / steps (1 without promises or with a cap of
  1); ``max_speedup`` = tokens / critical_path (the paper's figure);
- ``average_parallelism``: tokens decoded per step, the mean width;
- with a step-cost model (milliseconds per step as a function of the number of
  decoding threads and of the tokens already in the cache, calibrated by
  ``pastac bench``): ``predicted_speedup`` = cost of decoding every token alone
  / cost of the schedule's steps.  ``context`` is the prompt's length: the
  cache holds it before the first step.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import ClassVar

from pastac.ir.graph import ThreadGraph
from pastac.passes.resolution_order import Schedule, ScheduleOptions, schedule


@dataclass(frozen=True)
class StepCost:
    """Milliseconds per decode step by number of threads, plus (``per_context``, by number of threads)
    milliseconds per 1,000 tokens already in the cache; linear between and beyond the points."""

    table: tuple[tuple[int, float], ...]
    source: str = ""
    per_context: tuple[tuple[int, float], ...] = ()

    def __post_init__(self) -> None:
        for name in ("table", "per_context"):
            points = tuple(sorted(getattr(self, name)))
            if name == "per_context" and not points:
                continue
            if not points or points[0][0] < 1 or any(a[0] == b[0] for a, b in itertools.pairwise(points)):
                raise ValueError("a step-cost table needs distinct thread counts >= 1")
            object.__setattr__(self, name, points)

    def __call__(self, threads: int, context: int = 0) -> float:
        """Milliseconds of one step of ``threads`` threads with ``context`` tokens in the cache (never negative)."""
        ms = _interpolate(self.table, threads)
        if self.per_context and context:
            ms += _interpolate(self.per_context, threads) * context / 1000
        return max(0.0, ms)


def _interpolate(table: tuple[tuple[int, float], ...], x: int) -> float:
    xs = [t for t, _ in table]
    if len(table) == 1:
        return table[0][1] * x / xs[0] if x > xs[0] else table[0][1]
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    (x0, y0), (x1, y1) = table[i - 1], table[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


# Measured with SmolLM2-135M-Instruct in bf16 on a 2-core AVX-512 CPU, one packed row, 200-token prefix.
DEFAULT_STEP_COST = StepCost(
    ((1, 39.8), (2, 44.1), (4, 46.2), (8, 51.2), (16, 65.5)), "SmolLM2-135M-Instruct, bf16, 2-core CPU"
)


@dataclass(frozen=True)
class CriticalPath:
    """The figures of one schedule (see the module docstring); the milliseconds by the model ``cost_model``."""

    tokens: int
    steps: int
    critical_path: int
    theoretical_speedup: float
    max_speedup: float
    average_parallelism: float
    sequential_ms: float
    parallel_ms: float
    predicted_speedup: float
    cost_model: str = field(default="")


def critical_path(
    graph: ThreadGraph, plan: Schedule, cost: StepCost = DEFAULT_STEP_COST, *, context: int = 0
) -> CriticalPath:
    """The figures of ``plan``, its steps costed by ``cost`` with ``context`` tokens in the cache first."""
    tokens = graph.tokens()
    unbounded = plan if plan.options.max_width is None else schedule(graph, ScheduleOptions(None, plan.options.order))
    steps = plan.steps
    if cost.per_context:
        sequential_ms = sum(cost(1, context + i) for i in range(tokens))
        parallel_ms, placed = 0.0, context
        for decoding in plan.decoding:
            parallel_ms += cost(len(decoding), placed)
            placed += len(decoding)
    else:
        sequential_ms = tokens * cost(1)
        by_width = {w: cost(w) for w in {len(d) for d in plan.decoding}}  # a step's cost is its width's
        parallel_ms = sum(by_width[len(d)] for d in plan.decoding)
    return CriticalPath(
        tokens=tokens,
        steps=steps,
        critical_path=unbounded.steps,
        theoretical_speedup=tokens / steps if steps else 1.0,
        max_speedup=tokens / unbounded.steps if unbounded.steps else 1.0,
        average_parallelism=tokens / steps if steps else 0.0,
        sequential_ms=sequential_ms,
        parallel_ms=parallel_ms,
        predicted_speedup=sequential_ms / parallel_ms if parallel_ms else 1.0,
        cost_model=cost.source,
    )


@dataclass(frozen=True)
class CriticalPathPass:
    """The ``critical-path`` pass (an analysis: the graph is not changed)."""

    cost: StepCost = DEFAULT_STEP_COST
    name: ClassVar[str] = "critical-path"
    requires: ClassVar[tuple[str, ...]] = ("resolution-order",)

    def run(self, graph: ThreadGraph, results: dict[str, object]) -> CriticalPath:
        """The figures of the ``resolution-order`` schedule under this pass's step cost."""
        plan = results["resolution-order"]
        assert isinstance(plan, Schedule)
        return critical_path(graph, plan, self.cost)
