"""Hand-computed expectations for the scheduling passes, the pass manager and the layout tensors.

Lengths are kept easy to count with ``toks``: one token per tag, one per word of text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import ClassVar

import pytest
import torch

from pastac.grammar import parse
from pastac.ir.graph import MAIN, IRError, Segment, ThreadGraph, verify
from pastac.ir.lengths import words
from pastac.ir.lower import lower
from pastac.passes import (
    DEFAULT_STEP_COST,
    CriticalPathPass,
    Order,
    PassError,
    PassManager,
    Policy,
    PositionOptions,
    Positions,
    PositionsPass,
    ResolutionOrderPass,
    Schedule,
    ScheduleOptions,
    StepCost,
    VisibilityPass,
    WidthPass,
    assign_positions,
    critical_path,
    schedule,
    standard_pipeline,
    visibility,
    width,
)
from pastac.passes.layout import training_layout
from pastac.passes.positions import subtree_length, subtree_lengths
from pastac.passes.resolution_order import ScheduleError

TAGS = ("<promise", "<async", "</async", "<sync")


def toks(text: str) -> int:
    """One token per tag, one per word of text (the documents below keep tags out of their text)."""
    return 1 if text.startswith(TAGS) else len(text.split())


# Two promises at the top (x, z) and one nested promise (y, inside x's block, joined by the block's end).
DOC = (
    'A B <promise topic="x" tokens="3"/><async>C <promise topic="y" tokens="1"/><async>D E</async> F</async>'
    ' G <promise topic="z"/><async>H</async><sync/> I J'
)
#   node  thread  what            tokens
#   %0    t0      "A B "          2
#   %1    t0      fork t1 (x, 3)  1
#   %2    t1      open            1
#   %3    t1      "C "            1
#   %4    t1      fork t2 (y, 1)  1
#   %5    t2      open            1
#   %6    t2      "D E"           2
#   %7    t2      close           1
#   %8    t1      " F"            1
#   %9    t1      close           1
#   %10   t1      join t2         0   (end of body)
#   %11   t0      " G "           1
#   %12   t0      fork t3 (z, -)  1
#   %13   t3      open            1
#   %14   t3      "H"             1
#   %15   t3      close           1
#   %16   t0      sync            1
#   %17   t0      join t1, t3     0
#   %18   t0      " I J"          2
# 20 tokens.  t1's subtree is 9 tokens (5 of its own, 4 of t2), t2's 4, t3's 3.


@pytest.fixture
def doc() -> ThreadGraph:
    return lower(parse(DOC), toks)


def test_the_document(doc: ThreadGraph) -> None:
    assert len(doc) == 19 and doc.tokens() == 20
    assert [op.length for _, op in doc.ops()] == [2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 2]
    assert subtree_lengths(doc) == {0: 20, 1: 9, 2: 4, 3: 3}
    assert subtree_length(doc, 1) == 9


# ------------------------------------------------------------------ positions

SEQUENTIAL = (0, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 12, 13, 14, 15, 16, 17, 18, 18)
POSITIONS = [
    # The stitched text: each block right after its promise.
    (PositionOptions(Policy.SEQUENTIAL), SEQUENTIAL),
    (PositionOptions(Policy.ORACLE), SEQUENTIAL),
    # x reserves open + close + 3 x 1 = 5 (its subtree is 9: it overruns into %11, %12); y reserves 2 + 1 = 3
    # (exact); z has no tokens="..": 2 + 0.
    (
        PositionOptions(Policy.PREDICTED, unit=1, missing=0),
        (0, 2, 3, 4, 5, 6, 7, 9, 9, 10, 11, 8, 9, 10, 11, 12, 12, 13, 13),
    ),
    # missing=2 stands in for z's absent length: it reserves 2 + 2.
    (
        PositionOptions(Policy.PREDICTED, unit=1, missing=2),
        (0, 2, 3, 4, 5, 6, 7, 9, 9, 10, 11, 8, 9, 10, 11, 12, 14, 15, 15),
    ),
    # unit 10: x reserves 2 + 30, y 2 + 10.
    (PositionOptions(Policy.PREDICTED, unit=10), (0, 2, 3, 4, 5, 6, 7, 9, 18, 19, 20, 35, 36, 37, 38, 39, 39, 40, 40)),
    # No reservation: the parent goes on right after each promise.
    (PositionOptions(Policy.RESTART), (0, 2, 3, 4, 5, 6, 7, 9, 6, 7, 8, 3, 4, 5, 6, 7, 5, 6, 6)),
    # As restart, but after a join past the furthest position a joined child reached: t1 ends at 10
    # (its join of t2 moved it past t2's end, 10), t3 at 8, the main thread's sync at 6: " I J" at 10.
    (PositionOptions(Policy.LOCKSTEP), (0, 2, 3, 4, 5, 6, 7, 9, 6, 7, 8, 3, 4, 5, 6, 7, 5, 6, 10)),
]


@pytest.mark.parametrize(("options", "expected"), POSITIONS, ids=lambda x: getattr(x, "policy", ""))
def test_positions(doc: ThreadGraph, options: PositionOptions, expected: tuple[int, ...]) -> None:
    positions = assign_positions(doc, options)
    assert positions.policy is options.policy
    assert positions.start == expected
    assert positions.length == tuple(op.length for _, op in doc.ops())
    assert positions.of(6) == range(expected[6], expected[6] + 2)
    assert positions.of(10) == range(expected[10], expected[10])  # a join has no tokens


def test_positions_pass_and_annotations(doc: ThreadGraph) -> None:
    result = PositionsPass(PositionOptions("restart")).run(doc, {})
    assert result.start == POSITIONS[5][1]
    notes = PositionsPass.annotate(result)
    assert notes[0] == "pos [0, 2)" and notes[18] == "pos [6, 8)"
    assert 10 not in notes and 17 not in notes  # no tokens, no positions


def test_position_options() -> None:
    assert PositionOptions().policy is Policy.PREDICTED and PositionOptions().unit == 10
    assert PositionOptions("oracle").policy is Policy.ORACLE  # names are accepted
    with pytest.raises(ValueError):
        PositionOptions("nearest")
    with pytest.raises(ValueError, match="unit and missing must be >= 0"):
        PositionOptions(unit=-1)
    with pytest.raises(ValueError, match="unit and missing must be >= 0"):
        PositionOptions(missing=-1)


# ------------------------------------------------------------------ visibility


def test_visibility(doc: ThreadGraph) -> None:
    vis = visibility(doc)
    seen = [set(vis.seen(n)) for n in range(len(doc))]
    assert seen[0] == set()
    assert seen[2] == {0, 1}  # t1's <async> sees the main thread up to its promise
    assert seen[5] == {0, 1, 2, 3, 4}  # t2 sees t1 up to its promise and what t1 sees
    assert seen[8] == {0, 1, 2, 3, 4}  # t1 after the fork of t2: not t2 (not joined yet)
    assert seen[13] == {0, 1, 11, 12}  # t3: neither its sibling t1 nor its subtree
    assert seen[16] == {0, 1, 11, 12}  # the <sync/> tag sees no child
    assert seen[18] == set(range(18))  # after the join: everything before
    for node in range(len(doc)):
        assert {other for other in range(len(doc)) if vis.sees(node, other)} == seen[node], node
    notes = VisibilityPass.annotate(vis)
    assert notes[0] == "sees nothing"
    assert notes[2] == "sees ..%1"  # %1 and everything %1 sees
    assert notes[17] == "sees ..%10, ..%15, ..%16"  # the join: its thread's <sync/> and its children's ends


def test_visibility_takes_linear_space() -> None:
    """A thousand promises joined at the end: the relation holds a few entries per node, not a set of
    the nodes before it (which would be ~n**2 / 2 entries)."""
    text = "".join(f'<promise topic="{i}"/><async>part {i}</async>' for i in range(1000)) + "<sync/>end"
    graph = lower(parse(text), words)
    vis = visibility(graph)

    def entries(value: object) -> int:  # the numbers a result holds, however it nests them
        if isinstance(value, tuple | list | set | frozenset):
            return sum(entries(v) for v in value)
        if isinstance(value, dict):
            return sum(entries(k) + entries(v) for k, v in value.items())
        return 1

    assert entries([getattr(vis, f.name) for f in fields(vis)]) <= 10 * (len(graph) + len(graph.threads))
    assert vis.sees(len(graph) - 1, 3) and not vis.sees(len(graph) - 3, 3)  # after the join; its <sync/>


# ------------------------------------------------------------------ resolution order (the schedule)


def test_schedule_uncapped(doc: ThreadGraph) -> None:
    plan = schedule(doc)
    # t1 starts the step after its promise (3); t3 after its promise (5); t2 after t1's promise of it (6).
    # t1 waits at its join for t2 (steps 8-9), the main thread at its join from step 6 to 9.
    assert plan.steps == 12
    assert plan.decoding == ((0,), (0,), (0,), (0, 1), (0, 1), (0, 1, 3), (1, 3, 2), (1, 3, 2), (2,), (2,), (0,), (0,))
    assert plan.first_step == (0, 2, 3, 4, 5, 6, 7, 9, 6, 7, 9, 3, 4, 5, 6, 7, 5, 9, 10)
    assert plan.last_step == (1, 2, 3, 4, 5, 6, 8, 9, 6, 7, 9, 3, 4, 5, 6, 7, 5, 9, 11)
    assert plan.runnable == (1, 1, 1, 2, 2, 3, 3, 3, 1, 1, 1, 1)
    assert plan.started == (0, 1, 3, 2)
    # No cap: the order of pending threads makes no difference.
    for order in Order:
        assert schedule(doc, ScheduleOptions(None, order)).decoding == plan.decoding


@pytest.mark.parametrize("order", list(Order))
def test_schedule_cap_1_is_sequential(doc: ThreadGraph, order: Order) -> None:
    plan = schedule(doc, ScheduleOptions(1, order))
    assert plan.steps == doc.tokens() == 20
    assert all(len(d) == 1 for d in plan.decoding)
    # The main thread writes until its sync (6 tokens), then the children take turns; t1 waits at its
    # join for t2, so a pending child takes the slot meanwhile.
    expected = {
        Order.FIFO: (0, 1, 3, 2),
        Order.LONGEST_FIRST: (0, 1, 2, 3),  # at step 11, y (1) goes before z (no length: 0)
        Order.SHORTEST_FIRST: (0, 3, 1, 2),  # at step 6, z (0) goes before x (3)
    }[order]
    assert plan.started == expected
    assert [d[0] for d in plan.decoding][:6] == [0] * 6 and [d[0] for d in plan.decoding][-2:] == [0, 0]


CAP_2 = {
    # t3 waits for a slot until the main thread blocks at its join (step 6).
    Order.FIFO: (14, ((0,), (0,), (0,), (0, 1), (0, 1), (0, 1), (1, 3), (1, 3), (3, 2), (2,), (2,), (2,), (0,), (0,))),
    # At step 6 t2 (y, 1) goes before t3 (z, no length): the longer chain starts first.
    Order.LONGEST_FIRST: (
        13,
        ((0,), (0,), (0,), (0, 1), (0, 1), (0, 1), (1, 2), (1, 2), (2, 3), (2, 3), (3,), (0,), (0,)),
    ),
    Order.SHORTEST_FIRST: (
        14,
        ((0,), (0,), (0,), (0, 1), (0, 1), (0, 1), (1, 3), (1, 3), (3, 2), (2,), (2,), (2,), (0,), (0,)),
    ),
}


@pytest.mark.parametrize("order", list(Order))
def test_schedule_cap_2(doc: ThreadGraph, order: Order) -> None:
    plan = schedule(doc, ScheduleOptions(2, order))
    steps, decoding = CAP_2[order]
    assert (plan.steps, plan.decoding) == (steps, decoding)


def three_promises(predicted: tuple[int, int, int]) -> ThreadGraph:
    """Three promises written one after the other, each block as long as its promise says (plus its tags),
    then two words and a sync: with a cap of 2, the main thread holds one slot until step 6."""
    promises = "".join(f'<promise topic="p{k}" tokens="{k}"/>' for k in predicted)
    blocks = "".join(f"<async>{' '.join('w' * k)}</async>" for k in predicted)
    return lower(parse(promises + blocks + "m m<sync/> end"), toks)


@pytest.mark.parametrize(
    ("predicted", "order", "steps", "started", "uncapped"),
    [
        # t1 (the first promise) takes the free slot at step 1 and ends at step 3; at step 4 one slot is
        # free for t2 and t3, at step 6 (the main thread waits at its join) both.
        # No cap: the 5-token block starts at step 3 (ends at 7) and " end" is written at step 8: 9 steps.
        ((1, 2, 3), Order.FIFO, 12, (0, 1, 2, 3), 9),
        ((1, 2, 3), Order.SHORTEST_FIRST, 12, (0, 1, 2, 3), 9),
        ((1, 2, 3), Order.LONGEST_FIRST, 11, (0, 1, 3, 2), 9),  # the 5-token t3 starts first: 11 steps, not 12
        # No cap: the 5-token block starts at step 2 (ends at 6), " end" at step 7: 8 steps.
        ((2, 3, 1), Order.FIFO, 11, (0, 1, 2, 3), 8),
        ((2, 3, 1), Order.LONGEST_FIRST, 11, (0, 1, 2, 3), 8),
        ((2, 3, 1), Order.SHORTEST_FIRST, 12, (0, 1, 3, 2), 8),  # the 3-token t3 goes first: one step lost
    ],
)
def test_the_order_matters_under_a_cap(
    predicted: tuple[int, int, int], order: Order, steps: int, started: tuple[int, ...], uncapped: int
) -> None:
    graph = three_promises(predicted)
    assert graph.tokens() == 3 + (3 + 4 + 5) + 4
    plan = schedule(graph, ScheduleOptions(2, order))
    assert (plan.steps, plan.started) == (steps, started)
    assert schedule(graph, ScheduleOptions(None, order)).steps == uncapped


def test_schedule_options() -> None:
    assert ScheduleOptions(2, "longest-first").order is Order.LONGEST_FIRST
    with pytest.raises(ValueError, match="max_width must be >= 1, not 0"):
        ScheduleOptions(0)
    with pytest.raises(ValueError):
        ScheduleOptions(None, "random")


def test_schedule_of_a_deadlocked_graph_fails() -> None:
    """A broken graph (the promise is no fork, so its child never starts) raises rather than loops."""
    g = lower(parse('<promise topic="t"/><async>a</async><sync/>b'), toks)
    g.g.nodes[0]["op"] = Segment(MAIN, "<promise/>", 1)
    with pytest.raises(IRError):
        verify(g)
    with pytest.raises(ScheduleError, match="no thread can decode at step 2: the graph is incomplete or deadlocked"):
        schedule(g)


def test_schedule_of_a_child_with_no_tokens() -> None:
    """Found by the properties with a length function that gives tags no tokens: a child with nothing to
    write ends as soon as it starts, and its parent's join passes in the same step."""
    g = ThreadGraph()
    _, child = g.fork(MAIN, "t", None, "<p/>", 1)
    g.open(child, "<async>", 0)
    g.close(child, "</async>", 0)
    g.end(child)
    g.sync(MAIN, "<sync/>", 0)
    g.join(MAIN, explicit=True)
    g.segment(MAIN, "after", 1)
    g.end(MAIN)
    plan = schedule(g)
    assert plan.steps == 2 and plan.decoding == ((0,), (0,))
    assert plan.first_step == (0, 0, 0, 0, 0, 1) and plan.last_step == (0, 0, 0, 0, 0, 1)
    assert plan.started == (0, 1)


