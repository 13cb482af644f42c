"""positions: a position id for every token, under a pluggable policy.

Each node's tokens take consecutive positions from the node's start.  A child
thread always starts right after its promise (its Fork).  Policies differ in
where the parent goes on after a promise, and after a join:

- ``sequential``: the positions of the stitched text (each <async> block moved
  right after its promise, tags kept): what one thread writing the answer in
  order would use.
- ``oracle``: the parent skips the child's real length (its whole subtree).
  Equal to ``sequential`` by construction; computed independently, as a check.
- ``predicted``: the parent skips ``<async>`` + ``tokens`` x ``unit`` +
  ``</async>`` (``missing`` stands in for an absent ``tokens``).  A child that
  overruns its reservation reuses positions the parent also uses; the
  visibility relation keeps that correct.
- ``restart``: no reservation: the parent goes on right after its promise, as
  when each part is a separate request that re-encodes its prefix.
- ``lockstep``: no reservation, and after a join the parent goes on after the
  furthest position any joined child reached (threads advance together).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar, assert_never

from pastac.ir.graph import MAIN, Close, Fork, Join, Open, Segment, SyncTag, ThreadGraph


class Policy(StrEnum):
    """Where a parent goes on after a promise and after a join (see the module docstring)."""

    PREDICTED = "predicted"
    ORACLE = "oracle"
    SEQUENTIAL = "sequential"
    RESTART = "restart"
    LOCKSTEP = "lockstep"


@dataclass(frozen=True)
class PositionOptions:
    """The policy and its settings; ``unit`` and ``missing`` must be >= 0 (else ``ValueError``)."""

    policy: Policy = Policy.PREDICTED
    unit: int = 10  # tokens="N" predicts N x unit tokens
    missing: int = 0  # predicted length (in units) of a promise without tokens=".."

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy(self.policy))
        if self.unit < 0 or self.missing < 0:
            raise ValueError("unit and missing must be >= 0")


@dataclass(frozen=True)
class Positions:
    """Per node id, the position of its first token and its length."""

    policy: Policy
    start: tuple[int, ...]  # per node id: the position of its first token
    length: tuple[int, ...]  # per node id

    def of(self, node: int) -> range:
        """The positions of ``node``'s tokens."""
        return range(self.start[node], self.start[node] + self.length[node])


def subtree_lengths(graph: ThreadGraph) -> dict[int, int]:
    """Tokens of each thread and all its descendants."""
    total = {t: 0 for t in graph.threads}
    for _, op in graph.ops():
        total[op.thread] += op.length
    for thread in sorted(graph.threads, reverse=True):  # a child's id is greater than its parent's
        parent = graph.threads[thread].parent
        if parent is not None:
            total[parent] += total[thread]
    return total


def subtree_length(graph: ThreadGraph, thread: int) -> int:
    """Tokens of a thread and all its descendants."""
    return subtree_lengths(graph)[thread]


# The walks below keep an explicit stack of threads, not recursion: lenient documents may nest to any depth.


def _sequential(graph: ThreadGraph) -> list[int]:
    start = [0] * len(graph)
    pos = 0
    stack = [iter(graph.thread_nodes(MAIN))]
    while stack:
        node = next(stack[-1], None)
        if node is None:
            stack.pop()
            continue
        op = graph.op(node)
        start[node] = pos
        pos += op.length
        if isinstance(op, Fork):
            stack.append(iter(graph.thread_nodes(op.child)))
    return start


@dataclass
class _Walk:
    """A thread being walked: its nodes left, the position reached, where its joined children ended."""

    thread: int
    nodes: Iterator[int]
    pos: int
    ends: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PositionRule:
    """A reserving policy's arithmetic, shared by this pass (over a finished graph) and the runtime
    (while threads are decoded): how far a parent skips after a promise, and where it goes on after
    a join.  ``sequential`` is not a reservation and ``oracle`` needs the child's real length, so the
    runtime, which knows neither in advance, uses ``predicted``, ``restart`` or ``lockstep``."""

    options: PositionOptions

    def reservation(self, predicted: int | None, tag_tokens: int, real: int | None = None) -> int:
        """Positions a parent skips after a promise predicting ``predicted`` units, whose child's
        <async> and </async> take ``tag_tokens`` tokens; ``real``: the child's whole length (oracle)."""
        policy = self.options.policy
        match policy:
            case Policy.ORACLE:
                if real is None:
                    raise ValueError("the oracle policy needs the child's real length")
                return real
            case Policy.PREDICTED:
                units = predicted if predicted is not None else self.options.missing
                return tag_tokens + units * self.options.unit
            case Policy.RESTART | Policy.LOCKSTEP:
                return 0
            case Policy.SEQUENTIAL:
                raise ValueError("sequential positions are not reservations")
            case _:
                assert_never(policy)

    def after_join(self, position: int, child_ends: Iterable[int]) -> int:
        """Where a parent at ``position`` goes on after joining children that ended at ``child_ends``."""
        if self.options.policy is Policy.LOCKSTEP:
            return max([position, *child_ends])
        return position


def _reserving(graph: ThreadGraph, options: PositionOptions) -> list[int]:
    start = [0] * len(graph)
    rule = PositionRule(options)
    subtree = subtree_lengths(graph) if options.policy is Policy.ORACLE else {}

    def reservation(fork: Fork) -> int:
        tags = sum(graph.op(n).length for n in graph.thread_nodes(fork.child) if isinstance(graph.op(n), Open | Close))
        return rule.reservation(fork.predicted, tags, subtree.get(fork.child))

    stack = [_Walk(MAIN, iter(graph.thread_nodes(MAIN)), 0)]
    while stack:
        walk = stack[-1]
        node = next(walk.nodes, None)
        if node is None:  # the thread is done: its parent goes on past the reservation
            stack.pop()
            fork = graph.threads[walk.thread].fork
            if stack and fork is not None:
                fork_op = graph.op(fork)
                assert isinstance(fork_op, Fork)
                stack[-1].ends[walk.thread] = walk.pos
                stack[-1].pos += reservation(fork_op)
            continue
        op = graph.op(node)
        start[node] = walk.pos
        walk.pos += op.length
        match op:
            case Fork(child=child):  # the child's positions come right after its promise
                stack.append(_Walk(child, iter(graph.thread_nodes(child)), walk.pos))
            case Join(children=children):
                walk.pos = rule.after_join(walk.pos, (walk.ends[c] for c in children))
            case Segment() | Open() | Close() | SyncTag():
                pass
            case _:
                assert_never(op)
    return start


def assign_positions(graph: ThreadGraph, options: PositionOptions = PositionOptions()) -> Positions:
    """A position for every token of ``graph`` under the policy of ``options``."""
    start = _sequential(graph) if options.policy is Policy.SEQUENTIAL else _reserving(graph, options)
    return Positions(options.policy, tuple(start), tuple(op.length for _, op in graph.ops()))


@dataclass(frozen=True)
class PositionsPass:
    """The ``positions`` pass (an analysis: the graph is not changed)."""

    options: PositionOptions = PositionOptions()
    name: ClassVar[str] = "positions"
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: ThreadGraph, results: dict[str, object]) -> Positions:
        """The positions of ``graph``'s tokens under this pass's options."""
        return assign_positions(graph, self.options)

    @staticmethod
    def annotate(result: Positions) -> dict[int, str]:
        """A note per node with tokens: the range ``[start, end)`` of its positions."""
        return {
            n: f"pos [{s}, {s + length})"
            for n, (s, length) in enumerate(zip(result.start, result.length, strict=True))
            if length
        }
