"""Does a request's answer depend on what is decoded beside it?  Greedy answers alone vs eight at a time.

    .venv/bin/python benchmarks/batch_invariance.py --out benchmarks/results/serve-cpu

Every prompt is decoded alone (``Engine.generate``) and then all of them together through a
``BatchEngine`` with eight running at once (the queue refills as they end).  For each prompt: whether
the token ids are equal, the largest difference of the sampled logits over the steps both runs share
before they part, and where they part, the margin between the two best tokens alone (a near tie that a
last-bit difference can flip).  Writes batch-invariance-<kernels>.json and .md into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pastac.runtime import Engine
from pastac.runtime.batch import BatchEngine
from pastac.serve.bench import PROMPTS, machine

MORE = (
    "List three tips for a job interview.",
    "Give me four ways to reduce stress at work.",
    "What is photosynthesis?",
    "Name four musical instruments and how each makes sound.",
)


def compare(alone: tuple, together: tuple) -> dict:
    """Token ids, logits and the first step where the two runs part."""
    (ids_a, logits_a), (ids_b, logits_b) = alone, together
    worst = 0.0
    for step, (a, b) in enumerate(zip(logits_a, logits_b, strict=False)):
        if a.shape != b.shape:  # not the same queries sampled: they parted before
            return {"equal": ids_a == ids_b, "max_logit_diff": worst, "parted_at_step": step, "margin": None}
        worst = max(worst, (a - b).abs().max().item())
        if not torch.equal(a.argmax(-1), b.argmax(-1)):
            top = a.topk(2, dim=-1).values
            margin = (top[..., 0] - top[..., 1]).min().item()
            return {"equal": ids_a == ids_b, "max_logit_diff": worst, "parted_at_step": step, "margin": margin}
    return {"equal": ids_a == ids_b, "max_logit_diff": worst, "parted_at_step": None, "margin": None}


def main() -> int:
    """Run the comparison and write its report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the folder for the report")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--kernels", choices=("tuned", "stock"), default="tuned")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--concurrent", type=int, default=8)
    parser.add_argument("--max-rows", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    engine = Engine.from_pretrained(kernels=args.kernels, progress=False)
    prompts = [*PROMPTS, *MORE]
    started = time.perf_counter()
    alone = []
    for prompt in prompts:
        result = engine.generate(prompt, max_new_tokens=args.max_new_tokens, keep_logits=True)
        alone.append((result.token_ids, [x.clone() for x in engine.last_run.runner.logits]))
    alone_s = time.perf_counter() - started
    batch = BatchEngine(engine, max_concurrent=args.concurrent, max_rows=args.max_rows)
    started = time.perf_counter()
    requests = [batch.submit(p, max_new_tokens=args.max_new_tokens, keep_logits=True) for p in prompts]
    most = 0
    while batch.busy:
        batch.step()
        most = max(most, len(batch.running))
    together_s = time.perf_counter() - started
    rows = []
    for prompt, mine, request in zip(prompts, alone, requests, strict=True):
        assert request.result is not None
        row = compare(mine, (request.result.token_ids, request.logits))
        row |= {"prompt": prompt, "tokens": len(mine[0]), "threads": request.result.stats.threads}
        rows.append(row)
    report = {
        "machine": machine(engine),
        "max_new_tokens": args.max_new_tokens,
        "concurrent": args.concurrent,
        "max_rows": args.max_rows,
        "most_running_at_once": most,
        "alone_s": alone_s,
        "together_s": together_s,
        "equal": sum(r["equal"] for r in rows),
        "prompts": len(rows),
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"batch-invariance-{args.kernels}"
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    m = report["machine"]
    lines = [
        f"# Greedy answers alone vs {args.concurrent} at a time ({args.kernels} kernels)",
        "",
        f"{m['cpu']}, {m['cpu_count']} cores, {m['torch_threads']} torch thread(s), torch {m['torch']}; "
        f"{m.get('model')} {m.get('dtype')}; {args.max_new_tokens} new tokens at most; max_rows {args.max_rows}.",
        f"Equal token for token: **{report['equal']} of {report['prompts']}**. Up to {most} requests ran at once; "
        f"alone {alone_s:.1f} s in all, together {together_s:.1f} s.",
        "",
        "| prompt | tokens | threads | equal | max logit diff (shared steps) | parted at step | top-2 margin there |",
        "| --- | ---: | ---: | :---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        margin = "" if r["margin"] is None else f"{r['margin']:.2e}"
        parted = "" if r["parted_at_step"] is None else str(r["parted_at_step"])
        lines.append(
            f"| {r['prompt']} | {r['tokens']} | {r['threads']} | {'yes' if r['equal'] else 'no'} | "
            f"{r['max_logit_diff']:.2e} | {parted} | {margin} |"
        )
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
