"""Located diagnostics and their stable error codes.

Invariants:
- A code, once published, keeps its meaning; ``CODES`` is the one table of
  them and the specification's error-code section lists the same set (a test
  checks it).
- A diagnostic is data: the severity comes from the parsing mode, the text
  forms (``text``, ``json``, ``github``) are produced only by the formatters here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import StrEnum

from pastac.grammar.ast import Span


class Severity(StrEnum):
    """How a diagnostic counts: an error in strict and template mode, a warning in lenient mode."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Code:
    """One error code (``E101``): its short name, the rule a document breaks, and how lenient mode recovers."""

    code: str
    name: str
    rule: str
    recovery: str


CODES: dict[str, Code] = {
    c.code: c
    for c in (
        Code(
            "E101",
            "unterminated-tag",
            "A tag has no closing '>' before the next '<' or the end of input.",
            "The tag's characters are kept as text.",
        ),
        Code(
            "E102",
            "unquoted-value",
            "An attribute value is not enclosed in double quotes.",
            "The value runs to the next white space, '/' or '>'.",
        ),
        Code(
            "E103",
            "malformed-attribute",
            'An attribute is not of the form NAME="VALUE", or is not separated from the previous one by white space.',
            "The attribute is read as far as possible.",
        ),
        Code(
            "E104",
            "unterminated-value",
            "A quoted attribute value has no closing quote inside its tag.",
            "The value runs to the end of the tag.",
        ),
        Code(
            "E105",
            "bad-escape",
            "A '&' in an attribute value does not start &quot; &amp; &lt; or &gt;.",
            "The '&' is kept literally.",
        ),
        Code(
            "E106",
            "not-self-closing",
            "<promise .../> and <sync/> must end with '/>'.",
            "The tag is read as if self-closed.",
        ),
        Code(
            "E107",
            "self-closed-async",
            "<async> and </async> must end with '>', not '/>'.",
            "<async/> is read as an empty block; </async/> as </async>.",
        ),
        Code(
            "E108", "attributes-not-allowed", "<sync/> and </async> take no attributes.", "The attributes are ignored."
        ),
        Code("E201", "missing-topic", "A promise has no 'topic' attribute.", "The topic is empty."),
        Code("E202", "empty-topic", "A promise's topic is empty or white space only.", "The topic is kept."),
        Code("E203", "bad-tokens", "'tokens' is not a non-negative decimal integer.", "The length is unknown."),
        Code(
            "E204",
            "unknown-attribute",
            "A tag has an attribute the language does not define.",
            "The attribute is ignored.",
        ),
        Code("E205", "duplicate-attribute", "A tag gives the same attribute twice.", "The first one counts."),
        Code(
            "E206",
            "topic-mismatch",
            "An <async topic=..> differs from the topic of the promise it fulfils.",
            "The promise's topic counts.",
        ),
        Code(
            "E301",
            "unclosed-async",
            "An <async> block has no </async> before the end of its enclosing body.",
            "The block is closed at the end of its enclosing body.",
        ),
        Code("E302", "stray-close", "A </async> closes no open <async> block.", "The tag is kept as text."),
        Code(
            "E303",
            "async-without-promise",
            "An <async> block has no unfulfilled promise before it in the "
            "same body (a <sync/> in between joins the promises before it).",
            "The block's content is rendered where it was written.",
        ),
        Code(
            "E304",
            "unfulfilled-promise",
            "A <sync/>, or the end of a body, joins a promise that no <async> block fulfilled.",
            "The promise renders as nothing.",
        ),
        Code(
            "E305",
            "too-deep",
            "An <async> block is nested deeper than the depth limit (default 2).",
            "The block is accepted.",
        ),
        Code("E306", "empty-sync", "A <sync/> joins no promise.", "The sync is ignored."),
        Code(
            "E307",
            "fulfilled-in-template",
            "In a template, an <async> block fulfils a promise: a template's promises are fulfilled by the model.",
            "The block fulfils its promise, as in any other mode.",
        ),
    )
}


@dataclass(frozen=True)
class Note:
    """A place related to a diagnostic (``promise declared here``)."""

    message: str
    span: Span


