"""The canonical source form of a document (``pastac fmt``).

Invariant: for every document ``d`` that strict parsing accepts,
``parse(to_source(d)) == d``, and ``to_source`` is idempotent through ``parse``.
Text is printed verbatim; tags are normalised (no extra white space, topic
before tokens, minimal escapes).
"""

from __future__ import annotations

from typing import assert_never

from pastac.grammar.ast import Async, Document, Node, Promise, Sync, Text, decimal_digits
from pastac.grammar.tags import escape


def tag_source(node: Promise | Async) -> str:
    """The canonical text of a promise's tag, or of a block's opening tag."""
    if isinstance(node, Promise):
        size = "" if node.tokens is None else f' tokens="{decimal_digits(node.tokens)}"'
        return f'<promise topic="{escape(node.topic)}"{size}/>'
    return "<async>" if node.topic is None else f'<async topic="{escape(node.topic)}">'


def _body(body: tuple[Node, ...], out: list[str]) -> None:
    # An explicit stack of nodes and closing tags, not recursion: documents may nest to any depth.
    work: list[Node | str] = list(reversed(body))
    while work:
        node = work.pop()
        match node:
            case str():
                out.append(node)
            case Text(value=value):
                out.append(value)
            case Promise():
                out.append(tag_source(node))
            case Async(body=inner):
                out.append(tag_source(node))
                work.append("</async>")
                work.extend(reversed(inner))
            case Sync():
                out.append("<sync/>")
            case _:
                assert_never(node)


def to_source(document: Document) -> str:
    """The canonical source of ``document``: text verbatim, tags normalised."""
    out: list[str] = []
    _body(document.body, out)
    return "".join(out)
