"""The decode step's cost in two source trees of pastac, interleaved in one run (an A/B check of a change).

Each round starts one process per tree (``PYTHONPATH`` set to it) that loads the default model with the tuned
kernels and times ``pastac.bench.calibrate`` (median milliseconds of a decode step of W threads over a cache of
C slots); the rounds alternate the trees so that drift on the machine falls on both.  Prints, per (W, C), each
tree's median over the rounds and their ratio; ``--out`` writes the figures as JSON.

    .venv/bin/python benchmarks/step_ab.py OLD_TREE NEW_TREE --rounds 3 --torch-threads 1 --out ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, sys, torch
torch.set_num_threads({threads})
from pastac.bench.calibrate import calibrate
from pastac.machine import cpu_name
from pastac.runtime import Engine
engine = Engine.from_pretrained(None, adapter=None, kernels="tuned", progress=False)
extra = {{"attention": engine.attention}} if hasattr(engine, "attention") else {{}}
cal = calibrate(engine.model, threads={widths}, contexts={contexts}, repeats={repeats}, **extra)
print(json.dumps({{"cpu": cpu_name(), "table": cal.ms, **extra}}))
"""


def main() -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs=2, metavar="TREE", help="two checkouts of pastac: the old one, the new one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--widths", default="1,4,16", help="threads per step")
    parser.add_argument("--contexts", default="512,1024", help="cache slots")
    parser.add_argument("--repeats", type=int, default=7, help="steps timed per (W, C) in a process")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", metavar="FILE.json")
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    contexts = tuple(int(c) for c in args.contexts.split(","))
    code = CHILD.format(threads=args.torch_threads, widths=widths, contexts=contexts, repeats=args.repeats)
    runs: dict[str, list[dict]] = {tree: [] for tree in args.trees}
    for r in range(args.rounds):
        for tree in args.trees if r % 2 == 0 else reversed(args.trees):
            env = {**os.environ, "PYTHONPATH": str(Path(tree).resolve())}
            done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            runs[tree].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}: {tree} done", file=sys.stderr)
    old, new = args.trees
    rows = []
    print(f"CPU: {runs[old][0]['cpu']}; torch threads {args.torch_threads}; {args.rounds} rounds, alternating")
    print(f"{'W':>3} {'C':>6} {'old ms':>8} {'new ms':>8} {'new/old':>8}")
    for i, w in enumerate(widths):
        for j, c in enumerate(contexts):
            a = statistics.median(run["table"][i][j] for run in runs[old])
            b = statistics.median(run["table"][i][j] for run in runs[new])
            rows.append({"threads": w, "context": c, "old_ms": a, "new_ms": b, "ratio": b / a})
            print(f"{w:>3} {c:>6} {a:>8.2f} {b:>8.2f} {b / a:>8.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"trees": args.trees, "runs": runs, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
