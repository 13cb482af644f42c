"""Annotators: rewrite a plain response as Pasta-Lang that renders back to it.

Every annotator answers ``annotate(prompt, response) -> Annotation``.  An annotation is only useful as
training data if it is strict Pasta-Lang and its rendering is the response (``validate``); both
annotators here check that before returning, and fall back to the unchanged response (no fork) or, when
even that is not valid Pasta-Lang (the response contains text that reads as a tag), to ``text=None``.

- ``StructuralAnnotator`` forks the parts that the response's own layout marks as independent:
  markdown sections, bold-titled blocks, numbered and bulleted lists, and (failing those) the middle
  paragraphs of a plain essay.  Deterministic, no model.
- ``LLMAnnotator`` asks a language model (any ``str -> str`` callable; ``openai_generate`` makes one for an
  OpenAI-compatible server), with a description of the language and a few examples, and keeps its
  answer only if it validates.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pastac.grammar import Async, Document, Node, Promise, TagToken, check, render, tokenize
from pastac.grammar.tags import escape


@dataclass(frozen=True)
class Annotation:
    """An annotated response: ``text`` in Pasta-Lang (the response itself when nothing is forked, None when
    the response cannot be written as valid Pasta-Lang), the number of promises, and why."""

    text: str | None
    forks: int
    reason: str


class Annotator(Protocol):
    name: str

    def annotate(self, prompt: str, response: str) -> Annotation: ...


# ------------------------------------------------------------------------------------------------ validation


def _squash(text: str) -> str:
    return " ".join(text.split())


def validate(response: str, annotated: str) -> list[str]:
    """The problems that keep ``annotated`` from being a valid annotation of ``response`` (empty if none):
    strict-mode diagnostics (``E304 at 3:1: ...``) and a rendering that differs from the response
    (white space aside)."""
    result = check(annotated, mode="strict")
    problems = [f"{d.code} at {d.span.start}: {d.message}" for d in result.errors]
    if _squash(render(result.document)) != _squash(response):
        problems.append("rendered text differs from the response")
    return problems


def count_promises(document: Document) -> int:
    """The number of promises in ``document``, nested ones included."""
    count = 0
    stack: list[tuple[Node, ...]] = [document.body]
    while stack:
        for node in stack.pop():
            if isinstance(node, Promise):
                count += 1
            elif isinstance(node, Async):
                stack.append(node.body)
    return count


def _tag_problem(response: str) -> str | None:
    """A description of the first stretch of ``response`` that Pasta-Lang reads as a tag, if any."""
    for lexeme in tokenize(response):
        if isinstance(lexeme, TagToken):
            raw = response[lexeme.span.start.offset : lexeme.span.end.offset]
            shown = raw if len(raw) <= 30 else raw[:27] + "..."
            return f"the response contains {shown!r} at {lexeme.span.start}, which Pasta-Lang reads as a tag"
    return None


def _unchanged(response: str, reason: str) -> Annotation:
    """No fork: the response itself, or None (with the reason extended) when it is not valid Pasta-Lang."""
    problems = validate(response, response)
    if problems:
        return Annotation(None, 0, f"{reason}; the response is not valid Pasta-Lang as it is ({problems[0]})")
    return Annotation(response, 0, reason)


# ------------------------------------------------------------------------------------ structural annotator

_FENCE = re.compile(r"(`{3,}|~{3,})")
_HEADING = re.compile(r"(#{1,6})[ \t]+\S")
_NUMBERED = re.compile(r"(?:\d{1,3}[.)]|[Ss]tep[ \t]+\d{1,3}[ \t]*[:.)])[ \t]+\S")
_BULLET = re.compile(r"[-*+•][ \t]+\S")
_BOLD = re.compile(r"\*\*(?=\S)([^*\n]+?)\*\*|__(?=\S)([^_\n]+?)__")
_MARKER = re.compile(r"(?:#{1,6}[ \t]+|[-*+•][ \t]+|\d{1,3}[.)][ \t]+|[Ss]tep[ \t]+\d{1,3}[ \t]*[:.)][ \t]*)")
_LINK = re.compile(r"\[([^\]\n]+)\]\([^)\n]*\)")
_EMPHASIS = re.compile(r"(\*{1,3}|_{2,3}|`+)")
_CLAUSE_END = re.compile(r"[:;!?]|\.(?:\s|$)|,|\s[-–—]\s|\(")
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
# Words that open an item which continues the previous one ("Then, 10% off 90: ...").
_SEQUENTIAL = re.compile(r"(?:then|next|after that|afterwards|after this|now|finally|so|from there)(?=[,\s])", re.I)
# Words that open a paragraph which leans on the one before it ("This means ...", "Therefore ...").
_REFERS_BACK = re.compile(
    r"(?:this|these|that|those|it|they|such|therefore|thus|hence|however|but|also|as a result|because of this|"
    r"in turn|to (?:find|solve|get|calculate|compute))(?=[,\s])",
    re.I,
)
# A worked calculation ("9.92 * 10 = 99.20"): paragraphs with one carry a derivation, not independent parts.
_CALCULATION = re.compile(
    r"\d[\d.,]*\s*(?:[-+*/×÷^]|x(?=\s))\s*\(?\d[\d.,]*\)?\s*=|=\s*-?\d[\d.,]*\s*(?:[-+*/×÷]|$)", re.M
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
class _Line:
    text: str  # with its line feed, if any
    kind: str  # blank, code, heading, numbered, bullet, bold, other
    indent: int
    level: int = 0  # heading level


def _split_lines(response: str) -> list[str]:
    pieces = response.split("\n")
    return [p + "\n" for p in pieces[:-1]] + ([pieces[-1]] if pieces[-1] else [])


def _classify(response: str) -> list[_Line]:
    """Each line with its kind; lines of fenced code blocks (fences included) are ``code``."""
    out: list[_Line] = []
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
            out.append(_Line(text, "code", fence_indent))
            continue
        if not stripped.strip():
            out.append(_Line(text, "blank", indent))
            continue
        m = _FENCE.match(stripped)
        if m:
            fence, fence_indent = m.group(1), indent
            out.append(_Line(text, "code", indent))
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
        out.append(_Line(text, kind, indent, level))
    return out


_Item = tuple[int, int]  # a half-open range of line indices


@dataclass(frozen=True)
class _Round:
    """Parts that may be forked together; the sync comes after the last one."""

    label: str  # what the parts are, for the reason: "numbered items", "sections", ...
    items: tuple[_Item, ...]
    sections: bool = False  # parts with a title line, whose bodies may hold nested lists


def _trim_blank(lines: list[_Line], start: int, end: int) -> int:
    """``end`` moved back over blank lines, not before ``start + 1``."""
    while end > start + 1 and lines[end - 1].kind == "blank":
        end -= 1
    return end


def _next_nonblank(lines: list[_Line], i: int) -> int | None:
    while i < len(lines) and lines[i].kind == "blank":
        i += 1
    return i if i < len(lines) else None


def _strip_marker(text: str) -> str:
    """``text`` without a leading list marker, heading hashes or "Step N:"."""
    m = _MARKER.match(text)
    return text[m.end() :] if m else text


def _plain_title(line: _Line) -> str:
    text = _strip_marker(line.text.strip())
    if m := _BOLD.match(text):
        text = m.group(1) or m.group(2)
    return _clean(text).strip(" .:;!?").lower()


def _list_rounds(lines: list[_Line]) -> list[_Round]:
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
            rounds.append(_Round(f"{kind} items", tuple(zip(starts, [*starts[1:], end], strict=True))))
        i = end
    return rounds


def _section_round(lines: list[_Line], starts: list[int], end: int, label: str) -> list[_Round]:
    if starts and _plain_title(lines[starts[-1]]) in _CONCLUSION_TITLES:
        end = starts.pop()
    if len(starts) < 2:
        return []
    end = _trim_blank(lines, starts[-1], end)
    return [_Round(label, tuple(zip(starts, [*starts[1:], end], strict=True)), sections=True)]


def _heading_rounds(lines: list[_Line]) -> list[_Round]:
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


def _bold_rounds(lines: list[_Line]) -> list[_Round]:
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


def _paragraph_rounds(lines: list[_Line]) -> list[_Round]:
    """Plain prose: the first paragraph is the introduction, the middle ones are parts, and the last is the
    conclusion when there are four or more paragraphs or it opens like one ("In short", "Overall", ...)."""
    blocks: list[_Item] = []
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
    return [_Round("paragraphs", tuple(zip(starts, [*starts[1:], parts[-1][1]], strict=True)))]


def _clean(text: str) -> str:
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
    first = _strip_marker(lines[0].strip()) if lines else ""
    is_heading = bool(lines and _HEADING.match(lines[0].strip()))
    title: str | None = None
    rest = first
    if m := _BOLD.match(first):
        title, rest = m.group(1) or m.group(2), first[m.end() :]
    elif is_heading:
        title, rest = first, " ".join(lines[1:2])
    if title is not None:
        words = _trim(_clean(_strip_marker(title.strip())).split(), 6)
        if len(words) < 2:
            extra = _first_words(_clean(rest).lstrip(" .:;-–—"), 5 - len(words))
            words = [words[0] + ":", *extra] if words and extra else words + extra
    else:
        words = _first_words(_clean(first), 4)
    if len(words) >= 2:
        return " ".join(words)
    return f"part {index}: {words[0]}" if words else f"part {index}"


class StructuralAnnotator:
    """Forks the independent parts that a response's layout shows (sections, titled blocks, list items,
    middle paragraphs), keeping the introduction and the conclusion in the main thread.  Lists inside a
    forked section are forked too, one level down (``nest``)."""

    name = "structural"

    def __init__(
        self,
        count_tokens: Callable[[str], int] = lambda s: len(s.split()),
        min_part_tokens: int = 8,
        min_parts: int = 2,
        round_to: int = 10,
        nest: bool = True,
    ) -> None:
        if min_parts < 1 or round_to < 1:
            raise ValueError("min_parts and round_to must be at least 1")
        self.count_tokens = count_tokens
        self.min_part_tokens = min_part_tokens
        self.min_parts = min_parts
        self.round_to = round_to
        self.nest = nest

    def tokens(self, part: str) -> int:
        """The promised length: the part's token count to the nearest multiple of ``round_to`` (at least one)."""
        n = self.count_tokens(part)
        return max(self.round_to, (2 * n + self.round_to) // (2 * self.round_to) * self.round_to)

    def annotate(self, prompt: str, response: str) -> Annotation:
        if problem := _tag_problem(response):
            return _unchanged(response, f"not forked: {problem}")
        lines = _classify(response)
        notes = []
        for rounds in (_heading_rounds(lines), _bold_rounds(lines), _list_rounds(lines)):
            forked = self._fork(lines, rounds, nested=False)
            if forked.forks:
                return self._checked(response, forked)
            notes += forked.skipped
        if notes:
            return _unchanged(response, f"not forked: {notes[0]}")
        if any(line.kind not in ("blank", "other") for line in lines):
            return _unchanged(response, "not forked: no structure with independent parts")
        forked = self._fork(lines, _paragraph_rounds(lines), nested=False)
        if forked.forks:
            return self._checked(response, forked)
        note = forked.skipped[0] if forked.skipped else "no independent parts (no sections, lists or paragraphs)"
        return _unchanged(response, f"not forked: {note}")

    def _checked(self, response: str, forked: _Forked) -> Annotation:
        if problems := validate(response, forked.text):  # a safety net: the construction should not fail it
            return _unchanged(response, f"not forked: the annotation failed validation ({problems[0]})")
        return Annotation(forked.text, forked.forks, "forked " + " and ".join(forked.done))

    def _refusal(self, lines: list[_Line], round_: _Round, parts: list[str], forkable: list[bool]) -> str | None:
        """Why ``round_`` is not forked, or None."""
        if round_.label.endswith("items"):
            for number, (start, _) in enumerate(round_.items[1:], start=2):
                first = _clean(_strip_marker(lines[start].text.strip()))
                if m := _SEQUENTIAL.match(first):
                    return f"{round_.label} depend on each other (item {number} starts with {m.group(0)!r})"
        if round_.label == "paragraphs":
            for number, part in enumerate(parts, start=1):
                if m := _SEQUENTIAL.match(part.lstrip()) or _REFERS_BACK.match(part.lstrip()):
                    return f"paragraphs depend on each other (part {number} starts with {m.group(0)!r})"
                if m := _CALCULATION.search(part):
                    return f"paragraphs work through a calculation ({m.group(0).strip()!r} in part {number})"
        if sum(forkable) < self.min_parts:
            return (
                f"only {sum(forkable)} of {len(parts)} {round_.label} have at least {self.min_part_tokens} "
                f"tokens ({self.min_parts} needed)"
            )
        return None

    def _fork(self, lines: list[_Line], rounds: list[_Round], *, nested: bool) -> _Forked:
        """Fork each round that has enough long parts; the text between rounds stays as it is."""
        out: list[str] = []
        pos, forks = 0, 0
        done: list[str] = []
        skipped: list[str] = []
        for round_ in rounds:
            parts = ["".join(line.text for line in lines[s:e]) for s, e in round_.items]
            forkable = [self.count_tokens(p) >= self.min_part_tokens for p in parts]
            if refusal := self._refusal(lines, round_, parts, forkable):
                skipped.append(refusal)
                continue
            out.append("".join(line.text for line in lines[pos : round_.items[0][0]]))
            inner_done: list[str] = []
            for index, ((start, end), part, fork) in enumerate(zip(round_.items, parts, forkable, strict=True), 1):
                body = part
                if fork and round_.sections and self.nest and not nested:
                    inner = self._fork(lines[start + 1 : end], _list_rounds(lines[start + 1 : end]), nested=True)
                    if inner.forks:
                        body = lines[start].text + inner.text
                        forks += inner.forks
                        inner_done += inner.done
                if fork:
                    topic = escape(make_topic(part, index))
                    lead = ""
                    if not round_.sections and (m := _MARKER.match(body)):  # "3. " stays with the parent, so
                        lead, body = body[: m.end()], body[m.end() :]  # the child need not count its siblings
                    out.append(f'{lead}<promise topic="{topic}" tokens="{self.tokens(body)}"/><async>{body}</async>')
                    forks += 1
                else:
                    out.append(part)
            out.append("<sync/>")
            pos = round_.items[-1][1]
            nested_note = f" (with {' and '.join(inner_done)} inside)" if inner_done else ""
            done.append(f"{sum(forkable)} {round_.label}{nested_note}")
        out.append("".join(line.text for line in lines[pos:]))
        return _Forked("".join(out) if forks else "", forks, tuple(done), tuple(skipped))


@dataclass(frozen=True)
class _Forked:
    text: str
    forks: int
    done: tuple[str, ...]  # "3 numbered items", one per forked round
    skipped: tuple[str, ...]  # why the other rounds were not forked


# ------------------------------------------------------------------------------------------- LLM annotator

LANGUAGE_DESCRIPTION = """\
Pasta-Lang marks the parts of a response that can be written independently, so that they can be
generated in parallel. It has three tags:
- <promise topic="TOPIC" tokens="N"/> stands where an independent part belongs. TOPIC is a 2-6 word
  summary of the part; N is its approximate length in tokens, a multiple of 10.
- <async>PART</async> comes right after its promise and holds the exact text of the part.
- <sync/> comes after the last part of a group. Text after it (a conclusion) may depend on the parts.
Text before the first promise, such as an introduction, stays outside the tags, and so does a list
item's marker ("1. ", "- "): it goes just before the item's promise.
Fork only parts that do not depend on each other: list items, separate sections, steps that can be
written on their own. Do not fork short answers, single sentences, calculations or code: return them
unchanged. Every character of the response must be kept: removing the tags must give back the response.
In TOPIC write &quot; &amp; &lt; &gt; for the characters " & < >.
Reply with the annotated response only, with no comments before or after it."""

DEFAULT_FEW_SHOT: tuple[tuple[str, str, str], ...] = (
    (
        "How can I save money on groceries?",
        "A few habits make a big difference:\n"
        "1. Plan the week's meals before you shop and write a list, so you buy only what you will use.\n"
        "2. Compare the price per kilogram on the shelf label instead of the package price.\n"
        "3. Buy store brands for staples such as rice, flour, pasta and canned tomatoes.\n"
        "\nTogether these can cut a grocery bill by a fifth without eating any worse.\n",
        "A few habits make a big difference:\n"
        '1. <promise topic="plan meals and a list" tokens="20"/><async>Plan the week\'s meals before you shop '
        "and write a list, so you buy only what you will use.\n</async>"
        '2. <promise topic="compare unit prices" tokens="20"/><async>Compare the price per kilogram on the '
        "shelf label instead of the package price.\n</async>"
        '3. <promise topic="store brands for staples" tokens="20"/><async>Buy store brands for staples such as '
        "rice, flour, pasta and canned tomatoes.\n</async><sync/>"
        "\nTogether these can cut a grocery bill by a fifth without eating any worse.\n",
    ),
    (
        "What are the pros and cons of living in a big city?",
        "Big cities suit some people far better than others.\n\n"
        "**Pros.** There are more jobs and higher wages, public transport makes a car unnecessary, and "
        "museums, restaurants and concerts are always close by.\n\n"
        "**Cons.** Rent and everyday costs are high, flats are small, and noise, crowds and pollution wear "
        "many people down over time.\n\n"
        "Whether it is worth it depends on your career and on how much you value space and quiet.\n",
        "Big cities suit some people far better than others.\n\n"
        '<promise topic="pros of city life" tokens="30"/><async>**Pros.** There are more jobs and higher wages, '
        "public transport makes a car unnecessary, and museums, restaurants and concerts are always close "
        "by.\n\n</async>"
        '<promise topic="cons of city life" tokens="30"/><async>**Cons.** Rent and everyday costs are high, '
        "flats are small, and noise, crowds and pollution wear many people down over time.\n</async><sync/>"
        "\nWhether it is worth it depends on your career and on how much you value space and quiet.\n",
    ),
    (
        "What is the capital of Canada?",
        "The capital of Canada is Ottawa, in the province of Ontario.",
        "The capital of Canada is Ottawa, in the province of Ontario.",
    ),
)


def _block(prompt: str, response: str) -> str:
    return f"=== PROMPT ===\n{prompt.strip()}\n=== RESPONSE ===\n{response.strip()}\n=== ANNOTATED RESPONSE ===\n"


def _candidates(output: str) -> list[str]:
    """Readings of a model's reply: as it is, then without a label and without surrounding code fences."""
    text = output.strip()
    label = "=== ANNOTATED RESPONSE ==="
    if label in text:
        text = text[text.rindex(label) + len(label) :].strip()
    out = [text]
    if m := re.fullmatch(r"(`{3,}|~{3,})[^\n]*\n(.*?)\n?\1", text, re.DOTALL):
        out.append(m.group(2).strip())
    return out


class LLMAnnotator:
    """Asks a language model to annotate the response; keeps its answer only if it validates.  Errors of
    ``generate`` (an unreachable server) propagate."""

    name = "llm"

    def __init__(
        self, generate: Callable[[str], str], few_shot: Sequence[tuple[str, str, str]] = DEFAULT_FEW_SHOT
    ) -> None:
        self.generate = generate
        self.few_shot = tuple(few_shot)

    def build_prompt(self, prompt: str, response: str) -> str:
        parts = [LANGUAGE_DESCRIPTION, ""]
        for i, (p, r, annotated) in enumerate(self.few_shot, start=1):
            parts += [f"Example {i}:", _block(p, r) + annotated.strip(), ""]
        parts += ["Now annotate this response:", _block(prompt, response).rstrip("\n")]
        return "\n".join(parts) + "\n"

    def annotate(self, prompt: str, response: str) -> Annotation:
        if problem := _tag_problem(response):
            return _unchanged(response, f"not forked: {problem}")
        output = self.generate(self.build_prompt(prompt, response))
        first_problem = ""
        for candidate in _candidates(output):
            problems = validate(response, candidate)
            if not problems:
                forks = count_promises(check(candidate).document)
                if forks == 0:
                    return Annotation(response, 0, "the model forked nothing")
                return Annotation(candidate, forks, f"the model forked {forks} parts")
            first_problem = first_problem or problems[0]
        return _unchanged(response, f"model output rejected: {first_problem}")


def openai_generate(url: str, model: str, api_key: str | None = None, timeout: float = 120) -> Callable[[str], str]:
    """A ``generate`` function that sends the prompt to ``{url}/chat/completions`` (an OpenAI-compatible
    server, temperature 0) and returns the reply's text; failures raise ``RuntimeError`` naming the URL."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https://, not {url!r}")
    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"

    def generate(prompt: str) -> str:
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        request = urllib.request.Request(endpoint, json.dumps(payload).encode(), headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as reply:
                body = json.loads(reply.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            detail = e.read(300).decode("utf-8", "replace").strip()
            raise RuntimeError(f"POST {endpoint} failed: HTTP {e.code} {e.reason}: {detail}") from e
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(f"cannot reach {endpoint}: {getattr(e, 'reason', e)}") from e
        except ValueError as e:
            raise RuntimeError(f"POST {endpoint}: the reply is not JSON ({e})") from e
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as e:
            raise RuntimeError(f"POST {endpoint}: unexpected reply {str(body)[:200]}") from e
        if not isinstance(content, str):
            raise RuntimeError(f"POST {endpoint}: the reply has no text content")
        return content

    return generate
