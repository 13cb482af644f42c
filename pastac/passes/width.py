"""width: how many threads decode at each step of the schedule, and at most.

Width counts every decoding thread, the main one included: a cap of 1 is
sequential decoding.  ``demand`` is how many could have decoded without a cap
(started and not waiting at a join, or pending).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pastac.ir.graph import ThreadGraph
from pastac.passes.resolution_order import Schedule


@dataclass(frozen=True)
class Width:
    """Per step, the threads decoding and how many could (``demand``); their maxima and the mean width."""

    per_step: tuple[int, ...]
    demand: tuple[int, ...]
    max_width: int
    max_demand: int
    mean_width: float
    threads: int  # every thread that decoded, the main one included


def width(graph: ThreadGraph, plan: Schedule) -> Width:
    """The width figures of ``plan``."""
    per_step = tuple(len(d) for d in plan.decoding)
    steps = max(1, len(per_step))
    return Width(
        per_step,
        plan.runnable,
        max(per_step, default=0),
        max(plan.runnable, default=0),
        sum(per_step) / steps,
        len(graph.threads),
    )


@dataclass(frozen=True)
class WidthPass:
    """The ``width`` pass (an analysis: the graph is not changed)."""

    name: ClassVar[str] = "width"
    requires: ClassVar[tuple[str, ...]] = ("resolution-order",)

    def run(self, graph: ThreadGraph, results: dict[str, object]) -> Width:
        """The width figures of the ``resolution-order`` schedule."""
        plan = results["resolution-order"]
        assert isinstance(plan, Schedule)
        return width(graph, plan)
