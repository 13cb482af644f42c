"""Repeats across threads that cannot see each other: what a thread may not copy from its siblings.

Sibling threads decode side by side without seeing each other's text, so nothing in their context
keeps them from writing the same sentence twice (one thread writing the whole answer sees the parts
before the one it writes).  ``UnseenNgrams`` keeps each thread's tokens and, for every run of ``n - 1``
of them, the tokens that followed; a thread's next token is *banned* when, after its own last ``n - 1``
tokens, it would repeat an ``n``-gram that a thread it cannot see has written (Hugging Face's
``no_repeat_ngram_size``, across threads instead of within one).  The tags' tokens and the special ones
(``exempt``) are never banned, and no n-gram that holds one counts: every child writes the same
``</async>``, and every child opens on the same force-fed ``<async>``, so its first words may be those a
sibling began with (each list item's bold heading, say).

The scheduler keeps one per run (a thread sees its ancestors and the children it has joined, with theirs)
and puts each sampled thread's bans in the step's plan (``StepPlan.banned``); the runners take them out of
what the thread may write, unless that would leave it nothing (``pastac.runtime.guard.allowed_rows``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

DEFAULT_SIBLING_NGRAM = 4  # SamplingOptions.sibling_ngram, pastac run/eval --sibling-ngram


class UnseenNgrams:
    """Every thread's tokens and, per run of ``n - 1`` of them, the tokens that followed (runs and followers
    holding an ``exempt`` token left out); raises ``ValueError`` for ``n < 2``."""

    def __init__(self, n: int, exempt: Iterable[int] = ()) -> None:
        if n < 2:
            raise ValueError(f"an n-gram to ban needs n >= 2, not {n}")
        self.n = n
        self.exempt = frozenset(exempt)
        self.sequences: dict[int, list[int]] = {}  # per thread: its tokens, in the order it wrote them
        self.following: dict[int, dict[tuple[int, ...], set[int]]] = {}  # per thread: (n-1)-gram -> next tokens

    def add(self, thread: int, tokens: Sequence[int]) -> None:
        """``tokens`` placed by ``thread``, after those it placed before."""
        sequence = self.sequences.setdefault(thread, [])
        table = self.following.setdefault(thread, {})
        k = self.n - 1
        for token in tokens:
            if len(sequence) >= k and token not in self.exempt:
                key = tuple(sequence[-k:])
                if self.exempt.isdisjoint(key):
                    table.setdefault(key, set()).add(token)
            sequence.append(token)

    def banned(self, thread: int, unseen: Iterable[int]) -> set[int]:
        """The tokens ``thread`` may not write next: those that, after its last ``n - 1`` tokens, followed
        the same ``n - 1`` tokens in one of the ``unseen`` threads; none after an exempt token, none exempt."""
        sequence = self.sequences.get(thread, ())
        if len(sequence) < self.n - 1:
            return set()
        key = tuple(sequence[len(sequence) - self.n + 1 :])
        out: set[int] = set()
        for other in unseen:
            if other != thread:
                out |= self.following.get(other, {}).get(key, set())
        return out
