"""The list schedule of ``pastac.passes.resolution_order`` as first written, kept as the reference the
event-driven scheduler must equal exactly (the same ``Schedule``, field by field, for every graph and option).

It settles every started thread at every step until nothing changes, so it costs steps x threads; it is
simple enough to read as the definition of the schedule.
"""

from __future__ import annotations

from pastac.ir.graph import MAIN, Fork, Join, ThreadGraph
from pastac.passes.resolution_order import Order, Schedule, ScheduleError, ScheduleOptions


def reference_schedule(graph: ThreadGraph, options: ScheduleOptions = ScheduleOptions()) -> Schedule:
    """The list schedule as it was first written: every step settles every started thread."""
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
