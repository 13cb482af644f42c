"""Decode step time with eager steps against static ones (padded buffers; on CUDA, captured graphs).

    .venv/bin/python benchmarks/step_time.py --out benchmarks/results/gpu-h100/step-time     # llama-7b, bf16, CUDA
    .venv/bin/python benchmarks/step_time.py --device cpu --dtype float32 --shape tiny-llama \\
        --threads 1,4 --context 64 --repeats 3 --tokens 8 --out /tmp/step-time                # a smoke run

For each ``--decode-step`` mode an engine is made over one model of random weights (``--shape``), with
``Engine(model, tokenizer, attention=..., decode_step=mode)``, and two figures are taken:

- ``runner``: the step-cost calibration (``pastac.bench.calibrate``) with the engine's attention and decode
  step: a prompt of ``--context`` random tokens, then T threads that all see it, one query each; median
  milliseconds of ``--repeats`` steps after one warm-up step (which captures a static width's graph);
- ``engine``: ``generate`` replaying ``--tokens`` plain tokens in one thread (T=1), the decode time over
  the decode steps, which adds what the scheduler costs per step.

A mode that fails (an engine that does not take it, a capture that fails) is recorded as an error and the
run goes on.  Writes step-time.json and .md into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch


def ints(text: str) -> list[int]:
    """``1,16`` -> [1, 16]."""
    return [int(x) for x in text.split(",") if x.strip()]


def error_text(error: BaseException) -> str:
    """One line for the report."""
    lines = f"{type(error).__name__}: {error}".strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def load(args: argparse.Namespace) -> tuple[torch.nn.Module, Any, str]:
    """A model of random weights of ``--shape`` and a tokenizer: the default model's, as ``pastac bench
    --shape`` uses, or the tiny test tokenizer where that cannot be loaded (said in the report)."""
    from pastac.models import load_model, random_model, tiny_tokenizer

    try:
        tokenizer, which = load_model(None, progress=False).tokenizer, "the default model's"
    except Exception as error:  # no default model here (not installed, no network): the tiny one
        tokenizer, which = tiny_tokenizer(), f"tiny (the default model's could not be loaded: {error_text(error)})"
    model = random_model(
        args.shape, vocab_size=len(tokenizer), dtype=args.dtype, device=args.device, eos_token_id=tokenizer.eos_token_id
    )
    return model, tokenizer, which


def runner_steps(engine: Any, threads: list[int], args: argparse.Namespace) -> dict[int, float]:
    """Median ms per step of a runner with the engine's attention, decode step and forward, per thread count: the
    step-cost calibration itself (``pastac.bench.calibrate``; its warm-up step captures a static width's graph)."""
    from pastac.bench.calibrate import calibrate

    cal = calibrate(
        engine.model,
        threads=tuple(threads),
        contexts=(args.context,),
        repeats=args.repeats,
        attention=engine.attention,
        decode_step=engine.decode_step,
        decoder=engine.decoder,
    )
    return {n: row[0] for n, row in zip(threads, cal.ms, strict=True)}


def engine_steps(engine: Any, args: argparse.Namespace) -> dict[str, float]:
    """``generate`` replaying ``--tokens`` plain tokens in one thread: ms per decode step (twice: the first run
    warms up)."""
    from pastac.runtime.options import RunOptions, SamplingOptions

    text = " ".join(["water"] * args.tokens)
    options = RunOptions(mode="sequential", sampling=SamplingOptions(repetition_penalty=1.0), jump_forward=False)
    figures = {}
    for _ in range(2):
        result = engine.generate("Time the steps.", options, replay=text)
        stats = result.stats
        figures = {"steps": stats.steps, "decode_s": stats.decode_s, "ms_per_step": 1000 * stats.decode_s / stats.steps}
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every mode's figures, errors recorded."""
    from pastac.runtime.engine import Engine

    started = time.perf_counter()
    model, tokenizer, which = load(args)
    modes: dict[str, dict[str, Any]] = {}
    for mode in args.modes:
        entry: dict[str, Any] = {"runner_ms": {}, "engine": None, "errors": []}
        modes[mode] = entry
        try:
            step = {} if mode == "default" else {"decode_step": mode}  # default: the engine's own choice
            engine = Engine(model, tokenizer, kernels="stock", attention=args.attention, **step)
        except Exception as error:  # a mode this engine cannot take is a result
            entry["errors"].append(f"engine: {error_text(error)}")
            continue
        entry["attention"] = getattr(engine, "attention", None)
        entry["decode_step"] = getattr(engine, "decode_step", None)
        for name, measure in (
            ("runner", lambda e=engine: runner_steps(e, args.threads, args)),
            ("engine", lambda e=engine: engine_steps(e, args)),
        ):
            try:
                figures = measure()
                if name == "runner":
                    entry["runner_ms"] = {str(k): v for k, v in figures.items()}
                else:
                    entry["engine"] = figures
            except Exception as error:  # recorded; the other measurements go on
                entry["errors"].append(f"{name}: {error_text(error)}")
                if args.verbose:
                    traceback.print_exc()
        del engine
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    speedups: dict[str, float | None] = {}
    eager, static = modes.get("eager", {}), modes.get("static", {})
    for n in args.threads:
        a, b = eager.get("runner_ms", {}).get(str(n)), static.get("runner_ms", {}).get(str(n))
        speedups[f"runner_T{n}"] = a / b if a and b else None
    a = (eager.get("engine") or {}).get("ms_per_step")
    b = (static.get("engine") or {}).get("ms_per_step")
    speedups["engine_T1"] = a / b if a and b else None
    param = next(model.parameters())
    machine: dict[str, Any] = {"torch": torch.__version__, "device": str(param.device)}
    if param.device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(param.device)
    return {
        "machine": machine,
        "settings": {
            "shape": args.shape,
            "dtype": args.dtype,
            "device": args.device,
            "attention": args.attention,
            "threads": args.threads,
            "context": args.context,
            "tokens": args.tokens,
            "repeats": args.repeats,
            "tokenizer": which,
        },
        "modes": modes,
        "speedup_static_vs_eager": speedups,
        "elapsed_s": time.perf_counter() - started,
    }


def markdown(report: dict[str, Any]) -> str:
    """The table: ms per step per mode and thread count, and static's speedup."""
    s, modes = report["settings"], report["modes"]
    where = report["machine"].get("gpu") or report["machine"]["device"]
    lines = [
        f"# Decode step time: eager vs static ({s['shape']}, {s['dtype']}, {where})",
        "",
        f"Runner: {s['context']} cached tokens, median of {s['repeats']} steps after one; engine: "
        f"{s['tokens']} tokens replayed in one thread. Attention {s['attention']}; tokenizer {s['tokenizer']}.",
        "",
        "| mode | " + " | ".join(f"runner T={n} ms" for n in s["threads"]) + " | engine T=1 ms/step |",
        "| --- | " + " | ".join("---:" for _ in s["threads"]) + " | ---: |",
    ]

    def fmt(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    for mode, entry in modes.items():
        cells = [fmt(entry["runner_ms"].get(str(n))) for n in s["threads"]]
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {fmt((entry['engine'] or {}).get('ms_per_step'))} |")
    lines.append("")
    speedups = report["speedup_static_vs_eager"]
    lines.append("Static over eager: " + ", ".join(f"{k} {fmt(v)}" for k, v in speedups.items()))
    for mode, entry in modes.items():
        lines += [f"- {mode}: {e}" for e in entry["errors"]]
    lines.append(f"\n{report['elapsed_s']:.1f} s in all.")
    return "\n".join(lines) + "\n"


def main() -> int:
    """Measure and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the folder for step-time.json and .md")
    parser.add_argument("--shape", default="llama-7b", help="random weights of this shape (pastac.models.SHAPES)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument(
        "--attention", default="auto", help="sdpa, triton, flex, auto, or reference (the plain-PyTorch oracle)"
    )
    parser.add_argument(
        "--modes",
        type=lambda s: [x for x in s.split(",") if x],
        default=["eager", "static"],
        help="decode-step modes (eager,static; auto, or default for the engine's own)",
    )
    parser.add_argument("--threads", type=ints, default=[1, 16], help="thread counts of the runner's steps")
    parser.add_argument("--context", type=int, default=1024, help="cached tokens the runner's steps read")
    parser.add_argument("--tokens", type=int, default=48, help="tokens the engine's run replays")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of errors on stderr")
    parser.add_argument("--torch-threads", type=int, help="torch's intra-op threads on the CPU")
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("step_time: --device cuda, but CUDA is not available (--device cpu for a smoke run)", file=sys.stderr)
        return 2
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "step-time.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "step-time.md").write_text(text)
    print(text)
    failed = all(entry["errors"] and not entry["runner_ms"] for entry in report["modes"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
