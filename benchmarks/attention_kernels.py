"""Branched decode attention: the Triton kernel, sdpa with a dense mask and flex against one causal decode row.

    .venv/bin/python benchmarks/attention_kernels.py --out benchmarks/results/gpu-h100/kernels
    .venv/bin/python benchmarks/attention_kernels.py --device cpu --dtype float32 --T 1,4 --N 64,256 \\
        --heads 4/2 --head-dim 16 --repeats 3 --out /tmp/kernels        # a smoke run of the plumbing

One decode step of pastac has T queries, one per running thread, over a cache of N slots; query t sees
slot j when bit j of its thread's row of the bitset is set and j <= own[t] (``pastac.backend.branched``).
The visibility is what a PASTA step looks like: a shared prefix (``--prefix`` of the slots) that every
thread sees, then the threads' own tokens interleaved round-robin in the remaining slots; each thread sees
the prefix and its own slots, and its query sits at its last one.  For every head shape (``--heads``), T
and N it times:

- ``triton``: ``triton_attention`` (``pastac.backend.triton_branched``) over the bitset;
- ``sdpa-dense-mask``: ``F.scaled_dot_product_attention`` with the additive float mask ``[T, N]`` built
  from the same bits; grouped queries stacked per key/value head against the unexpanded keys, as
  pastac's runner does (``pastac.backend.attention``).  Building the mask is not in its time but is timed
  apart (``mask_build``): the runner builds it once per step, the attention runs once per layer;
- ``flex``: ``flex_attention`` (its failure is recorded, not raised);
- ``causal-row``: the target's baseline, ONE decode row (T=1, no mask, sdpa) over the same N slots.

Each time is the median of ``--repeats`` measurements of a burst of calls that walk over enough copies of
the keys and values to leave the GPU's L2 cache (as consecutive layers do): ``ms`` with eager launches
(CUDA events), and on CUDA ``graph_ms`` with the burst replayed as one CUDA graph (what a static decode
step pays: no launch overhead).  Each implementation is checked against ``reference_attention`` (in
float32) on the first (T, N) of each shape; ``max_abs_err`` shows a fast wrong kernel.  The target: at
T=16, N=8192, ``triton`` within 1.3x of ``causal-row``.  Writes attention-kernels.json and .md into
``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

IMPLS = ("causal-row", "triton", "sdpa-dense-mask", "flex")  # flex last: it compiles, and may eat the budget
TARGET = {"T": 16, "N": 8192, "limit": 1.3}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
COLD_BYTES = 256 << 20  # keys and values walked per burst on CUDA: several times an H100's 50 MB L2


def ints(text: str) -> list[int]:
    """``1,4,16`` -> [1, 4, 16]."""
    return [int(x) for x in text.split(",") if x.strip()]


def head_shapes(text: str) -> list[tuple[int, int]]:
    """``32/32,32/8`` -> [(32, 32), (32, 8)]: query heads / key-value heads."""
    shapes = []
    for item in text.split(","):
        hq, _, hkv = item.partition("/")
        q, kv = int(hq), int(hkv or hq)
        if q % kv:
            raise argparse.ArgumentTypeError(f"{item}: query heads must be a multiple of key/value heads")
        shapes.append((q, kv))
    return shapes


def machine(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    from pastac.machine import cpu_name

    out: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
    }
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError as error:
        out["triton"] = f"missing: {error}"
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda
        out["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    out["triton_interpret"] = os.environ.get("TRITON_INTERPRET", "")
    return out


# -- the step's visibility ----------------------------------------------------------------------------------


def visibility(t: int, n: int, prefix: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """bool rows ``[T, N]``, threads ``[T]`` and own ``[T]`` of a PASTA step: a shared prefix of
    ``prefix * N`` slots, then slot ``P + i`` belongs to thread ``i % T``; thread t's query sits at its last slot."""
    shared = int(n * prefix)
    if n - shared < t:
        raise ValueError(f"{n - shared} slots after the prefix cannot hold one token of each of {t} threads")
    rows = torch.zeros((t, n), dtype=torch.bool)
    rows[:, :shared] = True
    owner = torch.arange(n - shared) % t  # slot shared + i: thread i % T
    rows[:, shared:] = owner[None, :] == torch.arange(t)[:, None]
    own = shared + (n - shared - 1) - (n - shared - 1 - torch.arange(t)) % t  # each thread's last slot
    return rows, torch.arange(t, dtype=torch.int32), own.to(torch.int32)


