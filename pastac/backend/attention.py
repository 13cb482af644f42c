"""Attention over the packed row: grouped-query attention without copying the keys and values.

With grouped-query attention (several query heads per key/value head, as in
Llama, Qwen2 or SmolLM2), Hugging Face's sdpa path expands the keys and
values to one copy per query head (``repeat_kv``) whenever a forward has a
mask: a copy of the whole cache, per layer and per step.  A decode step of
pastac's runner has one query per thread and a mask, so every step paid it (at
1,024 cached tokens, 2 queries: 1.9 ms per layer for SmolLM2-135M, against 0.14
ms without the copy; one query: 0.22 against 0.20 ms).

``packed_attention()`` (entered by the runners around their forward passes)
makes the sdpa attention of a model with grouped queries stack the queries of
each key/value group along the query axis instead, when the mask is the same
for every head (the runners' masks are): ``[batch, heads, q, d]`` becomes
``[batch, kv_heads, groups x q, d]`` against the unexpanded keys and values,
with the mask's rows repeated per group (once per forward, not per layer); every
(head, query) pair computes the same dot products and softmax as before.  Outside it, and for anything else
(a per-head mask, dropout, a position bias), Hugging Face's own
sdpa function runs unchanged.

``branched_step()`` (entered by the runner when its attention backend is
``triton`` or ``flex``) replaces the whole attention of every layer for one
forward: each layer's queries, and the keys and values of the cache as they
lie, go to ``pastac.backend.branched`` with the step's visibility bitset, each
query's thread and own slot.  The model then gets no dense mask at all (a
placeholder satisfies its mask preparation).

``ATTENTION`` names the backends a run may ask for; ``resolve_attention``
turns ``auto`` into the one that runs (Triton on CUDA, sdpa on the CPU) and
says clearly why a named one cannot run here.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from pastac.backend import ATTENTION
from pastac.backend.branched import branched_attention, triton_available


class BackendError(ValueError):
    """An attention backend that cannot run on this machine or device, and why."""


@dataclass(frozen=True)
class BranchedStep:
    """One forward's visibility for the branched attention: the bitset ``bits`` [threads, words] (int32), each
    query's thread (its row of ``bits``) and own slot (``threads``, ``own``: [T] integer tensors), the
    backend that computes it, and what the backend keeps for the forward's other layers (``memo``)."""

    bits: torch.Tensor
    threads: torch.Tensor
    own: torch.Tensor
    backend: str
    memo: dict[Any, Any] = field(default_factory=dict)


_STEP: contextvars.ContextVar[BranchedStep | None] = contextvars.ContextVar("pastac_branched_step", default=None)

# inside packed_attention(): per group count, the mask this forward's layers get and its repeat; None outside
_ON: contextvars.ContextVar[dict[int, tuple[torch.Tensor, torch.Tensor]] | None] = contextvars.ContextVar(
    "pastac_packed_attention", default=None
)


def grouped_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Hugging Face's sdpa attention, with grouped queries stacked per key/value head when that applies; within
    ``branched_step()``, the branched attention instead."""
    step = _STEP.get()
    if step is not None:
        out = branched_attention(
            query[0].transpose(0, 1),  # [T, heads, d]
            key[0].transpose(0, 1),  # [N, kv_heads, d], the cache as it lies
            value[0].transpose(0, 1),
            step.bits,
            step.threads,
            step.own,
            scale=scaling,
            backend=step.backend,
            memo=step.memo,
        )
        return out[None], None  # [1, T, heads, d], as the sdpa function returns it
    groups = getattr(module, "num_key_value_groups", 1)
    batch, heads, q, dim = query.shape
    repeated = _ON.get()
    if (
        repeated is None
        or groups <= 1
        or attention_mask is None
        or attention_mask.dim() != 4
        or attention_mask.shape[1] != 1
        or dropout != 0.0
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
        or key.shape[1] * groups != heads
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    stacked = query.reshape(batch, heads // groups, groups * q, dim)  # row g*q + i: query i of group head g
    if groups not in repeated or repeated[groups][0] is not attention_mask:  # every layer gets the same mask
        repeated[groups] = (attention_mask, attention_mask.repeat(1, 1, groups, 1))
    mask = repeated[groups][1]
    out = F.scaled_dot_product_attention(stacked, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, q, value.shape[-1]).transpose(1, 2).contiguous(), None


ALL_ATTENTION_FUNCTIONS["sdpa"] = grouped_sdpa


@contextlib.contextmanager
def packed_attention() -> Iterator[None]:
    """Within: sdpa attention stacks grouped queries (see the module's docstring)."""
    token = _ON.set({})
    try:
        yield
    finally:
        _ON.reset(token)


@contextlib.contextmanager
def branched_step(step: BranchedStep) -> Iterator[None]:
    """Within: every layer's attention is the branched attention of ``step`` (see the module's docstring)."""
    token = _STEP.set(step)
    try:
        yield
    finally:
        _STEP.reset(token)


def resolve_attention(name: str, device: torch.device | str) -> str:
    """The backend that runs for ``name`` (one of ``ATTENTION``, or ``reference``) on ``device``: ``auto`` is
    ``triton`` on CUDA when Triton can run there, else ``sdpa``.  Raises ``ValueError`` for an unknown name or
    one that cannot run here (``BackendError``), saying why."""
    device = torch.device(device)
    if name not in (*ATTENTION, "reference"):
        raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, not {name!r}")
    if name == "auto":
        if device.type != "cuda":
            return "sdpa"
        return "triton" if triton_available(device) is None else "sdpa"
    if name == "triton":
        reason = triton_available(device)
        if reason is not None:
            raise BackendError(f"--attention triton cannot run here: {reason}")
    return name
