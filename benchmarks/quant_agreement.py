"""How far each ``--quant`` moves the default model's next-token choices from float32, on the eval's prompts.

    .venv/bin/python benchmarks/quant_agreement.py --split test --limit 27 --torch-threads 1 --out OUT

For each prompt (taken in turn from each category, as ``pastac eval --limit`` takes them) the float32 engine
(the shipped adapter, the fused forward, ``--quant none``) decodes its answer greedily, with its threads; then
float32 and every other choice replay that same annotated answer (the same tokens through the same
scheduler, so the same threads in the same steps) and the choice's logits at every position the replay
samples are compared with float32's:

- ``top-1 agreement``: the share of positions whose most likely token is float32's (a greedy decode stays on
  float32's answer exactly as long as this holds);
- ``KL``: the mean Kullback-Leibler divergence of float32's next-token distribution from the choice's (nats);
- ``max |logit|``: the largest logit difference, relative to float32's largest logit.

Also checked: the ``hf`` forward (the model's own, float32) against the fused one, which must agree to rounding.
Prints a table; ``--out`` writes quant-agreement.json and quant-agreement.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from pastac.data.responses import round_robin
from pastac.jsonl import read_records
from pastac.machine import cpu_name
from pastac.runtime import Engine

CHOICES = ("hf:none", "fused:fp16", "fused:int8")  # FORWARD:QUANT, each against fused:none


def main() -> int:
    """Decode with float32, replay with every choice, print (and write) the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", default="data/pasta/prompts.jsonl")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=27)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--choices", default=",".join(CHOICES))
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", metavar="DIR")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    records = [r for r in read_records(args.prompts, required=("id", "prompt")) if r.get("split") == args.split]
    records = round_robin(records)[: args.limit]
    reference = Engine.from_pretrained(None, forward="fused", quant="none", progress=False)
    choices = args.choices.split(",")
    engines = {}
    for choice in choices:
        forward, quant = choice.split(":")
        engines[choice] = Engine(
            reference.model, reference.tokenizer, settings=reference.settings, forward=forward, quant=quant
        )
    rows: dict[str, list[dict[str, float]]] = {c: [] for c in choices}
    per_prompt = []
    began = time.perf_counter()
    for record in records:
        answer = reference.generate(record["prompt"], max_new_tokens=args.max_new_tokens)
        reference.generate(record["prompt"], replay=answer.annotated, keep_logits=True)  # positions as replayed
        expected = torch.cat(reference.last_run.runner.logits)
        line = {"id": record["id"], "category": record["category"], "threads": answer.stats.threads}
        for choice, engine in engines.items():
            engine.generate(record["prompt"], replay=answer.annotated, keep_logits=True)
            got = torch.cat(engine.last_run.runner.logits)
            if got.shape != expected.shape:
                raise SystemExit(f"{record['id']}: {choice} replayed {got.shape[0]} positions, not {expected.shape[0]}")
            figures = {
                "positions": float(got.shape[0]),
                "agree": float((got.argmax(-1) == expected.argmax(-1)).float().mean()),
                "kl": float(
                    torch.nn.functional.kl_div(
                        got.log_softmax(-1), expected.log_softmax(-1), log_target=True, reduction="batchmean"
                    )
                ),
                "max_logit": float((got - expected).abs().max() / expected.abs().max()),
            }
            rows[choice].append(figures)
            line[choice] = figures
        per_prompt.append(line)
        print(json.dumps(line), flush=True)
    summary = {}
    for choice, figures in rows.items():
        weights = [f["positions"] for f in figures]
        summary[choice] = {
            "prompts": len(figures),
            "positions": int(sum(weights)),
            "agree": sum(f["agree"] * w for f, w in zip(figures, weights, strict=True)) / sum(weights),
            "kl": sum(f["kl"] * w for f, w in zip(figures, weights, strict=True)) / sum(weights),
            "max_logit": max(f["max_logit"] for f in figures),
            "prompts_all_agree": sum(f["agree"] == 1.0 for f in figures),
        }
    results: dict[str, Any] = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "torch_threads": args.torch_threads,
        "split": args.split,
        "limit": args.limit,
        "max_new_tokens": args.max_new_tokens,
        "seconds": time.perf_counter() - began,
        "threads_mean": statistics.mean(p["threads"] for p in per_prompt) if per_prompt else 0,
        "summary": summary,
        "prompts": per_prompt,
    }
    lines = [
        f"# Next-token agreement with float32 ({results['cpu']}, torch {results['torch']})",
        "",
        f"{len(per_prompt)} prompts of the {args.split} split (round robin over categories), the shipped "
        f"adapter, answers of up to {args.max_new_tokens} tokens decoded by the fused forward in float32, "
        "replayed by each choice.",
        "",
        "| forward:quant | prompts | positions | top-1 agreement | mean KL (nats) | max logit diff / max logit "
        "| prompts agreeing everywhere |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for choice, s in summary.items():
        lines.append(
            f"| {choice} | {s['prompts']} | {s['positions']} | {s['agree']:.4f} | {s['kl']:.2e} | "
            f"{s['max_logit']:.2e} | {s['prompts_all_agree']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "quant-agreement.json").write_text(json.dumps(results, indent=1) + "\n")
        (folder / "quant-agreement.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