def test_schedule_annotations(doc: ThreadGraph) -> None:
    notes = ResolutionOrderPass.annotate(schedule(doc))
    assert notes[0] == "steps [0, 1]" and notes[17] == "steps [9, 9]" and len(notes) == len(doc)


def queries(graph: ThreadGraph, run: Callable[[ThreadGraph], object]) -> int:
    """How many times ``run`` asks ``graph`` for a node's op or a thread's nodes."""
    calls = 0

    def counting(query: Callable[[int], object]) -> Callable[[int], object]:
        def counted(key: int) -> object:
            nonlocal calls
            calls += 1
            return query(key)

        return counted

    graph.op = counting(graph.op)  # type: ignore[method-assign]
    graph.thread_nodes = counting(graph.thread_nodes)  # type: ignore[method-assign]
    run(graph)
    return calls


def promises_then_blocks(n: int) -> ThreadGraph:
    """``n`` promises, then their ``n`` blocks of two words, then a sync: under a cap most children wait
    for a slot, without one most decode at once."""
    return lower(parse('<promise topic="t"/>' * n + "<async>a b</async>" * n + "<sync/>end"), toks)


@pytest.mark.parametrize("cap", [None, 2])
@pytest.mark.parametrize("order", list(Order))
def test_schedule_cost_is_linear(cap: int | None, order: Order) -> None:
    """Doubling the promises doubles the scheduler's queries, not more: a step costs the threads it touches
    (settling every started thread, or sorting every pending one, each step made this quadratic)."""
    options = ScheduleOptions(cap, order)
    small, large = (queries(promises_then_blocks(n), lambda g: schedule(g, options)) for n in (300, 600))
    assert large <= 2.2 * small, (small, large)


