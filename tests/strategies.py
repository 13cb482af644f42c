"""Hypothesis strategies for Pasta-Lang (reusable by any test module).

Two families:

- ``documents()``: valid syntax trees that obey every rule of the language
  (spec §4) and the depth limit, each with the rendering a reader should see,
  computed here independently of ``pastac.grammar.render``.
- ``messy_texts()`` / ``split_texts()``: arbitrary input built from tag
  fragments, well-formed tags, entities, line breaks, unicode and plain
  hypothesis text, for the "never crashes, never loses text" properties and
  for the streaming scanner (with arbitrary chunk boundaries).

Also the independent oracles those properties need: ``line_column`` (a
position from an offset, computed without ``pastac``) and ``TAG_START``.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_left
from collections import deque
from itertools import pairwise

from hypothesis import strategies as st

from pastac.grammar.ast import Async, Document, Node, Position, Promise, Sync, Text

OPENERS = ("<promise", "<async", "</async", "<sync")
# White space, '/' and '>' end a tag name (pasta.lark); nothing else does.
DELIMITERS = " \t\r\n/>"
# Where a tag starts inside text that is followed by more text.
TAG_START = re.compile(r"<(?:promise|async|/async|sync)[ \t\r\n/>]")
# A tag name at the end of the input also starts a (unterminated) tag.
TAG_NAME_AT_END = re.compile(r"<(?:promise|async|/async|sync)\Z")

DEFAULT_MAX_DEPTH = 2
DEEP = 90  # nesting depth of the deep fragments, more than the frame budget of the properties


def line_column(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column (code points) of ``offset`` in ``text``; '\\n' ends a line."""
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


class Lines:
    """``line_column`` for many offsets of one text (bisect over its line breaks)."""

    def __init__(self, text: str) -> None:
        self.breaks = [i for i, ch in enumerate(text) if ch == "\n"]

    def at(self, offset: int) -> Position:
        line = bisect_left(self.breaks, offset)  # line breaks before offset
        start = self.breaks[line - 1] + 1 if line else 0
        return Position(offset, line + 1, offset - start + 1)


# ------------------------------------------------------------------ valid documents

# Text that looks like markup but is not a tag: a '<' that does not start one
# of the four tag names followed by a delimiter.  Concatenations are filtered
# with TAG_START, so pieces such as "<sync" may appear (followed by anything
# that is not a delimiter, e.g. another '<').
TRICKY_TEXT = (
    "a < b",
    "a<b",
    "x <= y",
    "<div>",
    "</div>",
    "<br/>",
    "<promises>",
    "<asyncio>",
    "</promise>",
    "</sync>",
    "<promise_x/>",
    '<Promise topic="a"/>',
    "<SYNC/>",
    "< sync/>",
    "</ async>",
    "<<",
    "<",
    ">",
    "/>",
    "</",
    "<asyncs>",
    "</asyncx>",
    "<sync-point/>",
    '<promise\u00a0topic="x"/>',
    "<async\x0b>",
    "<sync\x0c/>",
    "<!-- c -->",
    "&amp;",
    "&",
    "&lt;",
    '"',
    "=",
    ' topic="t"',
    "\n",
    "\r\n",
    "\r",
    "\t",
    " ",
    "<sync",
    "<async",
    "</async",
    "<promise",
    "<pro",
    "<asy",
    "</as",
    "<sy",
    "é",
    "日本語",
    "😀",
    "\u2028",
    "\x85",
    "\x00",
    "\ufeff",
)

_tricky = st.sampled_from(TRICKY_TEXT)
# Kept cheap to generate (few draws per text): one tricky piece, a little
# plain text, or a short mix of both.
doc_texts = st.one_of(
    _tricky,
    st.text(min_size=1, max_size=5),
    st.tuples(_tricky, _tricky).map("".join),
    st.tuples(st.text(max_size=3), _tricky, st.text(alphabet='ab <>/="&\n', max_size=3)).map("".join),
).filter(lambda s: bool(s) and not TAG_START.search(s))

TOPIC_PIECES = (
    "&",
    '"',
    "<",
    ">",
    "&amp;",
    "&quot;",
    "&lt;",
    "&gt;",
    "&amp",
    "a<b>c",
    " x ",
    "\n",
    "\r\n",
    "\t",
    "sleep",
    "coordinates extraction",
    "é",
    "😀",
    "\\",
    "'",
    "=",
    "/>",
    "<promise",
    "</async>",
)

_topic_piece = st.sampled_from(TOPIC_PIECES)
topics = st.one_of(
    st.sampled_from([t for t in TOPIC_PIECES if t.strip()]),
    st.text(min_size=1, max_size=5),
    st.tuples(st.text(max_size=3), _topic_piece, st.text(max_size=3), _topic_piece).map("".join),
).filter(lambda t: bool(t.strip()))  # the language's rule (E202)

token_counts = st.one_of(
    st.none(),
    st.integers(0, 1000),
    st.integers(0, 10**30),
    st.sampled_from([10**4300, 10**5000 - 1]),  # past Python's int/str conversion limit; lengths have no bound
)


_STEPS = (st.integers(0, 6), st.integers(0, 3))


def _render(segments: list[str | list[str]]) -> str:
    return "".join(s if isinstance(s, str) else "".join(s) for s in segments)


