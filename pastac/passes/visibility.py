"""visibility: which tokens each token may attend to.

A token sees the tokens before it in its own node and every token of its
node's ancestors in the graph.  So a child sees its parent's context up to and
including its promise but not its siblings' content, and a parent sees a
child's content only after the join that waits for it (a <sync/> tag's own
tokens are written before the join, so they do not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from pastac.ir.graph import ThreadGraph


@dataclass(frozen=True)
class Visibility:
    """Each node's ancestors: the nodes whose tokens all of its tokens may attend to."""

    ancestors: tuple[frozenset[int], ...]  # per node id

    def sees(self, node: int, other: int) -> bool:
        """Whether tokens of ``node`` may attend to (all) tokens of ``other`` != node."""
        return other in self.ancestors[node]


def ancestors(graph: ThreadGraph) -> Visibility:
    """Ancestor sets in id (topological) order; grows in step with the graph."""
    out: list[frozenset[int]] = []
    for node in range(len(graph)):
        acc: set[int] = set()
        for pred in graph.g.predecessors(node):
            acc |= out[pred]
            acc.add(pred)
        out.append(frozenset(acc))
    return Visibility(tuple(out))


@dataclass(frozen=True)
class VisibilityPass:
    """The ``visibility`` pass (an analysis: the graph is not changed)."""

    name: ClassVar[str] = "visibility"
    requires: ClassVar[tuple[str, ...]] = ()

    def run(self, graph: ThreadGraph, results: dict[str, object]) -> Visibility:
        """The ancestor set of every node of ``graph``."""
        return ancestors(graph)

    @staticmethod
    def annotate(result: Visibility) -> dict[int, str]:
        """A note per node: the nodes it sees, or "nothing"."""
        return {
            n: "sees " + (", ".join(f"%{a}" for a in sorted(anc)) or "nothing")
            for n, anc in enumerate(result.ancestors)
        }