# ------------------------------------------------------------------ width


def test_width(doc: ThreadGraph) -> None:
    w = width(doc, schedule(doc))
    assert w.per_step == (1, 1, 1, 2, 2, 3, 3, 3, 1, 1, 1, 1)
    assert w.demand == (1, 1, 1, 2, 2, 3, 3, 3, 1, 1, 1, 1)
    assert (w.max_width, w.max_demand, w.threads) == (3, 3, 4)
    assert w.mean_width == 20 / 12
    capped = width(doc, schedule(doc, ScheduleOptions(2)))
    assert capped.per_step == (1, 1, 1, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1)
    # Demand counts the pending threads the cap held back: t3 from step 5, t2 from step 6.
    assert capped.demand == (1, 1, 1, 2, 2, 3, 3, 3, 2, 1, 1, 1, 1, 1)
    assert (capped.max_width, capped.max_demand) == (2, 3)
    empty = lower(parse(""), toks)
    assert width(empty, schedule(empty)) == type(w)((), (), 0, 0, 0.0, 1)


# ------------------------------------------------------------------ critical path and step cost

COST = StepCost(((4, 16.0), (1, 10.0), (2, 12.0)), "test")  # unsorted on purpose


def test_step_cost() -> None:
    assert COST.table == ((1, 10.0), (2, 12.0), (4, 16.0))
    assert [COST(t) for t in (1, 2, 3, 4)] == [10.0, 12.0, 14.0, 16.0]  # 3: between 2 and 4
    assert COST(8) == 24.0  # past the last point: the last segment's slope (2 per thread)
    assert COST(0) == 8.0  # before the first point: the first segment's slope
    falling = StepCost(((1, 10.0), (2, 2.0)))
    assert falling(3) == 0.0  # never negative
    single = StepCost(((2, 5.0),))
    assert (single(1), single(2), single(6)) == (5.0, 5.0, 15.0)  # flat up to the point, then in proportion
    assert DEFAULT_STEP_COST(1) == 39.8
    assert DEFAULT_STEP_COST(3) == pytest.approx((44.1 + 46.2) / 2)
    assert DEFAULT_STEP_COST(32) == pytest.approx(65.5 + (65.5 - 51.2) * 2)
    for table in ((), ((0, 1.0),), ((1, 1.0), (1, 2.0))):
        with pytest.raises(ValueError, match="distinct thread counts >= 1"):
            StepCost(table)


