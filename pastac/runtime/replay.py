"""Replay: the tokens of an annotated response, teacher-forced through the real model and scheduler.

Each thread of the response (its IR thread) becomes a script: the token ids of
its nodes in order, without its opening ``<async>`` (the runtime force-feeds
that, as it does when decoding).  A thread of the run that forks its k-th child
follows the k-th child of its IR thread.  A child past the run's depth limit is
decoded inline by its parent, so its whole subtree is spliced into the parent's
script right after the promise.  Tokens are those of each node encoded on its
own, as in the training layout, so every tag ends on a token boundary.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from pastac.grammar.ast import Document
from pastac.ir.graph import Fork, Join, Open, ThreadGraph
from pastac.ir.lengths import tokenizer_length
from pastac.ir.lower import lower


def node_token_ids(graph: ThreadGraph, tokenizer: Any) -> list[list[int]]:
    """Each node's token ids (its text encoded on its own; none for a join)."""
    out = []
    for _, op in graph.ops():
        out.append([] if isinstance(op, Join) else tokenizer.encode(op.text, add_special_tokens=False))
    return out


class Replay:
    """An annotated response lowered to its IR with each node's token ids; threads deeper than ``max_depth``
    are replayed inline by their parents."""

    def __init__(self, document: Document, tokenizer: Any, *, max_depth: int) -> None:
        self.graph = lower(document, tokenizer_length(tokenizer))
        self.ids = node_token_ids(self.graph, tokenizer)
        self.max_depth = max_depth

    def child(self, thread: int, k: int) -> int:
        """The IR thread of ``thread``'s k-th promise."""
        forks = [self.graph.op(n) for n in self.graph.thread_nodes(thread) if isinstance(self.graph.op(n), Fork)]
        if k >= len(forks):
            raise IndexError(f"t{thread} of the replayed document has {len(forks)} promises, not {k + 1}")
        fork = forks[k]
        assert isinstance(fork, Fork)
        return fork.child

    def script(self, thread: int) -> deque[int]:
        """The token ids ``thread`` writes, in order: its nodes' ids without the ``<async>`` ones, each child
        past ``max_depth`` spliced in right after its promise."""
        out: deque[int] = deque()
        stack = [iter(self.graph.thread_nodes(thread))]
        while stack:
            node = next(stack[-1], None)
            if node is None:
                stack.pop()
                continue
            op = self.graph.op(node)
            if isinstance(op, Open):
                continue
            out.extend(self.ids[node])
            if isinstance(op, Fork) and self.graph.threads[op.child].depth > self.max_depth:
                stack.append(iter(self.graph.thread_nodes(op.child)))
        return out

    def tokens(self) -> int:
        """The number of token ids over all nodes, ``<async>`` ones included."""
        return sum(len(ids) for ids in self.ids)
