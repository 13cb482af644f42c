"""``pastac eval`` in one process against ``pastac eval --ray`` on local workers, in one run, end to end.

Each command runs as a subprocess, as a user runs it (Python's start, the model's loading and, with ``--ray``,
the local cluster's start are in its wall time), on the same prompts with the same options; the order of the
two alternates over ``--rounds``.  Prints each command's wall time, their ratio (Ray over one process) and
whether the two reports' rows agree once their timings are left out (every other field equal, floats to
1e-5); ``--out`` writes the figures as JSON.

    .venv/bin/python benchmarks/eval_ray.py --prompts data/prompts.jsonl --split test --limit 16 --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

# fields of a result row that are timings, which differ from run to run
TIMINGS = ("wall_s", "sequential_wall_s", "hf_generate_wall_s", "speedup_vs_sequential", "speedup_vs_hf_generate")


def _pastac() -> str:
    return str(Path(sys.executable).with_name("pastac"))


def _run(command: list[str]) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return wall, json.loads(done.stdout)


def _differences(a: dict, b: dict) -> list[str]:
    out = []
    for x, y in zip(a["results"], b["results"], strict=True):
        for key in sorted(set(x) | set(y)):
            if key in TIMINGS:
                continue
            u, v = x.get(key), y.get(key)
            same = math.isclose(u, v, rel_tol=1e-5, abs_tol=1e-6) if isinstance(u, float) and v is not None else u == v
            if not same:
                out.append(f"{x.get('id')}: {key}: {u!r} vs {v!r}")
    return out


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> int:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", required=True, metavar="FILE.jsonl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--out", metavar="FILE.json")
    parser.add_argument("eval_options", nargs="*", help="more options for both commands (after --)")
    args = parser.parse_args()
    base = [_pastac(), "eval", "--prompts", args.prompts, "--split", args.split, "--limit", str(args.limit)]
    base += ["--json", "-q", *args.eval_options]
    ray = [*base, "--ray", "--workers", str(args.workers)]
    rounds = []
    for r in range(args.rounds):
        runs = {}
        for name, command in (
            (("one_process", base), ("ray", ray)) if r % 2 == 0 else (("ray", ray), ("one_process", base))
        ):
            runs[name] = _run(command)
            print(f"round {r + 1}: {name} {runs[name][0]:.1f} s", file=sys.stderr)
        differences = _differences(runs["one_process"][1], runs["ray"][1])
        rounds.append(
            {
                "one_process_s": runs["one_process"][0],
                "ray_s": runs["ray"][0],
                "ratio": runs["ray"][0] / runs["one_process"][0],
                "identical": not differences,
                "differences": differences[:20],
            }
        )
    figures = {
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "prompts": args.limit,
        "split": args.split,
        "workers": args.workers,
        "options": args.eval_options,
        "rounds": rounds,
    }
    for r, figure in enumerate(rounds, 1):
        print(
            f"round {r}: one process {figure['one_process_s']:.1f} s, --ray {args.workers} workers "
            f"{figure['ray_s']:.1f} s, ratio {figure['ratio']:.3f}, identical rows: {figure['identical']}"
        )
        for line in figure["differences"]:
            print("   ", line)
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
