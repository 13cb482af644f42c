"""Rendering: the text a reader sees (spec §5).

Each promise is replaced by the content of the <async> block that fulfils it;
async blocks are removed from where they were written; syncs are removed.
Recovered documents render without losing text: an <async> block with no
promise renders where it was written, an unfulfilled promise renders as nothing.
A template (spec §7.4) renders with each unfulfilled promise's place marked by
its topic in brackets, ``[topic]``, where the model's text will stand.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import assert_never

from pastac.grammar.ast import Async, Document, Node, Promise, Sync, Text
from pastac.grammar.structure import bind


def place(promise: Promise) -> str:
    """How a template's rendering marks the place of a promise no block fulfils: ``[topic]``."""
    return f"[{promise.topic}]"


def _body(body: tuple[Node, ...], out: list[str], *, template: bool) -> None:
    """Render ``body`` into ``out``.  Nested bodies go on an explicit stack, not
    recursion: lenient documents may nest to any depth."""
    # (a body, the indices of it still to render, its promise -> async pairing, its orphan asyncs)
    stack: list[tuple[tuple[Node, ...], Iterator[int], dict[int, int], set[int]]] = []

    def push(nodes: tuple[Node, ...]) -> None:
        binding = bind(nodes)
        stack.append((nodes, iter(range(len(nodes))), binding.fulfilled_by, set(binding.orphans)))

    push(body)
    while stack:
        nodes, remaining, fulfilled_by, orphans = stack[-1]
        i = next(remaining, None)
        if i is None:
            stack.pop()
            continue
        node = nodes[i]
        match node:
            case Text(value=value):
                out.append(value)
            case Promise():
                if i in fulfilled_by:
                    block = nodes[fulfilled_by[i]]
                    assert isinstance(block, Async)
                    push(block.body)
                elif template:
                    out.append(place(node))
            case Async(body=inner):
                if i in orphans:
                    push(inner)
            case Sync():
                pass
            case _:
                assert_never(node)


def render(document: Document, *, template: bool = False) -> str:
    """The text a reader sees: each promise replaced by the block that fulfils it, the tags removed.
    ``template``: a promise no block fulfils is marked ``[topic]`` (``place``) instead of rendering as nothing."""
    out: list[str] = []
    _body(document.body, out, template=template)
    return "".join(out)