def test_critical_path(doc: ThreadGraph) -> None:
    figures = critical_path(doc, schedule(doc), COST)
    assert (figures.tokens, figures.steps, figures.critical_path) == (20, 12, 12)
    assert figures.theoretical_speedup == figures.max_speedup == figures.average_parallelism == 20 / 12
    assert figures.sequential_ms == 200.0
    assert figures.parallel_ms == 7 * 10.0 + 2 * 12.0 + 3 * 14.0
    assert figures.predicted_speedup == 200.0 / 136.0
    assert figures.cost_model == "test"

    capped = critical_path(doc, schedule(doc, ScheduleOptions(2)), COST)
    assert (capped.steps, capped.critical_path) == (14, 12)  # the critical path ignores the cap
    assert capped.theoretical_speedup == 20 / 14 and capped.max_speedup == 20 / 12
    assert capped.parallel_ms == 8 * 10.0 + 6 * 12.0

    sequential = critical_path(doc, schedule(doc, ScheduleOptions(1)), COST)
    assert sequential.theoretical_speedup == 1.0 and sequential.predicted_speedup == 1.0


def test_critical_path_without_tokens() -> None:
    empty = lower(parse(""), toks)
    figures = critical_path(empty, schedule(empty))
    assert (figures.tokens, figures.steps, figures.critical_path) == (0, 0, 0)
    assert figures.theoretical_speedup == figures.max_speedup == figures.predicted_speedup == 1.0
    assert figures.average_parallelism == 0.0


