"""A small pass manager: a fixed, ordered list of passes over one graph.

Each pass names the passes whose results it ``requires``; they must come
earlier in the list.  With ``verify_each`` the IR is verified before the first
pass and after each one (tests turn it on), and a failure names the pass and
the passes that ran before it.  ``dump_after`` returns the IR dump annotated
with a named pass's result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pastac.ir.graph import ThreadGraph, verify
from pastac.ir.printer import dump


class Pass(Protocol):
    """A pass: its ``name``, the passes whose results it ``requires``, and ``run``; optionally a static
    ``annotate(result)`` giving notes per node for ``dump_after``."""

    name: ClassVar[str]
    requires: ClassVar[tuple[str, ...]]

    def run(self, graph: ThreadGraph, results: dict[str, object]) -> Any:
        """The pass's result over ``graph``; ``results``: those of the passes before it, by name."""


class PassError(RuntimeError):
    """A pipeline that cannot run (a pass before one it requires, an unknown ``dump_after``), a pass that
    failed, or the IR found invalid between passes; the message names the pass and those run before it."""


@dataclass(frozen=True)
class PassResults:
    """Each pass's result by pass name (``results[name]``), and the annotated dumps ``dump_after`` asked for."""

    results: dict[str, Any]
    dumps: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.results[name]


@dataclass(frozen=True)
class PassManager:
    """The passes, in order; ``PassError`` when built if a pass requires one that does not come before it,
    or ``dump_after`` names an unknown pass."""

    passes: Sequence[Pass]
    verify_each: bool = False
    max_depth: int | None = None
    dump_after: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        seen: list[str] = []
        for p in self.passes:
            missing = [r for r in p.requires if r not in seen]
            if missing:
                raise PassError(
                    f"pass '{p.name}' requires {', '.join(repr(m) for m in missing)}, which must "
                    f"run before it (order: {', '.join(x.name for x in self.passes)})"
                )
            seen.append(p.name)
        unknown = [d for d in self.dump_after if d not in seen]
        if unknown:
            raise PassError(f"cannot dump after unknown pass {unknown[0]!r}; passes: {', '.join(seen)}")

    def run(self, graph: ThreadGraph) -> PassResults:
        """Run every pass over ``graph``, in order; ``PassError`` naming the pass that failed and those before it."""
        results: dict[str, Any] = {}
        dumps: dict[str, str] = {}
        ran: list[str] = []
        self._verify(graph, "before the first pass", ran)
        for p in self.passes:
            try:
                results[p.name] = p.run(graph, results)
            except Exception as error:
                after = f" (after {', '.join(ran)})" if ran else ""
                raise PassError(f"pass '{p.name}' failed{after}: {error}") from error
            ran.append(p.name)
            self._verify(graph, f"after pass '{p.name}'", ran)
            if p.name in self.dump_after:
                annotate: Callable[[Any], dict[int, str]] | None = getattr(p, "annotate", None)
                dumps[p.name] = dump(graph, annotate(results[p.name]) if annotate else None)
        return PassResults(results, dumps)

    def _verify(self, graph: ThreadGraph, when: str, ran: list[str]) -> None:
        if not self.verify_each:
            return
        try:
            verify(graph, max_depth=self.max_depth)
        except Exception as error:
            raise PassError(f"IR invalid {when} (passes run: {', '.join(ran) or 'none'}): {error}") from error
