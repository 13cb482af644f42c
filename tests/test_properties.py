"""Property tests of the Pasta-Lang front end (hypothesis).

Each property runs the example count of the hypothesis profile ``properties``
(tests/conftest.py: 10,000 under ``ci``, the default; 500 under ``dev``; 200,000
under ``long``).
"""

from __future__ import annotations

import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from itertools import pairwise

import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from strategies import OPENERS, Lines, documents, line_column, messy_texts, split_texts

from pastac import CODES, Async, Document, ParseError, Promise, Sync, Text, check, parse, render, to_source
from pastac.grammar import MODES, Scanner, Severity, TagKind, TagToken, TextToken, dump, tokenize
from pastac.grammar.ast import Node, Position, Span
from pastac.grammar.diagnostics import format_github, format_text, to_json
from pastac.grammar.scanner import coalesce, scan

PROFILE = settings.get_profile("properties")  # tests/conftest.py


# ------------------------------------------------------------------ helpers

# Nothing may recurse once per nesting level (lenient mode accepts any depth and
# Python's recursion limit is about 1000).  To see such recursion on cheap inputs
# (strategies.DEEP levels) the properties run with only this many frames to spare.
FRAME_BUDGET = 60


@contextmanager
def frame_budget(frames: int = FRAME_BUDGET) -> Iterator[None]:
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def lexeme_text(lexeme: TextToken | TagToken) -> str:
    return lexeme.value if isinstance(lexeme, TextToken) else lexeme.raw


def assert_position(text: str, position: Position) -> None:
    assert 0 <= position.offset <= len(text), position
    assert (position.line, position.column) == line_column(text, position.offset), position


def assert_span(text: str, span: Span) -> None:
    assert_position(text, span.start)
    assert_position(text, span.end)
    assert span.start.offset <= span.end.offset, span


# Lenient documents nest to any depth: the helpers below use explicit stacks, and
# deep documents are compared with ``flat`` (dataclass equality recurses per level).


def walk(body: tuple[Node, ...]) -> list[Node]:
    """Every node, in source order (pre-order)."""
    out: list[Node] = []
    work = list(reversed(body))
    while work:
        node = work.pop()
        out.append(node)
        if isinstance(node, Async):
            work.extend(reversed(node.body))
    return out


def flat(document: Document) -> list[tuple[object, ...]]:
    """The tree as a pre-order list (equal lists <=> equal documents, spans ignored)."""
    return [
        (type(n).__name__, n.value)
        if isinstance(n, Text)
        else (type(n).__name__, n.topic, n.tokens)
        if isinstance(n, Promise)
        else (type(n).__name__, n.topic, n.closed, len(n.body))
        if isinstance(n, Async)
        else (type(n).__name__,)
        for n in walk(document.body)
    ]


def segments(document: Document) -> list[tuple[str, int, int, Node]]:
    """The document in source order as (kind, start, end, node): text, promise,
    sync, open and close (the closing tag of an <async> block, possibly empty)."""
    out: list[tuple[str, int, int, Node]] = []
    work: list[tuple[Node, bool]] = [(node, False) for node in reversed(document.body)]
    while work:
        node, closing = work.pop()
        span = node.span
        match node:
            case Text():
                out.append(("text", span.start.offset, span.end.offset, node))
            case Promise():
                out.append(("promise", span.start.offset, span.end.offset, node))
            case Sync():
                out.append(("sync", span.start.offset, span.end.offset, node))
            case Async() if closing:
                out.append(("close", out[-1][2], span.end.offset, node))
            case Async():
                out.append(("open", node.open_span.start.offset, node.open_span.end.offset, node))
                work.append((node, True))
                work.extend((child, False) for child in reversed(node.body))
    return out


