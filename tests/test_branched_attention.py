"""The branched decode attention: the Triton kernel and flex_attention against the plain-PyTorch reference.

Visibility comes from random bitsets, from ``Views`` driven like a decode (a prompt, children forked at a
promise writing interleaved slots, a join), and from the training layouts of random annotated documents.
Without CUDA the kernel runs under Triton's interpreter (``TRITON_INTERPRET=1``, set before anything imports
Triton), which is slow: shapes are tiny and the example counts small.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # the interpreter is chosen when a kernel is decorated: set it before imports
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given, note, settings
from hypothesis import strategies as st
from strategies import documents

from pastac.backend.branched import (
    BACKENDS,
    branched_attention,
    flex_attention,
    reference_attention,
    triton_attention,
    triton_available,
)
from pastac.backend.visibility import Views, pack_bits
from pastac.ir.lower import lower
from pastac.passes import Policy, PositionOptions
from pastac.passes.layout import training_layout

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(triton_available(DEVICE) is not None, reason=str(triton_available(DEVICE)))
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
TOLERANCE = {torch.float32: 2e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}  # absolute and relative


def qkv(
    rows: int, slots: int, kv_heads: int, groups: int, dim: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random queries ``[T, Hq, D]``, keys and values ``[N, Hkv, D]``."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, kv_heads * groups, dim, generator=gen)
    k = torch.randn(slots, kv_heads, dim, generator=gen)
    v = torch.randn(slots, kv_heads, dim, generator=gen)
    return q.to(DEVICE, dtype), k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def with_garbage_after(bits: torch.Tensor, slots: int, extra_words: int, seed: int) -> torch.Tensor:
    """``bits`` with every bit at or past slot ``slots`` set at random, and ``extra_words`` more words of it."""
    gen = torch.Generator().manual_seed(seed)
    rows, words = bits.shape
    out = torch.randint(-(1 << 31), 1 << 31, (rows, words + extra_words), generator=gen, dtype=torch.int64)
    out = out.to(torch.int32)
    keep = torch.zeros(words * 32, dtype=torch.bool)
    keep[:slots] = True
    low = pack_bits(keep[None])[0]  # the words of the slots below N
    out[:, :words] = (bits & low) | (out[:, :words] & ~low)
    return out


def check(out: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """``out`` is ``expected`` to the dtype's tolerance, with no NaN."""
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert not out.isnan().any()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol)


# -- visibility patterns ---------------------------------------------------------------------------------------


def decode_views(
    prompt: int, children: int, steps: int, tokens: int, joined: bool
) -> tuple[Views, list[int], list[int]]:
    """``Views`` as a decode drives them: thread 0 writes ``prompt`` slots (its last a promise), ``children``
    threads fork from it there, then every thread writes ``tokens`` slots a step, interleaved, for ``steps``
    steps (the children joined into the parent before the last step when ``joined``).  Returns the views and
    the last step's query rows: each one's thread and own slot."""
    views = Views(8, threads=2)
    views.place(0, 0, prompt)
    for child in range(1, children + 1):
        views.fork(0, child, prompt)
    slot = prompt
    threads: list[int] = []
    own: list[int] = []
    for step in range(steps):
        if joined and step == steps - 1:
            for child in range(1, children + 1):
                views.join(0, child)
        threads, own = [], []
        for thread in range(children + 1):
            views.place(thread, slot, tokens)
            threads += [thread] * tokens
            own += list(range(slot, slot + tokens))
            slot += tokens
    return views, threads, own


