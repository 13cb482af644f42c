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
for the training mask.  The runners, the attention kernels, the repetition
penalty and the sibling n-gram ban read it; nothing else keeps a copy.

The rows live on the run's device as a *bitset*: an int32 tensor
``[threads, words]``, slot ``j`` of thread ``r`` being bit ``j % 32`` of word
``j // 32``.  Place sets bits, fork copies the parent's words up to the
promise (the last one cut at it), join ORs the child's words into the
parent's: every change is in place, a few words wide.  The branched attention
kernels (``pastac.backend.branched``) read the words as they are, so a step
never builds a dense ``[queries, slots]`` float mask for them; ``mask()``
unpacks a bool mask for the attention that takes one (sdpa).  The tensor grows
(one copy) when a run needs more slots or threads than planned.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

WORD = 32  # slots per word of a row's bitset


def words_for(slots: int) -> int:
    """The int32 words a row of ``slots`` slots takes."""
    return (slots + WORD - 1) // WORD


def _signed(word: int) -> int:
    """An unsigned 32-bit value as the int32 that holds the same bits."""
    return word - (1 << 32) if word >= 1 << 31 else word


def _span(first: int, count: int) -> list[int]:
    """The int32 words whose set bits are slots ``first .. first + count - 1``, from word ``first // 32`` on."""
    end = first + count
    words = []
    for w in range(first // WORD, (end - 1) // WORD + 1):
        lo, hi = max(first, w * WORD) - w * WORD, min(end, (w + 1) * WORD) - w * WORD
        words.append(_signed(((1 << hi) - 1) ^ ((1 << lo) - 1)))
    return words


def pack_bits(rows: torch.Tensor) -> torch.Tensor:
    """int32 ``[R, ceil(N / 32)]``: the bitset of the bool ``rows`` ``[R, N]`` (slot ``j``: bit ``j % 32`` of
    word ``j // 32``)."""
    r, n = rows.shape
    padded = torch.zeros((r, words_for(n) * WORD), dtype=torch.int64, device=rows.device)
    padded[:, :n] = rows
    shifts = torch.arange(WORD, dtype=torch.int64, device=rows.device)
    words = (padded.view(r, -1, WORD) << shifts).sum(-1)  # bits are distinct: the sum is the OR
    return (words - ((words >> 31) << 32)).to(torch.int32)  # the unsigned value as int32


_BIT_MASKS: dict[torch.device, torch.Tensor] = {}  # per device: int32 [32], word j holding bit j only


def _bit_masks(device: torch.device) -> torch.Tensor:
    masks = _BIT_MASKS.get(device)
    if masks is None:
        masks = _BIT_MASKS[device] = torch.tensor([_signed(1 << j) for j in range(WORD)], dtype=torch.int32).to(device)
    return masks


def unpack_bits(words: torch.Tensor, n: int) -> torch.Tensor:
    """bool ``[R, n]``: the first ``n`` slots of the bitset ``words`` ``[R, W]`` (``W >= ceil(n / 32)``)."""
    need = words_for(n)
    bits = torch.bitwise_and(words[:, :need, None], _bit_masks(words.device)) != 0
    return bits.view(words.shape[0], need * WORD)[:, :n]


class Views:
    """Per thread: the cache slots it may attend to (a row of a bitset) and the threads whose text it sees."""

    def __init__(self, capacity: int, *, threads: int = 8, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.bits = torch.zeros((max(threads, 1), words_for(max(capacity, 1))), dtype=torch.int32, device=self.device)
        self._seen: dict[int, set[int]] = {}
        self.growths = 0

    @property
    def capacity(self) -> int:
        """Slots a row covers now (more are added as they are placed)."""
        return self.bits.shape[1] * WORD

    @property
    def threads(self) -> int:
        """Threads the bitset has rows for now."""
        return self.bits.shape[0]

    def reserve(self, slots: int, threads: int) -> None:
        """Room for ``slots`` slots and ``threads`` threads (grows by at least half, one copy)."""
        rows, words = self.bits.shape
        need = words_for(slots)
        if need <= words and threads <= rows:
            return
        new_rows = max(threads, rows + rows // 2) if threads > rows else rows
        new_words = max(need, words + words // 2) if need > words else words
        grown = torch.zeros((new_rows, new_words), dtype=torch.int32, device=self.device)
        grown[:rows, :words] = self.bits
        self.bits = grown
        self.growths += 1

    # -- the three changes ---------------------------------------------------------------------------------

    def place(self, thread: int, first: int, count: int) -> None:
        """``thread`` writes its own tokens into slots ``first .. first + count - 1``."""
        self.reserve(first + count, thread + 1)
        self._seen.setdefault(thread, set())
        if count <= 0:
            return
        span = _span(first, count)
        w = first // WORD
        if len(span) == 1:
            self.bits[thread, w] |= span[0]
        else:
            words = torch.tensor(span, dtype=torch.int32)
            self.bits[thread, w : w + len(span)] |= words.to(self.device, non_blocking=True)

    def fork(self, parent: int, child: int, upto: int) -> None:
        """``child`` starts seeing what ``parent`` sees in the slots before ``upto``, and the parent's threads."""
        self.reserve(upto, max(parent, child) + 1)
        whole, rest = divmod(upto, WORD)
        self.bits[child] = 0
        self.bits[child, :whole] = self.bits[parent, :whole]
        if rest:
            self.bits[child, whole] = self.bits[parent, whole] & _signed((1 << rest) - 1)
        self._seen[child] = self._seen.setdefault(parent, set()) | {parent}

    def join(self, parent: int, child: int) -> None:
        """``parent`` now sees all that ``child`` sees, and the child."""
        self.bits[parent] |= self.bits[child]
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
        return unpack_bits(self.bits[threads, : words_for(used)], used) & (order[None, :] <= slots[:, None])

    def row(self, thread: int, used: int) -> torch.Tensor:
        """bool ``[used]``: which of the first ``used`` slots ``thread`` may attend to."""
        return unpack_bits(self.bits[thread : thread + 1], used)[0]

    def slots(self, thread: int) -> list[int]:
        """The slots ``thread`` may attend to now, in order."""
        return self.row(thread, self.capacity).nonzero().flatten().tolist()
