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

import heapq
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
    return _Scheduler(graph, options).run()


class _Scheduler:
    """The list schedule, driven by events so that a step costs the threads it touches, not all of them.

    A started thread is decoding (its current node has tokens left), waiting at a Join, or done.  Only a
    thread whose state may have changed is settled again: one that finished a node, and the parent of one
    that ended.  Settling follows the threads' start order (their rank) in passes, as a scan over every
    started thread would, so that children forked by empty promises arrive in the same order; a Join
    counts the children it still waits for instead of looking at all of them each time.
    """

    def __init__(self, graph: ThreadGraph, options: ScheduleOptions) -> None:
        self.graph = graph
        self.options = options
        n = len(graph)
        self.first, self.last = [-1] * n, [-1] * n
        self.cursor = {t: 0 for t in graph.threads}  # index into the thread's nodes
        self.left: dict[int, int] = {}  # tokens left in the current node, per decoding thread
        self.done: set[int] = set()
        self.started: list[int] = []
        self.rank: dict[int, int] = {}  # thread -> its index in ``started``
        self.decodable: set[int] = set()  # started threads whose current node has tokens left
        self.queued: list[int] = []  # heap of ranks: every decodable thread's, and stale ones
        self.in_queue: set[int] = set()
        self.waiting: dict[int, int] = {}  # thread at a Join -> its children there not yet done
        self.joined_at: dict[int, int] = {}  # child -> the Join node that joins it
        for node, op in graph.ops():
            if isinstance(op, Join):
                self.joined_at.update((c, node) for c in op.children)
        self.pending: list[tuple[tuple[int, int], int]] = []  # heap of (key, thread) awaiting a slot
        self.late: list[int] = []  # children forked while slots are being filled: queued after them
        self.late_arrival: dict[int, int] = {}
        self.filling = False
        self.arrivals = 0
        self.step = 0
        self.dirty: list[int] = []  # heap of ranks to settle in this pass
        self.dirty_next: set[int] = set()  # ranks to settle in the next pass
        self.settling = -1  # the rank being settled

    # -- threads --------------------------------------------------------------------------------------

    def start(self, thread: int) -> None:
        self.rank[thread] = len(self.started)
        self.started.append(thread)

    def arrive(self, child: int) -> None:
        """A child's promise is complete: it awaits a slot."""
        self.arrivals += 1
        if self.filling:
            self.late.append(child)
            self.late_arrival[child] = self.arrivals
        else:
            heapq.heappush(self.pending, (self.key(child, self.arrivals), child))

    def key(self, thread: int, arrival: int) -> tuple[int, int]:
        fork = self.graph.threads[thread].fork
        predicted = self.graph.op(fork).predicted if fork is not None else None  # type: ignore[union-attr]
        size = predicted if predicted is not None else 0
        match self.options.order:
            case Order.FIFO:
                return (0, arrival)
            case Order.LONGEST_FIRST:
                return (-size, arrival)
            case Order.SHORTEST_FIRST:
                return (size, arrival)
        raise AssertionError(self.options.order)

    def mark(self, thread: int) -> None:
        """``thread``'s state may have changed: settle it later in this pass, or in the next one."""
        rank = self.rank[thread]
        if rank > self.settling:
            heapq.heappush(self.dirty, rank)
        else:
            self.dirty_next.add(rank)

    def settle(self, thread: int) -> bool:
        """Pass empty nodes and satisfied joins; True if the thread can decode now."""
        graph, cursor, step = self.graph, self.cursor, self.step
        nodes = graph.thread_nodes(thread)
        while True:
            if cursor[thread] >= len(nodes):
                self.decodable.discard(thread)
                if thread not in self.done:
                    self.done.add(thread)
                    parent = graph.threads[thread].parent
                    # A parent waiting at the Join that joins this thread waits for one child fewer.
                    if parent in self.waiting and (
                        self.joined_at.get(thread) == graph.thread_nodes(parent)[cursor[parent]]
                    ):
                        self.waiting[parent] -= 1
                        if self.waiting[parent] == 0:
                            self.mark(parent)
                return False
            node = nodes[cursor[thread]]
            op = graph.op(node)
            if isinstance(op, Join):
                if thread not in self.waiting:
                    self.waiting[thread] = sum(c not in self.done for c in op.children)
                if self.waiting[thread]:
                    self.decodable.discard(thread)
                    return False
                del self.waiting[thread]
                self.first[node] = self.last[node] = step - 1
                cursor[thread] += 1
                continue
            if op.length == 0:
                self.first[node] = self.last[node] = step - 1
                cursor[thread] += 1
                if isinstance(op, Fork):
                    self.arrive(op.child)
                continue
            self.left.setdefault(thread, op.length)
            if thread not in self.decodable:
                self.decodable.add(thread)
                if thread not in self.in_queue:
                    self.in_queue.add(thread)
                    heapq.heappush(self.queued, self.rank[thread])
            return True

    def resolve(self) -> None:
        """Settle the marked threads in passes by rank until none is left marked."""
        while self.dirty or self.dirty_next:
            if not self.dirty:
                self.dirty, self.dirty_next = sorted(self.dirty_next), set()
            while self.dirty:
                rank = heapq.heappop(self.dirty)
                if rank == self.settling:
                    continue  # marked twice
                self.settling = rank
                thread = self.started[rank]
                if thread not in self.done:
                    self.settle(thread)
            self.settling = -1

    def ready(self, limit: int | None) -> list[int]:
        """The first ``limit`` decodable threads by rank (all with None), left queued."""
        out: list[int] = []
        queued = self.queued
        while queued and (limit is None or len(out) < limit):
            rank = heapq.heappop(queued)
            thread = self.started[rank]
            if thread in self.decodable:
                out.append(rank)
            else:
                self.in_queue.discard(thread)
        for rank in out:
            heapq.heappush(queued, rank)
        return [self.started[rank] for rank in out]

    # -- the steps -----------------------------------------------------------------------------------

    def run(self) -> Schedule:
        graph, cap = self.graph, self.options.max_width
        decoding: list[tuple[int, ...]] = []
        runnable_counts: list[int] = []
        self.start(MAIN)
        heapq.heappush(self.dirty, 0)
        while True:
            self.resolve()
            if len(self.done) == len(graph.threads) and not self.pending:
                break
            active = self.ready(cap)
            held_back = len(self.decodable) - len(active)
            finished = False
            self.filling = True
            while (self.pending or self.late) and (cap is None or len(active) < cap):
                if self.pending:
                    _, thread = heapq.heappop(self.pending)
                else:
                    thread = self.late.pop(0)
                    del self.late_arrival[thread]
                self.start(thread)
                self.settling = self.rank[thread]  # what it marks is settled in the next resolve
                if self.settle(thread):
                    active.append(thread)
                finished |= thread in self.done
            self.filling = False
            self.settling = -1
            for thread in self.late:
                heapq.heappush(self.pending, (self.key(thread, self.late_arrival.pop(thread)), thread))
            self.late.clear()
            if finished:
                # A child with no token to write ended as it started: a join waiting for it may pass
                # now, so resolve this step again (those started stay started).
                continue
            # Those decoding, those the cap held back, and the children still pending (a child started now
            # may have forked others at once, with promises of no tokens).
            runnable_counts.append(len(active) + held_back + len(self.pending))
            if not active:
                raise ScheduleError(f"no thread can decode at step {self.step}: the graph is incomplete or deadlocked")
            forks: list[int] = []
            for thread in active:
                node = graph.thread_nodes(thread)[self.cursor[thread]]
                if self.first[node] < 0:
                    self.first[node] = self.step
                self.left[thread] -= 1
                if self.left[thread] == 0:
                    self.last[node] = self.step
                    del self.left[thread]
                    self.cursor[thread] += 1
                    self.decodable.discard(thread)
                    self.mark(thread)
                    op = graph.op(node)
                    if isinstance(op, Fork):
                        forks.append(op.child)
            decoding.append(tuple(active))
            self.step += 1
            for child in forks:
                self.arrive(child)
        return Schedule(
            self.options,
            self.step,
            tuple(self.first),
            tuple(self.last),
            tuple(decoding),
            tuple(runnable_counts),
            tuple(self.started),
        )


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
