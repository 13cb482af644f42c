"""``Views``, the one owner of visibility: place, fork and join keep the slot rows and the thread sets together."""

from __future__ import annotations

import torch

from pastac.backend.visibility import Views, pack_bits, unpack_bits


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


def test_bits_pack_and_unpack_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    for n in (1, 31, 32, 33, 64, 100):
        rows = torch.rand((3, n), generator=gen) < 0.5
        words = pack_bits(rows)
        assert words.dtype == torch.int32 and words.shape == (3, (n + 31) // 32)
        assert torch.equal(unpack_bits(words, n), rows)
    top = torch.zeros((1, 32), dtype=torch.bool)
    top[0, 31] = True  # the sign bit of the word
    assert pack_bits(top).item() == -(2**31) and unpack_bits(pack_bits(top), 32)[0, 31]


def test_the_bitset_is_the_rows_packed() -> None:
    views = Views(40, threads=2)
    views.place(0, 0, 37)  # crosses a word
    views.fork(0, 1, 33)  # cut inside the second word
    views.place(1, 37, 1)
    views.place(0, 38, 2)
    assert views.slots(1) == [*range(33), 37]
    assert torch.equal(
        views.bits[:2], pack_bits(torch.stack([views.row(0, views.capacity), views.row(1, views.capacity)]))
    )
    views.join(0, 1)
    assert views.slots(0) == list(range(40))
