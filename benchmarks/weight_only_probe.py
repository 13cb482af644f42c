"""Low-precision matrix products on this CPU against float32, for the default model's weight shapes, at 1, 4
and 16 rows: the candidates for a quantised decode step.

- ``int8``, ``int4``: torch's own weight-only packed CPU kernels (``torch._weight_int8pack_mm``,
  ``torch._weight_int4pack_mm_for_cpu``);
- ``fbgemm-fp16``, ``fbgemm-int8``: what ``--quant fp16`` and ``--quant int8`` run
  (``pastac.backend.quant.Packed``: FBGEMM's float16-weight product, and its int8 product with each
  activation row quantised on its own);
- ``compiled-int8`` (``--compiled``): the weight-only int8 product written as PyTorch code,
  ``x @ (q.float() * scale).T``, compiled by ``torch.compile`` (gpt-fast's recipe), one compiled graph per
  shape and row count;
- ``torchao-int8``, ``torchao-int4``: torchao's ``Int8WeightOnlyConfig`` and ``Int4WeightOnlyConfig`` (groups
  of 32) applied to an ``nn.Linear``, eager (no ``torch.compile``), when torchao is installed (``--torchao``);
  one that torchao cannot quantise for the CPU is reported and left out.

Each product cycles over copies of its weight (40 MB of them at least), so that the weights come from
memory as in a forward pass.  Prints the median microseconds of each product and its error against float32
(relative to the output's largest value).

    .venv/bin/python benchmarks/weight_only_probe.py --torch-threads 1 [--torchao]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch._dynamo
import torch.nn.functional as F

from pastac.backend.quant import Packed
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


def cycled(make: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]], weights: list[torch.Tensor]):
    """One product per call, over the kernels ``make`` builds for each of ``weights`` in turn."""
    kernels = [make(w) for w in weights]
    turn = [0]

    def product(x: torch.Tensor) -> torch.Tensor:
        turn[0] = (turn[0] + 1) % len(kernels)
        return kernels[turn[0]](x)

    return product


def torchao(config: str) -> Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """A maker of torchao-quantised ``nn.Linear`` products (``config``: ``int8`` or ``int4``)."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    def make(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        layer.weight.data.copy_(weight)
        quantize_(layer, Int8WeightOnlyConfig() if config == "int8" else Int4WeightOnlyConfig(group_size=32))
        return lambda x: layer(x).detach()

    return make


def compiled_int8(weight: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Per-output-channel int8 weights and their product as PyTorch code, compiled (``torch.compile``)."""
    scales = weight.abs().amax(1).clamp(min=1e-8) / 127
    q = torch.round(weight / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return lambda x: _dequantised_product(x, q, scales)


@torch.compile(dynamic=False)
def _dequantised_product(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x @ (q.to(x.dtype) * scales[:, None]).T


def main() -> int:
    """Time every shape and row count, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--rows", default="1,4,16")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--torchao", action="store_true", help="also torchao's weight-only int8 and int4 (eager)")
    parser.add_argument("--compiled", action="store_true", help="also a weight-only int8 product torch.compile'd")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    generator = torch.Generator().manual_seed(0)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; {args.torch_threads} thread(s); median us per product")
    makers: dict[str, Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
        "fp32": lambda w: lambda x: F.linear(x, w),
        "int8": int8,
        "int4": int4,
        "fbgemm-fp16": lambda w: Packed("fp16", [w], [None]),
        "fbgemm-int8": lambda w: Packed("int8", [w], [None]),
    }
    if args.compiled:
        torch._dynamo.config.cache_size_limit = 64  # a graph per shape and row count
        makers["compiled-int8"] = compiled_int8
    if args.torchao:
        for config in ("int8", "int4"):
            try:  # a format torchao cannot run on the CPU says so when it quantises (ValueError, or no kernel
                # for the CPU: NotImplementedError): that column is left out, with the reason printed
                torchao(config)(torch.zeros(64, 64))
            except (ImportError, ValueError, RuntimeError, NotImplementedError) as error:
                print(f"torchao-{config}: not run here ({type(error).__name__}: {error})")
                continue
            makers[f"torchao-{config}"] = torchao(config)
    names = list(makers)
    print(f"{'out x in':>12} {'rows':>4} " + " ".join(f"{n:>12}" for n in names) + "   errors vs fp32")
    totals: dict[tuple[str, int], float] = {}
    for out, inp in SHAPES:
        weight = torch.randn((out, inp), generator=generator) * 0.05
        copies = [weight] + [weight.clone() for _ in range(max(0, int(40e6 // weight.nbytes)))]
        kernels = {name: cycled(make, copies) for name, make in makers.items()}
        for rows in (int(r) for r in args.rows.split(",")):
            x = torch.randn((rows, inp), generator=generator)
            exact = F.linear(x, weight)
            us = {name: median_us(lambda k=k, x=x: k(x), args.repeats) for name, k in kernels.items()}
            err = {n: ((kernels[n](x) - exact).abs().max() / exact.abs().max()).item() for n in names[1:]}
            for name, value in us.items():
                totals[(name, rows)] = totals.get((name, rows), 0.0) + value
            print(
                f"{out:>6} x {inp:<4} {rows:>4} "
                + " ".join(f"{us[n]:>12.1f}" for n in names)
                + "   "
                + " ".join(f"{n} {err[n]:.4f}" for n in names[1:])
            )
    print("one of each shape, summed (a layer's worth and the head), and its ratio to fp32:")
    for rows in sorted({r for _, r in totals}):
        base = totals[("fp32", rows)]
        cells = ", ".join(f"{n} {totals[(n, rows)]:.0f} us ({totals[(n, rows)] / base:.2f}x)" for n in names[1:])
        print(f"  rows {rows:>2}: fp32 {base:.0f} us, {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