def dense_mask(
    unpack: Callable[..., torch.Tensor],
    bits: torch.Tensor,
    threads: torch.Tensor,
    own: torch.Tensor,
    n: int,
    groups: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The additive mask ``[groups * T, N]`` sdpa takes for stacked queries, from the bits (what a step builds)."""
    seen = unpack(bits.index_select(0, threads), n)  # [T, N]
    causal = torch.arange(n, device=bits.device)[None, :] <= own[:, None]
    mask = torch.zeros(seen.shape, dtype=dtype, device=bits.device)
    mask.masked_fill_(~(seen & causal), float("-inf"))
    return mask.repeat(groups, 1)  # row g * T + i: query i of the g-th head of its group


# -- timing --------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_burst(fn: Callable[[int], object], burst: int, repeats: int, warmup: int, device: torch.device) -> float:
    """Median milliseconds per call of ``fn(i)`` for i in 0..burst-1, over ``repeats`` bursts (eager launches)."""
    for i in range(warmup):
        fn(i % burst)
    sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(burst):
                fn(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / burst)
        else:
            begun = time.perf_counter()
            for i in range(burst):
                fn(i)
            times.append((time.perf_counter() - begun) * 1000 / burst)
    return statistics.median(times)


def time_graph(fn: Callable[[int], object], burst: int, repeats: int, device: torch.device) -> float:
    """Median milliseconds per call with the burst captured once as a CUDA graph and replayed."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for i in range(burst):  # warm up off the capture: lazy initialisation, compilation, autotuning
            fn(i)
    torch.cuda.current_stream(device).wait_stream(side)
    sync(device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(burst):
            fn(i)
    graph.replay()
    sync(device)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / burst)
    del graph
    return statistics.median(times)


def error_text(error: BaseException) -> str:
    """One line for the report."""
    text = f"{type(error).__name__}: {error}".strip().splitlines()
    return text[0][:300] if text else type(error).__name__


# -- the run -------------------------------------------------------------------------------------------------


class Case:
    """One head shape at one (T, N): the inputs every implementation gets, in the layouts each one takes."""

    def __init__(
        self,
        hq: int,
        hkv: int,
        d: int,
        t: int,
        n: int,
        *,
        prefix: float,
        burst: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        from pastac.backend.visibility import pack_bits

        self.hq, self.hkv, self.d, self.t, self.n = hq, hkv, d, t, n
        self.groups = hq // hkv
        generator = torch.Generator(device).manual_seed(1000 * t + n)  # made where they live: GBs of them
        kv_bytes = 2 * n * hkv * d * torch.finfo(dtype).bits // 8
        self.copies = max(1, min(16, math.ceil(COLD_BYTES / kv_bytes))) if device.type == "cuda" else 1
        self.burst = self.copies * math.ceil(burst / self.copies)

        def rand(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=device, dtype=dtype)

        self.query = rand(t, hq, d)  # [T, Hq, D]
        # the cache's layout, [1, Hkv, N, D] (Hugging Face's), one copy per "layer"; sdpa takes it as it is, the
        # branched kernels a [N, Hkv, D] view of it, as the runner hands them
        self.keys_bhnd = [rand(1, hkv, n, d) for _ in range(self.copies)]
        self.values_bhnd = [rand(1, hkv, n, d) for _ in range(self.copies)]
        self.keys = [k[0].transpose(0, 1) for k in self.keys_bhnd]  # [N, Hkv, D] views
        self.values = [v[0].transpose(0, 1) for v in self.values_bhnd]
        rows, threads, own = visibility(t, n, prefix)
        self.bits = pack_bits(rows.to(device))  # int32 [T, ceil(N / 32)]
        self.threads, self.own = threads.to(device), own.to(device)

    def mask_builder(self, unpack: Callable[..., torch.Tensor]) -> Callable[[int], torch.Tensor]:
        """The dense mask's build, as a step makes it (timed like the attention)."""
        dtype = self.query.dtype
        return lambda i: dense_mask(unpack, self.bits, self.threads, self.own, self.n, self.groups, dtype)

    def stacked(self, query: torch.Tensor) -> torch.Tensor:
        """``[T, Hq, D]`` -> ``[1, Hkv, groups * T, D]``: each key/value head's query heads one after the other."""
        return query.permute(1, 0, 2).reshape(1, self.hkv, self.groups * query.shape[0], self.d)

    def unstacked(self, out: torch.Tensor, t: int) -> torch.Tensor:
        """``[1, Hkv, groups * T, D]`` -> ``[T, Hq, D]``."""
        return out.reshape(self.hq, t, self.d).transpose(0, 1)


def kernel(branched: Any) -> Callable[..., torch.Tensor]:
    """``triton_attention`` itself: the kernel, without ``branched_attention``'s dispatch on every call."""
    if hasattr(branched, "triton_attention"):
        return branched.triton_attention
    return importlib.import_module("pastac.backend.triton_branched").triton_attention


def implementation(name: str, case: Case, branched: Any, mask: torch.Tensor | None) -> Callable[[int], torch.Tensor]:
    """The call to time for ``name``: ``fn(i)`` runs it on the i-th copy of the keys and values."""
    match name:
        case "triton" | "flex":
            if name == "triton":
                if (why := branched.triton_available(case.query.device)) is not None:
                    raise RuntimeError(f"triton unavailable: {why}")
                fn = kernel(branched)
            else:
                fn = branched.flex_attention
            return lambda i: fn(
                case.query, case.keys[i % case.copies], case.values[i % case.copies], case.bits, case.threads, case.own
            )
        case "sdpa-dense-mask":
            assert mask is not None
            q = case.stacked(case.query)
            return lambda i: F.scaled_dot_product_attention(
                q, case.keys_bhnd[i % case.copies], case.values_bhnd[i % case.copies], attn_mask=mask
            )
        case "causal-row":
            q = case.stacked(case.query[-1:])  # one row, which sees every slot: no mask
            return lambda i: F.scaled_dot_product_attention(
                q, case.keys_bhnd[i % case.copies], case.values_bhnd[i % case.copies]
            )
    raise ValueError(f"unknown implementation {name!r}")


def check(name: str, case: Case, branched: Any, out: torch.Tensor) -> float:
    """Max abs difference of ``out`` from ``reference_attention`` in float32 on the same inputs."""
    q, k, v = case.query.float(), case.keys[0].float(), case.values[0].float()
    if name == "causal-row":  # the last query, seeing every slot
        full = torch.full((1, case.bits.shape[1]), -1, dtype=torch.int32, device=case.bits.device)
        zero = torch.zeros(1, dtype=torch.int32, device=case.bits.device)
        own = torch.full((1,), case.n - 1, dtype=torch.int32, device=case.bits.device)
        want = branched.reference_attention(q[-1:], k, v, full, zero, own)
        got = case.unstacked(out, 1)
    else:
        want = branched.reference_attention(q, k, v, case.bits, case.threads, case.own)
        got = case.unstacked(out, case.t) if name == "sdpa-dense-mask" else out
    return (got.float() - want).abs().max().item()


def run(args: argparse.Namespace, save: Callable[[dict[str, Any], bool], None]) -> dict[str, Any]:
    """Every implementation over every head shape, T and N, within the time budget; ``save(report, final)``
    after each implementation and at the end."""
    from pastac.backend.visibility import unpack_bits

    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("attention_kernels: --device cuda, but CUDA is not available (--device cpu for a smoke run)")
    try:
        branched: Any = importlib.import_module("pastac.backend.branched")
        branched_error = None
    except ImportError as error:
        branched, branched_error = None, error_text(error)
    started = time.perf_counter()
    deadline = started + args.budget_s
    results: list[dict[str, Any]] = []
    builds: list[dict[str, Any]] = []
    grid = [(hq, hkv, t, n) for hq, hkv in args.heads for t in args.T for n in args.N]
    firsts = {(hq, hkv): (args.T[0], args.N[0]) for hq, hkv in args.heads}
    cases: dict[tuple[int, int, int, int], Case | str] = {}

    def make_report() -> dict[str, Any]:
        return {
            "machine": machine(device),
            "settings": {
                "dtype": args.dtype,
                "device": str(device),
                "T": args.T,
                "N": args.N,
                "heads": [f"{hq}/{hkv}" for hq, hkv in args.heads],
                "head_dim": args.head_dim,
                "prefix": args.prefix,
                "repeats": args.repeats,
                "case_s": args.case_s,
                "warmup": args.warmup,
                "burst": args.burst,
                "graphs": bool(args.graphs and device.type == "cuda"),
                "budget_s": args.budget_s,
                "impls": list(args.impls),
            },
            "branched_error": branched_error,
            "results": results,
            "mask_build": builds,
            "ratios": ratios(results),
            "target": target(results, args),
            "elapsed_s": time.perf_counter() - started,
        }

    for name in args.impls:
        for hq, hkv, t, n in grid:
            row: dict[str, Any] = {"impl": name, "hq": hq, "hkv": hkv, "d": args.head_dim, "T": t, "N": n}
            row |= {"ms": None, "graph_ms": None, "max_abs_err": None, "error": None}
            results.append(row)
            if time.perf_counter() > deadline:
                row["error"] = f"skipped: past the time budget of {args.budget_s:.0f} s"
                continue
            key = (hq, hkv, t, n)
            if key not in cases:
                try:
                    cases[key] = Case(
                        hq, hkv, args.head_dim, t, n, prefix=args.prefix, burst=args.burst, dtype=dtype, device=device
                    )
                except (ValueError, RuntimeError) as error:  # a size that does not fit, out of memory
                    cases[key] = error_text(error)
            case = cases[key]
            if isinstance(case, str):
                row["error"] = case
                continue
            if name in ("triton", "flex") and branched is None:
                row["error"] = f"pastac.backend.branched: {branched_error}"
                continue
            try:
                mask = None
                if name == "sdpa-dense-mask":
                    build = case.mask_builder(unpack_bits)
                    mask = build(0)
                    build_ms = time_burst(build, case.burst, args.repeats, args.warmup, device)
                    builds.append({"hq": hq, "hkv": hkv, "T": t, "N": n, "ms": build_ms})
                fn = implementation(name, case, branched, mask)
                out = fn(0)  # the first call compiles what it has to
                sync(device)
                if (t, n) == firsts[(hq, hkv)] and branched is not None:
                    row["max_abs_err"] = check(name, case, branched, out)
                begun = time.perf_counter()
                fn(1 % case.burst)
                sync(device)
                once = time.perf_counter() - begun  # a slow implementation gets fewer bursts (3 at least)
                repeats = min(args.repeats, max(3, int(args.case_s / max(once * case.burst, 1e-9))))
                row["repeats"] = repeats
                row["ms"] = time_burst(fn, case.burst, repeats, args.warmup, device)
                if device.type == "cuda" and args.graphs and name != "flex":  # flex compiles: not captured
                    try:
                        row["graph_ms"] = time_graph(fn, case.burst, repeats, device)
                    except Exception as error:  # a capture that fails is a result, the run goes on
                        row["graph_error"] = error_text(error)
            except Exception as error:  # a failing implementation is a result, the run goes on
                row["error"] = error_text(error)
            if args.verbose:
                print(f"{name:16} {hq}/{hkv} T={t:<3} N={n:<6} ms={row['ms']} err={row['error']}", file=sys.stderr)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save(make_report(), final=False)  # what is measured so far survives a timeout
    report = make_report()
    save(report, final=True)
    return report


def _time(results: list[dict[str, Any]], impl: str, hq: int, hkv: int, t: int | None, n: int, key: str) -> Any:
    for r in results:
        same = r["impl"] == impl and (r["hq"], r["hkv"], r["N"]) == (hq, hkv, n) and (t is None or r["T"] == t)
        if same and r.get(key) is not None:
            return r[key]
    return None


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per shape, T and N: each implementation's time over one causal decode row's (eager, and graph replay)."""
    out = []
    for r in results:
        if r["impl"] == "causal-row":
            continue
        row = {"impl": r["impl"], "hq": r["hq"], "hkv": r["hkv"], "T": r["T"], "N": r["N"]}
        for key, name in (("ms", "vs_causal_row"), ("graph_ms", "vs_causal_row_graph")):
            base = _time(results, "causal-row", r["hq"], r["hkv"], None, r["N"], key)
            row[name] = r[key] / base if r[key] is not None and base else None
        out.append(row)
    return out


def target(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Per head shape: triton over causal-row at T=16, N=8192, and whether it is within 1.3x (graph replay
    when measured, else eager)."""
    out = []
    for hq, hkv in args.heads:
        entry: dict[str, Any] = {"hq": hq, "hkv": hkv, **TARGET}
        for key, name in (("ms", "ratio"), ("graph_ms", "ratio_graph")):
            mine = _time(results, "triton", hq, hkv, TARGET["T"], TARGET["N"], key)
            base = _time(results, "causal-row", hq, hkv, None, TARGET["N"], key)
            entry[name] = mine / base if mine is not None and base else None
        best = entry["ratio_graph"] if entry["ratio_graph"] is not None else entry["ratio"]
        entry["met"] = None if best is None else best <= TARGET["limit"]
        out.append(entry)
    return out


# -- the report ----------------------------------------------------------------------------------------------


def fmt(x: float | None, digits: int = 3) -> str:
    """A figure for the table, or a dash."""
    return "–" if x is None else f"{x:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    """The tables: per head shape, the time of each implementation per (T, N), and the ratios to one row."""
    m, s = report["machine"], report["settings"]
    results = report["results"]
    where = m.get("gpu") or m["cpu"]
    lines = [
        "# Branched decode attention against one causal decode row",
        "",
        f"{where}; torch {m['torch']}, triton {m['triton']}; {s['dtype']} on {s['device']}; head dim "
        f"{s['head_dim']}; prefix {s['prefix']:.2f} of the slots shared, the rest interleaved round-robin.",
        f"Milliseconds per call, median of up to {s['repeats']} bursts of {s['burst']} calls (fewer bursts for a "
        "slow implementation); `graph`: the burst replayed as one CUDA graph. The mask is built once per step "
        "(`mask build`), the attention runs once per layer.",
        "",
    ]
    for t in report["target"]:
        lines.append(
            f"- target {t['hq']}/{t['hkv']} heads, T={t['T']}, N={t['N']}: triton / causal-row = "
            f"{fmt(t['ratio'], 2)} eager, {fmt(t['ratio_graph'], 2)} graph (limit {t['limit']}): "
            + {True: "**met**", False: "**not met**", None: "not measured"}[t["met"]]
        )
    lines.append("")
    for heads in s["heads"]:
        hq, hkv = (int(x) for x in heads.split("/"))
        lines += [
            f"## {hq} query heads, {hkv} key/value heads",
            "",
            "| T | N | causal-row | triton | triton graph | sdpa-dense-mask | mask build | flex "
            "| triton / row | triton / row (graph) | sdpa / row |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for t in s["T"]:
            for n in s["N"]:
                row = _time(results, "causal-row", hq, hkv, None, n, "ms")
                row_g = _time(results, "causal-row", hq, hkv, None, n, "graph_ms")
                tri = _time(results, "triton", hq, hkv, t, n, "ms")
                tri_g = _time(results, "triton", hq, hkv, t, n, "graph_ms")
                sdpa = _time(results, "sdpa-dense-mask", hq, hkv, t, n, "ms")
                flex = _time(results, "flex", hq, hkv, t, n, "ms")
                build = next(
                    (b["ms"] for b in report["mask_build"] if (b["hq"], b["hkv"], b["T"], b["N"]) == (hq, hkv, t, n)),
                    None,
                )

                def over(a: float | None, b: float | None) -> str:
                    return fmt(a / b if a is not None and b else None, 2)

                lines.append(
                    f"| {t} | {n} | {fmt(row)} | {fmt(tri)} | {fmt(tri_g)} | {fmt(sdpa)} | {fmt(build)} | "
                    f"{fmt(flex)} | {over(tri, row)} | {over(tri_g, row_g)} | {over(sdpa, row)} |"
                )
        lines.append("")
    checked = [r for r in results if r["max_abs_err"] is not None]
    if checked:
        lines += ["Max abs error against `reference_attention` (float32), on the first (T, N) of each shape:", ""]
        lines += [f"- {r['impl']} {r['hq']}/{r['hkv']} T={r['T']} N={r['N']}: {r['max_abs_err']:.2e}" for r in checked]
        lines.append("")
    errors: dict[tuple[str, str], list[str]] = {}
    for r in results:
        for key in ("error", "graph_error"):
            if r.get(key):
                errors.setdefault((r["impl"], r[key]), []).append(f"{r['hq']}/{r['hkv']} T={r['T']} N={r['N']}")
    if errors or report["branched_error"]:
        lines += ["Errors (recorded, the run went on):", ""]
        lines += [f"- {impl}: {text} ({len(where)} case(s): {where[0]}, …)" for (impl, text), where in errors.items()]
        lines.append("")
    lines.append(f"{report['elapsed_s']:.1f} s in all.")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Run the benchmark and write its report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the folder for attention-kernels.json and .md")
    parser.add_argument("--T", type=ints, default=[1, 4, 16, 64], help="queries (threads) per step (1,4,16,64)")
    parser.add_argument("--N", type=ints, default=[1024, 8192, 32768], help="cache slots (1024,8192,32768)")
    parser.add_argument(
        "--heads", type=head_shapes, default=[(32, 32), (32, 8)], help="query/key-value heads (32/32,32/8)"
    )
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    parser.add_argument("--device", default="cuda", help="cuda (default), or cpu for a smoke run at tiny sizes")
    parser.add_argument("--impls", type=lambda s: [x for x in s.split(",") if x], default=list(IMPLS))
    parser.add_argument("--prefix", type=float, default=0.5, help="the share of the slots every thread sees")
    parser.add_argument("--repeats", type=int, default=15, help="timed bursts per measurement, at most")
    parser.add_argument(
        "--case-s", type=float, default=1.0, help="seconds of bursts a measurement aims at (fewer repeats if slow)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first")
    parser.add_argument("--burst", type=int, default=8, help="calls per timed burst (at least one per copy)")
    parser.add_argument("--no-graphs", dest="graphs", action="store_false", help="no CUDA graph timing")
    parser.add_argument("--budget-s", type=float, default=100.0, help="cases past this many seconds are skipped")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per case on stderr")
    parser.add_argument("--torch-threads", type=int, help="torch's intra-op threads on the CPU")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if unknown := set(args.impls) - set(IMPLS):
        parser.error(f"unknown implementation(s) {', '.join(sorted(unknown))}; choose from {', '.join(IMPLS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save(report: dict[str, Any], final: bool) -> None:
        report["complete"] = final
        for name, text in (
            ("attention-kernels.json", json.dumps(report, indent=2) + "\n"),
            ("attention-kernels.md", markdown(report)),
        ):
            temporary = out / f".{name}.tmp"
            temporary.write_text(text)
            temporary.replace(out / name)

    report = run(args, save)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