# ------------------------------------------------------------------ the pass manager


@dataclass(frozen=True)
class Boom:
    name: ClassVar[str] = "boom"
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: ThreadGraph, results: dict[str, object]) -> None:
        raise ValueError("it went off")


@dataclass(frozen=True)
class Breaker:
    """A misbehaving 'transformation' that leaves the IR broken."""

    name: ClassVar[str] = "breaker"
    requires: ClassVar[tuple[str, ...]] = ("positions",)

    def run(self, graph: ThreadGraph, results: dict[str, object]) -> None:
        graph.g.remove_edge(0, 1)


def test_manager_runs_the_standard_pipeline(doc: ThreadGraph) -> None:
    results = PassManager(standard_pipeline(plan=ScheduleOptions(2)), verify_each=True, max_depth=2).run(doc)
    assert list(results.results) == ["positions", "visibility", "resolution-order", "width", "critical-path"]
    assert isinstance(results["positions"], Positions) and isinstance(results["resolution-order"], Schedule)
    assert results["critical-path"].steps == 14 and results["width"].max_width == 2
    assert results.dumps == {}


def test_manager_requires_ordering() -> None:
    with pytest.raises(PassError) as error:
        PassManager([WidthPass(), ResolutionOrderPass(), CriticalPathPass()])
    assert str(error.value) == (
        "pass 'width' requires 'resolution-order', which must run before it "
        "(order: width, resolution-order, critical-path)"
    )
    with pytest.raises(PassError, match="pass 'critical-path' requires 'resolution-order'"):
        PassManager([PositionsPass(), CriticalPathPass()])


