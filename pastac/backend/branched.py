"""Branched decode attention: each query row attends to the cache slots its thread sees, read from a bitset.

A decode step of a branched answer has one query row per thread (a few per thread when a step writes several
tokens), all over one shared, slot-indexed cache in which the threads' tokens are interleaved.  Which slots a
row may attend to is its thread's row of the visibility bitset that ``pastac.backend.visibility.Views`` keeps
(slot ``j`` of row ``r``: bit ``j & 31`` of word ``bits[r, j >> 5]``), cut at the row's own slot::

    row t sees slot j  <=>  j < N  and  bit j of bits[threads[t]]  and  j <= own[t]

Why a bitset and not a dense float mask: the bitset is what ``Views`` already holds and updates in place, one
row per thread and one bit per slot, so a step hands it to the kernels as it is.  A dense additive mask has one
row per query and a 16- or 32-bit float per slot: it would be built and written anew every step (its rows change
as threads write, fork and join), and read by every layer, at 16 to 32 times the bytes of the rows it encodes.
The words also say, before anything else is loaded, whether a block of slots is needed at all.

Three implementations share one signature, ``(query, key, value, bits, threads, own, *, scale=None)``:

- ``reference_attention``: plain PyTorch in float32 (unpacks the rows to a bool mask, expands the key/value
  heads); the tests' oracle and the fallback anywhere;
- ``triton_attention``: the decode kernel (Triton; the kernels live in ``pastac.backend.triton_branched``).
  Grouped-query attention is shared, not expanded: a program takes a tile of query rows times all query heads
  of one key/value head, so each block of keys and values it loads serves all of them.  A block of slots that
  no row of the tile sees is skipped before any key or value is loaded: rows that see little of a long cache
  read little of it, and a step captured in a CUDA graph, which passes the whole cache capacity as ``N``,
  pays only the bit words for the slots past the used ones.  Split-K (flash decoding): when there are too few
  rows and heads to fill the GPU, the slot axis is cut into splits that run in parallel, and a second small
  kernel combines their partial softmaxes.  The launch depends on shapes only, never on values;
- ``flex_attention``: PyTorch's ``flex_attention`` with a mask function that reads the same bitset.

``branched_attention(..., backend=...)`` picks one by name.  Every implementation: ``query`` ``[T, Hq, D]``,
``key`` and ``value`` ``[N, Hkv, D]`` with any strides (in practice ``cache.keys[0].transpose(0, 1)[:N]``, a
view of the ``[1, Hkv, capacity, D]`` buffer), ``Hq`` a multiple of ``Hkv`` (query head ``h`` reads key/value
head ``h // (Hq // Hkv)``); ``bits`` int32 ``[R, W]`` with ``W >= ceil(N / 32)`` (words and bits at or past
``N`` are ignored); ``threads`` and ``own`` integer ``[T]``.  The result is ``[T, Hq, D]`` in the query's dtype,
the softmax taken in float32; a row that sees no slot gets zeros.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch

from pastac.backend.visibility import WORD, unpack_bits, words_for

Backend = Literal["reference", "triton", "flex"]
BACKENDS: tuple[Backend, ...] = ("reference", "triton", "flex")
_INTEGERS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_arguments(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bits: torch.Tensor,
    threads: torch.Tensor,
    own: torch.Tensor,
) -> None:
    """Raise ``ValueError`` unless the arguments have the shapes, dtypes and devices the module's docstring gives
    (shapes and metadata only: nothing is read from the device)."""
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(
            f"query must be [T, Hq, D] and key, value [N, Hkv, D]; got {tuple(query.shape)}, "
            f"{tuple(key.shape)}, {tuple(value.shape)}"
        )
    rows, heads, dim = query.shape
    slots, kv_heads, key_dim = key.shape
    if value.shape != key.shape or key_dim != dim:
        raise ValueError(f"key {tuple(key.shape)} and value {tuple(value.shape)} must be [N, Hkv, {dim}]")
    if kv_heads == 0 or heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} key/value heads")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise ValueError(f"query, key and value must share a dtype; got {query.dtype}, {key.dtype}, {value.dtype}")
    if bits.dim() != 2 or bits.dtype != torch.int32 or bits.shape[1] * WORD < slots:
        raise ValueError(
            f"bits must be int32 [R, >= {words_for(slots)}] for {slots} slots; got {bits.dtype} {tuple(bits.shape)}"
        )
    for name, index in (("threads", threads), ("own", own)):
        if index.shape != (rows,) or index.dtype not in _INTEGERS:
            raise ValueError(f"{name} must be an integer [{rows}]; got {index.dtype} {tuple(index.shape)}")
    devices = {t.device for t in (query, key, value, bits, threads, own)}
    if len(devices) > 1:
        raise ValueError(f"all tensors must be on one device; got {sorted(map(str, devices))}")


def reference_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bits: torch.Tensor,
    threads: torch.Tensor,
    own: torch.Tensor,
    *,
    scale: float | None = None,
) -> torch.Tensor:
    """``[T, Hq, D]``: each query row's attention over the slots it sees (see the module's docstring), in plain
    PyTorch and float32: the bitset unpacked to a bool mask, the key/value heads expanded per query head."""
    check_arguments(query, key, value, bits, threads, own)
    _, heads, dim = query.shape
    slots, kv_heads, _ = key.shape
    scale = dim**-0.5 if scale is None else scale
    order = torch.arange(slots, device=query.device)
    mask = unpack_bits(bits[threads.long()], slots) & (order[None, :] <= own.long()[:, None])  # [T, N]
    group = heads // kv_heads
    q = query.float().transpose(0, 1)  # [Hq, T, D]
    k = key.float().transpose(0, 1).repeat_interleave(group, 0)  # [Hq, N, D]
    v = value.float().transpose(0, 1).repeat_interleave(group, 0)
    scores = (q @ k.transpose(1, 2)) * scale  # [Hq, T, N]
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, -1).masked_fill(~mask, 0.0)  # a row that sees nothing: 0/0 -> zeros
    return (weights @ v).transpose(0, 1).to(query.dtype)


def triton_available(device: torch.device | str | None = None) -> str | None:
    """None when the Triton kernel can run on ``device`` (default: CUDA if there is one, else the CPU): a CUDA
    device with Triton installed, or CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1``).  Otherwise
    the reason it cannot."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    import triton

    interpreting = bool(triton.knobs.runtime.interpret)
    if device.type == "cuda":
        return None if torch.cuda.is_available() else "CUDA is not available to PyTorch"
    if device.type == "cpu":
        if interpreting:
            return None
        return (
            "the Triton kernel needs CUDA tensors, or for CPU tensors TRITON_INTERPRET=1 "
            "(set before pastac.backend.triton_branched is imported)"
        )
    return f"the Triton kernel does not run on {device.type} tensors"