@functools.cache
def _choice(options: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(options)


@functools.cache
def _body(depth: int, max_depth: int) -> st.SearchStrategy[tuple[tuple[Node, ...], str]]:
    return _draw_body(depth, max_depth)  # strategies are cached: building them is costly


@st.composite
def _draw_body(draw: st.DrawFn, depth: int, max_depth: int) -> tuple[tuple[Node, ...], str]:
    """One valid body at nesting ``depth`` and what it renders to.

    The model: promises queue up (oldest first); an <async> block fulfils the
    oldest queued promise and its rendering goes where that promise was; a
    <sync/> may follow only once every promise since the previous sync is
    fulfilled, and only if there was one; the end of the body needs every
    promise fulfilled.  Only bodies above the depth limit may hold promises.
    """
    nodes: list[Node] = []
    segments: list[str | list[str]] = []
    pending: deque[tuple[str, list[str]]] = deque()  # (topic, the promise's slot in the rendering)
    since_sync = 0

    def text() -> None:
        value = draw(doc_texts)
        nodes.append(Text(value))
        segments.append(value)

    def fulfil() -> None:
        topic, slot = pending.popleft()
        inner, rendered = draw(_body(depth + 1, max_depth))
        repeat = draw(st.booleans())
        nodes.append(Async(inner, topic if repeat else None))
        slot.append(rendered)

    steps = draw(_STEPS[0] if depth == 0 else _STEPS[1])
    for _ in range(steps):
        options: list[str] = []
        if not nodes or not isinstance(nodes[-1], Text):
            options.append("text")
        if depth < max_depth:
            options.append("promise")
        if pending:
            options.append("async")
        if since_sync and not pending:
            options.append("sync")
        if not options:
            break
        match draw(_choice(tuple(options))):
            case "text":
                text()
            case "promise":
                topic = draw(topics)
                nodes.append(Promise(topic, draw(token_counts)))
                slot: list[str] = []
                segments.append(slot)
                pending.append((topic, slot))
                since_sync += 1
            case "async":
                fulfil()
            case "sync":
                nodes.append(Sync())
                since_sync = 0
    while pending:
        if not isinstance(nodes[-1], Text) and draw(st.booleans()):
            text()
        fulfil()
    return tuple(nodes), _render(segments)


@st.composite
def documents(draw: st.DrawFn, max_depth: int = DEFAULT_MAX_DEPTH) -> tuple[Document, str]:
    """A valid document (strict mode accepts its source) and its expected rendering."""
    body, rendered = draw(_body(0, max_depth))
    if body and isinstance(body[-1], Text) and TAG_NAME_AT_END.search(body[-1].value):
        # "<sync" at the very end of the input starts an (unterminated) tag: keep it text.
        body = (*body[:-1], Text(body[-1].value + "."))
        rendered += "."  # the last top-level text is the last thing rendered
    return Document(body), rendered


# ------------------------------------------------------------------ arbitrary input

FRAGMENTS = (
    "<promise",
    "<async",
    "</async",
    "<sync",
    "/>",
    ">",
    "<",
    "</",
    '"',
    "=",
    " topic=",
    " tokens=",
    ' topic="t"',
    ' topic="u"',
    ' tokens="3"',
    ' tokens="x"',
    ' tokens="-1"',
    ' extra="1"',
    "topic",
    '"a"',
    '""',
    '" "',
    "&amp;",
    "&quot;",
    "&lt;",
    "&gt;",
    "&",
    "&am",
    ";",
    "\n",
    "\r\n",
    "\r",
    "\t",
    " ",
    "/",
    "a",
    "b",
    "x < y",
    "<div>",
    "<promises>",
    "<asyncio>",
    "</promise>",
    "é",
    "日本",
    "😀",
    "\u2028",
    "\x00",
    "\ufeff",
    "0",
    "12",
    # whole tags, so that well-formed structure (and its errors) is common
    '<promise topic="t"/>',
    '<promise topic="t" tokens="2"/>',
    '<promise topic="u"/>',
    "<async>",
    '<async topic="t">',
    '<async topic="v">',
    "</async>",
    "<sync/>",
    "<async/>",
    "</async/>",
    "<sync>",
    "<promise/>",
    '<promise topic=""/>',
    "<promise topic=t/>",
    '<promise topic="a&b"/>',
    '<promise topic="a/>',
    '<promise  topic = "t"\n tokens="4" />',
    "<sync a/>",
    "</async x>",
    '<promise topic="t"topic="u"/>',
    '<promise topic="t" extra="1"/>',
    '<async x="1">',
    '<promise topic="t" tokens="007"/>',
    # lengths have no upper bound (spec §3.1), also past Python's 4300-digit int/str conversion limit
    '<promise topic="t" tokens="' + "9" * 4301 + '"/>',
    ' tokens="' + "0" * 4400 + '1"',
    # deep nesting: lenient mode accepts any depth, so nothing may recurse once per level.  Run
    # under a small frame budget (test_properties.frame_budget), 90 levels expose such recursion.
    "<async>" * DEEP,
    '<promise topic="t"/><async>x' * DEEP + "</async>" * DEEP,
    "</async>" * 20,
)

_fragment = st.one_of(
    st.sampled_from(FRAGMENTS),
    st.sampled_from(FRAGMENTS),  # weight the fragments over plain text
    st.text(max_size=4),
    st.characters(),
)

messy_texts = st.one_of(
    st.lists(_fragment, max_size=16).map("".join),
    st.text(max_size=12),
    st.text(alphabet='<>/"= \nasyncpromisetokn&', max_size=24),
)


@st.composite
def split_texts(draw: st.DrawFn, texts: st.SearchStrategy[str] = messy_texts) -> tuple[str, list[str]]:
    """A messy text and a way to cut it into chunks (empty chunks included)."""
    text = draw(texts)
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    bounds = [0, *cuts, len(text)]
    return text, [text[a:b] for a, b in pairwise(bounds)]
