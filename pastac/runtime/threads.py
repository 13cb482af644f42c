"""The state of one decoding thread, and the run's limits.

A ``Thread`` is plain state: what it has written (its pieces of text, tags and
children, its tokens), what it must feed next (``inputs``, forced chunks, a
replay script), where it is in the position arithmetic, and its status.  The
interpreter (``interpreter.py``) changes it as the thread's text arrives; the
scheduler (``scheduler.py``) places its inputs in the cache and moves it
between statuses.  Who a thread sees is not here: ``pastac.backend.visibility``
owns that.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pastac.grammar import Scanner
from pastac.passes.resolution_order import Order
from pastac.runtime.text import Detokenizer


class Status(StrEnum):
    """Where a thread is in its life."""

    QUEUED = "queued"  # forked, waiting for a free slot under the width cap
    RUNNING = "running"
    BLOCKED = "blocked"  # at a <sync/>, waiting for its children
    CLOSING = "closing"  # its body has ended; waiting for its children
    DONE = "done"


class FinishReason(StrEnum):
    """Why a thread, or an answer, ended (the names Hugging Face and OpenAI-style APIs use)."""

    STOP = "stop"  # it ended by itself: the end-of-sequence token, a stop string, its </async>, its script's end
    LENGTH = "length"  # a token budget cut it: its own (max_thread_tokens) or the answer's (max_new_tokens)
    INTERRUPTED = "interrupted"  # the run was stopped before it ended (Ctrl-C, a partial result)


@dataclass(frozen=True)
class Limits:
    """The budgets and caps of a run.

    ``max_new_tokens``: the tokens the answer may write, all threads together, tags included (what Hugging
    Face's ``max_new_tokens`` means for one thread).  ``max_thread_tokens``: a cap on each thread's own
    tokens (None: only the answer's budget).  ``max_width``: threads decoding at once, the main one
    included; later promises wait.  ``max_depth``: promises nested deeper are decoded inline (None: the
    model's own setting, its adapter's ``max_depth``, else the language's default of 2).  ``order``: which
    waiting promise starts first when a place frees."""

    max_new_tokens: int = 512
    max_thread_tokens: int | None = None
    max_width: int | None = None
    max_depth: int | None = None
    order: Order = Order.FIFO

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_thread_tokens", "max_width"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        if self.max_depth is not None and (not isinstance(self.max_depth, int) or self.max_depth < 0):
            raise ValueError(
                f"max_depth must be an integer >= 0 (0 decodes every promise inline), not {self.max_depth!r}"
            )
        object.__setattr__(self, "order", Order(self.order))

    @property
    def thread_budget(self) -> int:
        """The most tokens one thread may choose: its own cap, and never more than the answer's budget."""
        if self.max_thread_tokens is None:
            return self.max_new_tokens
        return min(self.max_thread_tokens, self.max_new_tokens)


@dataclass
class Thread:
    """One thread's state (see the module's docstring)."""

    id: int
    parent: int | None
    depth: int
    topic: str | None
    predicted: int | None
    status: Status
    tokenizer: Any
    pos: int = 0  # the next position id
    skip: int = 0  # positions to skip once the current inputs are placed (a reservation)
    inputs: list[int] = field(default_factory=list)  # known tokens not yet in the cache
    forced: deque[tuple[list[int], str]] = field(default_factory=deque)  # chunks to feed without sampling
    script: deque[int] | None = None  # replay: the tokens this thread writes
    held: int | None = None  # the token chosen while blocked at a sync
    chosen: int = 0  # tokens it chose (its budget)
    fed: int = 0  # tokens placed in the cache
    unjoined: list[int] = field(default_factory=list)
    inline: int = 0  # inline <async> blocks open
    inlined: int = 0  # promises it decoded inline (its syncs then wait for nothing)
    promised: list[int] = field(default_factory=lambda: [0])  # per open body: promises since its last sync
    end_position: int = 0
    first_step: int | None = None
    last_step: int | None = None
    pieces: list[tuple[str, Any]] = field(default_factory=list)  # ("text"|"tag", str) or ("child", id)
    tokens: list[int] = field(default_factory=list)  # the tokens it placed in the cache, in order
    children_at: list[tuple[int, int]] = field(default_factory=list)  # (its tokens placed before the child, child)
    template: bool = False  # its text is forced; it ends where the forced text does
    ir_thread: int | None = None  # replay: the thread of the replayed document it follows
    forks: int = 0  # children forked so far
    markup: bool = False  # it (or what it continues) opened markup as text, ``<div>``: it may close it
    finish: FinishReason | None = None  # why its body ended, once it has
    # text accounting for the IR: the scanned text, the char offset where each token ends
    scanner: Scanner = field(default_factory=Scanner)
    text_len: int = 0
    token_ends: list[int] = field(default_factory=list)
    node_start: int = 0  # char offset where the current graph node starts
    segment: list[str] = field(default_factory=list)  # text of the current segment
    detok: Detokenizer = field(init=False)

    def __post_init__(self) -> None:
        self.detok = Detokenizer(self.tokenizer)

    @property
    def live(self) -> bool:
        """Whether the thread has not ended yet."""
        return self.status is not Status.DONE

    @property
    def text(self) -> str:
        """Its own text so far, without its tags and its children's text."""
        return "".join(value for kind, value in self.pieces if kind == "text")


@dataclass(frozen=True)
class RunWarning:
    """Something a run recovered from, in one thread (the message quotes what was written)."""

    thread: int
    message: str
