"""The structural annotator: forks the parts that a response's own layout marks as independent.

Markdown sections, bold-titled blocks, numbered and bulleted lists and (failing those) the middle paragraphs of
a plain essay are forked; the introduction and the conclusion stay in the main thread, and a list inside a
forked section is forked one level down. Deterministic, no model. Invariants: the annotation renders back to
the response (the construction keeps every character, and ``validate`` checks it again); items that lean on
each other (``Then, ...``, ``This means ...``, a worked calculation) are not forked; each promise's length is
the part's token count rounded to ``round_to``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pastac.data.annotate.annotation import Annotation, tag_problem, unchanged, validate
from pastac.data.annotate.layout import (
    MARKER,
    Line,
    Round,
    bold_rounds,
    classify,
    clean,
    heading_rounds,
    list_rounds,
    make_topic,
    paragraph_rounds,
    strip_marker,
)
from pastac.grammar.tags import escape

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
# Where a match of ``_CALCULATION`` can start: a run of digits, dots and commas (at its first digit), or a "=".
_CALCULATION_STARTS = re.compile(r"[\d.,]+|=")
_DIGIT = re.compile(r"\d")


def find_calculation(text: str) -> re.Match[str] | None:
    """``_CALCULATION.search(text)`` in time linear in ``text``.

    ``search`` tries every offset, and from each digit of a run of n digits the pattern scans the rest of the
    run: n**2 / 2 steps (20,000 digits took 48 s).  A match that starts inside a run at a later digit would
    also match from the run's first digit (both read the run to its end, then the same text), so the leftmost
    match starts at a run's first digit or at a "=": only those offsets are tried, in order, and each run is
    read a bounded number of times."""
    for start in _CALCULATION_STARTS.finditer(text):
        at = start.start()
        if start.group() != "=":
            digit = _DIGIT.search(text, at, start.end())
            if digit is None:
                continue
            at = digit.start()
        if m := _CALCULATION.match(text, at):
            return m
    return None


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
        """The response with the first layout that has independent parts forked: sections, bold-titled blocks or
        lists, else the middle paragraphs of a text with no layout at all."""
        if problem := tag_problem(response):
            return unchanged(response, f"not forked: {problem}")
        lines = classify(response)
        notes = []
        for rounds in (heading_rounds(lines), bold_rounds(lines), list_rounds(lines)):
            forked = self._fork(lines, rounds, nested=False)
            if forked.forks:
                return self._checked(response, forked)
            notes += forked.skipped
        if notes:
            return unchanged(response, f"not forked: {notes[0]}")
        if any(line.kind not in ("blank", "other") for line in lines):
            return unchanged(response, "not forked: no structure with independent parts")
        forked = self._fork(lines, paragraph_rounds(lines), nested=False)
        if forked.forks:
            return self._checked(response, forked)
        note = forked.skipped[0] if forked.skipped else "no independent parts (no sections, lists or paragraphs)"
        return unchanged(response, f"not forked: {note}")

    def _checked(self, response: str, forked: _Forked) -> Annotation:
        if problems := validate(response, forked.text):  # a safety net: the construction should not fail it
            return unchanged(response, f"not forked: the annotation failed validation ({problems[0]})")
        return Annotation(forked.text, forked.forks, "forked " + " and ".join(forked.done))

    def _refusal(self, lines: list[Line], round_: Round, parts: list[str], forkable: list[bool]) -> str | None:
        """Why ``round_`` is not forked, or None."""
        if round_.label.endswith("items"):
            for number, (start, _) in enumerate(round_.items[1:], start=2):
                first = clean(strip_marker(lines[start].text.strip()))
                if m := _SEQUENTIAL.match(first):
                    return f"{round_.label} depend on each other (item {number} starts with {m.group(0)!r})"
        if round_.label == "paragraphs":
            for number, part in enumerate(parts, start=1):
                if m := _SEQUENTIAL.match(part.lstrip()) or _REFERS_BACK.match(part.lstrip()):
                    return f"paragraphs depend on each other (part {number} starts with {m.group(0)!r})"
                if m := find_calculation(part):
                    return f"paragraphs work through a calculation ({m.group(0).strip()!r} in part {number})"
        if sum(forkable) < self.min_parts:
            return (
                f"only {sum(forkable)} of {len(parts)} {round_.label} have at least {self.min_part_tokens} "
                f"tokens ({self.min_parts} needed)"
            )
        return None

    def _fork(self, lines: list[Line], rounds: list[Round], *, nested: bool) -> _Forked:
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
                    inner = self._fork(lines[start + 1 : end], list_rounds(lines[start + 1 : end]), nested=True)
                    if inner.forks:
                        body = lines[start].text + inner.text
                        forks += inner.forks
                        inner_done += inner.done
                if fork:
                    topic = escape(make_topic(part, index))
                    lead = ""
                    if not round_.sections and (m := MARKER.match(body)):  # "3. " stays with the parent, so
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