def assert_tiles(text: str, document: Document, lexemes: list[TextToken | TagToken]) -> None:
    """The document's nodes cover the input exactly, in source order: every
    character is either in a recognised tag (a lexeme the lexer read as that
    tag) or in a Text node whose value is exactly that stretch of the input."""
    assert document.span.start.offset == 0 and document.span.end.offset == len(text)
    assert_span(text, document.span)
    tags = {(lx.span.start.offset, lx.span.end.offset): lx for lx in lexemes if isinstance(lx, TagToken)}
    boundaries = {lx.span.start.offset for lx in lexemes} | {len(text)}
    cursor = 0
    kept: list[str] = []
    outside_tags: list[str] = []
    for kind, start, end, node in segments(document):
        assert start == cursor, (kind, start, cursor)
        cursor = end
        if kind == "text":
            assert isinstance(node, Text)
            assert node.value and text[start:end] == node.value
            assert start in boundaries and end in boundaries, "text node splits a lexeme"
            assert_span(text, node.span)
            kept.append(node.value)
            outside_tags.append(text[start:end])
            continue
        if kind == "close":
            assert isinstance(node, Async)
            assert_span(text, node.span)
            assert_span(text, node.open_span)
            if not node.closed or node.open_span == node.span:  # closed by lenient mode / <async/>
                assert start == end, (kind, start, end)
                continue
        token = tags.get((start, end))
        assert token is not None and token.tag is not None, (kind, start, end, text[start:end])
        expected_kind = {
            "promise": TagKind.PROMISE,
            "sync": TagKind.SYNC,
            "open": TagKind.ASYNC_OPEN,
            "close": TagKind.ASYNC_CLOSE,
        }[kind]
        assert token.kind is expected_kind
        match node:
            case Promise() | Sync():
                assert token.tag == node
                assert_span(text, node.span)
            case Async() if kind == "open":
                assert token.tag.topic == node.topic  # type: ignore[union-attr]
                assert node.open_span == token.span
    assert cursor == len(text)
    # Nothing lost: the input without its recognised tags is exactly the text, in order.
    assert "".join(kept) == "".join(outside_tags)
    for nodes in [document.body, *(n.body for n in walk(document.body) if isinstance(n, Async))]:
        for a, b in pairwise(nodes):
            assert not (isinstance(a, Text) and isinstance(b, Text)), "adjacent text nodes"


def assert_diagnostics_located(text: str, diagnostics) -> None:  # type: ignore[no-untyped-def]
    for d in diagnostics:
        assert d.code in CODES
        assert_span(text, d.span)
        for n in d.notes:
            assert_span(text, n.span)


# ------------------------------------------------------------------ 1. generated documents


@PROFILE
@given(documents())
def test_generated_documents_round_trip_and_render(case: tuple[Document, str]) -> None:
    document, expected = case
    source = to_source(document)
    note(f"source: {source!r}")
    parsed = parse(source)  # strict: raises ParseError on any diagnostic
    assert parsed == document
    assert to_source(parsed) == source  # hence to_source(parse(to_source(d))) == to_source(d)
    assert render(document) == expected
    assert render(parsed) == expected
    # The parsed spans: the nodes tile the source, and each node's span is exactly its printed form.
    assert_tiles(source, parsed, tokenize(source))
    for node in walk(parsed.body):
        assert source[node.span.start.offset : node.span.end.offset] == to_source(Document((node,)))


def test_documents_strategy_examples() -> None:
    """The strategy's model of rendering, on fixed cases (guards the oracle itself)."""
    doc = Document(
        (
            Text("Tips: "),
            Promise("a", 3),
            Text(" and "),
            Promise("b"),
            Async((Text("A"),)),
            Async((Text("B"),), "b"),
            Sync(),
            Text(" end"),
        )
    )
    assert render(doc) == "Tips: A and B end"
    assert parse(to_source(doc)) == doc


# ------------------------------------------------------------------ 2. arbitrary text