@dataclass(frozen=True)
class Diagnostic:
    """One located problem with its notes; ``code`` must be one of ``CODES`` (else ``ValueError``)."""

    code: str
    message: str
    span: Span
    severity: Severity = Severity.ERROR
    notes: tuple[Note, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.code not in CODES:
            raise ValueError(f"unknown diagnostic code {self.code!r}")

    def with_severity(self, severity: Severity) -> Diagnostic:
        """This diagnostic at ``severity``."""
        return replace(self, severity=severity)


class ParseError(Exception):
    """Raised by strict parsing when a document has errors; holds them all."""

    def __init__(self, diagnostics: tuple[Diagnostic, ...], source: str, filename: str) -> None:
        self.diagnostics = diagnostics
        self.source = source
        self.filename = filename
        super().__init__(format_text(diagnostics, source, filename).rstrip("\n"))


EXCERPT_WIDTH = 160  # the most characters of a source line an excerpt shows; a longer line is cut around the span


def _excerpt(source: str, span: Span) -> list[str]:
    """The span's first source line and carets under it (tabs kept so carets align).

    Costs the excerpt's width, not the source's size: the line is found from the span's offset and column
    (never by splitting the source), and a line longer than ``EXCERPT_WIDTH`` is shown as a window of that
    many characters around the span's start, its cut ends marked ``…``."""
    first = span.start.column - 1  # the span's start, as an index into its line
    line_start = min(max(0, span.start.offset - first), len(source))
    head = source[line_start : line_start + EXCERPT_WIDTH + 1]
    newline = head.find("\n")
    begin, left, right = 0, "", ""
    if newline != -1 or len(head) <= EXCERPT_WIDTH:  # the whole line
        text = (head if newline == -1 else head[:newline]).rstrip("\r")
        end = len(text)
    else:  # a long line: a window around the span's start
        begin = max(0, first - EXCERPT_WIDTH // 4)
        text = source[line_start + begin : line_start + begin + EXCERPT_WIDTH + 1]
        newline = text.find("\n")
        text = text if newline == -1 else text[:newline]
        if len(text) > EXCERPT_WIDTH:
            text, right = text[:EXCERPT_WIDTH], "…"
        else:
            text = text.rstrip("\r")
        left = "…" if begin else ""
        end = len(text) + len(right)  # carets may reach the mark of the cut
    at = first - begin
    same_line = span.end.line == span.start.line
    width = max(1, span.end.column - span.start.column if same_line else len(text) - at)
    if begin or right:
        width = max(1, min(width, end - at))
    pad = " " * len(left) + "".join(ch if ch == "\t" else " " for ch in text[:at])
    gutter = f"{span.start.line:>4} | "
    return [gutter + left + text + right, " " * (len(gutter) - 2) + "| " + pad + "^" * width]


def format_text(diagnostics: tuple[Diagnostic, ...] | list[Diagnostic], source: str, filename: str) -> str:
    """``FILE:LINE:COL: error[CODE]: message``, the source line, carets, then notes."""
    out: list[str] = []
    for d in diagnostics:
        out.append(f"{filename}:{d.span.start}: {d.severity}[{d.code}]: {d.message}")
        out.extend(_excerpt(source, d.span))
        for note in d.notes:
            out.append(f"{filename}:{note.span.start}: note: {note.message}")
            out.extend(_excerpt(source, note.span))
    return "".join(line + "\n" for line in out)


def to_json(d: Diagnostic, filename: str) -> dict[str, object]:
    """The JSON record of ``d``: file, code and name, severity, message, its span's start and end, its notes."""

    def loc(span: Span) -> dict[str, int]:
        return {
            "line": span.start.line,
            "column": span.start.column,
            "offset": span.start.offset,
            "end_line": span.end.line,
            "end_column": span.end.column,
            "end_offset": span.end.offset,
        }

    return {
        "file": filename,
        "code": d.code,
        "name": CODES[d.code].name,
        "severity": str(d.severity),
        "message": d.message,
        **loc(d.span),
        "notes": [{"message": n.message, **loc(n.span)} for n in d.notes],
    }


def _github_escape(value: str, *, prop: bool) -> str:
    value = value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return value.replace(":", "%3A").replace(",", "%2C") if prop else value


def format_github(d: Diagnostic, filename: str, line: int | None = None, prefix: str = "") -> str:
    """A GitHub Actions workflow command; ``line`` overrides the span's line (JSONL records)."""
    kind = "error" if d.severity is Severity.ERROR else "warning"
    if line is None:
        where = (
            f"file={_github_escape(filename, prop=True)},line={d.span.start.line},col={d.span.start.column},"
            f"endLine={d.span.end.line},endColumn={d.span.end.column}"
        )
    else:
        where = f"file={_github_escape(filename, prop=True)},line={line}"
    message = prefix + d.message + "".join(f"\nnote at {n.span.start}: {n.message}" for n in d.notes)
    return f"::{kind} {where},title={d.code} {CODES[d.code].name}::{_github_escape(message, prop=False)}"


def format_json(records: list[dict[str, object]]) -> str:
    """The records as one indented JSON array, non-ASCII kept."""
    return json.dumps(records, indent=2, ensure_ascii=False)