def test_manager_names_the_failing_pass(doc: ThreadGraph) -> None:
    manager = PassManager([PositionsPass(), VisibilityPass(), Boom(), ResolutionOrderPass()])
    with pytest.raises(PassError) as error:
        manager.run(doc)
    assert str(error.value) == "pass 'boom' failed (after positions, visibility): it went off"
    assert isinstance(error.value.__cause__, ValueError)
    with pytest.raises(PassError, match=r"^pass 'boom' failed: it went off$"):
        PassManager([Boom()]).run(doc)


def test_manager_verify_each(doc: ThreadGraph) -> None:
    with pytest.raises(PassError) as error:
        PassManager([PositionsPass(), Breaker(), VisibilityPass()], verify_each=True).run(doc)
    assert str(error.value) == (
        "IR invalid after pass 'breaker' (passes run: positions, breaker): "
        "%1 has no seq edge from its thread's previous node"
    )
    assert isinstance(error.value.__cause__, IRError)
    # Before the first pass, and with the depth limit.
    with pytest.raises(
        PassError,
        match=r"IR invalid before the first pass \(passes run: none\): "
        r"thread t2 is at depth 2; the limit is 1",
    ):
        PassManager([PositionsPass()], verify_each=True, max_depth=1).run(lower(parse(DOC), toks))
    # Without verify_each the broken graph goes through unnoticed.
    PassManager([PositionsPass(), Breaker(), VisibilityPass()]).run(lower(parse(DOC), toks))


def test_manager_dump_after(doc: ThreadGraph) -> None:
    manager = PassManager(
        standard_pipeline(PositionOptions(unit=1)), dump_after=("positions", "resolution-order", "width")
    )
    dumps = manager.run(doc).dumps
    assert set(dumps) == {"positions", "resolution-order", "width"}
    lines = dumps["positions"].splitlines()
    assert lines[4] == '%0 = t0 segment len=2 "A B "  ; pos [0, 2)'
    assert lines[4 + 10] == "%10 = t1 join t2 (end of body)"  # no tokens: no annotation
    assert lines[4 + 18] == '%18 = t0 segment len=2 " I J"  ; pos [13, 15)'
    assert '%6 = t2 segment len=2 "D E"  ; steps [7, 8]' in dumps["resolution-order"]
    assert "; " not in dumps["width"]  # a pass without annotations dumps the plain IR
    with pytest.raises(PassError, match="cannot dump after unknown pass 'layout'; passes: positions"):
        PassManager([PositionsPass()], dump_after=("layout",))


