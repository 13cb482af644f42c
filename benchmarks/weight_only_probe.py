"""Weight-only int8 and int4 matrix products on this CPU against float32, for the default model's weight
shapes, at 1, 4 and 16 rows: torch's own packed CPU kernels (``torch._weight_int8pack_mm``,
``torch._weight_int4pack_mm_for_cpu``), the candidates for a quantised decode step.  Prints the median
microseconds of each product and its error against float32 (relative to the output's scale).

    .venv/bin/python benchmarks/weight_only_probe.py --torch-threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from pastac.machine import cpu_name

# SmolLM2-135M's linear layers (out, in): q/o, k/v, gate/up, down, the tied head
SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536), (49152, 576))


def median_us(function: Callable[[], torch.Tensor], repeats: int) -> float:
    """Median microseconds of ``function`` over ``repeats`` calls, after two warm-up calls."""
    function(), function()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append((time.perf_counter() - began) * 1e6)
    return statistics.median(times)


def int8(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-output-channel symmetric int8 weights and the product that uses them."""
    scales = weight.abs().amax(1).clamp(min=1e-8) / 127
    q = torch.round(weight / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return lambda x: torch._weight_int8pack_mm(x, q, scales)


def int4(weight: torch.Tensor, group: int = 32) -> Callable[[torch.Tensor], torch.Tensor]:
    """Grouped asymmetric int4 weights (``group`` inputs share a scale and a zero point) and their product."""
    out, inp = weight.shape
    w = weight.reshape(out, inp // group, group)
    low, high = w.amin(-1), w.amax(-1)
    scale = ((high - low) / 15).clamp(min=1e-8)
    q = torch.round((w - low[..., None]) / scale[..., None]).clamp(0, 15).to(torch.int32).reshape(out, inp)
    packed = torch._convert_weight_to_int4pack_for_cpu(q, 1)
    zero = low + 8 * scale  # the kernel computes (q - 8) * scale + zero
    scales_and_zeros = torch.stack([scale, zero], -1).transpose(0, 1).contiguous()  # [groups, out, 2]
    return lambda x: torch._weight_int4pack_mm_for_cpu(x, packed, group, scales_and_zeros)


def main() -> int:
    """Time every shape and row count, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--rows", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    generator = torch.Generator().manual_seed(0)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; {args.torch_threads} thread(s); median us per product")
    print(f"{'out x in':>12} {'rows':>4} {'fp32':>8} {'int8':>8} {'int4':>8} {'int8 err':>9} {'int4 err':>9}")
    totals: dict[tuple[str, int], float] = {}
    for out, inp in SHAPES:
        weight = torch.randn((out, inp), generator=generator) * 0.05
        kernels = {"fp32": lambda x, w=weight: F.linear(x, w), "int8": int8(weight), "int4": int4(weight)}
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn((rows, inp), generator=generator)
            exact = F.linear(x, weight)
            us = {name: median_us(lambda k=k, x=x: k(x), args.repeats) for name, k in kernels.items()}
            err = {n: ((kernels[n](x) - exact).abs().max() / exact.abs().max()).item() for n in ("int8", "int4")}
            for name, value in us.items():
                totals[(name, rows)] = totals.get((name, rows), 0.0) + value
            print(
                f"{out:>6} x {inp:<4} {rows:>4} {us['fp32']:>8.1f} {us['int8']:>8.1f} {us['int4']:>8.1f} "
                f"{err['int8']:>9.4f} {err['int4']:>9.4f}"
            )
    print("one of each shape, summed (a layer's worth and the head):")
    for rows in sorted({r for _, r in totals}):
        a, b, c = (totals[(n, rows)] for n in ("fp32", "int8", "int4"))
        print(f"  rows {rows:>2}: fp32 {a:.0f} us, int8 {b:.0f} us ({b / a:.2f}x), int4 {c:.0f} us ({c / a:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
