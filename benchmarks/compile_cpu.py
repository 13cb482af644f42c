"""Does ``torch.compile`` pay for pastac's decode step on this CPU?  The calibrated step of the default model
(``pastac.bench.calibrate``: median milliseconds of a step of W threads over C cached slots), eager and then
with the model's forward compiled (``dynamic=True``: the cache length changes every step), in one process.

    .venv/bin/python benchmarks/compile_cpu.py --torch-threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

from pastac.bench.calibrate import calibrate
from pastac.machine import cpu_name
from pastac.runtime import Engine


def main() -> int:
    """Time both and print them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--widths", default="1,4")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    engine = Engine.from_pretrained(None, adapter=None, kernels="stock", progress=False)
    figures = {}
    for name in ("eager", "compiled"):
        if name == "compiled":
            engine.model.forward = torch.compile(engine.model.forward, dynamic=True)
        began = time.perf_counter()
        cal = calibrate(engine.model, threads=widths, contexts=(args.context,), repeats=args.repeats)
        figures[name] = [row[0] for row in cal.ms]
        print(f"{name}: {time.perf_counter() - began:.0f} s, compilation included", flush=True)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, {args.torch_threads} thread(s); context {args.context}")
    print(f"{'W':>3} {'eager ms':>9} {'compiled ms':>12} {'compiled/eager':>15}")
    for w, a, b in zip(widths, figures["eager"], figures["compiled"], strict=True):
        print(f"{w:>3} {a:>9.1f} {b:>12.1f} {b / a:>15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