def layout_rows(doc: object, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The training layout of ``doc`` as a bitset (one row per token), and up to ``limit`` of its tokens as
    query rows (evenly spaced, the last included): bits, threads, own, slots."""
    graph = lower(doc, lambda text: min(len(text), 12))  # type: ignore[arg-type]
    layout = training_layout(graph, PositionOptions(Policy.SEQUENTIAL))  # positions do not change the mask
    slots = layout.mask.shape[0]
    if not slots:
        return torch.zeros(0, 1, dtype=torch.int32), torch.zeros(0, dtype=torch.long), torch.zeros(0), 0
    rows = torch.linspace(0, slots - 1, min(limit, slots)).round().long().unique()
    return pack_bits(layout.mask), rows, rows.clone(), slots


# -- the Triton kernel against the reference -------------------------------------------------------------------

shapes = st.fixed_dictionaries(
    {
        "kv_heads": st.sampled_from([1, 2]),
        "groups": st.sampled_from([1, 2, 4]),
        "dim": st.sampled_from([16, 64]),
        "dtype": st.sampled_from(DTYPES),
        "splits": st.sampled_from([None, 1, 2, 3]),
        "block_n": st.sampled_from([None, 16, 32]),
        "seed": st.integers(0, 2**16),
    }
)


@needs_triton
@settings(max_examples=40, deadline=None)
@given(
    shape=shapes,
    rows=st.integers(1, 20),
    slots=st.integers(1, 300),
    density=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    extra_words=st.integers(0, 2),
    wide=st.booleans(),
)
def test_triton_matches_the_reference_on_random_bits(
    shape: dict, rows: int, slots: int, density: float, extra_words: int, wide: bool
) -> None:
    seed, dtype = shape["seed"], shape["dtype"]
    q, k, v = qkv(rows, slots, shape["kv_heads"], shape["groups"], shape["dim"], dtype, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    visible = torch.rand(5, slots, generator=gen) < density
    bits = with_garbage_after(pack_bits(visible), slots, extra_words, seed).to(DEVICE)
    threads = torch.randint(0, 5, (rows,), generator=gen, dtype=torch.int64 if wide else torch.int32).to(DEVICE)
    own = torch.randint(-1, slots + 2, (rows,), generator=gen, dtype=torch.int32 if wide else torch.int64)
    own = own.to(DEVICE)
    expected = reference_attention(q, k, v, bits, threads, own)
    out = triton_attention(q, k, v, bits, threads, own, splits=shape["splits"], block_n=shape["block_n"])
    check(out, expected, dtype)


@needs_triton
@settings(max_examples=20, deadline=None)
@given(
    shape=shapes,
    prompt=st.integers(1, 70),
    children=st.integers(1, 3),
    steps=st.integers(1, 12),
    tokens=st.integers(1, 2),
    joined=st.booleans(),
)
def test_triton_matches_the_reference_over_a_decode(
    shape: dict, prompt: int, children: int, steps: int, tokens: int, joined: bool
) -> None:
    views, threads, own = decode_views(prompt, children, steps, tokens, joined)
    slots = own[-1] + 1
    dtype = shape["dtype"]
    q, k, v = qkv(len(threads), slots, shape["kv_heads"], shape["groups"], shape["dim"], dtype, shape["seed"])
    bits = views.bits.to(DEVICE)
    thread_rows = torch.tensor(threads, dtype=torch.int32, device=DEVICE)
    own_slots = torch.tensor(own, device=DEVICE)
    expected = reference_attention(q, k, v, bits, thread_rows, own_slots)
    out = triton_attention(q, k, v, bits, thread_rows, own_slots, splits=shape["splits"], block_n=shape["block_n"])
    check(out, expected, dtype)


@needs_triton
@settings(max_examples=10, deadline=None)
@given(case=documents(), shape=shapes)
def test_triton_matches_the_reference_over_training_layouts(case: tuple, shape: dict) -> None:
    bits, rows, own, slots = layout_rows(case[0], limit=20)
    assume(slots > 0)
    note(f"{slots} slots, rows {rows.tolist()}")
    dtype = shape["dtype"]
    q, k, v = qkv(rows.numel(), slots, shape["kv_heads"], shape["groups"], shape["dim"], dtype, shape["seed"])
    bits, rows, own = bits.to(DEVICE), rows.to(DEVICE), own.to(DEVICE)
    expected = reference_attention(q, k, v, bits, rows, own)
    check(triton_attention(q, k, v, bits, rows, own, splits=shape["splits"], block_n=shape["block_n"]), expected, dtype)


@needs_triton
@pytest.mark.parametrize("dtype", DTYPES)
def test_head_dim_128_and_odd_head_dims(dtype: torch.dtype) -> None:
    views, threads, own = decode_views(prompt=40, children=2, steps=10, tokens=1, joined=False)
    thread_rows, own_slots = torch.tensor(threads, device=DEVICE), torch.tensor(own, device=DEVICE)
    bits = views.bits.to(DEVICE)
    for dim, groups in ((128, 4), (24, 3)):
        q, k, v = qkv(len(threads), own[-1] + 1, 2, groups, dim, dtype, seed=dim)
        expected = reference_attention(q, k, v, bits, thread_rows, own_slots)
        check(triton_attention(q, k, v, bits, thread_rows, own_slots, splits=2), expected, dtype)


@needs_triton
def test_whole_blocks_nobody_sees_are_skipped_and_never_read() -> None:
    # As a captured step calls it: N is the whole capacity, the slots past the used ones unwritten (NaN here),
    # and most blocks seen by no row: the result is the reference's over the used slots alone.
    capacity, used = 512, 230
    q, k, v = qkv(6, capacity, 2, 2, 16, torch.float32, seed=3)
    k[used:], v[used:] = float("nan"), float("nan")
    visible = torch.zeros(3, capacity, dtype=torch.bool)
    visible[:, :20] = True  # a shared prompt
    visible[0, 200:230] = True  # one thread's slots, far on
    visible[1, 100:101] = True
    bits = pack_bits(visible).to(DEVICE)
    threads = torch.tensor([0, 1, 2, 0, 1, 2], device=DEVICE)
    own = torch.tensor([229, 229, 229, 10, -1, 19], device=DEVICE)  # -1: a row that sees nothing
    expected = reference_attention(q, k[:used], v[:used], bits, threads, own)
    for splits in (1, 3, None):
        out = triton_attention(q, k, v, bits, threads, own, splits=splits, block_n=16)
        check(out, expected, torch.float32)
    assert torch.equal(out[4], torch.zeros_like(out[4]))


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_views_and_hugging_face_layouts(dtype: torch.dtype) -> None:
    # The cache holds [1, Hkv, capacity, D]; Hugging Face hands queries over as [1, Hq, T, D].
    views, threads, own = decode_views(prompt=30, children=3, steps=6, tokens=1, joined=True)
    slots, rows, capacity = own[-1] + 1, len(threads), 96
    gen = torch.Generator().manual_seed(5)
    cache_k = torch.randn(1, 2, capacity, 32, generator=gen).to(DEVICE, dtype)
    cache_v = torch.randn(1, 2, capacity, 32, generator=gen).to(DEVICE, dtype)
    hf_query = torch.randn(1, 4, rows, 32, generator=gen).to(DEVICE, dtype)
    query, key, value = hf_query[0].transpose(0, 1), cache_k[0].transpose(0, 1)[:slots], cache_v[0].transpose(0, 1)
    value = value[:slots]
    assert not key.is_contiguous() and not query.is_contiguous()
    bits = views.bits.to(DEVICE)
    thread_rows, own_slots = torch.tensor(threads, device=DEVICE), torch.tensor(own, device=DEVICE)
    expected = reference_attention(
        query.contiguous(), key.contiguous(), value.contiguous(), bits, thread_rows, own_slots
    )
    for splits in (1, 2):
        out = triton_attention(query, key, value, bits, thread_rows, own_slots, splits=splits)
        check(out, expected, dtype)


@needs_triton
def test_scale_and_the_default_split() -> None:
    q, k, v = qkv(3, 700, 1, 2, 16, torch.float32, seed=9)
    bits = pack_bits(torch.ones(1, 700, dtype=torch.bool)).to(DEVICE)
    threads, own = torch.zeros(3, dtype=torch.long, device=DEVICE), torch.tensor([5, 350, 699], device=DEVICE)
    expected = reference_attention(q, k, v, bits, threads, own, scale=0.3)
    check(triton_attention(q, k, v, bits, threads, own, scale=0.3), expected, torch.float32)
    check(branched_attention(q, k, v, bits, threads, own, scale=0.3, backend="triton"), expected, torch.float32)


@needs_triton
@pytest.mark.parametrize("backend", BACKENDS)
def test_no_rows_or_no_slots(backend: str) -> None:
    for rows, slots in ((0, 5), (3, 0)):
        q, k, v = qkv(rows, slots, 1, 2, 16, torch.float32, seed=0)
        index = torch.zeros(rows, dtype=torch.long, device=DEVICE)
        out = branched_attention(
            q, k, v, torch.zeros(2, 1, dtype=torch.int32, device=DEVICE), index, index, backend=backend
        )
        assert out.shape == q.shape and not out.any()


@needs_triton
def test_tuning_arguments_are_checked() -> None:
    q, k, v = qkv(1, 4, 1, 1, 16, torch.float32, seed=0)
    one = torch.zeros(1, dtype=torch.long, device=DEVICE)
    bits = torch.zeros(1, 1, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="block_n must be a power of two of at least 16, not 24"):
        triton_attention(q, k, v, bits, one, one, block_n=24)
    with pytest.raises(ValueError, match="splits must be at least 1, not 0"):
        triton_attention(q, k, v, bits, one, one, splits=0)


def test_choose_splits_depends_on_shapes_only() -> None:
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    from pastac.backend.triton_branched import choose_splits, tile_rows

    cpu = torch.device("cpu")
    assert choose_splits(30, tiles=1, kv_heads=1, block_n=64, device=cpu) == 1  # too few blocks to split
    assert choose_splits(4096, tiles=1, kv_heads=1, block_n=64, device=cpu) == 2
    assert choose_splits(4096, tiles=4, kv_heads=8, block_n=64, device=cpu) == 1  # enough programs already
    assert tile_rows(1, 1) == 16 and tile_rows(4, 3) == 4 and tile_rows(100, 1) == 64 and tile_rows(2, 32) == 2


def hopper_binary(kernel: object, types: dict[str, str], constants: dict[str, object]) -> dict[str, object]:
    """Compile a kernel of ``triton_branched`` for an H100 (sm_90) ahead of time, no GPU needed: its assembly by
    stage.  Arguments not in ``types``: pointers to float32 if named ``*_ptr``, else int32."""
    from triton import compile as compile_kernel
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    fn = JITFunction(kernel.fn)  # type: ignore[attr-defined]
    names = fn.arg_names
    signature = {n: types.get(n, "*fp32" if n.endswith("_ptr") else "i32") for n in names}
    signature |= dict.fromkeys(constants, "constexpr")
    source = ASTSource(fn, signature, {(names.index(n),): value for n, value in constants.items()})
    return compile_kernel(source, target=GPUTarget("cuda", 90, 32)).asm


def compile_for_a_gpu() -> None:
    """Compile the kernels for an H100 in a few configurations; the 16-bit products must use tensor cores.  Needs
    a process in which Triton is not interpreting (its own library is then compiled, not interpreted)."""
    from pastac.backend import triton_branched as kernels

    bf16 = {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "out_ptr": "*bf16", "bits_ptr": "*i32"}
    bf16 |= {"threads_ptr": "*i64", "own_ptr": "*i32", "scale_log2": "fp32"}
    grouped = {"G": 4, "D": 128, "BLOCK_T": 16, "BLOCK_G": 4, "BLOCK_N": 64, "BLOCK_D": 128}
    asm = hopper_binary(kernels._split_kernel, bf16, grouped | {"ONE_SPLIT": False, "NATIVE_DOT": True})
    assert "cubin" in asm and "mma" in str(asm["ptx"])
    fp32 = {"q_ptr": "*fp32", "k_ptr": "*fp32", "v_ptr": "*fp32", "out_ptr": "*fp32", "bits_ptr": "*i32"}
    fp32 |= {"threads_ptr": "*i32", "own_ptr": "*i64", "scale_log2": "fp32"}
    odd = {"G": 3, "D": 24, "BLOCK_T": 8, "BLOCK_G": 4, "BLOCK_N": 32, "BLOCK_D": 32}
    assert "cubin" in hopper_binary(kernels._split_kernel, fp32, odd | {"ONE_SPLIT": True, "NATIVE_DOT": False})
    combine = {"D": 128, "BLOCK_R": kernels.COMBINE_ROWS, "BLOCK_D": 128}
    assert "cubin" in hopper_binary(kernels._combine_kernel, {"out_ptr": "*bf16"}, combine)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the kernels run in the tests above")
def test_the_kernels_compile_for_a_gpu() -> None:
    # The interpreter runs the kernels' arithmetic, not Triton's compiler: this checks that the GPU path compiles
    # (the 16-bit operands to tl.dot, the skip inside the loop), in a process of its own, not interpreting.
    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("Triton's NVIDIA backend is not installed")
    tests = Path(__file__).parent
    script = f"import sys; sys.path.insert(0, {str(tests)!r}); import {Path(__file__).stem} as t; t.compile_for_a_gpu()"
    env = os.environ | {"TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tests.parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-4000:]


# -- the reference itself, flex_attention and the dispatch ----------------------------------------------------


def test_reference_against_a_dense_mask_by_hand() -> None:
    q, k, v = qkv(2, 5, 1, 1, 16, torch.float32, seed=1)
    bits = torch.tensor([[0b10110], [0]], dtype=torch.int32, device=DEVICE)  # row 0 sees slots 1, 2, 4
    out = reference_attention(q, k, v, bits, torch.tensor([0, 0], device=DEVICE), torch.tensor([2, 4], device=DEVICE))
    for t, seen in enumerate(([1, 2], [1, 2, 4])):
        weights = torch.softmax(q[t, 0] @ k[seen, 0].T / 4.0, -1)
        torch.testing.assert_close(out[t, 0], weights @ v[seen, 0])
    nothing = reference_attention(
        q, k, v, bits, torch.tensor([1, 0], device=DEVICE), torch.tensor([4, 0], device=DEVICE)
    )
    assert torch.equal(nothing, torch.zeros_like(nothing))  # row 1 sees none; slot 0 is not in row 0


@pytest.mark.parametrize(
    ("rows", "slots", "kv_heads", "groups"), [(5, 70, 2, 1), (4, 200, 2, 3), (1, 33, 1, 4)], ids=str
)
def test_flex_matches_the_reference(rows: int, slots: int, kv_heads: int, groups: int) -> None:
    q, k, v = qkv(rows, slots, kv_heads, groups, 16, torch.float32, seed=slots)
    gen = torch.Generator().manual_seed(slots)
    bits = with_garbage_after(pack_bits(torch.rand(3, slots, generator=gen) < 0.4), slots, 1, seed=2).to(DEVICE)
    threads = torch.randint(0, 3, (rows,), generator=gen, dtype=torch.int32).to(DEVICE)
    own = torch.randint(0, slots, (rows,), generator=gen).to(DEVICE)
    own[0] = -1  # a row that sees nothing
    expected = reference_attention(q, k, v, bits, threads, own)
    check(flex_attention(q, k, v, bits, threads, own), expected, torch.float32)
    assert torch.equal(expected[0], torch.zeros_like(expected[0]))


def test_flex_over_a_decode_with_grouped_queries() -> None:
    views, threads, own = decode_views(prompt=50, children=3, steps=5, tokens=2, joined=True)
    q, k, v = qkv(len(threads), own[-1] + 1, 2, 2, 32, torch.float32, seed=4)
    bits = views.bits.to(DEVICE)
    thread_rows, own_slots = torch.tensor(threads, device=DEVICE), torch.tensor(own, device=DEVICE)
    expected = reference_attention(q, k, v, bits, thread_rows, own_slots)
    check(branched_attention(q, k, v, bits, thread_rows, own_slots, backend="flex"), expected, torch.float32)
    assert torch.equal(branched_attention(q, k, v, bits, thread_rows, own_slots, backend="reference"), expected)


def test_unknown_backend() -> None:
    q, k, v = qkv(1, 4, 1, 1, 16, torch.float32, seed=0)
    one = torch.zeros(1, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match="unknown branched attention backend 'sdpa'"):
        branched_attention(q, k, v, torch.zeros(1, 1, dtype=torch.int32), one, one, backend="sdpa")  # type: ignore[arg-type]


def test_malformed_arguments() -> None:
    q, k, v = qkv(2, 40, 2, 2, 16, torch.float32, seed=0)
    rows = torch.zeros(2, dtype=torch.long, device=DEVICE)
    with pytest.raises(ValueError, match=r"bits must be int32 \[R, >= 2\] for 40 slots"):
        reference_attention(q, k, v, torch.zeros(1, 1, dtype=torch.int32, device=DEVICE), rows, rows)
    with pytest.raises(ValueError, match="3 query heads are not a multiple of 2"):
        reference_attention(q[:, :3], k, v, torch.zeros(1, 2, dtype=torch.int32, device=DEVICE), rows, rows)
    with pytest.raises(ValueError, match="threads must be an integer"):
        reference_attention(q, k, v, torch.zeros(1, 2, dtype=torch.int32, device=DEVICE), rows.float(), rows)


def test_triton_available_says_why_not(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("triton") is not None:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert "TRITON_INTERPRET=1" in str(triton_available("cpu"))
        q, k, v = qkv(1, 4, 1, 1, 16, torch.float32, seed=0)
        q, k, v = q.cpu(), k.cpu(), v.cpu()
        one = torch.zeros(1, dtype=torch.long)
        with pytest.raises(RuntimeError, match=r"the triton backend cannot run: .*TRITON_INTERPRET=1"):
            branched_attention(q, k, v, torch.zeros(1, 1, dtype=torch.int32), one, one, backend="triton")
        with pytest.raises(RuntimeError, match=r"the triton backend cannot run: .*TRITON_INTERPRET=1"):
            triton_attention(q, k, v, torch.zeros(1, 1, dtype=torch.int32), one, one, splits=2)
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert triton_available("cpu") is None
    if not torch.cuda.is_available():
        assert triton_available("cuda") == "CUDA is not available to PyTorch"
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "triton" else find_spec(name))
    assert triton_available() == "Triton is not installed (pip install triton)"
