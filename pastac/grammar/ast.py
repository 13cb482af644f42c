"""The Pasta-Lang syntax tree.

Invariants:
- Every node is a frozen dataclass; spans never take part in equality, so a
  document printed and parsed again compares equal to the original.
- Spans are half-open ``[start, end)`` over the source text; lines and columns
  are 1-based and count code points; offsets are 0-based.
- A parsed body never holds two adjacent ``Text`` nodes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import assert_never


@dataclass(frozen=True, order=True)
class Position:
    """A point in the source: 0-based offset, 1-based line and column (code points); ordered by offset."""

    offset: int
    line: int
    column: int

    def advance(self, text: str) -> Position:
        """The position reached after reading ``text`` from here."""
        newlines = text.count("\n")
        if newlines == 0:
            return Position(self.offset + len(text), self.line, self.column + len(text))
        tail = len(text) - text.rfind("\n") - 1
        return Position(self.offset + len(text), self.line + newlines, tail + 1)

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


START = Position(0, 1, 1)


@dataclass(frozen=True)
class Span:
    """The stretch ``[start, end)`` of the source a node or diagnostic covers."""

    start: Position
    end: Position

    @staticmethod
    def point(at: Position) -> Span:
        """The empty span at ``at``."""
        return Span(at, at)

    @staticmethod
    def of(start: Position, text: str) -> Span:
        """The span of ``text`` written from ``start``."""
        return Span(start, start.advance(text))

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


_NOWHERE = Span(START, START)


@dataclass(frozen=True)
class Text:
    """Text of a body, verbatim."""

    value: str
    span: Span = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Promise:
    """``<promise topic=".." tokens=".."/>``: a fork point in its thread."""

    topic: str
    tokens: int | None = None
    span: Span = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Async:
    """``<async>..</async>``: the content that fulfils a promise.

    ``topic`` is the optional repeated topic.  ``closed`` is False only for a
    block that lenient mode closed at the end of its enclosing body.
    """

    body: tuple[Node, ...]
    topic: str | None = None
    closed: bool = True
    span: Span = field(default=_NOWHERE, compare=False, repr=False)
    open_span: Span = field(default=_NOWHERE, compare=False, repr=False)


@dataclass(frozen=True)
class Sync:
    """``<sync/>``: the writing thread waits for every thread it forked."""

    span: Span = field(default=_NOWHERE, compare=False, repr=False)


Node = Text | Promise | Async | Sync


@dataclass(frozen=True)
class Document:
    """A whole document: its top-level body."""

    body: tuple[Node, ...]
    span: Span = field(default=_NOWHERE, compare=False, repr=False)


def decimal_digits(n: int) -> str:
    """``n`` in decimal, however large (``str(n)`` refuses ints of more than 4300 digits)."""
    return f"{Decimal(n):f}"


def decimal_int(digits: str) -> int:
    """The int of a string of ASCII digits, however long (``int(s)`` refuses more than 4300)."""
    return int(Decimal(digits))


def quote(value: str) -> str:
    """A string as a JSON literal: one line, every control character escaped."""
    return json.dumps(value, ensure_ascii=False)


def dump(document: Document) -> str:
    """One node per line, indented by nesting, with spans: the golden AST form."""
    lines = [f"document {document.span}"]

    def walk(body: tuple[Node, ...], indent: str) -> None:
        # An explicit stack, not recursion: lenient documents may nest to any depth.
        work = [(node, indent) for node in reversed(body)]
        while work:
            node, indent = work.pop()
            match node:
                case Text(value=value, span=span):
                    lines.append(f"{indent}text {span} {quote(value)}")
                case Promise(topic=topic, tokens=tokens, span=span):
                    size = "" if tokens is None else f" tokens={decimal_digits(tokens)}"
                    lines.append(f"{indent}promise {span} topic={quote(topic)}{size}")
                case Async(body=inner, topic=topic, closed=closed, span=span):
                    extra = "" if topic is None else f" topic={quote(topic)}"
                    extra += "" if closed else " unclosed"
                    lines.append(f"{indent}async {span}{extra}")
                    work.extend((child, indent + "  ") for child in reversed(inner))
                case Sync(span=span):
                    lines.append(f"{indent}sync {span}")
                case _:
                    assert_never(node)

    walk(document.body, "  ")
    return "\n".join(lines) + "\n"
