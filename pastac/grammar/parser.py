"""Batch parsing: text -> lexemes -> syntax tree -> checked document.

Invariants:
- Every input parses to a ``Document`` plus diagnostics; nothing raises but
  ``ParseError`` (strict or template mode, when there are errors).
- The three modes read a document alike (the same recovered document); they
  differ in what counts and how much: lenient reports strict's diagnostics as
  warnings; template mode (spec §7.4) is strict for a template, a document
  whose promises the model fulfils: a promise without its block is what a
  template is (no E304), a block that fulfils a promise is an error (E307).
- Lenient mode never drops text: every character of the input is rendered,
  kept as text, or belongs to a tag.
- ``tokenize`` is the reference the streaming scanner must agree with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from lark import Token, Tree
from lark.exceptions import UnexpectedToken

from pastac.grammar.ast import START, Async, Document, Node, Position, Promise, Span, Sync, Text, quote
from pastac.grammar.diagnostics import Diagnostic, Note, ParseError, Severity
from pastac.grammar.structure import bind
from pastac.grammar.tags import AsyncClose, AsyncOpen, Lexeme, TagKind, TagToken, TextToken, lark_parser, read_tag

Mode = Literal["strict", "lenient", "template"]
MODES: tuple[Mode, ...] = ("strict", "lenient", "template")
DEFAULT_MAX_DEPTH = 2


def tokenize(text: str) -> list[Lexeme]:
    """Split ``text`` into text and tag lexemes (each tag read and diagnosed)."""
    out: list[Lexeme] = []
    for tok in lark_parser("document").lex(text):
        assert tok.start_pos is not None and tok.line is not None and tok.column is not None
        start = Position(tok.start_pos, tok.line, tok.column)
        if tok.type == "TEXT":
            out.append(TextToken(str(tok), Span.of(start, str(tok))))
        else:
            end = tok.start_pos + len(tok)
            out.append(read_tag(TagKind(tok.type), str(tok), start, at_end=end == len(text)))
    return out


@dataclass(frozen=True)
class ParseResult:
    """A document and every diagnostic found in it, in source order, at the severity of the parsing mode."""

    document: Document
    diagnostics: tuple[Diagnostic, ...]
    source: str
    filename: str

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        """The diagnostics that are errors (none in lenient mode)."""
        return tuple(d for d in self.diagnostics if d.severity is Severity.ERROR)

    @property
    def ok(self) -> bool:
        """No diagnostic is an error (always so in lenient mode)."""
        return not self.errors


def check(
    text: str, *, mode: Mode = "strict", max_depth: int = DEFAULT_MAX_DEPTH, filename: str = "<input>"
) -> ParseResult:
    """Parse ``text`` and report every diagnostic of ``mode`` (strict, lenient, or template: spec §7); never
    raises on bad input."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if max_depth < 0:
        raise ValueError(f"max_depth must be >= 0, not {max_depth}")
    end = START.advance(text)
    diagnostics: list[Diagnostic] = []
    lexemes = tokenize(text)
    for lexeme in lexemes:
        if isinstance(lexeme, TagToken):
            diagnostics.extend(lexeme.diagnostics)
    body = _Builder(lexemes, end, diagnostics).build()
    document = Document(body, Span(START, end))
    _check_body(document.body, 0, max_depth, None, diagnostics, template=mode == "template")
    severity = Severity.WARNING if mode == "lenient" else Severity.ERROR
    ordered = sorted(diagnostics, key=lambda d: (d.span.start.offset, d.span.end.offset, d.code))
    return ParseResult(document, tuple(d.with_severity(severity) for d in ordered), text, filename)


def parse(
    text: str, *, mode: Mode = "strict", max_depth: int = DEFAULT_MAX_DEPTH, filename: str = "<input>"
) -> Document:
    """Parse a Pasta-Lang document.

    Strict mode raises ``ParseError`` (with every diagnostic) on any deviation, and so does template mode
    (where a promise needs no block, and may have none); lenient mode recovers and returns the document
    (``check`` gives its warnings).
    """
    result = check(text, mode=mode, max_depth=max_depth, filename=filename)
    if result.errors:
        raise ParseError(result.errors, text, filename)
    return result.document


