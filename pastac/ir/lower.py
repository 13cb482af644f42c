"""Lowering a Pasta-Lang document to the IR.

Node ids follow the annotated text as written (the training layout).  Tags are
given their canonical text (what a model is trained on and writes).  A
lenient-recovered document lowers too: an <async> block with no promise is
lowered as its parent's text, a promise that nothing fulfils as plain tag text.
"""

from __future__ import annotations

from typing import assert_never

from pastac.grammar.ast import Async, Document, Node, Promise, Sync, Text
from pastac.grammar.printer import to_source
from pastac.grammar.structure import bind
from pastac.ir.graph import MAIN, ThreadGraph
from pastac.ir.lengths import LengthFn, chars

OPEN, CLOSE, SYNC = "<async>", "</async>", "<sync/>"


def _tag(node: Promise | Async) -> str:
    """The canonical text of a promise tag, or of an <async ...> opening tag."""
    if isinstance(node, Promise):
        return to_source(Document((node,)))
    source = to_source(Document((Async((), node.topic),)))
    return source[: -len(CLOSE)]


def lower(document: Document, length: LengthFn = chars) -> ThreadGraph:
    graph = ThreadGraph()
    _body(graph, document.body, MAIN, length)
    graph.end(MAIN)
    return graph


def _body(graph: ThreadGraph, body: tuple[Node, ...], thread: int, length: LengthFn) -> None:
    binding = bind(body)
    child_of: dict[int, int] = {}  # promise index -> child thread
    for i, node in enumerate(body):
        match node:
            case Text(value=value):
                graph.segment(thread, value, length(value))
            case Promise(topic=topic, tokens=tokens):
                text = _tag(node)
                if i in binding.fulfilled_by:
                    _, child_of[i] = graph.fork(thread, topic, tokens, text, length(text))
                else:
                    graph.segment(thread, text, length(text))
            case Async(body=inner):
                if i in binding.orphans:  # lenient recovery: the content stays with this thread
                    _body(graph, inner, thread, length)
                    continue
                child = child_of[binding.fulfils[i]]
                text = _tag(node)
                graph.open(child, text, length(text))
                _body(graph, inner, child, length)
                graph.close(child, CLOSE, length(CLOSE))
                graph.end(child)
            case Sync():
                graph.sync(thread, SYNC, length(SYNC))
                graph.join(thread, explicit=True)
            case _:
                assert_never(node)