@PROFILE
@given(messy_texts, st.sampled_from([2, 2, 0, 1, 3]))
def test_arbitrary_text_raises_only_parse_error(text: str, max_depth: int) -> None:
    with frame_budget():
        arbitrary_text_raises_only_parse_error(text, max_depth)


def arbitrary_text_raises_only_parse_error(text: str, max_depth: int) -> None:
    strict = check(text, mode="strict", max_depth=max_depth)
    lenient = check(text, mode="lenient", max_depth=max_depth)
    assert all(d.severity is Severity.ERROR for d in strict.diagnostics)
    assert all(d.severity is Severity.WARNING for d in lenient.diagnostics)
    # The mode changes the severity only.
    assert tuple(replace(d, severity=Severity.ERROR) for d in lenient.diagnostics) == strict.diagnostics
    assert flat(strict.document) == flat(lenient.document)
    # Template mode (spec §7.4): strict's diagnostics less E304, plus E307, on the same document.
    template = check(text, mode="template", max_depth=max_depth)
    assert all(d.severity is Severity.ERROR for d in template.diagnostics)
    assert [d for d in strict.diagnostics if d.code != "E304"] == [d for d in template.diagnostics if d.code != "E307"]
    assert flat(template.document) == flat(strict.document)
    assert_diagnostics_located(text, strict.diagnostics)
    for result in (strict, lenient, template):
        formatted = format_text(result.diagnostics, text, "<input>")
        assert formatted.count("[E") == len(result.diagnostics)
        for d in result.diagnostics:
            to_json(d, "<input>")
            format_github(d, "<input>")
    try:
        document = parse(text, max_depth=max_depth)
    except ParseError as error:
        assert error.diagnostics, "ParseError without diagnostics"
        assert all(d.severity is Severity.ERROR for d in error.diagnostics)
        assert error.diagnostics == strict.diagnostics
        assert str(error)
    else:
        assert strict.diagnostics == ()
        assert document == strict.document
        # Whatever strict mode accepts prints canonically and parses back to itself.
        source = to_source(document)
        assert parse(source, max_depth=max_depth) == document
        assert to_source(parse(source, max_depth=max_depth)) == source
    recovered = parse(text, mode="lenient", max_depth=max_depth)
    assert flat(recovered) == flat(lenient.document)
    render(recovered)
    dump(recovered)


def test_parse_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        check("", mode="loose")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        check("", max_depth=-1)
    assert MODES == ("strict", "lenient", "template")


# ------------------------------------------------------------------ 3. lenient mode keeps all text


@PROFILE
@given(messy_texts)
def test_lenient_mode_never_drops_text(text: str) -> None:
    with frame_budget():
        lenient_mode_never_drops_text(text)


def lenient_mode_never_drops_text(text: str) -> None:
    lexemes = tokenize(text)
    assert "".join(lexeme_text(lx) for lx in lexemes) == text
    document = parse(text, mode="lenient")
    assert_tiles(text, document, lexemes)
    # Rendering reorders text (async content moves to its promise) but neither
    # loses nor duplicates any of it.
    texts = "".join(n.value for n in walk(document.body) if isinstance(n, Text))
    assert Counter(render(document)) == Counter(texts)


# ------------------------------------------------------------------ 4. streaming scanner


def assert_held_shape(held: str) -> None:
    """What the scanner holds back: nothing, or a '<' that may still begin a
    tag (a prefix of a tag name, or a whole tag name), or an unfinished tag
    (a tag name, a delimiter other than '>', then no '<' and no '>')."""
    if not held:
        return
    assert held[0] == "<" and "<" not in held[1:] and ">" not in held, held
    prefix = any(opener.startswith(held) for opener in OPENERS)
    unfinished = any(
        held.startswith(opener) and len(held) > len(opener) and held[len(opener)] in " \t\r\n/" for opener in OPENERS
    )
    assert prefix or unfinished, held


