"""Who sees what while threads decode: the one owner of visibility.

Every thread of a run has a *row* over the cache slots (the slots its queries
may attend to) and a *set* of the threads whose text it sees.  Both change in
three ways only, and only through this class:

- ``place(thread, first, count)``: the thread writes its own new tokens into
  slots ``first .. first + count``; it sees them (its queries see its own
  earlier slots; within one step the runner adds causality by slot order);
- ``fork(parent, child, upto)``: a child starts from what its parent sees up
  to slot ``upto`` (its promise's last token included), and sees the parent
  and every thread the parent sees, but not its siblings;
- ``join(parent, child)``: at a sync (or a body's end) the parent also sees
  everything the child saw, and the child.

Rows only gain slots; a slot once written is never rewritten.  This is the
incremental form of the IR's visibility relation (a token sees the tokens of
its node's ancestors, ``pastac.passes.visibility``): the scheduler drives it
while decoding, in the order the interpreter meets promises, syncs and ends;
``pastac.passes.layout.training_layout`` drives it over an annotated document
for the training mask.  The runners, the repetition penalty and the sibling
n-gram ban read it; nothing else keeps a copy.

The rows live on the run's device as a bool tensor ``[threads, capacity]``
that grows (one copy) when a run needs more slots or threads than planned.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class Views:
    """Per thread: the cache slots it may attend to (a bool row) and the threads whose text it sees."""

    def __init__(self, capacity: int, *, threads: int = 8, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.rows = torch.zeros((max(threads, 1), max(capacity, 1)), dtype=torch.bool, device=self.device)
        self._seen: dict[int, set[int]] = {}
        self.growths = 0

    @property
    def capacity(self) -> int:
        """Slots a row covers now (more are added as they are placed)."""
        return self.rows.shape[1]

    def reserve(self, slots: int, threads: int) -> None:
        """Room for ``slots`` slots and ``threads`` threads (grows by at least half, one copy)."""
        rows, capacity = self.rows.shape
        if slots <= capacity and threads <= rows:
            return
        new_rows = max(threads, rows + rows // 2) if threads > rows else rows
        new_capacity = max(slots, capacity + capacity // 2) if slots > capacity else capacity
        grown = torch.zeros((new_rows, new_capacity), dtype=torch.bool, device=self.device)
        grown[:rows, :capacity] = self.rows
        self.rows = grown
        self.growths += 1

    # -- the three changes ---------------------------------------------------------------------------------

    def place(self, thread: int, first: int, count: int) -> None:
        """``thread`` writes its own tokens into slots ``first .. first + count - 1``."""
        self.reserve(first + count, thread + 1)
        self._seen.setdefault(thread, set())
        self.rows[thread, first : first + count] = True

    def fork(self, parent: int, child: int, upto: int) -> None:
        """``child`` starts seeing what ``parent`` sees in the slots before ``upto``, and the parent's threads."""
        self.reserve(upto, max(parent, child) + 1)
        self.rows[child] = False
        self.rows[child, :upto] = self.rows[parent, :upto]
        self._seen[child] = self._seen.setdefault(parent, set()) | {parent}

    def join(self, parent: int, child: int) -> None:
        """``parent`` now sees all that ``child`` sees, and the child."""
        self.rows[parent] |= self.rows[child]
        self._seen.setdefault(parent, set()).update(self._seen.get(child, set()) | {child})

    # -- reading ---------------------------------------------------------------------------------------------

    def sees(self, thread: int, other: int) -> bool:
        """Whether ``thread`` sees the text of ``other`` (an ancestor, or a child it has joined, with theirs)."""
        return other in self._seen.get(thread, ())

    def unseen(self, thread: int, threads: Iterable[int]) -> list[int]:
        """Those of ``threads`` whose text ``thread`` does not see (itself excluded)."""
        seen = self._seen.get(thread, set())
        return [t for t in threads if t != thread and t not in seen]

    def mask(self, threads: torch.Tensor, slots: torch.Tensor, used: int) -> torch.Tensor:
        """bool ``[Q, used]``: the slots each query may attend to, for queries of ``threads`` [Q] at ``slots``
        [Q] (on the rows' device): its thread's row, up to and including its own slot."""
        order = torch.arange(used, device=self.device)
        return self.rows[threads, :used] & (order[None, :] <= slots[:, None])

    def slots(self, thread: int) -> list[int]:
        """The slots ``thread`` may attend to now, in order."""
        return self.rows[thread].nonzero().flatten().tolist()
