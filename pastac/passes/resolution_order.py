"""resolution-order: a list schedule of the threads' decoding under a width cap.

The model of decoding (the runtime's): every step, each decoding thread writes
one token of its current node.  A child can start the step after its promise
is complete; a thread at a Join waits until every child it joins has ended,
then goes on the next step.  At most ``max_width`` threads decode per step
(the main thread included; None: no cap).  Threads already started keep
priority, oldest first; free slots go to pending children in the chosen order:

- ``fifo``: in the order their promises completed;
- ``longest-first`` / ``shortest-first``: by predicted length (``tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from pastac.ir.graph import MAIN, Fork, Join, ThreadGraph


class Order(StrEnum):
    """The order in which pending children take free slots."""

    FIFO = "fifo"
    LONGEST_FIRST = "longest-first"
    SHORTEST_FIRST = "shortest-first"


@dataclass(frozen=True)
class ScheduleOptions:
    """The width cap (None: no cap; else >= 1, or ``ValueError``) and the order of pending children."""

    max_width: int | None = None
    order: Order = Order.FIFO

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", Order(self.order))
        if self.max_width is not None and self.max_width < 1:
            raise ValueError(f"max_width must be >= 1, not {self.max_width}")


@dataclass(frozen=True)
class Schedule:
    """Steps are numbered from 0.  Per node: the step of its first and last token
    (a Join: the step before the one its thread goes on in).  Per step: the
    threads that decode, and how many could (started or pending, not waiting)."""

    options: ScheduleOptions
    steps: int
    first_step: tuple[int, ...]
    last_step: tuple[int, ...]
    decoding: tuple[tuple[int, ...], ...]
    runnable: tuple[int, ...]
    started: tuple[int, ...]  # threads in the order they started


class ScheduleError(RuntimeError):
    """No thread can decode though some have not ended: the graph is incomplete or deadlocked."""


def schedule(graph: ThreadGraph, options: ScheduleOptions = ScheduleOptions()) -> Schedule:
    """The list schedule of ``graph`` under ``options``; ``ScheduleError`` if decoding cannot go on."""
    n = len(graph)
    first, last = [-1] * n, [-1] * n
    cursor = {t: 0 for t in graph.threads}  # index into the thread's nodes
    left: dict[int, int] = {}  # tokens left in the current node, per thread
    done: set[int] = set()
    started: list[int] = [MAIN]
    pending: list[tuple[int, int]] = []  # (thread, arrival) awaiting a slot
    decoding: list[tuple[int, ...]] = []
    runnable_counts: list[int] = []
    arrivals = 0
    step = 0

    def current(thread: int) -> int | None:
        nodes = graph.thread_nodes(thread)
        return nodes[cursor[thread]] if cursor[thread] < len(nodes) else None

    def settle(thread: int) -> bool:
        """Pass empty nodes and satisfied joins; True if the thread can decode now."""
        while True:
            node = current(thread)
            if node is None:
                done.add(thread)
                return False
            op = graph.op(node)
            if isinstance(op, Join):
                if not all(c in done for c in op.children):
                    return False
                first[node] = last[node] = step - 1
                cursor[thread] += 1
                continue
            if op.length == 0:
                first[node] = last[node] = step - 1
                cursor[thread] += 1
                if isinstance(op, Fork):
                    pending.append((op.child, arrival()))
                continue
            left.setdefault(thread, op.length)
            return True

    def arrival() -> int:
        nonlocal arrivals
        arrivals += 1
        return arrivals

    def key(item: tuple[int, int]) -> tuple[int, int]:
        thread, order = item
        fork = graph.threads[thread].fork
        predicted = graph.op(fork).predicted if fork is not None else None  # type: ignore[union-attr]
        size = predicted if predicted is not None else 0
        match options.order:
            case Order.FIFO:
                return (0, order)
            case Order.LONGEST_FIRST:
                return (-size, order)
            case Order.SHORTEST_FIRST:
                return (size, order)
        raise AssertionError(options.order)

    cap = options.max_width
    while True:
        # Resolve until stable: settling can finish threads, which satisfies joins of threads settled earlier.
        while True:
            before = (len(done), len(pending), tuple(cursor.values()))
            ready = [t for t in started if t not in done and settle(t)]
            if (len(done), len(pending), tuple(cursor.values())) == before:
                break
        if len(done) == len(graph.threads) and not pending:
            break
        active = ready if cap is None else ready[:cap]
        held_back = len(ready) - len(active)
        pending.sort(key=key)
        finished = False
        while pending and (cap is None or len(active) < cap):
            thread, _ = pending.pop(0)
            started.append(thread)
            if settle(thread):
                active.append(thread)
            finished |= thread in done
        if finished:
            # A child with no token to write ended as it started: a join waiting for it may pass
            # now, so resolve this step again (those started stay started).
            continue
        # Those decoding, those the cap held back, and the children still pending (a child started now
        # may have forked others at once, with promises of no tokens).
        runnable_counts.append(len(active) + held_back + len(pending))
        if not active:
            raise ScheduleError(f"no thread can decode at step {step}: the graph is incomplete or deadlocked")
        forks: list[int] = []
        for thread in active:
            node = current(thread)
            assert node is not None
            if first[node] < 0:
                first[node] = step
            left[thread] -= 1
            if left[thread] == 0:
                last[node] = step
                del left[thread]
                cursor[thread] += 1
                op = graph.op(node)
                if isinstance(op, Fork):
                    forks.append(op.child)
        decoding.append(tuple(active))
        step += 1
        pending.extend((child, arrival()) for child in forks)
    return Schedule(options, step, tuple(first), tuple(last), tuple(decoding), tuple(runnable_counts), tuple(started))


@dataclass(frozen=True)
class ResolutionOrderPass:
    """The ``resolution-order`` pass (an analysis: the graph is not changed)."""

    options: ScheduleOptions = ScheduleOptions()
    name: ClassVar[str] = "resolution-order"
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: ThreadGraph, results: dict[str, object]) -> Schedule:
        """The schedule of ``graph`` under this pass's options."""
        return schedule(graph, self.options)

    @staticmethod
    def annotate(result: Schedule) -> dict[int, str]:
        """A note per node: the steps of its first and last token."""
        return {
            n: f"steps [{f}, {la}]" for n, (f, la) in enumerate(zip(result.first_step, result.last_step, strict=True))
        }
