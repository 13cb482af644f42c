"""Work that must grow linearly with the input: each path once quadratic, checked by counting its work or
bounding what it keeps (never by wall-clock time), at sizes where the quadratic form shows.

``benchmarks/scaling.py`` measures the commands end to end, up to 100,000 promises and 50 MB of text.
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.tree import Tree

import pastac.grammar.parser as parser_module
from pastac.data.annotate.structural import _CALCULATION, find_calculation
from pastac.grammar import check, tokenize
from pastac.grammar.ast import Text
from pastac.grammar.diagnostics import EXCERPT_WIDTH, format_text
from pastac.grammar.parser import _check_one_body
from pastac.grammar.tags import lark_parser
from pastac.ir.lengths import words
from pastac.ir.lower import lower
from pastac.viz.graphviz import MAX_INDENT, to_dot
from pastac.viz.mermaid import to_mermaid
from pastac.viz.terminal import MAX_TREE_DEPTH, show, thread_tree

# ------------------------------------------------------------------ text diagnostics


def deep(levels: int) -> str:
    """``levels`` blocks nested in each other on one line: one E305 (with a note) per level past 2."""
    return '<promise topic="t"/><async>level ' * levels + "</async>" * levels + "\n"


def test_each_excerpt_is_bounded_on_a_long_line() -> None:
    """A diagnostic on a line of 300 nested blocks printed the whole line (12 KB) under it, twice (its note):
    600 diagnostics gave ~14 MB.  Each excerpt now shows a window of the line around the span."""
    source = deep(300)
    result = check(source, mode="lenient")
    assert len(result.diagnostics) == 298
    out = format_text(result.diagnostics, source, "deep.pasta")
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= EXCERPT_WIDTH + 10
    assert len(out) < 300 * 2 * 3 * (EXCERPT_WIDTH + 10)
    # The carets still point at the span: the window around it holds the tag they mark.
    for excerpt, carets in zip(lines[1::3], lines[2::3], strict=True):  # a header, the line, the carets
        at = carets.index("^")
        assert excerpt[at:].startswith("<async>"), (excerpt, carets)


def test_a_long_line_is_cut_around_the_span_and_marked() -> None:
    source = "x" * 1000 + "</async>" + "y" * 1000 + "\nshort line\n"
    result = check(source, mode="lenient")
    assert [d.code for d in result.diagnostics] == ["E302"]  # a stray </async>
    gutter, excerpt = format_text(result.diagnostics, source, "f").splitlines()[1:]
    assert gutter.startswith("   1 | …x") and gutter.endswith("y…")
    assert excerpt.index("^") == gutter.index("</async>") and excerpt.count("^") == len("</async>")
    # A short line is shown whole, as before.
    short = "a </async> b\n"
    assert format_text(check(short, mode="lenient").diagnostics, short, "f").splitlines()[1:] == [
        "   1 | a </async> b",
        "     |   ^^^^^^^^",
    ]


class CountingSource(str):
    """A source text that counts how often it is split into lines."""

    splits = 0

    def split(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        CountingSource.splits += 1
        return super().split(*args, **kwargs)

    def splitlines(self, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        CountingSource.splits += 1
        return super().splitlines(*args, **kwargs)


def test_text_diagnostics_do_not_split_the_source() -> None:
    """Each diagnostic split the whole source into lines to print one of them (a 139 KB file with many
    diagnostics printed 2 GB in 110 s); an excerpt is now read from the span's offset."""
    source = "a </async> b\n" * 200
    result = check(source, mode="lenient")
    assert len(result.diagnostics) == 200
    CountingSource.splits = 0
    out = format_text(result.diagnostics, CountingSource(source), "f")
    assert CountingSource.splits == 0
    assert out == format_text(result.diagnostics, source, "f")
    assert "\n 200 | a </async> b\n" in out


# ------------------------------------------------------------------ the checker and the tree builder


class CountingBody(tuple):  # type: ignore[type-arg]
    """A body that counts the nodes looked up by index."""

    lookups = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        CountingBody.lookups += 1
        return super().__getitem__(index)


def orphan_lookups(n: int) -> int:
    """Node lookups to check a body of a sync then ``n`` blocks with no promise (E303 each)."""
    body = check('<promise topic="t"/><async>a</async><sync/>' + "<async>x</async>" * n, mode="lenient")
    CountingBody.lookups = 0
    _check_one_body(CountingBody(body.document.body), None, [], template=False)
    return CountingBody.lookups


def test_orphan_blocks_are_checked_in_linear_work() -> None:
    """Each orphan block walked the body before it to find the last <sync/> (quadratic); one walk now."""
    small, large = orphan_lookups(500), orphan_lookups(1000)
    assert large <= 2.2 * small, (small, large)


