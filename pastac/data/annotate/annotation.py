"""What every annotator shares: the annotation, the annotator protocol, and the check an annotation must pass.

An annotation is only useful as training data if it is strict Pasta-Lang and its rendering is the response
(``validate``). Every annotator checks that before returning, and falls back to the unchanged response (no
fork) or, when even that is not valid Pasta-Lang (the response contains text that reads as a tag), to
``text=None`` (``unchanged``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pastac.grammar import Async, Document, Node, Promise, TagToken, check, render, tokenize


@dataclass(frozen=True)
class Annotation:
    """An annotated response: ``text`` in Pasta-Lang (the response itself when nothing is forked, None when
    the response cannot be written as valid Pasta-Lang), the number of promises, and why."""

    text: str | None
    forks: int
    reason: str


class Annotator(Protocol):
    """Rewrites a plain response as Pasta-Lang; ``name`` is recorded with each annotation it makes."""

    name: str

    def annotate(self, prompt: str, response: str) -> Annotation:
        """The annotation of ``response`` (the answer to ``prompt``), already checked by ``validate``."""


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


def tag_problem(response: str) -> str | None:
    """A description of the first stretch of ``response`` that Pasta-Lang reads as a tag, if any."""
    for lexeme in tokenize(response):
        if isinstance(lexeme, TagToken):
            raw = response[lexeme.span.start.offset : lexeme.span.end.offset]
            shown = raw if len(raw) <= 30 else raw[:27] + "..."
            return f"the response contains {shown!r} at {lexeme.span.start}, which Pasta-Lang reads as a tag"
    return None


def unchanged(response: str, reason: str) -> Annotation:
    """No fork: the response itself, or None (with the reason extended) when it is not valid Pasta-Lang."""
    problems = validate(response, response)
    if problems:
        return Annotation(None, 0, f"{reason}; the response is not valid Pasta-Lang as it is ({problems[0]})")
    return Annotation(response, 0, reason)
