"""The tag interpreter: what the threads' text means for the run.

Each thread's new text goes through its streaming scanner (``pastac.grammar.Scanner``);
the tags found update the run's IR graph and the threads:

- a completed ``<promise/>`` forks a child whose opening ``<async>`` is
  force-fed; past the depth limit the promise is decoded inline instead
  (``<async>`` force-fed to the same thread);
- ``<sync/>`` blocks its thread until its children have ended;
- ``</async>`` ends a child's body; the child ends once its own children have.

Jump-forward (``jump``): where a canonical tag leaves no choice (``topic="`` after ``<promise topic``,
`` tokens="`` after the topic's closing quote, ``/>`` after the estimate's), the forced text
(``pastac.grammar.prefix.forced``) is fed with the token before it, in one step, instead of being sampled
token by token; a replayed thread jumps where its script's next tokens are that text, as a sampled one
would.  The forced tokens count toward the budgets like any the thread writes.

Recovery never loses text: a thread that writes EOS, a stop string, or runs out
of budget is closed (a child's ``</async>`` force-fed), a stray or malformed
tag is kept as text or dropped with a warning (which quotes it), and every
warning is kept in ``warnings``; a tag a thread's end cuts short is dropped so,
not left in the answer as half a tag.

A dropped tag leaves the text on its two sides adjacent.  Where the text before it holds a ``<`` that no
``>`` has closed yet, the two sides could read as one tag in the annotated answer (``<promise`` + ``/>``, when
the thread wrote ``<promise<async>/>``), which then would not render as the stitched answer: there the
annotated answer gets an empty block with no promise (``SEPARATOR``), which lenient reading renders as
nothing and which ends the half tag before it.  Only a thread without the tag guard writes such text.

A child that a budget cuts (finish reason ``length``) stops mid-line, without the line break that ended its
part; the text after its block in reading order would run into it ("...doesn3. **Take care**").  So the
stitched and the annotated text get one line break at the end of such a child's block (before its
``</async>``) when its text is not empty and does not end with one, and the text after the block starts a new
item (``starts_item``).  That break is the only text of the answer no thread wrote: the annotated text stays
valid (the break is inside the block), renders as the stitched text, and its tokens are the run's but for it
(and for the separators above, which are in the annotated text only).

When and where tokens go into the cache, and who sees whom, is the scheduler's
(``scheduler.py``): the interpreter tells it of each fork through ``on_fork``.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from pastac.grammar.ast import Promise, quote
from pastac.grammar.prefix import forced, writes_markup
from pastac.grammar.tags import TagKind, TagToken, TextToken
from pastac.ir.graph import MAIN, ThreadGraph
from pastac.runtime.threads import FinishReason, Limits, RunWarning, Status, Thread

if TYPE_CHECKING:
    from pastac.runtime.replay import Replay

OPEN, CLOSE = "<async>", "</async>"
SEPARATOR = OPEN + CLOSE  # in the annotated answer only, where a dropped tag's neighbours would join
_NEW_ITEM = re.compile(r"[ \t]*(?:[0-9]{1,9}[.)][ \t]|[-*+][ \t]|#{1,6}(?:[ \t]|$))")
_CONTINUES = ",.;:!?)]}"  # a text that starts with one of these goes on with the line before it
LOOKAHEAD = 16  # characters of the text after a block that ``starts_item`` is given


def starts_item(after: str, *, block_began_line: bool) -> bool:
    """Does ``after``, the text that follows a cut child's block in reading order (its first ``LOOKAHEAD``
    characters), start a new item, so that the block must end with a line break?  It does when it starts,
    after spaces or tabs, with a list marker (``3. ``, ``3) ``, ``- ``, ``* ``, ``+ ``) or a heading (``# ``);
    or when the block began a line (the text before it is empty or ends with a line break), so that it was a
    line or paragraph of its own, and ``after`` starts with anything but white space or the punctuation that
    goes on with a line (``,.;:!?)]}``)."""
    if _NEW_ITEM.match(after):
        return True
    return block_began_line and bool(after) and not after[0].isspace() and after[0] not in _CONTINUES


class Interpreter:
    """The threads of a run, its IR graph and its warnings, changed by what the threads write."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        limits: Limits,
        max_depth: int,
        eos: Sequence[int],
        on_fork: Callable[[Thread, Thread], None],
        replay: Replay | None = None,
        tags: bool = True,
        child_stop: str | None = None,
        stop: Sequence[str] = (),
        jump: bool = False,
    ) -> None:
        """``max_depth``: promises nested deeper are decoded inline.  ``tags``: the runtime's own tags
        (``<async>``, ``</async>``) go into the context; without them (templates for models that never saw a
        tag) a child's first token is chosen from its parent's last query.  ``child_stop``: a child's body
        ends where it writes this, once it has written something.  ``stop``: any thread's body ends where it
        writes one of these (the text from it on is dropped).  ``on_fork(parent, child)`` is called for each
        child forked."""
        self.tokenizer = tokenizer
        self.limits = limits
        self.max_depth = max_depth
        self.eos = frozenset(eos)
        self.on_fork = on_fork
        self.replay = replay
        self.open_ids = tokenizer.encode(OPEN, add_special_tokens=False) if tags else []
        self.close_ids = tokenizer.encode(CLOSE, add_special_tokens=False) if tags else []
        self.child_stop = child_stop
        self.stop = tuple(s for s in stop if s)
        self.jump = jump and tags
        self._forced_ids: dict[str, list[int]] = {}
        self.graph = ThreadGraph()
        self.threads: dict[int, Thread] = {}
        self.warnings: list[RunWarning] = []
        self.chosen = 0  # tokens the threads chose, all together (the answer's budget)
        self.jumped = 0  # tokens fed by jump-forward

    # -- tokens in -------------------------------------------------------------------------------------------

    def choose(self, thread: Thread, token: int) -> None:
        """A token the thread chose (sampled, or replayed)."""
        if token in self.eos and thread.script is None:
            self.end_body(thread, "wrote the end-of-sequence token", FinishReason.STOP)
            return
        if self.chosen >= self.limits.max_new_tokens:  # threads of the same step spent the budget before it
            self.end_body(thread, self._spent(), FinishReason.LENGTH)
            return
        thread.chosen += 1
        self.chosen += 1
        thread.inputs.append(token)
        text = thread.detok.add(token)
        self._scan(thread, text, tokens=1)
        if thread.status not in (Status.RUNNING, Status.QUEUED):
            return
        if self.jump:
            self._jump(thread)
            if thread.status not in (Status.RUNNING, Status.QUEUED):
                return
        if self._stops(thread, text):
            return
        limits = self.limits
        if limits.max_thread_tokens is not None and thread.chosen >= limits.max_thread_tokens:
            self.end_body(thread, f"reached max_thread_tokens ({limits.max_thread_tokens})", FinishReason.LENGTH)
        elif self.chosen >= limits.max_new_tokens:
            self.end_body(thread, self._spent(), FinishReason.LENGTH)

    def _spent(self) -> str:
        return f"was cut when the answer reached max_new_tokens ({self.limits.max_new_tokens})"

    def next_scripted(self, thread: Thread) -> None:
        """A replayed thread's next token, or its end."""
        assert thread.script is not None
        if thread.script:
            self.choose(thread, thread.script.popleft())
        else:
            self.end_body(thread, None, FinishReason.STOP)

    def feed_forced(self, thread: Thread) -> None:
        """Feed the thread's next forced chunk (a template's text up to a promise or a sync)."""
        tokens, text = thread.forced.popleft()
        thread.inputs.extend(tokens)
        thread.detok.skip(tokens)
        self._scan(thread, text, tokens=len(tokens))

    def _jump(self, thread: Thread) -> None:
        """Feed what the thread's unfinished tag must go on with, if anything (jump-forward)."""
        while thread.scanner.held and thread.detok.settled and (text := forced(thread.scanner.held)):
            if text not in self._forced_ids:
                self._forced_ids[text] = self.tokenizer.encode(text, add_special_tokens=False)
            ids = self._forced_ids[text]
            if (
                thread.chosen + len(ids) > self.limits.thread_budget
                or self.chosen + len(ids) > self.limits.max_new_tokens
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

    # -- text in ---------------------------------------------------------------------------------------------

    def _scan(self, thread: Thread, text: str, *, tokens: int) -> None:
        thread.text_len += len(text)
        thread.token_ends.extend([thread.text_len] * tokens)
        if text:
            for lexeme in thread.scanner.feed(text):
                self._on_lexeme(thread, lexeme)

    def _on_lexeme(self, thread: Thread, lexeme: TextToken | TagToken) -> None:
        if isinstance(lexeme, TextToken) and thread.status in (Status.CLOSING, Status.DONE):
            # the rest of the token that held the thread's </async>: the thread has ended
            self._warn(thread, f"dropped {quote(lexeme.value)} written after the thread's end")
            return
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

    def flush_segment(self, thread: Thread, end: int | None = None) -> None:
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
        self.flush_segment(thread, lexeme.span.start.offset)
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
                    # A token that ends after the tag (``><``) is the thread's last: its node is the </async>.
                    length += self._tokens_until(thread, thread.text_len)
                    thread.node_start = thread.text_len
                    self.graph.close(thread.id, lexeme.raw, length)
                    thread.pieces.append(("tag", lexeme.raw))
                    thread.status = Status.CLOSING
                    thread.finish = FinishReason.STOP
                else:
                    self._warn(thread, "dropped a </async> that closes no block")
                    self._keep_apart(thread)
            case TagKind.ASYNC_OPEN:
                self._warn(thread, f"dropped {quote(lexeme.raw)}: a thread's <async> is written by the runtime")
                self._keep_apart(thread)

    @staticmethod
    def _keep_apart(thread: Thread) -> None:
        """After a dropped tag: if the thread's text before it holds a ``<`` not yet closed by a ``>``, the
        annotated answer's ``SEPARATOR`` (see the module's docstring)."""
        for kind, value in reversed(thread.pieces):
            if kind != "text":
                return
            lt, gt = value.rfind("<"), value.rfind(">")
            if lt > gt:
                thread.pieces.append(("tag", SEPARATOR))
                return
            if gt != -1:
                return

    def _promise(self, thread: Thread, lexeme: TagToken, tag: Promise) -> None:
        length = self._tag_node(thread, lexeme)
        thread.promised[-1] += 1
        if thread.depth + 1 > self.max_depth:  # decoded inline, as in the sequential layout
            self.graph.segment(thread.id, lexeme.raw + OPEN, length + len(self.open_ids))
            thread.pieces.append(("tag", lexeme.raw))
            thread.pieces.append(("tag", OPEN))
            thread.inline += 1
            thread.inlined += 1
            thread.promised.append(0)
            thread.inputs.extend(self.open_ids)
            thread.detok.skip(self.open_ids)
            return
        _, child_id = self.graph.fork(thread.id, tag.topic, tag.tokens, lexeme.raw, length)
        child = Thread(child_id, thread.id, thread.depth + 1, tag.topic, tag.tokens, Status.QUEUED, self.tokenizer)
        child.inputs = list(self.open_ids)
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
        self.on_fork(thread, child)

    # -- ends ------------------------------------------------------------------------------------------------

    def end_body(self, thread: Thread, reason: str | None, finish: FinishReason) -> None:
        """End a thread's body: EOS, a stop, a budget (``reason`` says which, for the warning), or the end of
        its script or template."""
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
        thread.finish = finish
        if reason is not None and thread.id != MAIN:
            self._warn(thread, f"closed: it {reason}")
        while thread.inline:  # close what it left open, so the annotated text stays well formed
            self.flush_segment(thread)
            thread.inline -= 1
            thread.inputs.extend(self.close_ids)
            self.graph.segment(thread.id, CLOSE, len(self.close_ids))
            thread.pieces.append(("tag", CLOSE))
        if thread.id != MAIN:
            self.flush_segment(thread)
            thread.inputs.extend(self.close_ids)
            self.graph.close(thread.id, CLOSE, len(self.close_ids))
            thread.pieces.append(("tag", CLOSE))
        thread.status = Status.CLOSING

    def _stops(self, thread: Thread, text: str) -> bool:
        """End the thread if its text now holds a stop string (``stop``, or ``child_stop`` in a child)."""
        if self.stop and any(s[-1] in text for s in self.stop) and self._stop_at(thread, self.stop, 0):
            return True
        return bool(
            self.child_stop
            and thread.id != MAIN
            and self.child_stop in text
            and self._stop_at(thread, (self.child_stop,), None)
        )

    def _stop_at(self, thread: Thread, stops: Sequence[str], start: int | None) -> bool:
        """End the thread at the first of ``stops`` in its text from ``start`` (None: after the first character
        that is not white space).  The stop and what follows it in the same token are dropped (a template's
        stop belongs to the parent's layout, e.g. a list's line break; a caller's stop is never returned)."""
        text = thread.text + thread.scanner.held
        if start is None:
            content = len(text) - len(text.lstrip())  # the first character written that is not white space
            if content == len(text):
                return False
            start = content + 1
        found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
        if not found:
            return False
        cut = min(found)
        self.end_body(thread, None, FinishReason.STOP)
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

    def joined(self, thread: Thread) -> None:
        """All the thread's children have ended: a blocked thread joins them and goes on; a closing one ends."""
        if thread.status is Status.BLOCKED:
            self.graph.join(thread.id, explicit=True)
            thread.unjoined = []
            thread.status = Status.RUNNING
            if thread.forced:
                self.feed_forced(thread)
            elif thread.held is not None:
                token, thread.held = thread.held, None
                self.choose(thread, token)
            elif thread.script is not None:
                self.next_scripted(thread)
        else:
            self.flush_segment(thread)
            self.graph.end(thread.id)
            thread.unjoined = []
            thread.status = Status.DONE

    def _warn(self, thread: Thread, message: str) -> None:
        self.warnings.append(RunWarning(thread.id, message))

    # -- results ---------------------------------------------------------------------------------------------

    def annotated(self) -> str:
        """The answer so far with its tags, each async block after its promise."""
        return self._expand(MAIN, tags=True)

    def stitched(self) -> str:
        """The answer so far as a reader sees it: each promise replaced by its thread's text, tags removed."""
        return self._expand(MAIN, tags=False)

    def settled(self, holds: Callable[[Thread], int] | None = None) -> str:
        """The start of ``stitched()`` that nothing decoded later can change: the text in reading order up to
        the first thread still writing, that thread's text included but for its last ``holds(thread)``
        characters (the start of a stop string it may yet complete).  Every later ``settled()``, and the
        final ``stitched()``, begins with it: what a stream may send as soon as it is known."""
        if self.threads[MAIN].status is Status.DONE:
            return self.stitched()
        out: list[str] = []

        def walk(tid: int) -> bool:  # whether all of the thread's text is settled
            thread = self.threads[tid]
            own: list[tuple[int, str]] = []  # (where in out, text) of each piece of its own text
            for kind, value in self._pieces(tid):
                if kind == "text":
                    own.append((len(out), value))
                    out.append(value)
                elif kind == "child":
                    if not walk(value):
                        return False
                elif kind == "cut":  # whether a line break goes here depends on the text after it
                    return False
            if not thread.live:
                return True
            hold = holds(thread) if holds is not None else 0
            while hold > 0 and own:  # drop the held characters, and whatever came after them
                at, value = own.pop()
                del out[at:]
                if len(value) > hold:
                    out.append(value[: len(value) - hold])
                hold -= min(hold, len(value))
            return False

        walk(MAIN)
        return "".join(out)

    def cut_breaks(self) -> int:
        """How many line breaks the answer holds that no thread wrote: one at the end of each cut child's block
        that the text after it would otherwise run into (see the module's docstring)."""
        return len(_cut_breaks(self._flatten(MAIN)))

    def _expand(self, root: int, *, tags: bool) -> str:
        flat = self._flatten(root)
        breaks = _cut_breaks(flat)
        out: list[str] = []
        for i, (kind, value) in enumerate(flat):
            if kind == "text" or (kind == "tag" and tags):
                out.append(value)
            elif i in breaks:
                out.append("\n")
        return "".join(out)

    def _flatten(self, root: int) -> list[tuple[str, Any]]:
        """``root``'s pieces in reading order, each child's where its promise stands: ("text" | "tag", str),
        ("start", child) where a child's block begins and ("cut", child) where a cut child's text ends."""
        flat: list[tuple[str, Any]] = []
        stack = [iter(self._pieces(root))]
        while stack:
            piece = next(stack[-1], None)
            if piece is None:
                stack.pop()
            elif piece[0] == "child":
                flat.append(("start", piece[1]))
                stack.append(iter(self._pieces(piece[1])))
            else:
                flat.append(piece)
        return flat

    def _pieces(self, tid: int) -> list[tuple[str, Any]]:
        """The thread's pieces; a child a budget cut has a ("cut", tid) after its text, before its </async>."""
        thread = self.threads[tid]
        pieces = thread.pieces
        if tid == MAIN or thread.finish is not FinishReason.LENGTH:
            return pieces
        end = len(pieces) - 1 if pieces and pieces[-1] == ("tag", CLOSE) else len(pieces)
        return [*pieces[:end], ("cut", tid), *pieces[end:]]

    def token_ids(self, root: int = MAIN) -> list[int]:
        """The tokens placed by ``root`` and its descendants, each child's right after the token that completed
        its promise: the annotated answer's tokens in its reading order."""
        out: list[int] = []
        stack = [(root, 0, 0)]  # thread, its tokens taken, its children taken
        while stack:
            tid, taken, k = stack.pop()
            thread = self.threads[tid]
            if k < len(thread.children_at):
                at, child = thread.children_at[k]
                out.extend(thread.tokens[taken:at])
                stack.append((tid, max(at, taken), k + 1))
                stack.append((child, 0, 0))
            else:
                out.extend(thread.tokens[taken:])
        return out


def _cut_breaks(flat: list[tuple[str, Any]]) -> set[int]:
    """The indices of the ("cut", child) pieces of ``flat`` (``Interpreter._flatten``) that become a line break:
    the child's text is not empty, does not end with a line break, and the text after it starts an item."""
    after: dict[int, str] = {}
    following = ""
    for i in range(len(flat) - 1, -1, -1):  # the text after each cut, as written
        kind, value = flat[i]
        if kind == "text":
            following = (value[:LOOKAHEAD] + following)[:LOOKAHEAD]
        elif kind == "cut":
            after[i] = following
    breaks: set[int] = set()
    if not after:
        return breaks
    last, length = "", 0  # the stitched text so far: its last character and its length
    began: dict[int, tuple[bool, int]] = {}  # child -> (its block began a line, the length before it)
    for i, (kind, value) in enumerate(flat):
        if kind == "text" and value:
            last, length = value[-1], length + len(value)
        elif kind == "start":
            began[value] = (last in ("", "\n"), length)
        elif kind == "cut":
            began_line, before = began[value]
            if length > before and last != "\n" and starts_item(after[i], block_began_line=began_line):
                breaks.add(i)
                last, length = "\n", length + 1
    return breaks