def text_characters_built(n: int, monkeypatch) -> int:  # type: ignore[no-untyped-def]
    """Characters of the ``Text`` nodes built while parsing ``n`` stray </async> tags (kept as text)."""
    built = 0

    class CountingText(Text):
        def __init__(self, value: str, *args: object) -> None:
            nonlocal built
            built += len(value)
            super().__init__(value, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(parser_module, "Text", CountingText)
    document = check("a</async>" * n, mode="lenient").document
    assert len(document.body) == 1 and len(document.body[0].value) == 9 * n  # type: ignore[union-attr]
    return built


def test_text_runs_are_joined_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Adjacent text pieces were joined pairwise (each join copying the run so far: quadratic)."""
    small, large = text_characters_built(1000, monkeypatch), text_characters_built(2000, monkeypatch)
    assert large <= 2.2 * small, (small, large)


# ------------------------------------------------------------------ the lexer


def lexing_peak(text: str) -> int:
    """The peak of memory allocated while ``tokenize`` lexes ``text``, less the lexemes it returns."""
    lark_parser("document")  # built once, before tracing
    tracemalloc.start()
    try:
        lexemes = tokenize(text)
        _, peak = tracemalloc.get_traced_memory()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "".join(getattr(lexeme, "value", "") for lexeme in lexemes) == text
    return peak - held


def test_lexing_text_takes_no_memory_per_character() -> None:
    """The text rule matched one character per repetition of a group, and the regex engine kept a
    backtracking point per character (~122 bytes per character of text).  It now matches runs of non-"<"
    possessively: lexing a megabyte of text (with "<" that open no tag) takes about a megabyte more."""
    text = ("Some prose, with a < sign and x < y > z in it.\n" * 21_000)[:1_000_000]
    assert lexing_peak(text) < 3 * len(text)


# ------------------------------------------------------------------ the structural annotator


@settings(max_examples=500)
@given(st.text(alphabet="0123456789٣.,=-+*/×÷^x() \n\ta", max_size=40))
def test_find_calculation_is_the_pattern_s_search(text: str) -> None:
    """The linear search finds what ``_CALCULATION.search`` finds: the same span, the same groups."""
    expected, got = _CALCULATION.search(text), find_calculation(text)
    assert (got and (got.span(), got.group(0))) == (expected and (expected.span(), expected.group(0)))


def test_find_calculation_on_a_long_digit_run() -> None:
    """A 100,000-digit run cost ``search`` n**2 / 2 steps (20,000 digits: 48 s); ``find_calculation`` reads
    it a bounded number of times.  Run in a child so that the quadratic form would be stopped, not hang."""
    code = (
        "from pastac.data.annotate.structural import find_calculation\n"
        "digits = '1' * 100_000\n"
        "assert find_calculation(digits) is None\n"
        "assert find_calculation(digits + ' * 2 = 3').group(0) == digits + ' * 2 ='\n"
        "assert find_calculation('x' + '1,' * 50_000) is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_long_lines_still_diagnose_every_tag() -> None:
    """The excerpt window changes the display only: every diagnostic of a long line is still reported."""
    source = " </async>" * 2000
    result = check(source, mode="lenient")
    assert [d.code for d in result.diagnostics] == ["E302"] * 2000
    out = format_text(result.diagnostics, source, "f")
    assert re.fullmatch(r"(f:1:\d+: warning\[E302\]: .*\n   1 \| .*\n     \| *\^+\n)+", out)


# ------------------------------------------------------------------ graph views of deep documents


def test_dot_and_mermaid_indentation_is_bounded() -> None:
    """Each level of nesting indented the DOT and Mermaid lines two spaces more: a document nested n deep
    gave lines of 2n spaces (2,000 levels: 4 KB lines, the output quadratic).  Past ``MAX_INDENT`` levels
    only the braces show the nesting."""
    graph = lower(check(deep(300), mode="lenient").document, words)
    for text in (to_dot(graph), to_mermaid(graph)):
        assert max(len(line) - len(line.lstrip(" ")) for line in text.splitlines()) <= 2 * (MAX_INDENT + 2)
    assert to_dot(graph).count("subgraph cluster_t") == 301


def tree_depth(tree: Tree) -> int:
    """The levels of ``tree`` (an explicit stack: it may be deep)."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in node.children)
    return deepest


def test_the_thread_tree_is_of_bounded_depth() -> None:
    """Rich measures every guide of every line: a thread tree 600 levels deep cost ~n**2 cell measures
    (2,000 nested blocks: 24 million, 150 s).  Threads past ``MAX_TREE_DEPTH`` are shown at that depth."""
    graph = lower(check(deep(300), mode="lenient").document, words)
    tree = thread_tree(graph)
    assert tree_depth(tree) <= 2 * MAX_TREE_DEPTH + 3
    out = io.StringIO()
    show(out, tree)
    assert out.getvalue().count("  forked by t") == 300 - MAX_TREE_DEPTH
    assert 't300 "t"  forked by t299,  depth 300, ' in out.getvalue()


def test_a_tag_text_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A well-formed tag is read without the tag grammar's parser; a malformed one is parsed (for its diagnostic)
    once per distinct text, however often the document repeats it."""
    from pastac.grammar import tags

    calls: list[str] = []
    real = tags.lark_parser

    class Counting:
        def __init__(self, start: str) -> None:
            self.parser = real(start)

        def parse(self, raw: str):  # type: ignore[no-untyped-def]
            calls.append(raw)
            return self.parser.parse(raw)

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self.parser, name)  # the terminals the fast paths are built from

    monkeypatch.setattr(tags, "lark_parser", Counting)
    tags._parse_tag.cache_clear()
    doc = "".join(f'<promise topic="p{i % 3}"/><async>x</async>' for i in range(60)) + "<sync/>"
    assert not check(doc, mode="strict").errors
    assert calls == []
    bad = "".join(f"<promise topic=p{i % 2}/><async >x</async><sync x/>" for i in range(30))
    assert {d.code for d in check(bad, mode="strict").errors} >= {"E102", "E108"}
    assert sorted(calls) == ["<promise topic=p0/>", "<promise topic=p1/>", "<sync x/>"]
    tags._parse_tag.cache_clear()
