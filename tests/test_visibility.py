"""``Views``, the one owner of visibility: place, fork and join keep the slot rows and the thread sets together."""

from __future__ import annotations

import torch

from pastac.backend.visibility import Views


def rows_of(views: Views, thread: int) -> list[int]:
    return views.slots(thread)


def test_fork_place_join() -> None:
    views = Views(4, threads=1)
    views.place(0, 0, 3)  # the prompt and a promise
    views.fork(0, 1, 3)  # a child sees its parent up to and including the promise
    views.place(0, 3, 1)  # the parent goes on
    views.place(1, 4, 2)  # the child writes
    views.fork(0, 2, 4)  # a second child: its parent's text up to its promise, not its sibling's
    views.place(2, 6, 1)
    assert rows_of(views, 1) == [0, 1, 2, 4, 5]
    assert rows_of(views, 2) == [0, 1, 2, 3, 6]
    assert views.sees(1, 0) and views.sees(2, 0) and not views.sees(2, 1) and not views.sees(0, 1)
    assert views.unseen(2, [0, 1, 2]) == [1] and views.unseen(0, [0, 1, 2]) == [1, 2]
    views.join(0, 1)
    views.join(0, 2)
    assert rows_of(views, 0) == list(range(7))
    assert views.sees(0, 1) and views.sees(0, 2) and views.unseen(0, [0, 1, 2]) == []
    assert views.growths >= 1  # slots and threads beyond what it was made for


def test_a_join_passes_on_what_the_child_had_joined() -> None:
    views = Views(16)
    views.place(0, 0, 2)
    views.fork(0, 1, 2)
    views.place(1, 2, 2)
    views.fork(1, 2, 4)  # a grandchild
    views.place(2, 4, 2)
    views.join(1, 2)
    views.join(0, 1)
    assert rows_of(views, 0) == list(range(6)) and views.sees(0, 2)


def test_mask_adds_causality_within_a_step() -> None:
    views = Views(8)
    views.place(0, 0, 3)
    views.fork(0, 1, 2)
    views.place(0, 3, 2)  # this step: the main thread's two tokens and the child's one
    views.place(1, 5, 1)
    mask = views.mask(torch.tensor([0, 0, 1]), torch.tensor([3, 4, 5]), used=6)
    assert mask.tolist() == [
        [True, True, True, True, False, False],  # a query does not see the slot after its own
        [True, True, True, True, True, False],
        [True, True, False, False, False, True],  # the child: its parent's first two slots and its own
    ]