def _joined_text(nodes: list[Node]) -> tuple[Node, ...]:
    """``nodes`` with each run of adjacent ``Text`` nodes joined into one (joined once per run, not
    pairwise: a run of n pieces costs its length, not n times it)."""
    out: list[Node] = []
    run: list[Text] = []
    for node in [*nodes, None]:
        if isinstance(node, Text):
            run.append(node)
            continue
        if len(run) == 1:
            out.append(run[0])
        elif run:
            out.append(Text("".join(t.value for t in run), Span(run[0].span.start, run[-1].span.end)))
        run.clear()
        if node is not None:
            out.append(node)
    return tuple(out)


class _Builder:
    """Nests the lexemes into async blocks with the grammar's LALR parser, recovering from its errors."""

    def __init__(self, lexemes: list[Lexeme], end: Position, diagnostics: list[Diagnostic]) -> None:
        self.lexemes = lexemes
        self.end = end
        self.diagnostics = diagnostics
        # Synthetic lexemes (closes inserted by recovery) are appended here.
        self.items: list[Lexeme | None] = list(lexemes)
        self.as_text: set[int] = set()
        self.synthetic_close: set[int] = set()

    def _feed(self, parser, kind: str, index: int) -> None:  # type: ignore[no-untyped-def]
        parser.feed_token(Token(kind, str(index)))

    def build(self) -> tuple[Node, ...]:
        parser = lark_parser("document").parse_interactive(start="document")
        open_stack: list[int] = []
        for i, lexeme in enumerate(self.lexemes):
            match lexeme:
                case TextToken():
                    self._feed(parser, "TEXT", i)
                case TagToken(tag=None):
                    self.as_text.add(i)
                    self._feed(parser, "TEXT", i)
                case TagToken(kind=TagKind.ASYNC_CLOSE):
                    if "ASYNC_CLOSE" in parser.choices() and open_stack:
                        open_stack.pop()
                        self._feed(parser, "ASYNC_CLOSE", i)
                    else:
                        self.diagnostics.append(
                            Diagnostic("E302", "</async> closes no open <async> block", lexeme.span)
                        )
                        self.as_text.add(i)
                        self._feed(parser, "TEXT", i)
                case TagToken(tag=AsyncOpen(self_closed=True)):
                    self._feed(parser, "ASYNC_OPEN", i)
                    self._feed(parser, "ASYNC_CLOSE", self._synthetic())
                case TagToken(kind=kind):
                    if kind is TagKind.ASYNC_OPEN:
                        open_stack.append(i)
                    self._feed(parser, str(kind), i)
        while open_stack:
            opened = self.lexemes[open_stack.pop()]
            self.diagnostics.append(
                Diagnostic(
                    "E301",
                    "unclosed <async>: expected </async> before the end of input",
                    Span.point(self.end),
                    notes=(Note("<async> opened here", opened.span),),
                )
            )
            self._feed(parser, "ASYNC_CLOSE", self._synthetic())
        try:
            tree = parser.feed_eof()
        except UnexpectedToken as error:  # the recovery above keeps the grammar satisfied
            raise AssertionError(f"structure recovery left the parser unfinished: {error}") from error
        return self._nodes(tree.children)

    def _synthetic(self) -> int:
        self.items.append(None)
        index = len(self.items) - 1
        self.synthetic_close.add(index)
        return index

    def _nodes(self, children: list[Tree | Token]) -> tuple[Node, ...]:
        """The nodes of the top-level body.  Nested blocks are built with an explicit
        stack, not by recursion: lenient mode accepts any nesting depth."""
        top: list[Node] = []
        # (the async_block tree being built or None for the top level, its remaining children, its nodes)
        stack: list[tuple[Tree | None, Iterator[Tree | Token], list[Node]]] = [(None, iter(children), top)]
        while stack:
            tree, remaining, out = stack[-1]
            child = next(remaining, None)
            if child is None:
                stack.pop()
                if tree is not None:
                    stack[-1][2].append(self._async(tree, _joined_text(out)))
            elif isinstance(child, Tree):
                stack.append((child, iter(child.children[1:-1]), []))
            else:
                self._leaf(int(child), out)
        return _joined_text(top)

    def _leaf(self, i: int, out: list[Node]) -> None:
        lexeme = self.lexemes[i]
        if isinstance(lexeme, TextToken) or i in self.as_text:
            out.append(Text(lexeme.value if isinstance(lexeme, TextToken) else lexeme.raw, lexeme.span))
        else:
            assert isinstance(lexeme, TagToken) and isinstance(lexeme.tag, Promise | Sync)
            out.append(lexeme.tag)

    def _async(self, tree: Tree, body: tuple[Node, ...]) -> Async:
        first, last = tree.children[0], tree.children[-1]
        opener = self.lexemes[int(first)]
        assert isinstance(opener, TagToken) and isinstance(opener.tag, AsyncOpen)
        close_index = int(last)
        synthetic = close_index in self.synthetic_close
        if synthetic and opener.tag.self_closed:
            end, closed = opener.span.end, True
        elif synthetic:
            end, closed = self.end, False
        else:
            closer = self.lexemes[close_index]
            assert isinstance(closer, TagToken) and isinstance(closer.tag, AsyncClose)
            end, closed = closer.span.end, True
        return Async(body, opener.tag.topic, closed, Span(opener.span.start, end), opener.span)


