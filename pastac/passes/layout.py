"""The training layout as tensors: attention mask and position ids.

This is the one place where visibility and positions become tensors, for the
trainer (an annotated document, tokens in the order written) and the runtime
(tokens in the order they were decoded) alike: both describe tokens by the IR
node they belong to, and ask here what each may see and where it sits.

    layout = training_layout(lower(parse(text), length), PositionOptions(policy="predicted"))
    layout.mask          # bool [T, T]: mask[i, j] is True when token i may attend to token j
    layout.position_ids  # long [T]
    layout.additive_mask(torch.bfloat16)  # float [1, 1, T, T]: 0 where allowed, dtype's min elsewhere

The tokens of the training layout are the nodes' tokens in node id order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pastac.ir.graph import ThreadGraph
from pastac.passes.positions import PositionOptions, Positions, assign_positions
from pastac.passes.visibility import Visibility, ancestors

_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Layout:
    node_ids: torch.Tensor  # long [T]: the IR node of each token
    thread_ids: torch.Tensor  # long [T]
    position_ids: torch.Tensor  # long [T]
    mask: torch.Tensor  # bool [T, T]

    def additive_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[1, 1, T, T] additive mask for attention (HF 4D masks): 0 allowed, dtype min blocked."""
        out = torch.zeros(self.mask.shape, dtype=dtype)
        out.masked_fill_(~self.mask, torch.finfo(dtype).min)
        return out[None, None]


def node_visibility(graph: ThreadGraph, visibility: Visibility | None = None) -> torch.Tensor:
    """bool [N, N]: [a, b] is True when node a's tokens see all of node b's (b an ancestor of a)."""
    vis = visibility or ancestors(graph)
    n = len(graph)
    out = torch.zeros((n, n), dtype=torch.bool)
    for node, anc in enumerate(vis.ancestors):
        if anc:
            out[node, list(anc)] = True
    return out


def token_mask(
    node_ids: torch.Tensor,
    offsets: torch.Tensor,
    nodes_vis: torch.Tensor,
    key_node_ids: torch.Tensor | None = None,
    key_offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """bool [Q, K] mask for query tokens (node, offset in node) against key tokens.

    A query sees a key of an ancestor node, or a key of its own node at an offset <= its own.
    Keys default to the queries (a square mask).
    """
    kn = node_ids if key_node_ids is None else key_node_ids  # [K]
    ko = offsets if key_offsets is None else key_offsets  # [K]
    across = nodes_vis[node_ids][:, kn]  # [Q, K]
    within = (node_ids[:, None] == kn[None, :]) & (ko[None, :] <= offsets[:, None])  # [Q, K]
    return across | within


def training_layout(
    graph: ThreadGraph, options: PositionOptions | Positions = PositionOptions(), visibility: Visibility | None = None
) -> Layout:
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
    mask = token_mask(node_ids, offsets, node_visibility(graph, visibility))
    return Layout(node_ids, threads[node_ids], starts[node_ids] + offsets, mask)
