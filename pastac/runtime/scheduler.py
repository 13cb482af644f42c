"""The scheduler and interpreter: threads, their states, and the step plans.

The scheduler owns the run's IR graph and every thread's state.  Each step it
emits a ``StepPlan`` (which tokens go to which cache slot at which position,
whose logits to sample, which views to fork or join); after the runner's
forward it takes the sampled tokens and interprets them: each thread's new text
goes through its streaming scanner, and the tags found update the graph and the
threads (``_on_tag``):

- a completed ``<promise/>`` forks a child whose opening ``<async>`` is
  force-fed; the child sees its parent up to and including the promise; the
  parent skips the positions the policy reserves.  Past the depth limit the
  promise is decoded inline instead (``<async>`` force-fed to the same thread);
  past the width limit the child waits, and starts in the resolution order;
- ``<sync/>`` blocks its thread until all its children have ended, then joins
  them (the parent now sees their content);
- ``</async>`` ends a child's body; the child ends once its own children have;
- the run is done when the main thread has ended and no thread is left.

Jump-forward (``jump``): where a canonical tag leaves no choice (``topic="`` after ``<promise topic``,
`` tokens="`` after the topic's closing quote, ``/>`` after the estimate's), the forced text
(``pastac.grammar.prefix.forced``) is fed with the token before it, in one step, instead of being sampled
token by token; a replayed thread jumps where its script's next tokens are that text, as a sampled one
would.  The forced tokens count toward the thread's budget like any it writes.

Recovery never loses text: a child that writes EOS or runs out of budget is
closed (its ``</async>`` force-fed), a stray or malformed tag is kept as text or
dropped with a warning (which quotes it), and every warning is kept in
``warnings``; a tag a thread's end cuts short is dropped so, not left in the
answer as half a tag.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import islice
from typing import TYPE_CHECKING, Any

from pastac.grammar import Scanner
from pastac.grammar.ast import Promise, quote
from pastac.grammar.parser import DEFAULT_MAX_DEPTH
from pastac.grammar.prefix import TagContext, forced, writes_markup
from pastac.grammar.tags import TagKind, TagToken, TextToken
from pastac.ir.graph import MAIN, ThreadGraph
from pastac.passes.positions import Policy, PositionOptions, PositionRule
from pastac.passes.resolution_order import Order
from pastac.runtime.repeats import UnseenNgrams
from pastac.runtime.runner import StepPlan
from pastac.runtime.text import Detokenizer

if TYPE_CHECKING:
    from pastac.runtime.guard import TagGuard
    from pastac.runtime.replay import Replay

OPEN, CLOSE = "<async>", "</async>"


class Status(StrEnum):
    QUEUED = "queued"  # forked, waiting for a free slot under the width cap
    RUNNING = "running"
    BLOCKED = "blocked"  # at a <sync/>, waiting for its children
    CLOSING = "closing"  # its body has ended; waiting for its children
    DONE = "done"


@dataclass(frozen=True)
class Limits:
    max_new_tokens: int = 512  # per thread, tokens it chooses
    max_total_tokens: int = 4096  # all threads together
    max_width: int | None = None  # threads decoding at once, the main one included
    max_depth: int = 2  # deeper promises are decoded inline
    order: Order = Order.FIFO

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "max_total_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_width is not None and self.max_width < 1:
            raise ValueError("max_width must be >= 1 (1 decodes one thread at a time)")
        if self.max_depth < 0:
            raise ValueError("max_depth must be >= 0 (0 decodes every promise inline)")
        object.__setattr__(self, "order", Order(self.order))


@dataclass
class Thread:
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
    template: bool = False  # its text is forced; it ends where the forced text does
    ir_thread: int | None = None  # replay: the thread of the replayed document it follows
    forks: int = 0  # children forked so far
    sees: set[int] = field(default_factory=set)  # the threads whose text it sees: its ancestors, children it joined
    markup: bool = False  # it (or what it continues) opened markup as text, ``<div>``: it may close it
    # text accounting for the IR: the scanned text, the char offset where each token ends
    scanner: Scanner = field(default_factory=Scanner)
    text_len: int = 0
    token_ends: list[int] = field(default_factory=list)
    node_start: int = 0  # char offset where the current graph node starts
    segment: list[str] = field(default_factory=list)  # text of the current segment
    detok: Detokenizer | None = None

    def __post_init__(self) -> None:
        self.detok = Detokenizer(self.tokenizer)

    @property
    def live(self) -> bool:
        return self.status is not Status.DONE


@dataclass(frozen=True)
class RunWarning:
    thread: int
    message: str


class Scheduler:
    def __init__(
        self,
        tokenizer: Any,
        *,
        limits: Limits,
        positions: PositionOptions,
        eos: Sequence[int],
        prompt_length: int,
        replay: Replay | None = None,
        tags: bool = True,
        child_stop: str | None = None,
        guard: TagGuard | None = None,
        max_nesting: int = DEFAULT_MAX_DEPTH,
        jump: bool = False,
        repeats: UnseenNgrams | None = None,
    ) -> None:
        """``guard``: constrain what the threads sample so that the tags they write are well formed and
        allowed where they stand (``pastac.runtime.guard``); a promise is allowed where its block would nest
        at most ``max_nesting`` deep (the language's limit, whether the block is forked or decoded inline).
        ``jump``: feed the text a canonical tag forces at once (the module's docstring); with tags only.
        ``repeats``: ban each sampled thread from repeating the n-grams of the threads it cannot see
        (``pastac.runtime.repeats``; the plan's ``banned``)."""
        if positions.policy in (Policy.SEQUENTIAL, Policy.ORACLE):
            raise ValueError(
                f"the runtime cannot use the {positions.policy} position policy: it needs the "
                "children's lengths before they are written; use predicted, restart or lockstep"
            )
        self.tokenizer = tokenizer
        self.limits = limits
        self.rule = PositionRule(positions)
        self.eos = frozenset(eos)
        self.graph = ThreadGraph()
        self.threads: dict[int, Thread] = {}
        # The tags the runtime force-feeds.  Without them (templates for models that never saw a tag) a
        # child's first token is chosen from its parent's last query, where both see the same context.
        self.open_ids = tokenizer.encode(OPEN, add_special_tokens=False) if tags else []
        self.close_ids = tokenizer.encode(CLOSE, add_special_tokens=False) if tags else []
        self.child_stop = child_stop
        self.guard = guard if tags else None
        self.max_nesting = max_nesting
        self.jump = jump and tags
        self.repeats = repeats
        self._forced_ids: dict[str, list[int]] = {}
        self.jumped = 0  # tokens fed by jump-forward
        self.next_slot = prompt_length
        self.step_no = 0
        self.chosen = 0
        self.warnings: list[RunWarning] = []
        self._pending_forks: dict[int, list[int]] = {}
        self._joins: list[tuple[int, int]] = []
        self._sampling: list[Thread] = []
        self.replay = replay
        self.activity: list[tuple[int, int, int]] = []  # (step, thread, tokens placed)
        main = Thread(MAIN, None, 0, None, None, Status.RUNNING, tokenizer, pos=prompt_length)
        if replay is not None:
            main.ir_thread = MAIN
            main.script = replay.script(MAIN)
        self.threads[MAIN] = main

    def force(self, chunks: Sequence[tuple[list[int], str]]) -> None:
        """Template mode: the main thread's text is these (tokens, text) chunks, fed without sampling
        (each ends at a promise or a sync, so a child forks right after its promise); the main thread
        ends where they do."""
        main = self.threads[MAIN]
        main.forced.extend(chunks)
        main.template = True
        if main.forced:
            self._feed_forced(main)

    # -- the step plan ---------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.threads[MAIN].status is Status.DONE

    def plan(self) -> StepPlan:
        plan = StepPlan()
        self._resolve(plan)
        self._start_queued()
        self._sampling = []
        for thread in self.threads.values():
            if thread.status is Status.QUEUED or not thread.inputs:
                continue
            first = len(plan.tokens)
            n = len(thread.inputs)
            plan.tokens.extend(thread.inputs)
            plan.positions.extend(range(thread.pos, thread.pos + n))
            plan.slots.extend(range(self.next_slot, self.next_slot + n))
            plan.threads.extend([thread.id] * n)
            if self.repeats is not None:
                self.repeats.add(thread.id, thread.inputs)
            self.next_slot += n
            thread.pos += n + thread.skip
            thread.skip = 0
            thread.fed += n
            thread.inputs = []
            if thread.first_step is None:
                thread.first_step = self.step_no
            thread.last_step = self.step_no
            self.activity.append((self.step_no, thread.id, n))
            for child in self._pending_forks.pop(thread.id, ()):
                plan.forks.append((thread.id, child, plan.slots[first + n - 1] + 1))
                if not self.threads[child].inputs:
                    self._sample(plan, first + n - 1, self.threads[child])
            if self._wants_sample(thread):
                self._sample(plan, first + n - 1, thread)
        plan.joins.extend(self._joins)
        self._joins = []
        if self.repeats is not None:  # once every thread's tokens of this step are in
            plan.banned = [self._banned(thread) for thread in self._sampling]
        if not plan.tokens and not self.done:
            stuck = ", ".join(f"t{t.id} {t.status}" for t in self.threads.values() if t.live)
            raise RuntimeError(f"no thread can run ({stuck})")
        return plan

    def _sample(self, plan: StepPlan, query: int, thread: Thread) -> None:
        plan.sample.append(query)
        self._sampling.append(thread)
        plan.allowed.append(
            None
            if self.guard is None or thread.script is not None
            else self.guard.allowed(thread.scanner.held, self.context(thread))
        )

    def _banned(self, thread: Thread) -> list[int]:
        assert self.repeats is not None
        if thread.script is not None:
            return []
        unseen = [t for t in self.threads if t != thread.id and t not in thread.sees]
        return sorted(self.repeats.banned(thread.id, unseen))

    def context(self, thread: Thread) -> TagContext:
        """Which tags the thread may write now: ``<sync/>`` once it has promised something since its last
        sync, ``</async>`` in a child or inside a block it opened inline, ``<promise/>`` where the block it
        promises would not nest too deep; whether it has opened markup it may close."""
        return TagContext(
            sync=thread.promised[-1] > 0,
            close=thread.id != MAIN or thread.inline > 0,
            promise=thread.depth + thread.inline < self.max_nesting,
            markup=thread.markup,
        )

    def _wants_sample(self, thread: Thread) -> bool:
        if thread.forced or (thread.template and thread.status is Status.RUNNING):
            return False
        if thread.status is Status.RUNNING:
            return True
        return thread.status is Status.BLOCKED and thread.held is None and thread.script is None

    def _start_queued(self) -> None:
        queued = [t for t in self.threads.values() if t.status is Status.QUEUED]
        if not queued:
            return
        # threads that feed tokens this step: running ones, and blocked or closing ones with a last tag to feed
        running = sum(
            t.status is Status.RUNNING or (t.status is not Status.QUEUED and bool(t.inputs))
            for t in self.threads.values()
        )
        free = len(queued) if self.limits.max_width is None else self.limits.max_width - running
        order = self.limits.order
        if order is Order.LONGEST_FIRST:
            queued.sort(key=lambda t: -(t.predicted or 0))
        elif order is Order.SHORTEST_FIRST:
            queued.sort(key=lambda t: t.predicted or 0)
        for thread in queued[: max(free, 0)]:
            thread.status = Status.RUNNING

    def _resolve(self, plan: StepPlan) -> None:
        """Join what can be joined, end what can end (a child's end may let its parent go on)."""
        changed = True
        while changed:
            changed = False
            for thread in self.threads.values():
                if thread.status not in (Status.BLOCKED, Status.CLOSING) or thread.inputs:
                    continue
                if any(self.threads[c].status is not Status.DONE for c in thread.unjoined):
                    continue
                ends = [self.threads[c].end_position for c in thread.unjoined]
                for child in thread.unjoined:
                    self._joins.append((thread.id, child))
                    thread.sees |= self.threads[child].sees | {child}
                if thread.status is Status.BLOCKED:
                    self.graph.join(thread.id, explicit=True)
                    if ends:
                        thread.pos = self.rule.after_join(thread.pos, ends)
                    thread.unjoined = []
                    thread.status = Status.RUNNING
                    self._resume(thread)
                else:
                    self._flush_segment(thread)
                    self.graph.end(thread.id)
                    thread.unjoined = []
                    thread.status = Status.DONE
                    thread.end_position = thread.pos
                changed = True

    def _resume(self, thread: Thread) -> None:
        if thread.forced:
            self._feed_forced(thread)
        elif thread.held is not None:
            token, thread.held = thread.held, None
            self._choose(thread, token)
        elif thread.script is not None:
            self._next_scripted(thread)

    # -- after the forward -----------------------------------------------------

    def advance(self, sampled: Sequence[int]) -> None:
        """Take the tokens the runner sampled (one per ``plan.sample`` query) and interpret them."""
        threads, self._sampling = self._sampling, []
        self.step_no += 1
        for thread, token in zip(threads, sampled, strict=True):
            if thread.status is Status.BLOCKED:
                thread.held = token
            elif thread.script is not None:
                self._next_scripted(thread)
            else:
                self._choose(thread, token)
        for thread in list(self.threads.values()):
            if thread.status is Status.RUNNING and not thread.inputs and thread.template:
                if thread.forced:
                    self._feed_forced(thread)
                else:
                    self._end_body(thread, reason=None)

    def _next_scripted(self, thread: Thread) -> None:
        assert thread.script is not None
        if thread.script:
            self._choose(thread, thread.script.popleft())
        else:
            self._end_body(thread, reason=None)

    def _choose(self, thread: Thread, token: int) -> None:
        """A token the thread chose (sampled, or replayed)."""
        if token in self.eos and thread.script is None:
            self._end_body(thread, reason="wrote the end-of-sequence token")
            return
        thread.chosen += 1
        self.chosen += 1
        thread.inputs.append(token)
        assert thread.detok is not None
        text = thread.detok.add(token)
        self._scan(thread, text, tokens=1)
        if thread.status not in (Status.RUNNING, Status.QUEUED):
            return
        if self.jump:
            self._jump(thread)
            if thread.status not in (Status.RUNNING, Status.QUEUED):
                return
        if self.child_stop and thread.id != MAIN and self.child_stop in text and self._stop(thread):
            return
        if thread.chosen >= self.limits.max_new_tokens:
            self._end_body(thread, reason=f"reached --max-new-tokens ({self.limits.max_new_tokens})")
        elif self.chosen >= self.limits.max_total_tokens:
            total = self.limits.max_total_tokens
            self._end_body(thread, reason=f"was cut when the run reached its total of {total} tokens")

    def _jump(self, thread: Thread) -> None:
        """Feed what the thread's unfinished tag must go on with, if anything (jump-forward)."""
        assert thread.detok is not None
        while thread.scanner.held and thread.detok.settled and (text := forced(thread.scanner.held)):
            if text not in self._forced_ids:
                self._forced_ids[text] = self.tokenizer.encode(text, add_special_tokens=False)
            ids = self._forced_ids[text]
            if (
                thread.chosen + len(ids) > self.limits.max_new_tokens
                or self.chosen + len(ids) > self.limits.max_total_tokens
            ):  # a budget ends it before
                return
            if thread.script is not None:  # a replay jumps where its tokens are the ones a sampled run feeds
                if list(islice(thread.script, len(ids))) != ids:
                    return
                for _ in ids:
                    thread.script.popleft()
            thread.chosen += len(ids)
            self.chosen += len(ids)
            self.jumped += len(ids)
            thread.inputs.extend(ids)
            thread.detok.skip(ids)
            self._scan(thread, text, tokens=len(ids))
            if thread.status not in (Status.RUNNING, Status.QUEUED):
                return

    def _feed_forced(self, thread: Thread) -> None:
        tokens, text = thread.forced.popleft()
        thread.inputs.extend(tokens)
        assert thread.detok is not None
        thread.detok.skip(tokens)
        self._scan(thread, text, tokens=len(tokens))

    # -- the interpreter -------------------------------------------------------

    def _scan(self, thread: Thread, text: str, *, tokens: int) -> None:
        thread.text_len += len(text)
        thread.token_ends.extend([thread.text_len] * tokens)
        if text:
            for lexeme in thread.scanner.feed(text):
                self._on_lexeme(thread, lexeme)

    def _on_lexeme(self, thread: Thread, lexeme: TextToken | TagToken) -> None:
        if isinstance(lexeme, TextToken):
            thread.markup = thread.markup or writes_markup(lexeme.value)
            thread.segment.append(lexeme.value)
            thread.pieces.append(("text", lexeme.value))
            return
        if thread.status not in (Status.RUNNING, Status.QUEUED):  # e.g. text after the </async> that closed it
            self._warn(thread, f"dropped {quote(lexeme.raw)} written after the thread's end")
            return
        self._on_tag(thread, lexeme)

    def _tokens_until(self, thread: Thread, end: int) -> int:
        """Tokens of the current node: those whose text ends in (node_start, end]."""
        return bisect_right(thread.token_ends, end) - bisect_right(thread.token_ends, thread.node_start)

    def _flush_segment(self, thread: Thread, end: int | None = None) -> None:
        """Close the current text segment at char offset ``end`` (default: all text so far)."""
        end = thread.text_len if end is None else end
        text = "".join(thread.segment)
        length = self._tokens_until(thread, end)
        if text or length:
            self.graph.segment(thread.id, text, length)
        thread.segment = []
        thread.node_start = end

    def _tag_node(self, thread: Thread, lexeme: TagToken) -> int:
        """Flush the text before a tag; the tag's own token count."""
        self._flush_segment(thread, lexeme.span.start.offset)
        length = self._tokens_until(thread, lexeme.span.end.offset)
        thread.node_start = lexeme.span.end.offset
        return length

    def _on_tag(self, thread: Thread, lexeme: TagToken) -> None:
        tag = lexeme.tag
        for diagnostic in lexeme.diagnostics:
            self._warn(thread, f"{diagnostic.code}: {diagnostic.message}")
        if tag is None:  # not recoverable as a tag: it stays text
            thread.segment.append(lexeme.raw)
            thread.pieces.append(("text", lexeme.raw))
            return
        match lexeme.kind:
            case TagKind.PROMISE:
                assert isinstance(tag, Promise)
                self._promise(thread, lexeme, tag)
            case TagKind.SYNC:
                length = self._tag_node(thread, lexeme)
                if not thread.unjoined and not thread.inlined:
                    self._warn(thread, "<sync/> with no promise to wait for (kept)")
                thread.promised[-1] = 0
                self.graph.sync(thread.id, lexeme.raw, length)
                thread.pieces.append(("tag", lexeme.raw))
                if thread.unjoined:
                    thread.status = Status.BLOCKED
            case TagKind.ASYNC_CLOSE:
                if thread.inline:
                    thread.inline -= 1
                    thread.promised.pop()
                    self.graph.segment(thread.id, lexeme.raw, self._tag_node(thread, lexeme))
                    thread.pieces.append(("tag", lexeme.raw))
                elif thread.id != MAIN:
                    length = self._tag_node(thread, lexeme)
                    self.graph.close(thread.id, lexeme.raw, length)
                    thread.pieces.append(("tag", lexeme.raw))
                    thread.status = Status.CLOSING
                else:
                    self._warn(thread, "dropped a </async> that closes no block")
            case TagKind.ASYNC_OPEN:
                self._warn(thread, f"dropped {quote(lexeme.raw)}: a thread's <async> is written by the runtime")

    def _promise(self, thread: Thread, lexeme: TagToken, tag: Promise) -> None:
        length = self._tag_node(thread, lexeme)
        thread.promised[-1] += 1
        if thread.depth + 1 > self.limits.max_depth:  # decoded inline, as in the sequential layout
            self.graph.segment(thread.id, lexeme.raw + OPEN, length + len(self.open_ids))
            thread.pieces.append(("tag", lexeme.raw))
            thread.pieces.append(("tag", OPEN))
            thread.inline += 1
            thread.inlined += 1
            thread.promised.append(0)
            thread.inputs.extend(self.open_ids)
            assert thread.detok is not None
            thread.detok.skip(self.open_ids)
            return
        _, child_id = self.graph.fork(thread.id, tag.topic, tag.tokens, lexeme.raw, length)
        child = Thread(
            child_id,
            thread.id,
            thread.depth + 1,
            tag.topic,
            tag.tokens,
            Status.QUEUED,
            self.tokenizer,
            pos=thread.pos + len(thread.inputs),
        )
        child.inputs = list(self.open_ids)
        child.sees = thread.sees | {thread.id}
        child.markup = thread.markup
        if self.replay is not None:
            assert thread.ir_thread is not None
            child.ir_thread = self.replay.child(thread.ir_thread, thread.forks)
            child.script = self.replay.script(child.ir_thread)
        thread.forks += 1
        self.graph.open(child_id, OPEN, len(self.open_ids))
        child.pieces.append(("tag", OPEN))
        self.threads[child_id] = child
        thread.unjoined.append(child_id)
        thread.pieces.append(("tag", lexeme.raw))
        thread.pieces.append(("child", child_id))
        tags = len(self.open_ids) + len(self.close_ids)
        # a child writes at most its budget: positions reserved past it would only leave a gap, and an estimate
        # off the scale (tokens="40000") would send the parent past the positions the model was trained on
        budget = min(self.limits.max_new_tokens, self.limits.max_total_tokens)
        thread.skip += min(self.rule.reservation(tag.tokens, tags), tags + budget)
        self._pending_forks.setdefault(thread.id, []).append(child_id)

    def _end_body(self, thread: Thread, reason: str | None) -> None:
        """End a thread's body: EOS, budget, or end of its script or template."""
        assert thread.detok is not None
        rest = thread.detok.flush()  # an incomplete character: kept, as U+FFFD
        if rest:
            self._scan(thread, rest, tokens=0)
        for lexeme in thread.scanner.close():
            if isinstance(lexeme, TextToken):
                thread.segment.append(lexeme.value)
                thread.pieces.append(("text", lexeme.value))
            elif lexeme.tag is None and thread.status is Status.RUNNING:  # a tag cut short by the end
                why = f" (it {reason})" if reason else ""
                self._warn(thread, f"dropped {quote(lexeme.raw)}: the thread ended inside this tag{why}")
            elif thread.status is Status.RUNNING:
                self._on_tag(thread, lexeme)
        if thread.status is not Status.RUNNING:
            return
        if reason is not None and thread.id != MAIN:
            self._warn(thread, f"closed: it {reason}")
        while thread.inline:  # close what it left open, so the annotated text stays well formed
            self._flush_segment(thread)
            thread.inline -= 1
            thread.inputs.extend(self.close_ids)
            self.graph.segment(thread.id, CLOSE, len(self.close_ids))
            thread.pieces.append(("tag", CLOSE))
        if thread.id != MAIN:
            self._flush_segment(thread)
            thread.inputs.extend(self.close_ids)
            self.graph.close(thread.id, CLOSE, len(self.close_ids))
            thread.pieces.append(("tag", CLOSE))
        thread.status = Status.CLOSING

    def _stop(self, thread: Thread) -> bool:
        """End a child at ``child_stop`` once it has written something; the stop and what follows it
        in the same token are dropped (they belong to the parent's layout, e.g. a list's line break)."""
        assert self.child_stop is not None
        text = "".join(v for k, v in thread.pieces if k == "text") + thread.scanner.held
        content = len(text) - len(text.lstrip())  # the first character written that is not white space
        cut = text.find(self.child_stop, content + 1)
        if content == len(text) or cut < 0:
            return False
        self._end_body(thread, reason=None)
        kept, out = 0, []
        for kind, value in thread.pieces:
            if kind == "text":
                value = value[: max(cut - kept, 0)]
                kept += len(value)
                if not value:
                    continue
            out.append((kind, value))
        thread.pieces = out
        return True

    def _warn(self, thread: Thread, message: str) -> None:
        self.warnings.append(RunWarning(thread.id, message))

    # -- results ---------------------------------------------------------------

    def annotated(self) -> str:
        return self._expand(MAIN, tags=True)

    def stitched(self) -> str:
        return self._expand(MAIN, tags=False)

    def _expand(self, root: int, *, tags: bool) -> str:
        out: list[str] = []
        stack = [iter(self.threads[root].pieces)]
        while stack:
            piece = next(stack[-1], None)
            if piece is None:
                stack.pop()
                continue
            kind, value = piece
            if kind == "child":
                stack.append(iter(self.threads[value].pieces))
            elif kind == "text" or tags:
                out.append(value)
        return "".join(out)
