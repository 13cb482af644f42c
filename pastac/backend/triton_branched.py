"""The branched decode attention as Triton kernels: visibility read from the bitset, blocks nobody sees skipped.

``launch`` (called by ``pastac.backend.branched.triton_attention``, which checks the arguments first) computes
what ``reference_attention`` there computes (the semantics live there) in one launch, or two when the slot axis
is split:

- ``_split_kernel``, one program per (key/value head, tile of ``BLOCK_T`` query rows, split of the slot axis):
  the program holds the tile's rows times all ``G`` query heads of its key/value head as one ``[BLOCK_T * G,
  D]`` block of queries, so each block of keys and values it loads serves every one of them.  It walks its
  split's slots ``BLOCK_N`` at a time: it reads the rows' bit words for the block first, and loads keys and
  values only if some row of the tile sees some slot of it; then an online softmax (running max, sum and
  weighted values, in float32, base 2).  With one split it writes the output; with several, each split
  writes its partial max, sum and values to scratch;
- ``_combine_kernel``, one program per ``COMBINE_ROWS`` (query row, query head) pairs: rescales the splits'
  partials to a common max and divides (the second half of split-K decoding).

Sizes: a program's block of queries is ``BLOCK_T x BLOCK_G`` rows (``G`` rounded up to a power of two), at
most ``ROWS_PER_TILE`` and at least the 16 ``tl.dot`` needs (``tile_rows``); ``BLOCK_N`` slots per inner block;
the head size rounded up to a power of two of at least 16, the padding masked.  The number of splits
(``choose_splits``) aims at about two programs per multiprocessor, each split at least
``MIN_BLOCKS_PER_SPLIT`` blocks long.  The launch depends on shapes only (grid, block sizes, the number of
splits): nothing is read back from the device, so a decode step that calls it can be captured in a CUDA graph.

Under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) every operand is widened to float32 as it is
loaded, because the interpreter's 16-bit arithmetic is not exact; on a GPU the 16-bit operands go to ``tl.dot``
as they are (with the softmax weights rounded to the values' dtype for the second product).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # slots per inner block: two bit words, and the skip granularity
ROWS_PER_TILE = 64  # query rows x grouped heads per program, at most (unless one kv head has more heads)
MIN_DOT = 16  # tl.dot wants every side at least this long
MIN_BLOCKS_PER_SPLIT = 4  # a split covers at least this many blocks, so splitting pays for its combine
MAX_SPLITS = 64
COMBINE_ROWS = 32  # (query row, head) pairs per program of the combine kernel


@triton.jit
def _split_kernel(
    q_ptr,  # [T, Hq, D] queries
    k_ptr,  # [N, Hkv, D] keys (any strides)
    v_ptr,  # [N, Hkv, D] values (any strides)
    bits_ptr,  # int32 [R, W]: row r's slot j is bit j & 31 of word j >> 5
    threads_ptr,  # [T] the bits row of each query row
    own_ptr,  # [T] each query row's own slot (it sees no slot after it)
    out_ptr,  # [T, Hq, D] output, written when ONE_SPLIT
    part_max_ptr,  # float32 [S, T, Hq] per split: running max of the scores (base 2), when not ONE_SPLIT
    part_sum_ptr,  # float32 [S, T, Hq] per split: sum of exp2(score - max)
    part_acc_ptr,  # float32 [S, T, Hq, D] per split: the values weighted by exp2(score - max)
    T,  # query rows
    N,  # slots
    scale_log2,  # softmax scale times log2(e)
    blocks_per_split,  # BLOCK_N blocks per split
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kn,
    stride_kh,
    stride_kd,
    stride_vn,
    stride_vh,
    stride_vd,
    stride_br,
    stride_bw,
    stride_ot,
    stride_oh,
    stride_od,
    G: tl.constexpr,  # query heads per key/value head
    D: tl.constexpr,  # head size
    BLOCK_T: tl.constexpr,  # query rows per program
    BLOCK_G: tl.constexpr,  # G rounded up to a power of two
    BLOCK_N: tl.constexpr,  # slots per inner block
    BLOCK_D: tl.constexpr,  # D rounded up to a power of two, at least 16
    ONE_SPLIT: tl.constexpr,  # one split: write the output directly
    NATIVE_DOT: tl.constexpr,  # feed tl.dot the 16-bit operands (GPU); else widen everything to float32
):
    kv_head = tl.program_id(0)
    tile = tl.program_id(1)
    split = tl.program_id(2)
    heads = tl.num_programs(0) * G
    BLOCK_M: tl.constexpr = BLOCK_T * BLOCK_G

    # Row m of the program's block: query row t = m // BLOCK_G of the tile, grouped head g = m % BLOCK_G.
    m = tl.arange(0, BLOCK_M)
    t = tile * BLOCK_T + m // BLOCK_G
    g = m % BLOCK_G
    row_ok = (t < T) & (g < G)
    head = kv_head * G + g
    d = tl.arange(0, BLOCK_D)
    d_ok = d < D

    q = tl.load(
        q_ptr + t[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :] * stride_qd,
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    if not NATIVE_DOT:
        q = q.to(tl.float32)
    thread = tl.load(threads_ptr + t, mask=row_ok, other=0).to(tl.int64)
    own = tl.load(own_ptr + t, mask=row_ok, other=-1)  # a padding row sees no slot
    word_row = bits_ptr + thread * stride_br

    row_max = tl.full([BLOCK_M], float("-inf"), tl.float32)
    row_sum = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    first = split * blocks_per_split * BLOCK_N
    last = tl.minimum(first + blocks_per_split * BLOCK_N, N)
    for start in range(first, last, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        j_ok = j < N  # bits at or past N are never read as slots
        words = tl.load(
            word_row[:, None] + (j[None, :] >> 5) * stride_bw, mask=row_ok[:, None] & j_ok[None, :], other=0
        )
        seen = (((words >> (j[None, :] & 31)) & 1) != 0) & (j[None, :] <= own[:, None])
        if tl.max(seen.to(tl.int32)) > 0:  # else no row of the tile sees the block: no loads at all
            # Only the slots some row sees are loaded: a slot nobody sees may hold anything (an unwritten one),
            # and a zero weight times a NaN value would still be NaN.
            col_seen = tl.max(seen.to(tl.int32), 0) > 0
            kt = tl.load(
                k_ptr + kv_head * stride_kh + j[None, :] * stride_kn + d[:, None] * stride_kd,
                mask=col_seen[None, :] & d_ok[:, None],
                other=0.0,
            )
            v = tl.load(
                v_ptr + kv_head * stride_vh + j[:, None] * stride_vn + d[None, :] * stride_vd,
                mask=col_seen[:, None] & d_ok[None, :],
                other=0.0,
            )
            if not NATIVE_DOT:
                kt = kt.to(tl.float32)
                v = v.to(tl.float32)
            scores = tl.dot(q, kt, input_precision="ieee") * scale_log2
            scores = tl.where(seen, scores, float("-inf"))
            new_max = tl.maximum(row_max, tl.max(scores, 1))
            base = tl.where(new_max == float("-inf"), 0.0, new_max)  # a row that has seen nothing yet
            p = tl.exp2(scores - base[:, None])
            alpha = tl.exp2(row_max - base)
            row_sum = row_sum * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
            row_max = new_max

    cell = row_ok[:, None] & d_ok[None, :]
    if ONE_SPLIT:
        out = acc / tl.where(row_sum > 0, row_sum, 1.0)[:, None]  # a row that sees nothing: zeros
        out_at = out_ptr + t[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :] * stride_od
        tl.store(out_at, out.to(out_ptr.dtype.element_ty), mask=cell)
    else:
        part = (split * T + t) * heads + head
        tl.store(part_max_ptr + part, row_max, mask=row_ok)
        tl.store(part_sum_ptr + part, row_sum, mask=row_ok)
        tl.store(part_acc_ptr + part[:, None] * D + d[None, :], acc, mask=cell)


@triton.jit
def _combine_kernel(
    part_max_ptr,  # float32 [S, T, Hq]
    part_sum_ptr,  # float32 [S, T, Hq]
    part_acc_ptr,  # float32 [S, T, Hq, D]
    out_ptr,  # [T, Hq, D]
    rows,  # T * Hq
    heads,  # Hq
    splits,  # S
    stride_ot,
    stride_oh,
    stride_od,
    D: tl.constexpr,
    BLOCK_R: tl.constexpr,  # (query row, head) pairs per program
    BLOCK_D: tl.constexpr,
):
    # Two passes over the splits, no reductions (each costs milliseconds under the interpreter): the splits'
    # common max, then the rescaled sums and values.
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # t * Hq + head
    r_ok = r < rows
    d = tl.arange(0, BLOCK_D)
    cell = r_ok[:, None] & (d < D)[None, :]
    top = tl.full([BLOCK_R], float("-inf"), tl.float32)
    for s in range(splits):
        top = tl.maximum(top, tl.load(part_max_ptr + s * rows + r, mask=r_ok, other=float("-inf")))
    base = tl.where(top == float("-inf"), 0.0, top)  # a row no split saw anything for
    total = tl.zeros([BLOCK_R], tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], tl.float32)
    for s in range(splits):
        part = s * rows + r
        weight = tl.exp2(tl.load(part_max_ptr + part, mask=r_ok, other=float("-inf")) - base)  # 0: saw nothing
        total += weight * tl.load(part_sum_ptr + part, mask=r_ok, other=0.0)
        acc += weight[:, None] * tl.load(part_acc_ptr + part[:, None] * D + d[None, :], mask=cell, other=0.0)
    out = acc / tl.where(total > 0, total, 1.0)[:, None]
    t = r // heads
    head = r % heads
    out_at = out_ptr + t[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :] * stride_od
    tl.store(out_at, out.to(out_ptr.dtype.element_ty), mask=cell)


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def tile_rows(rows: int, groups: int) -> int:
    """Query rows per program (``BLOCK_T``) for ``rows`` query rows and ``groups`` query heads per kv head: up to
    ``ROWS_PER_TILE`` rows x heads in all, and at least the 16 that ``tl.dot`` needs."""
    block_g = _power_of_two(groups)
    block_t = min(_power_of_two(rows), max(1, ROWS_PER_TILE // block_g))
    return max(block_t, _ceil_div(MIN_DOT, block_g))


def choose_splits(slots: int, tiles: int, kv_heads: int, block_n: int, device: torch.device) -> int:
    """How many splits of the slot axis: enough programs to fill the GPU about twice over (one 'multiprocessor'
    under the interpreter), each split at least ``MIN_BLOCKS_PER_SPLIT`` blocks long, at most ``MAX_SPLITS``.
    Shapes only: the same shapes always launch the same grid."""
    processors = 1
    if device.type == "cuda":
        processors = _multiprocessors(torch.cuda.current_device() if device.index is None else device.index)
    blocks = _ceil_div(slots, block_n)
    wanted = _ceil_div(2 * processors, max(tiles * kv_heads, 1))
    return max(1, min(wanted, _ceil_div(blocks, MIN_BLOCKS_PER_SPLIT), MAX_SPLITS))


def launch(
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
    """Run the kernels: ``[T, Hq, D]``, the branched attention of ``pastac.backend.branched`` (its docstring gives
    the shapes and the semantics).  The arguments are those ``branched.triton_attention`` has checked (call that:
    it checks them, and that the kernel can run on their device, before it imports this module).

    ``splits`` (how many parts of the slot axis run in parallel; ``choose_splits`` by default) and ``block_n``
    (slots per inner block, a power of two of at least 16; ``BLOCK_N`` by default) tune the launch without
    changing the result beyond rounding."""
    rows, heads, dim = query.shape
    slots, kv_heads, _ = key.shape
    groups = heads // kv_heads
    block_n = BLOCK_N if block_n is None else block_n
    if block_n < MIN_DOT or block_n & (block_n - 1):
        raise ValueError(f"block_n must be a power of two of at least {MIN_DOT}, not {block_n}")
    block_t = tile_rows(rows, groups)
    tiles = _ceil_div(rows, block_t)
    if splits is None:
        splits = choose_splits(slots, tiles, kv_heads, block_n, query.device)
    if splits < 1:
        raise ValueError(f"splits must be at least 1, not {splits}")
    blocks_per_split = max(_ceil_div(_ceil_div(slots, block_n), splits), 1)
    scale = dim**-0.5 if scale is None else scale

    out = torch.empty((rows, heads, dim), dtype=query.dtype, device=query.device)
    if rows == 0:  # an empty grid is not launched
        return out
    one = splits == 1
    part_shape = (splits, rows, heads) if not one else (1,)
    part_max = torch.empty(part_shape, dtype=torch.float32, device=query.device)
    part_sum = torch.empty(part_shape, dtype=torch.float32, device=query.device)
    part_acc = torch.empty((*part_shape, dim) if not one else (1,), dtype=torch.float32, device=query.device)
    native = query.is_cuda and not _interpreting() and query.dtype in (torch.float16, torch.bfloat16)
    block_d = max(_power_of_two(dim), MIN_DOT)

    _split_kernel[(kv_heads, tiles, splits)](
        query,
        key,
        value,
        bits,
        threads,
        own,
        out,
        part_max,
        part_sum,
        part_acc,
        rows,
        slots,
        scale * 1.4426950408889634,  # log2(e): the kernel exponentiates in base 2
        blocks_per_split,
        *query.stride(),
        *key.stride(),
        *value.stride(),
        *bits.stride(),
        *out.stride(),
        G=groups,
        D=dim,
        BLOCK_T=block_t,
        BLOCK_G=_power_of_two(groups),
        BLOCK_N=block_n,
        BLOCK_D=block_d,
        ONE_SPLIT=one,
        NATIVE_DOT=native,
    )
    if not one:
        _combine_kernel[(_ceil_div(rows * heads, COMBINE_ROWS),)](
            part_max,
            part_sum,
            part_acc,
            out,
            rows * heads,
            heads,
            splits,
            *out.stride(),
            D=dim,
            BLOCK_R=COMBINE_ROWS,
            BLOCK_D=block_d,
        )
    return out