def triton_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bits: torch.Tensor,
    threads: torch.Tensor,
    own: torch.Tensor,
    *,
    scale: float | None = None,
    splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """``reference_attention``'s result from the Triton kernels of ``pastac.backend.triton_branched`` (imported on
    first use, so that this module imports without Triton).  ``splits`` and ``block_n`` tune the launch (see
    ``triton_branched.launch``).  Raises ``RuntimeError`` with ``triton_available``'s reason where the kernel
    cannot run, ``ValueError`` for malformed arguments."""
    check_arguments(query, key, value, bits, threads, own)
    reason = triton_available(query.device)
    if reason is not None:
        raise RuntimeError(f"the triton backend cannot run: {reason}")
    from pastac.backend.triton_branched import launch

    return launch(query, key, value, bits, threads, own, scale=scale, splits=splits, block_n=block_n)


@functools.cache
def _compiled_flex() -> Callable[..., Any]:
    """``flex_attention`` compiled (once per process): the fused kernel, on a GPU."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    return torch.compile(flex)


def flex_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bits: torch.Tensor,
    threads: torch.Tensor,
    own: torch.Tensor,
    *,
    scale: float | None = None,
    memo: dict[Any, Any] | None = None,
) -> torch.Tensor:
    """``reference_attention``'s result from PyTorch's ``flex_attention``: a mask function reads the same bitset,
    and ``create_block_mask`` turns it into a block mask.  The block mask is built anew for every step (the
    bitset and the rows change every step): that evaluates the mask function over all ``T x N`` pairs, work of
    the order of one masked score matrix, on top of the attention.  ``memo``, a dict that lives for one step
    (``pastac.backend.attention.BranchedStep.memo``), keeps it for the step's other layers.

    On CUDA ``flex_attention`` runs compiled (``torch.compile``, which builds its fused kernel); elsewhere it runs
    eagerly, which PyTorch computes as a masked attention over the whole score matrix (its warning that it does
    so is expected here and not repeated).  Rows that see no slot come back as zeros."""
    from torch.nn.attention.flex_attention import AuxRequest, create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as flex

    check_arguments(query, key, value, bits, threads, own)
    rows, heads, _ = query.shape
    slots, kv_heads, _ = key.shape
    if rows == 0 or slots == 0:  # nothing to attend with or to; flex_attention wants both
        return query.new_zeros(query.shape)
    last_word = bits.shape[1] - 1

    def sees(batch: torch.Tensor, head: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        # Indices past T or N can reach here from a padded block: clamp them into the tensors before reading.
        row = threads[q_idx.clamp(max=rows - 1)]
        word = bits[row, (kv_idx >> 5).clamp(max=last_word)]
        return (((word >> (kv_idx & 31)) & 1) != 0) & (kv_idx <= own[q_idx.clamp(max=rows - 1)]) & (kv_idx < slots)

    key_of_mask = ("flex_block_mask", rows, slots)
    block_mask = None if memo is None else memo.get(key_of_mask)
    if block_mask is None:
        block_mask = create_block_mask(sees, None, None, rows, slots, device=query.device)
        if memo is not None:
            memo[key_of_mask] = block_mask
    q = query.transpose(0, 1)[None]  # [1, Hq, T, D]
    k = key.transpose(0, 1)[None]  # [1, Hkv, N, D]
    v = value.transpose(0, 1)[None]
    options = {
        "block_mask": block_mask,
        "scale": scale,
        "enable_gqa": heads != kv_heads,
        "return_aux": AuxRequest(lse=True),
    }
    if query.is_cuda:
        out, aux = _compiled_flex()(q, k, v, **options)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "flex_attention called without torch.compile", UserWarning)
            out, aux = flex(q, k, v, **options)
    out = out.masked_fill(torch.isneginf(aux.lse)[..., None], 0.0)  # [1, Hq, T, D]: a row that sees nothing: zeros
    return out[0].transpose(0, 1).to(query.dtype)


def branched_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bits: torch.Tensor,
    threads: torch.Tensor,
    own: torch.Tensor,
    *,
    scale: float | None = None,
    backend: Backend,
    memo: dict[Any, Any] | None = None,
) -> torch.Tensor:
    """The branched attention of the module's docstring by ``backend``: ``"reference"``, ``"triton"`` or
    ``"flex"``.  ``memo``: a dict that lives for one step, in which a backend may keep what every layer of the
    step shares (flex: its block mask).  Raises ``ValueError`` for another name."""
    match backend:
        case "reference":
            return reference_attention(query, key, value, bits, threads, own, scale=scale)
        case "triton":
            return triton_attention(query, key, value, bits, threads, own, scale=scale)
        case "flex":
            return flex_attention(query, key, value, bits, threads, own, scale=scale, memo=memo)
        case _:
            raise ValueError(f"unknown branched attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