def _check_body(
    body: tuple[Node, ...],
    depth: int,
    max_depth: int,
    parent: Async | None,
    diagnostics: list[Diagnostic],
    *,
    template: bool = False,
) -> None:
    """The semantic rules of spec §4 over one body, then its nested bodies (depth first, in source
    order; with an explicit stack, not by recursion: lenient mode accepts any nesting depth).  ``template``:
    the rules of a template (spec §7.4) instead of E304."""
    # (body, its depth, the block whose body it is, that block's parent)
    work: list[tuple[tuple[Node, ...], int, Async | None, Async | None]] = [(body, depth, parent, None)]
    while work:
        body, depth, parent, grandparent = work.pop()
        if parent is not None and depth > max_depth:
            notes = (Note("inside this <async> block", grandparent.open_span),) if grandparent is not None else ()
            diagnostics.append(
                Diagnostic(
                    "E305", f"<async> nested {depth} deep; the limit is {max_depth}", parent.open_span, notes=notes
                )
            )
        _check_one_body(body, parent, diagnostics, template=template)
        work.extend((node.body, depth + 1, node, parent) for node in reversed(body) if isinstance(node, Async))


def _check_one_body(
    body: tuple[Node, ...], parent: Async | None, diagnostics: list[Diagnostic], *, template: bool
) -> None:
    binding = bind(body)
    for a, p in binding.fulfils.items():
        block, promise = body[a], body[p]
        assert isinstance(block, Async) and isinstance(promise, Promise)
        if template:
            diagnostics.append(
                Diagnostic(
                    "E307",
                    "a template's promises are fulfilled by the model: remove this <async> block",
                    block.open_span,
                    notes=(Note("promise declared here", promise.span),),
                )
            )
        if block.topic is not None and block.topic != promise.topic:
            diagnostics.append(
                Diagnostic(
                    "E206",
                    f"<async topic={quote(block.topic)}> does not match its promise's topic {quote(promise.topic)}",
                    block.open_span,
                    notes=(Note("promise declared here", promise.span),),
                )
            )
    # Per orphan: the last <sync/> before it, if a promise comes before that sync (one walk of the body).
    joined_at: dict[int, int] = {}
    orphans, last_sync, promised, promised_at_sync = set(binding.orphans), None, False, False
    for i, node in enumerate(body):
        if isinstance(node, Sync):
            last_sync, promised_at_sync = i, promised
        elif isinstance(node, Promise):
            promised = True
        elif i in orphans and last_sync is not None and promised_at_sync:
            joined_at[i] = last_sync
    for a in binding.orphans:
        block = body[a]
        assert isinstance(block, Async)
        sync = joined_at.get(a)
        notes = (
            (Note("the promises before this <sync/> were joined here", body[sync].span),) if sync is not None else ()
        )
        diagnostics.append(
            Diagnostic(
                "E303",
                "<async> block without an unfulfilled promise before it in the same body",
                block.open_span,
                notes=notes,
            )
        )
    for p, s in () if template else binding.unfulfilled:  # a template's promises have no blocks
        promise = body[p]
        assert isinstance(promise, Promise)
        if s is not None:
            notes = (Note("joined by this <sync/>", body[s].span),)
        elif parent is not None:
            notes = (Note("joined at the end of this <async> block", parent.span),)
        else:
            notes = ()  # joined by the end of the document
        message = f"promise {quote(promise.topic)} is never fulfilled by an <async> block"
        diagnostics.append(Diagnostic("E304", message, promise.span, notes=notes))
    for s in binding.empty_syncs:
        diagnostics.append(Diagnostic("E306", "<sync/> joins no promise", body[s].span))
