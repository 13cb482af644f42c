"""Which promise each <async> block fulfils, and what each <sync/> joins.

This is the one implementation of the pairing rule (spec §4): within one body,
an <async> block fulfils the earliest unfulfilled, unjoined promise before it;
a <sync/> joins every promise before it; the end of the body joins the rest.
The checker, the renderer and the IR all read pairings from here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from pastac.grammar.ast import Async, Node, Promise, Sync


@dataclass(frozen=True)
class Binding:
    """Indices into one body.

    ``fulfils``: async index -> promise index.  ``orphans``: asyncs with no
    promise to fulfil.  ``unfulfilled``: (promise index, index of the joining
    sync or None for the end of the body).  ``empty_syncs``: syncs that join
    no promise.  ``joined_by``: promise index -> joining sync index or None.
    """

    fulfils: dict[int, int]
    orphans: tuple[int, ...]
    unfulfilled: tuple[tuple[int, int | None], ...]
    empty_syncs: tuple[int, ...]
    joined_by: dict[int, int | None]

    @property
    def fulfilled_by(self) -> dict[int, int]:
        """Promise index -> the index of the async that fulfils it."""
        return {p: a for a, p in self.fulfils.items()}


def bind(body: tuple[Node, ...]) -> Binding:
    """The pairings of one body by the rule of spec §4 (its nested bodies are bound separately)."""
    fulfils: dict[int, int] = {}
    orphans: list[int] = []
    unfulfilled: list[tuple[int, int | None]] = []
    empty_syncs: list[int] = []
    joined_by: dict[int, int | None] = {}
    pending: deque[int] = deque()  # promises not yet fulfilled, oldest first (popped from the left)
    round_: list[int] = []  # promises since the last sync

    def join(at: int | None) -> None:
        unfulfilled.extend((p, at) for p in pending)
        joined_by.update((p, at) for p in round_)
        pending.clear()
        round_.clear()

    for i, node in enumerate(body):
        match node:
            case Promise():
                pending.append(i)
                round_.append(i)
            case Async():
                if pending:
                    fulfils[i] = pending.popleft()
                else:
                    orphans.append(i)
            case Sync():
                if not round_:
                    empty_syncs.append(i)
                join(i)
            case _:
                pass
    join(None)
    return Binding(fulfils, tuple(orphans), tuple(unfulfilled), tuple(empty_syncs), joined_by)
