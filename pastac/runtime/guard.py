"""Grammar-constrained decoding of tags: the tokens a thread may write next, so that its tags stay well formed.

A model that writes Pasta-Lang can still write a tag the runtime must recover from: an unterminated
``<promise``, a ``<sync/>`` with nothing to wait for, a ``</async>`` in the main thread.  The guard rules
those out at sampling time: for each sampled thread the scheduler gives the text its scanner holds back and
where the thread is (``TagContext``), and the guard returns the tokens whose text keeps every tag well formed
(``pastac.grammar.prefix.viable``).  Plain text is never constrained: a thread that holds nothing back may
write any token but one that would start a tag it may not write (or that tag's name as text, as in
``</async</async``, or a tag's look-alike: ``</promise>``, ``<promis>``, or ``</list>`` where the thread has
opened no markup; ``pastac.grammar.prefix.lookalike``); only inside a tag is the choice narrowed
to the tag's canonical form, with a topic of at most ``TOPIC_LIMIT`` characters.  The end-of-sequence
token is out inside a tag and while a block is open (a child ends with its ``</async>``).  Masks are
computed once per state and cached, so the cost is a dictionary lookup per sampled thread (a vocabulary's
worth of checks the first time a state is met).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from pastac.grammar.prefix import TOPIC_LIMIT, TagContext, committed, state_key, topic_length, viable
from pastac.grammar.scanner import opening
from pastac.grammar.tags import TagKind


class Allowed:
    """The tokens a thread may write: a mask over the tokenizer's ids; ids past it (a model's padded
    vocabulary) are allowed only outside a tag."""

    def __init__(self, ok: torch.Tensor, rest: bool) -> None:
        self.ok = ok
        self.rest = rest
        self._on: dict[tuple[int, str], torch.Tensor] = {}

    def mask(self, vocab: int, device: torch.device | str) -> torch.Tensor:
        """bool [vocab] on ``device``, made once per vocabulary size and device, then kept."""
        key = (vocab, str(device))
        if key not in self._on:
            mask = torch.full((vocab,), self.rest, dtype=torch.bool)
            n = min(vocab, self.ok.shape[0])
            mask[:n] = self.ok[:n]
            self._on[key] = mask.to(device)
        return self._on[key]

    def ids(self) -> list[int]:
        """The allowed ids of the tokenizer, ascending (ids past it not included)."""
        return self.ok.nonzero().flatten().tolist()


class TagGuard:
    """The tag constraint for one tokenizer: what a thread may write next, given the text its scanner holds
    back and where it is; masks are computed the first time a state is met, then kept."""

    def __init__(self, tokenizer: Any, eos: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.eos = sorted(set(eos))
        self._pieces: list[str] | None = None
        self._angled: list[int] = []  # ids whose text holds a '<'
        self._by_first: dict[str, list[int]] = {}  # ids by the first character of their text
        self._cache: dict[tuple[str, TagContext], Allowed | None] = {}
        self._topic_cache: dict[tuple[str, TagContext, int], Allowed] = {}
        self._quote_at: torch.Tensor | None = None  # per id: where its first '"' is (its length if none)

    @property
    def pieces(self) -> list[str]:
        """Each id's text as it reads after other text (a token's leading space kept)."""
        if self._pieces is None:
            tok = self.tokenizer
            anchor = tok.encode("a", add_special_tokens=False)[:1]
            lead = len(tok.decode(anchor))
            n = len(tok)
            texts = tok.batch_decode([[*anchor, i] for i in range(n)], skip_special_tokens=False)
            self._pieces = [t[lead:] for t in texts]
            self._angled = [i for i, p in enumerate(self._pieces) if "<" in p]
            for i, p in enumerate(self._pieces):
                self._by_first.setdefault(p[:1], []).append(i)
            self._quote_at = torch.tensor([p.find('"') if '"' in p else len(p) for p in self._pieces])
        return self._pieces

    def allowed(self, held: str, context: TagContext) -> Allowed | None:
        """What a thread whose scanner holds back ``held`` may write where it is; None: anything."""
        if not held:  # the common case, once per sampled thread and step: no parsing of the state
            return self._state("", context)
        kind = opening(held, final=False)
        if isinstance(kind, TagKind):  # inside a tag only what allows that tag matters
            context = replace(
                context,
                sync=context.sync and kind is TagKind.SYNC,
                close=context.close and kind is TagKind.ASYNC_CLOSE,
                promise=context.promise or kind is not TagKind.PROMISE,
            )
        key = (state_key(held), context)
        allowed = self._state(*key)
        written = topic_length(held)
        if written is None or allowed is None:
            return allowed
        # inside a topic: only what closes it within TOPIC_LIMIT characters (its text abstracted away above)
        room = max(TOPIC_LIMIT - written, 0)
        if (*key, room) not in self._topic_cache:
            assert self._quote_at is not None
            self._topic_cache[(*key, room)] = Allowed(allowed.ok & (self._quote_at <= room), rest=False)
        return self._topic_cache[(*key, room)]

    def _state(self, held: str, context: TagContext) -> Allowed | None:
        """The mask of an abstracted state (``state_key``), computed the first time it is met."""
        if (held, context) not in self._cache:
            self._cache[(held, context)] = self._compute(held, context)
        return self._cache[(held, context)]

    def _compute(self, held: str, context: TagContext) -> Allowed | None:
        pieces = self.pieces
        eos = set(self.eos)
        banned: list[int] = []
        if held:
            # what cannot go on cannot go on with more: a token whose first character cannot follow is out
            for first, ids in self._by_first.items():
                if first and not viable(held, first, context):
                    banned.extend(i for i in ids if i not in eos)
                else:
                    banned.extend(i for i in ids if i not in eos and not viable(held, pieces[i], context))
        else:  # only a '<' can start a tag
            banned = [i for i in self._angled if i not in eos and not viable("", pieces[i], context)]
        if committed(held) or context.close:  # the answer cannot end inside a tag, nor with a block open
            banned.extend(i for i in self.eos if i < len(pieces))
        if not banned or len(banned) >= len(pieces):  # nothing to mask, or a tokenizer that cannot go on
            return None
        ok = torch.ones(len(pieces), dtype=torch.bool)
        ok[banned] = False
        return Allowed(ok, rest=not held)


def allowed_rows(
    allowed: Sequence[Allowed | None], vocab: int, device: torch.device | str, banned: Sequence[Sequence[int]] = ()
) -> torch.Tensor | None:
    """[N, vocab] bool for a step's sampled queries (a row of ``True`` where nothing is constrained);
    None when none is.  ``banned`` (per query, when given): ids taken out of its row besides, unless that
    would leave the row empty (a ban never blocks a thread: ``pastac.runtime.repeats``)."""
    bans = [[t for t in b if t < vocab] for b in banned]
    if not any(a is not None for a in allowed) and not any(bans):
        return None
    device = torch.device(device)
    every = torch.ones(vocab, dtype=torch.bool, device=device)
    rows = torch.stack([every if a is None else a.mask(vocab, device) for a in allowed])
    if any(bans):
        ban = torch.zeros(rows.shape, dtype=torch.bool)  # made on the host, copied without waiting
        for i, ids in enumerate(bans):
            ban[i, ids] = True
        ban = ban if device.type == "cpu" else ban.to(device, non_blocking=True)
        kept = rows & ~ban
        rows = torch.where(kept.any(dim=-1, keepdim=True), kept, rows)  # a row the bans would empty stays
    return rows