def feed_checked(text: str, chunks: list[str], expected: list[TextToken | TagToken]) -> list[TextToken | TagToken]:
    """Feed ``chunks`` (which make up ``text``) to a scanner, checking it after every feed;
    its lexemes (not coalesced).  Linear in the text, so long texts fed a character at a time
    stay cheap."""
    lines = Lines(text)
    scanner = Scanner()
    emitted: list[TextToken | TagToken] = []
    done = 0  # characters emitted
    cut = 0  # characters fed
    for chunk in chunks:
        new = scanner.feed(chunk)
        cut += len(chunk)
        for lx in new:  # what was emitted, then what is held, is exactly what was fed
            assert text.startswith(lexeme_text(lx), done)
            done += len(lexeme_text(lx))
        emitted.extend(new)
        assert text[done:cut] == scanner.held
        assert_held_shape(scanner.held)
        assert scanner.position == lines.at(done)
    for lx in scanner.close():
        assert text.startswith(lexeme_text(lx), done)
        done += len(lexeme_text(lx))
        emitted.append(lx)
    assert done == len(text) and scanner.held == ""
    assert scanner.close() == []
    with pytest.raises(ValueError):
        scanner.feed("x")
    # Nothing emitted is retracted: every tag is final, every text piece lies inside a text lexeme.
    starts = [lx.span.start.offset for lx in expected]
    for lx in emitted:
        target = expected[bisect_right(starts, lx.span.start.offset) - 1]
        if isinstance(lx, TagToken):
            assert lx == target
        else:
            assert lx.value and isinstance(target, TextToken), (lx, target)
            assert lx.span.end.offset <= target.span.end.offset, (lx, target)
    return emitted


@PROFILE
@given(split_texts())
def test_scanner_agrees_with_lexer_on_every_split(case: tuple[str, list[str]]) -> None:
    text, chunks = case
    expected = coalesce(tokenize(text))
    assert coalesce(feed_checked(text, chunks, expected)) == expected
    assert scan(chunks) == expected
    assert coalesce(feed_checked(text, list(text), expected)) == expected  # one character at a time
    assert scan([text]) == expected


# ------------------------------------------------------------------ 5. positions

OPENER_OF = dict(zip(("PROMISE", "ASYNC_OPEN", "ASYNC_CLOSE", "SYNC"), OPENERS, strict=True))


@PROFILE
@given(split_texts())
def test_lexeme_spans_slice_back_to_their_text(case: tuple[str, list[str]]) -> None:
    text, chunks = case
    scanner = Scanner()
    streamed = [lx for chunk in chunks for lx in scanner.feed(chunk)] + scanner.close()
    for lexemes in (tokenize(text), streamed):
        for lx in lexemes:
            assert_span(text, lx.span)
            assert text[lx.span.start.offset : lx.span.end.offset] == lexeme_text(lx)
            if isinstance(lx, TagToken):
                assert lx.raw.startswith(OPENER_OF[lx.kind])
                assert (lx.tag is None) == any(d.code == "E101" for d in lx.diagnostics)
                for d in lx.diagnostics:
                    assert lx.span.start.offset <= d.span.start.offset <= d.span.end.offset <= lx.span.end.offset, d
                    assert_span(text, d.span)


def test_deep_nesting_needs_no_recursion() -> None:
    """Lenient mode (and strict mode with a high depth limit) accepts any nesting depth;
    nothing may recurse once per level (Python's recursion limit is about 1000)."""
    n = 3000
    text = '<promise topic="a"/><async>x' * n + "</async>" * n
    result = check(text, mode="lenient")
    assert [d.code for d in result.diagnostics] == ["E305"] * (n - 2)
    assert render(result.document) == "x" * n
    assert to_source(result.document) == text
    document = parse(text, max_depth=n)
    assert to_source(document) == text
    assert flat(document) == flat(result.document)
    unclosed = check("<async>" * n, mode="lenient")
    assert [d.code for d in unclosed.diagnostics].count("E301") == n
    assert dump(unclosed.document).count("unclosed") == n