# ------------------------------------------------------------------ layout tensors

# p1 p2 [x1 x2] [y1] q1 <sync/> r1 r2: a promises 2 (exact), b promises 3 (one token more than it writes).
LAYOUT = (
    'p1 p2 <promise topic="a" tokens="2"/><async>x1 x2</async><promise topic="b" tokens="3"/>'
    "<async>y1</async> q1<sync/> r1 r2"
)
#   token  node  thread  what
#   0, 1   %0    t0      "p1 p2 "
#   2      %1    t0      promise a
#   3      %2    t1      <async>
#   4, 5   %3    t1      "x1 x2"
#   6      %4    t1      </async>
#   7      %5    t0      promise b
#   8      %6    t2      <async>
#   9      %7    t2      "y1"
#   10     %8    t2      </async>
#   11     %9    t0      " q1"
#   12     %10   t0      <sync/>
#          %11   t0      join t1, t2 (no tokens)
#   13, 14 %12   t0      " r1 r2"
VISIBLE = {
    0: [0],
    1: [0, 1],
    2: [0, 1, 2],
    3: [0, 1, 2, 3],
    4: [0, 1, 2, 3, 4],
    5: [0, 1, 2, 3, 4, 5],
    6: [0, 1, 2, 3, 4, 5, 6],
    7: [0, 1, 2, 7],  # promise b: not t1's block
    8: [0, 1, 2, 7, 8],
    9: [0, 1, 2, 7, 8, 9],
    10: [0, 1, 2, 7, 8, 9, 10],  # t2: neither t1 nor what follows b
    11: [0, 1, 2, 7, 11],
    12: [0, 1, 2, 7, 11, 12],  # the <sync/> tag's own token does not see the children
    13: list(range(14)),
    14: list(range(15)),  # after the join: everything
}


@pytest.fixture
def layout_graph() -> ThreadGraph:
    return lower(parse(LAYOUT), toks)


def test_layout_mask_rows(layout_graph: ThreadGraph) -> None:
    layout = training_layout(layout_graph, PositionOptions(unit=1))
    assert layout.mask.dtype == torch.bool and layout.mask.shape == (15, 15)
    for i, visible in VISIBLE.items():
        assert torch.nonzero(layout.mask[i]).flatten().tolist() == visible, f"row {i}"
    assert layout.node_ids.tolist() == [0, 0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 12, 12]
    assert layout.thread_ids.tolist() == [0, 0, 0, 1, 1, 1, 1, 0, 2, 2, 2, 0, 0, 0, 0]


@pytest.mark.parametrize(
    ("options", "positions"),
    [
        # a reserves 2 tags + 2 (exact); b reserves 2 + 3, one more than it writes: q1 at 13, not 11.
        (PositionOptions(unit=1), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 13, 14, 15, 16]),
        (PositionOptions(Policy.SEQUENTIAL), list(range(15))),
        (PositionOptions(Policy.RESTART), [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 4, 5, 6, 7]),
        (PositionOptions(Policy.LOCKSTEP), [0, 1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 4, 5, 7, 8]),
    ],
    ids=["predicted", "sequential", "restart", "lockstep"],
)
def test_layout_positions(layout_graph: ThreadGraph, options: PositionOptions, positions: list[int]) -> None:
    layout = training_layout(layout_graph, options)
    assert layout.position_ids.dtype == torch.long
    assert layout.position_ids.tolist() == positions
    # The mask does not depend on the policy.
    assert torch.equal(layout.mask, training_layout(layout_graph).mask)


def test_layout_takes_computed_positions(layout_graph: ThreadGraph) -> None:
    positions = assign_positions(layout_graph, PositionOptions(Policy.SEQUENTIAL))
    layout = training_layout(layout_graph, positions)
    assert layout.position_ids.tolist() == list(range(15))
    assert torch.equal(layout.mask, training_layout(layout_graph).mask)


