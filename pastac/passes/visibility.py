"""visibility: which tokens each token may attend to.

A token sees the tokens before it in its own node and every token of its
node's ancestors in the graph.  So a child sees its parent's context up to and
including its promise but not its siblings' content, and a parent sees a
child's content only after the join that waits for it (a <sync/> tag's own
tokens are written before the join, so they do not).

The relation is kept in linear size, never as a set per node (a document of n
promises would need n² entries): each node's thread and index in it, and per
thread its parent, the index of its fork in the parent and of the Join that
joins it.  Node a = (thread t, index i) sees node b = (thread u, index k) iff,
with w the lowest common ancestor of t and u in the thread tree:

- b is in w (u = w): k < i if w = t, else k <= the index in w of the fork of
  the child of w on t's side (a thread sees its ancestors up to its promise);
- b is below w, in the subtree of w's child c: c is joined in w at or before
  i if w = t, else before the fork of the child of w on t's side (a joined
  child's whole subtree is seen: a child ends only after joining its own).

``sees`` climbs from both threads to w: O(depth).  What each node sees is also
its direct predecessors and what they see, which is how ``annotate`` prints it
(linear in the graph's edges).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from pastac.ir.graph import Join, ThreadGraph

_NONE = -1  # no parent, no fork, not joined


@dataclass(frozen=True)
class Visibility:
    """What each node may attend to, in linear size (see the module docstring)."""

    thread: tuple[int, ...]  # per node id: its thread
    index: tuple[int, ...]  # per node id: its index in its thread
    parent: tuple[int, ...]  # per thread id: its parent (-1 for the main thread)
    depth: tuple[int, ...]  # per thread id
    fork_index: tuple[int, ...]  # per thread id: the index of its fork in its parent (-1 for the main thread)
    join_index: tuple[int, ...]  # per thread id: the index of the Join that joins it in its parent (-1: none yet)
    inherits: tuple[tuple[int, ...], ...]  # per node id: its direct predecessors, whose view it extends

    def sees(self, node: int, other: int) -> bool:
        """Whether tokens of ``node`` may attend to (all) tokens of ``other`` != node."""
        if node == other:
            return False
        # Climb from both threads to their lowest common ancestor w.  On node's side, the thread reached
        # has its nodes seen below index ``before`` and its Joins below ``joined``; on other's side, ``child``
        # is the child of the thread reached on the way up (-1 while still in other's own thread).
        x = self.thread[node]
        before, joined = self.index[node], self.index[node] + 1  # a Join sees the children it joins
        y, child = self.thread[other], _NONE
        parent, depth, fork = self.parent, self.depth, self.fork_index
        while depth[y] > depth[x]:
            y, child = parent[y], y
        while depth[x] > depth[y]:
            before = joined = fork[x] + 1  # up to the fork, included (a Join never sits at a fork's index)
            x = parent[x]
        while x != y:
            before = joined = fork[x] + 1
            x = parent[x]
            y, child = parent[y], y
        if child == _NONE:
            return self.index[other] < before
        at = self.join_index[child]
        return at != _NONE and at < joined

    def seen(self, node: int) -> Iterator[int]:
        """Every node whose tokens ``node`` sees, in no particular order (the closure of ``inherits``;
        costs the size of the answer, which may be most of the graph)."""
        stack, done = list(self.inherits[node]), set(self.inherits[node])
        while stack:
            for pred in self.inherits[stack.pop()]:
                if pred not in done:
                    done.add(pred)
                    stack.append(pred)
        return iter(done)


def visibility(graph: ThreadGraph) -> Visibility:
    """The visibility relation of ``graph``, in time and size linear in its nodes and edges."""
    n, threads = len(graph), len(graph.threads)
    thread, index = [0] * n, [0] * n
    parent, depth = [_NONE] * threads, [0] * threads
    fork_index, join_index = [_NONE] * threads, [_NONE] * threads
    for t, info in graph.threads.items():
        parent[t] = _NONE if info.parent is None else info.parent
        depth[t] = info.depth
        for i, node in enumerate(graph.thread_nodes(t)):
            thread[node], index[node] = t, i
    for t, info in graph.threads.items():
        if info.fork is not None:
            fork_index[t] = index[info.fork]
    for node, op in graph.ops():
        if isinstance(op, Join):
            for child in op.children:
                join_index[child] = index[node]
    pred = graph.g.pred
    inherits = tuple(tuple(sorted(pred[node])) for node in range(n))
    return Visibility(
        tuple(thread), tuple(index), tuple(parent), tuple(depth), tuple(fork_index), tuple(join_index), inherits
    )


@dataclass(frozen=True)
class VisibilityPass:
    """The ``visibility`` pass (an analysis: the graph is not changed)."""

    name: ClassVar[str] = "visibility"
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: ThreadGraph, results: dict[str, object]) -> Visibility:
        """The visibility relation of ``graph``."""
        return visibility(graph)

    @staticmethod
    def annotate(result: Visibility) -> dict[int, str]:
        """A note per node: ``sees nothing``, or ``sees ..%p`` for each direct predecessor ``%p``: that node
        and everything it sees (so each line is short, and the dump stays linear in the graph's size)."""
        return {
            n: "sees " + (", ".join(f"..%{p}" for p in preds) or "nothing") for n, preds in enumerate(result.inherits)
        }
