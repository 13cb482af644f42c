"""The training layout as tensors: attention mask and position ids of an annotated document.

The tokens of the layout are the IR nodes' tokens in node id order (the order of the annotated text, each
async block right after its promise).  Positions come from the positions pass (``PositionRule``, shared with
the runtime); the mask comes from replaying the graph through ``pastac.backend.visibility.Views``, the same
object the runtime's scheduler drives while decoding: a node's tokens are placed in the next slots, a promise
forks its child after its own tokens, a join joins.  So the trainer's mask and the runtime's are one
computation, fed in two orders (``tests/test_runtime.py`` checks the logits agree), and the IR's visibility
pass (a token sees the tokens of its node's ancestors) is the property both must have (tested over random
documents in ``tests/test_ir_properties.py``).

    layout = training_layout(lower(parse(text), length), PositionOptions(policy="predicted"))
    layout.mask          # bool [T, T]: mask[i, j] is True when token i may attend to token j
    layout.position_ids  # long [T]
    layout.additive_mask(torch.bfloat16)  # float [1, 1, T, T]: 0 where allowed, dtype's min elsewhere
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pastac.backend.visibility import Views
from pastac.ir.graph import Fork, Join, ThreadGraph
from pastac.passes.positions import PositionOptions, Positions, assign_positions

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Layout:
    """The tokens of a graph in node order: each one's node, thread and position id, and which it may see."""

    node_ids: torch.Tensor  # long [T]: the IR node of each token
    thread_ids: torch.Tensor  # long [T]
    position_ids: torch.Tensor  # long [T]
    mask: torch.Tensor  # bool [T, T]

    def additive_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[1, 1, T, T] additive mask for attention (HF 4D masks): 0 allowed, dtype min blocked."""
        out = torch.zeros(self.mask.shape, dtype=dtype)
        out.masked_fill_(~self.mask, torch.finfo(dtype).min)
        return out[None, None]


def visibility_mask(graph: ThreadGraph, lengths: Sequence[int]) -> torch.Tensor:
    """bool [T, T] over the graph's tokens in node order (``lengths`` per node): which each token may attend
    to, from the graph replayed through ``Views``."""
    total = sum(lengths)
    views = Views(total, threads=max(len(graph.threads), 1))
    mask = torch.zeros((total, total), dtype=torch.bool)
    order = torch.arange(total)
    first = 0
    for node, op in graph.ops():
        n = lengths[node]
        if isinstance(op, Join):
            for child in op.children:
                views.join(op.thread, child)
        if n:
            views.place(op.thread, first, n)
            own = order[first : first + n]
            mask[first : first + n] = views.row(op.thread, total)[None, :] & (order[None, :] <= own[:, None])
        if isinstance(op, Fork):  # the child sees its parent up to and including the promise
            views.fork(op.thread, op.child, first + n)
        first += n
    return mask


def training_layout(graph: ThreadGraph, options: PositionOptions | Positions = PositionOptions()) -> Layout:
    """The tokens of ``graph`` in node order with their positions (``options``, or positions already
    assigned) and their visibility mask."""
    positions = options if isinstance(options, Positions) else assign_positions(graph, options)
    lengths: Sequence[int] = positions.length
    furthest = max((s + n for s, n in zip(positions.start, lengths, strict=True) if n), default=0)
    if furthest > _INT64_MAX + 1:
        raise ValueError(
            f"{positions.policy} positions go past 2**63, more than an int64 position id holds: "
            "a promise predicts too many tokens"
        )
    node_ids = torch.repeat_interleave(torch.arange(len(graph)), torch.tensor(lengths, dtype=torch.long))
    starts = torch.tensor([s if n else 0 for s, n in zip(positions.start, lengths, strict=True)], dtype=torch.long)
    first_token = torch.cumsum(torch.tensor([0, *lengths], dtype=torch.long), 0)[:-1]
    offsets = torch.arange(node_ids.numel()) - first_token[node_ids]  # offset of each token in its node
    threads = torch.tensor([op.thread for _, op in graph.ops()], dtype=torch.long)
    mask = visibility_mask(graph, lengths)
    return Layout(node_ids, threads[node_ids], starts[node_ids] + offsets, mask)
