"""Rendering: the text a reader sees (spec §5).

Each promise is replaced by the content of the <async> block that fulfils it;
async blocks are removed from where they were written; syncs are removed.
Recovered documents render without losing text: an <async> block with no
promise renders where it was written, an unfulfilled promise renders as nothing.
"""

from __future__ import annotations

from typing import assert_never

from pastac.grammar.ast import Async, Document, Node, Promise, Sync, Text
from pastac.grammar.structure import bind


def _body(body: tuple[Node, ...], out: list[str]) -> None:
    binding = bind(body)
    fulfilled_by = binding.fulfilled_by
    for i, node in enumerate(body):
        match node:
            case Text(value=value):
                out.append(value)
            case Promise():
                if i in fulfilled_by:
                    block = body[fulfilled_by[i]]
                    assert isinstance(block, Async)
                    _body(block.body, out)
            case Async(body=inner):
                if i in binding.orphans:
                    _body(inner, out)
            case Sync():
                pass
            case _:
                assert_never(node)


def render(document: Document) -> str:
    out: list[str] = []
    _body(document.body, out)
    return "".join(out)
