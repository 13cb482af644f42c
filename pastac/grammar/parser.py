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

import functools
import re
from dataclasses import dataclass
from typing import Literal

from pastac.grammar.ast import START, Async, Document, Node, Position, Promise, Span, Sync, Text, quote
from pastac.grammar.diagnostics import Diagnostic, Note, ParseError, Severity
from pastac.grammar.structure import bind
from pastac.grammar.tags import AsyncOpen, Lexeme, TagKind, TagToken, TextToken, lark_parser, read_tag

Mode = Literal["strict", "lenient", "template"]
MODES: tuple[Mode, ...] = ("strict", "lenient", "template")
DEFAULT_MAX_DEPTH = 2


def tokenize(text: str) -> list[Lexeme]:
    """Split ``text`` into text and tag lexemes (each tag read and diagnosed)."""
    out: list[Lexeme] = []
    pattern, at, offset = _document_lexer(), START, 0
    while offset < len(text):
        m = pattern.match(text, offset)
        assert m is not None and m.lastgroup is not None, "the document level lexes every input"
        value, offset = m.group(), m.end()
        if m.lastgroup == "TEXT":
            lexeme: Lexeme = TextToken(value, Span.of(at, value))
        else:
            lexeme = read_tag(_KINDS[m.lastgroup], value, at, at_end=offset == len(text))
        out.append(lexeme)
        at = lexeme.span.end
    return out


_KINDS = {str(kind): kind for kind in TagKind}  # a terminal's name -> its tag kind (faster than TagKind(name))


@functools.cache
def _document_lexer() -> re.Pattern[str]:
    """The document level's terminals as one regular expression, a named group each.

    lark's lexer gives the same lexemes (``tests/test_grammar_fast.py`` checks it) at several times the cost,
    which dominated ``check`` on a large document.  The terminals never both match at one place (a tag
    terminal needs a tag name and a delimiter after its ``<``, which ``TEXT`` refuses), so the order of the
    alternatives does not matter.
    """
    terminals = lark_parser("document").terminals
    return re.compile("|".join(f"(?P<{t.name}>{t.pattern.to_regexp()})" for t in terminals))


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
    """Nests the lexemes into async blocks (the document level's ``async_block`` rule), recovering from
    structural errors: a ``</async>`` that closes nothing is text (E302), a block the input leaves open is
    closed at its end (E301), ``<async/>`` is an empty block (its E107 comes from the tag level).

    The rule is nesting and nothing else, so it is followed here with a stack of open blocks rather than by
    feeding lark's LALR parser one lexeme at a time: that cost a second on a document of 10,000 promises,
    a third of ``check``, for the same tree.  The grammar still owns every lexeme (``tokenize``).
    """

    def __init__(self, lexemes: list[Lexeme], end: Position, diagnostics: list[Diagnostic]) -> None:
        self.lexemes = lexemes
        self.end = end
        self.diagnostics = diagnostics

    def build(self) -> tuple[Node, ...]:
        # the open blocks, outermost first: each one's <async> and the nodes of its body so far
        stack: list[tuple[TagToken | None, list[Node]]] = [(None, [])]
        for lexeme in self.lexemes:
            body = stack[-1][1]
            match lexeme:
                case TextToken():
                    body.append(Text(lexeme.value, lexeme.span))
                case TagToken(tag=None):  # not recoverable as a tag: text
                    body.append(Text(lexeme.raw, lexeme.span))
                case TagToken(kind=TagKind.ASYNC_CLOSE):
                    if len(stack) > 1:
                        opener, nodes = stack.pop()
                        stack[-1][1].append(self._async(opener, nodes, lexeme.span.end, closed=True))
                    else:
                        self.diagnostics.append(
                            Diagnostic("E302", "</async> closes no open <async> block", lexeme.span)
                        )
                        body.append(Text(lexeme.raw, lexeme.span))
                case TagToken(tag=AsyncOpen(self_closed=True)):
                    body.append(self._async(lexeme, [], lexeme.span.end, closed=True))
                case TagToken(kind=TagKind.ASYNC_OPEN):
                    stack.append((lexeme, []))
                case TagToken(tag=Promise() | Sync() as tag):
                    body.append(tag)
                case _:
                    raise AssertionError(f"unexpected lexeme {lexeme!r}")
        while len(stack) > 1:
            opener, nodes = stack.pop()
            assert opener is not None
            self.diagnostics.append(
                Diagnostic(
                    "E301",
                    "unclosed <async>: expected </async> before the end of input",
                    Span.point(self.end),
                    notes=(Note("<async> opened here", opener.span),),
                )
            )
            stack[-1][1].append(self._async(opener, nodes, self.end, closed=False))
        return _joined_text(stack[0][1])

    @staticmethod
    def _async(opener: TagToken | None, body: list[Node], end: Position, *, closed: bool) -> Async:
        assert opener is not None and isinstance(opener.tag, AsyncOpen)
        return Async(_joined_text(body), opener.tag.topic, closed, Span(opener.span.start, end), opener.span)


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