def ancestor_mask(graph: ThreadGraph, node_ids: torch.Tensor) -> torch.Tensor:
    """The IR's visibility relation as a token mask, computed independently of ``Views``: a token sees the
    tokens of its node's ancestors, and those of its own node up to itself."""
    vis = visibility(graph)
    n = node_ids.numel()
    out = torch.zeros((n, n), dtype=torch.bool)
    for i in range(n):
        for j in range(i + 1):
            a, b = int(node_ids[i]), int(node_ids[j])
            out[i, j] = a == b or vis.sees(a, b)
    return out


def test_the_layout_mask_is_the_ir_visibility_relation(layout_graph: ThreadGraph) -> None:
    layout = training_layout(layout_graph)
    assert torch.equal(layout.mask, ancestor_mask(layout_graph, layout.node_ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_additive_mask(layout_graph: ThreadGraph, dtype: torch.dtype) -> None:
    layout = training_layout(layout_graph)
    additive = layout.additive_mask(dtype)
    assert additive.dtype == dtype and additive.shape == (1, 1, 15, 15)
    blocked = torch.finfo(dtype).min
    assert torch.equal(additive[0, 0] == 0, layout.mask)
    assert torch.all(additive[0, 0][~layout.mask] == blocked)
    assert additive[0, 0, 12, 3].item() == blocked and additive[0, 0, 13, 3].item() == 0.0
    assert layout.additive_mask().dtype == torch.float32


def test_layout_of_an_empty_document() -> None:
    layout = training_layout(lower(parse(""), words))
    assert layout.mask.shape == (0, 0) and layout.position_ids.shape == (0,)
    assert layout.additive_mask().shape == (1, 1, 0, 0)
    only_space = training_layout(lower(parse("   "), words))  # one node of no tokens
    assert only_space.mask.shape == (0, 0)


def test_layout_refuses_positions_past_int64() -> None:
    """tokens=".." has no upper bound (spec §3.1); a position id does (int64)."""
    last = 2**63 - 1
    doc = lambda n: lower(parse(f'<promise topic="t" tokens="{n}"/><async>a</async>b'), toks)  # noqa: E731
    huge = "9" * 5000
    # Under the predicted policy (unit 1), "b" sits after the promise (1) and the reservation (2 tags + n).
    fits = training_layout(doc(last - 3), PositionOptions(unit=1))
    assert fits.position_ids[-1].item() == last
    with pytest.raises(ValueError, match="positions go past 2\\*\\*63"):
        training_layout(doc(last - 2), PositionOptions(unit=1))
    with pytest.raises(ValueError, match="positions go past 2\\*\\*63"):
        training_layout(doc(huge))
    # Policies without reservations are unaffected.
    sequential = training_layout(doc(huge), PositionOptions(Policy.SEQUENTIAL))
    assert sequential.position_ids.tolist() == [0, 1, 2, 3, 4]


def test_step_cost_with_context(doc: ThreadGraph) -> None:
    cost = StepCost(((1, 10.0), (2, 12.0), (4, 16.0)), "test", ((1, 1.0), (4, 4.0)))  # ms per 1000 cached
    assert cost(1) == 10.0 and cost(1, 1000) == 11.0 and cost(2, 500) == 12.0 + 2.0 * 0.5
    figures = critical_path(doc, schedule(doc), cost, context=1000)
    plan = schedule(doc)
    placed, parallel = 1000, 0.0
    for decoding in plan.decoding:  # every step reads what the steps before it placed
        parallel += cost(len(decoding), placed)
        placed += len(decoding)
    assert figures.parallel_ms == pytest.approx(parallel)
    assert figures.sequential_ms == pytest.approx(sum(10.0 + (1000 + i) / 1000 for i in range(20)))
    assert figures.predicted_speedup == pytest.approx(figures.sequential_ms / parallel)
    assert critical_path(doc, plan, COST, context=1000).parallel_ms == critical_path(doc, plan, COST).parallel_ms
    with pytest.raises(ValueError, match="distinct thread counts"):
        StepCost(((1, 1.0),), "", ((0, 1.0),))
