"""Lowering a Pasta-Lang document to the IR.

Node ids follow the annotated text as written (the training layout).  Tags are
given their canonical text (what a model is trained on and writes).  A
lenient-recovered document lowers too: an <async> block with no promise is
lowered as its parent's text, a promise that nothing fulfils as plain tag text.
A template (spec §7.4) lowers with ``promised``: each promise that nothing
fulfils forks a child whose block holds the promised part, one segment of the
length ``promised`` predicts for it, right after its promise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import assert_never

from pastac.grammar.ast import Async, Document, Node, Promise, Sync, Text
from pastac.grammar.printer import tag_source
from pastac.grammar.render import place
from pastac.grammar.structure import bind
from pastac.ir.graph import MAIN, ThreadGraph
from pastac.ir.lengths import LengthFn, chars

OPEN, CLOSE, SYNC = "<async>", "</async>", "<sync/>"


def lower(
    document: Document, length: LengthFn = chars, *, promised: Callable[[Promise], int] | None = None
) -> ThreadGraph:
    """The IR of ``document``, every thread ended; ``length`` measures each node's text.  ``promised``: the
    document is a template, and a promise nothing fulfils stands for a part of this length (in ``length``'s
    units), written by a child of its own; None: such a promise is plain tag text."""
    graph = ThreadGraph()
    # An explicit stack of bodies, not recursion: lenient documents may nest to any depth.
    stack: list[_Body] = [_Body(document.body, MAIN, None)]
    while stack:
        frame = stack[-1]
        item = next(frame.items, None)
        if item is None:
            stack.pop()
            if frame.closes is not None:
                graph.close(frame.closes, CLOSE, length(CLOSE))
                graph.end(frame.closes)
            continue
        i, node = item
        match node:
            case Text(value=value):
                graph.segment(frame.thread, value, length(value))
            case Promise(topic=topic, tokens=tokens):
                text = tag_source(node)
                if i in frame.fulfilled_by:
                    _, frame.child_of[i] = graph.fork(frame.thread, topic, tokens, text, length(text))
                elif promised is not None:  # a template's place: the model writes the part
                    _, child = graph.fork(frame.thread, topic, tokens, text, length(text))
                    graph.open(child, OPEN, length(OPEN))
                    graph.segment(child, place(node), promised(node))
                    graph.close(child, CLOSE, length(CLOSE))
                    graph.end(child)
                else:
                    graph.segment(frame.thread, text, length(text))
            case Async(body=inner):
                if i in frame.orphans:  # lenient recovery: the content stays with this thread
                    stack.append(_Body(inner, frame.thread, None))
                    continue
                child = frame.child_of[frame.binding.fulfils[i]]
                text = tag_source(node)
                graph.open(child, text, length(text))
                stack.append(_Body(inner, child, child))
            case Sync():
                graph.sync(frame.thread, SYNC, length(SYNC))
                graph.join(frame.thread, explicit=True)
            case _:
                assert_never(node)
    graph.end(MAIN)
    return graph


class _Body:
    """One body being lowered: its thread, its pairing, and the thread to close and end after it."""

    def __init__(self, body: tuple[Node, ...], thread: int, closes: int | None) -> None:
        self.items: Iterator[tuple[int, Node]] = iter(enumerate(body))
        self.thread = thread
        self.closes = closes  # the child whose <async> block this body is, or None
        self.binding = bind(body)
        self.fulfilled_by = self.binding.fulfilled_by
        self.orphans = set(self.binding.orphans)
        self.child_of: dict[int, int] = {}  # promise index -> child thread
