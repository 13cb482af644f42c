"""A response's markdown layout: its lines by kind, the rounds of parts it offers to fork, a topic for a part.

Lines are classified one by one (blank, code, heading, numbered, bullet, bold-titled, other); fenced code
blocks are ``code`` throughout, so nothing inside them is read as layout. A round is a run of parts that the
layout marks as siblings (list items at the left margin, sections under one heading level, bold-titled blocks,
the middle paragraphs of plain prose): half-open ranges of line indices that cover the parts without gaps, the
introduction before them and the conclusion after them left out. Nothing here decides whether a round is
forked: that is the annotator's (``pastac.data.annotate.structural``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FENCE = re.compile(r"(`{3,}|~{3,})")
_HEADING = re.compile(r"(#{1,6})[ \t]+\S")
_NUMBERED = re.compile(r"(?:\d{1,3}[.)]|[Ss]tep[ \t]+\d{1,3}[ \t]*[:.)])[ \t]+\S")
_BULLET = re.compile(r"[-*+•][ \t]+\S")
_BOLD = re.compile(r"\*\*(?=\S)([^*\n]+?)\*\*|__(?=\S)([^_\n]+?)__")
#: What opens a list item or a heading: a list marker, heading hashes or "Step N:".
MARKER = re.compile(r"(?:#{1,6}[ \t]+|[-*+•][ \t]+|\d{1,3}[.)][ \t]+|[Ss]tep[ \t]+\d{1,3}[ \t]*[:.)][ \t]*)")
_LINK = re.compile(r"\[([^\]\n]+)\]\([^)\n]*\)")
_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|`+)")
_CLAUSE_END = re.compile(r"[:;!?]|\.(?:\s|$)|,|\s[-–—]\s|\(")
# Words a topic does not end on while it has more than two.
_STOPWORDS = frozenset(
    (
        "a",
        "an",
        "the",
        "and",
        "or",
        "but",
        "nor",
        "to",
        "of",
        "in",
        "on",
        "at",
        "for",
        "with",
        "by",
        "from",
        "into",
        "about",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "that",
        "which",
        "whether",
        "who",
        "your",
        "my",
        "our",
        "its",
        "their",
        "this",
        "these",
        "those",
        "it",
        "than",
        "then",
        "so",
        "if",
        "when",
        "while",
        "such",
        "very",
        "more",
        "most",
        "all",
        "any",
        "some",
        "each",
        "every",
        "not",
        "no",
        "can",
        "will",
        "should",
    )
)
_CONCLUSION_TITLES = frozenset(
    (
        "conclusion",
        "conclusions",
        "summary",
        "in summary",
        "in short",
        "bottom line",
        "the bottom line",
        "final thoughts",
        "tl;dr",
        "tldr",
        "overall",
        "wrapping up",
        "putting it together",
        "putting it all together",
        "in conclusion",
        "key takeaways",
        "takeaways",
    )
)
_CONCLUSION_CUES = (
    "in short",
    "in summary",
    "to sum up",
    "to summarise",
    "to summarize",
    "overall",
    "all in all",
    "in conclusion",
    "so ",
    "so,",
    "this ",
    "these ",
    "together",
    "both ",
    "either way",
    "in practice",
    "whatever",
    "ultimately",
    "finally",
    "the bottom line",
    "in the end",
    "taken together",
)


@dataclass(frozen=True)
class Line:
    """A line of a response, with what kind of line it is."""

    text: str  # with its line feed, if any
    kind: str  # blank, code, heading, numbered, bullet, bold, other
    indent: int
    level: int = 0  # heading level


def _split_lines(response: str) -> list[str]:
    pieces = response.split("\n")
    return [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def classify(response: str) -> list[Line]:
    """Each line with its kind; lines of fenced code blocks (fences included) are ``code``."""
    out: list[Line] = []
    fence: str | None = None
    fence_indent = 0
    for text in _split_lines(response):
        body = text.rstrip("\r\n")
        stripped = body.lstrip(" \t")
        indent = len(body) - len(stripped)
        if fence is not None:
            closing = stripped.rstrip()
            if closing and set(closing) == {fence[0]} and len(closing) >= len(fence):
                fence = None
            out.append(Line(text, "code", fence_indent))
            continue
        if not stripped.strip():
            out.append(Line(text, "blank", indent))
            continue
        m = _FENCE.match(stripped)
        if m:
            fence, fence_indent = m.group(1), indent
            out.append(Line(text, "code", indent))
            continue
        kind, level = "other", 0
        if indent == 0:
            if m := _HEADING.match(stripped):
                kind, level = "heading", len(m.group(1))
            elif _NUMBERED.match(stripped):
                kind = "numbered"
            elif _BULLET.match(stripped):
                kind = "bullet"
            elif _BOLD.match(stripped) and (not out or out[-1].kind in ("blank", "other", "bold")):
                kind = "bold"
        out.append(Line(text, kind, indent, level))
    return out


Item = tuple[int, int]  # a half-open range of line indices


@dataclass(frozen=True)
class Round:
    """Parts that may be forked together; the sync comes after the last one."""

    label: str  # what the parts are, for the reason: "numbered items", "sections", ...
    items: tuple[Item, ...]
    sections: bool = False  # parts with a title line, whose bodies may hold nested lists


def _trim_blank(lines: list[Line], start: int, end: int) -> int:
    """``end`` moved back over blank lines, not before ``start + 1``."""
    while end > start + 1 and lines[end - 1].kind == "blank":
        end -= 1
    return end


def _next_nonblank(lines: list[Line], i: int) -> int | None:
    while i < len(lines) and lines[i].kind == "blank":
        i += 1
    return i if i < len(lines) else None


def strip_marker(text: str) -> str:
    """``text`` without a leading list marker, heading hashes or "Step N:"."""
    m = MARKER.match(text)
    return text[m.end() :] if m else text


def _plain_title(line: Line) -> str:
    text = strip_marker(line.text.strip())
    if m := _BOLD.match(text):
        text = m.group(1) or m.group(2)
    return clean(text).strip(" .:;!?").lower()


def list_rounds(lines: list[Line]) -> list[Round]:
    """Runs of numbered or bulleted items at the left margin.  An item goes on over its continuation lines,
    indented lines and blank lines followed by more of the list; a heading, or a blank line followed by an
    unindented line of another kind, ends the run."""
    rounds = []
    i, n = 0, len(lines)
    while i < n:
        kind = lines[i].kind
        if kind not in ("numbered", "bullet"):
            i += 1
            continue
        starts, j, end = [i], i + 1, n
        while j < n:
            line = lines[j]
            if line.kind == kind:
                starts.append(j)
            elif line.kind == "heading":
                end = j
                break
            elif line.kind == "blank":
                k = _next_nonblank(lines, j)
                if k is None or not (lines[k].kind == kind or lines[k].indent > 0):
                    end = j
                    break
                j = k
                continue
            j += 1
        if len(starts) >= 2:
            rounds.append(Round(f"{kind} items", tuple(zip(starts, [*starts[1:], end], strict=True))))
        i = end
    return rounds


def _section_round(lines: list[Line], starts: list[int], end: int, label: str) -> list[Round]:
    if starts and _plain_title(lines[starts[-1]]) in _CONCLUSION_TITLES:
        end = starts.pop()
    if len(starts) < 2:
        return []
    end = _trim_blank(lines, starts[-1], end)
    return [Round(label, tuple(zip(starts, [*starts[1:], end], strict=True)), sections=True)]


def heading_rounds(lines: list[Line]) -> list[Round]:
    """Sections under the shallowest heading level that has at least two headings; a section runs to the
    next heading of its level, and a shallower heading ends the run."""
    headings = [(i, line.level) for i, line in enumerate(lines) if line.kind == "heading"]
    level = next((lv for lv in range(1, 7) if sum(1 for _, h in headings if h == lv) >= 2), None)
    if level is None:
        return []
    first = next(i for i, h in headings if h == level)
    starts, end = [], len(lines)
    for i, h in headings:
        if i < first:
            continue
        if h < level:
            end = i
            break
        if h == level:
            starts.append(i)
    return _section_round(lines, starts, end, "sections")


def bold_rounds(lines: list[Line]) -> list[Round]:
    """Blocks that start with a bold title.  A block runs to the next one; the last runs over its own
    paragraph and any list, indented or code blocks after it, and a plain paragraph after that is the
    conclusion."""
    starts = [i for i, line in enumerate(lines) if line.kind == "bold"]
    if len(starts) < 2:
        return []
    end = len(lines)
    j = starts[-1] + 1
    while j < len(lines):
        if lines[j].kind == "blank":
            k = _next_nonblank(lines, j)
            if k is None:
                break
            if lines[k].kind not in ("numbered", "bullet", "code") and lines[k].indent == 0:
                end = j
                break
            j = k
        j += 1
    return _section_round(lines, starts, end, "titled blocks")


def paragraph_rounds(lines: list[Line]) -> list[Round]:
    """Plain prose: the first paragraph is the introduction, the middle ones are parts, and the last is the
    conclusion when there are four or more paragraphs or it opens like one ("In short", "Overall", ...)."""
    blocks: list[Item] = []
    i = 0
    while (k := _next_nonblank(lines, i)) is not None:
        j = k
        while j < len(lines) and lines[j].kind != "blank":
            j += 1
        blocks.append((k, j))
        i = j
    if len(blocks) < 3:
        return []
    parts = blocks[1:]
    last = lines[blocks[-1][0]].text.strip().lower()
    if len(blocks) >= 4 or last.startswith(_CONCLUSION_CUES):
        parts = parts[:-1]
    if len(parts) < 2:
        return []
    starts = [s for s, _ in parts]
    return [Round("paragraphs", tuple(zip(starts, [*starts[1:], parts[-1][1]], strict=True)))]


def clean(text: str) -> str:
    """Markdown links, emphasis and code marks removed, white space collapsed."""
    return " ".join(_EMPHASIS.sub("", _LINK.sub(r"\1", text)).split())


def _trim(words: list[str], limit: int) -> list[str]:
    words = words[:limit]
    while len(words) > 2 and words[-1].lower().strip(".,:;!?") in _STOPWORDS:
        words.pop()
    if len(words) > 2 and "(" in " ".join(words) and ")" not in words[-1]:
        # Do not leave a parenthesis open: cut before it when at least two words remain.
        opened = max(i for i, w in enumerate(words) if "(" in w)
        if opened >= 2 and ")" not in " ".join(words[opened:]):
            words = words[:opened]
    if words:
        words[-1] = words[-1].rstrip(".,:;!?-–—")
        if not words[-1]:
            words.pop()
    return words


def _first_words(text: str, limit: int) -> list[str]:
    """The first words of ``text``: its first clause if that has at least two words, else the first words."""
    m = _CLAUSE_END.search(text)
    if m and len(text[: m.start()].split()) >= 2:
        return _trim(text[: m.start()].split(), limit)
    return _trim(text.split(), limit)


def make_topic(part: str, index: int = 1) -> str:
    """A 2–6 word summary of a part: its bold or heading title, else its first words (markdown stripped)."""
    lines = [line for line in part.splitlines() if line.strip()]
    first = strip_marker(lines[0].strip()) if lines else ""
    is_heading = bool(lines and _HEADING.match(lines[0].strip()))
    title: str | None = None
    rest = first
    if m := _BOLD.match(first):
        title, rest = m.group(1) or m.group(2), first[m.end() :]
    elif is_heading:
        title, rest = first, " ".join(lines[1:2])
    if title is not None:
        words = _trim(clean(strip_marker(title.strip())).split(), 6)
        if len(words) < 2:
            extra = _first_words(clean(rest).lstrip(" .:;-–—"), 5 - len(words))
            words = [words[0] + ":", *extra] if words and extra else words + extra
    else:
        words = _first_words(clean(first), 4)
    if len(words) >= 2:
        return " ".join(words)
    return f"part {index}: {words[0]}" if words else f"part {index}"
