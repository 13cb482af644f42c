"""Runtime figures on the running machine: replayed annotated responses, async vs sequential, against
the theoretical speedup of the critical-path pass; sequential
tokens/s vs Hugging Face ``generate``; KV memory of forked vs sequential runs.

    python benchmarks/runtime.py [--model PATH] [--dtype float32|bfloat16] [--repeats N]

Runs alternate (A B A B) so drift cancels; every figure is a ratio of runs made side by side here.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pastac import lower, parse
from pastac.ir.lengths import tokenizer_length
from pastac.passes import critical_path, schedule
from pastac.runtime.engine import Engine, RunOptions
from pastac.runtime.scheduler import Limits

PROMPT = "Give me some practical advice."
DOCS = [
    'Here are three ways to sleep better: <promise topic="schedule" tokens="4"/><async>Keep a regular schedule: go '
    'to bed and get up at the same time every day, weekends included, so that your body clock settles.</async>'
    '<promise topic="bedroom" tokens="4"/><async>Make the bedroom dark, quiet and cool, and keep screens and work '
    'out of it, so that your mind links it with rest.</async><promise topic="caffeine" tokens="4"/><async>Avoid '
    'caffeine after noon and alcohol in the evening: both break up deep sleep later in the night.</async><sync/> '
    'Start with one change at a time, and give each a week before you judge it.',
    'Plan the trip in two parts. <promise topic="packing" tokens="5"/><async>Packing: lay out clothes for each day, '
    'roll them to save room, keep documents, chargers and medicine in your hand luggage, and weigh the bag before '
    'you leave.</async><promise topic="route" tokens="5"/><async>Route: check the trains the day before, note the '
    'platform changes, and leave twenty minutes of slack at every connection in case of delays.</async><sync/> '
    'With both done, the day itself is calm.',
]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    engine = Engine.from_pretrained(args.model, dtype=args.dtype, progress=False)
    print(f"model {engine.name}, {args.dtype}, {torch.get_num_threads()} threads")
    for doc in DOCS:
        asyn, seq = [], []
        for _ in range(args.repeats):
            a = engine.generate(PROMPT, RunOptions(), replay=doc)
            s = engine.generate(PROMPT, RunOptions(mode="sequential"), replay=doc)
            asyn.append(a.stats.decode_s)
            seq.append(s.stats.decode_s)
        graph = lower(parse(doc), tokenizer_length(engine.tokenizer))
        cp = critical_path(graph, schedule(graph))
        speedup = statistics.median(seq) / statistics.median(asyn)
        print(f"replay: {a.stats.tokens} tokens; steps async {a.stats.steps} vs sequential {s.stats.steps}; "
              f"wall speedup {speedup:.2f}; theoretical {cp.theoretical_speedup:.2f}; "
              f"kv bytes async/sequential {a.stats.kv_bytes / s.stats.kv_bytes:.3f}")
    ids = torch.tensor([engine.prompt_ids(PROMPT)])
    n = 64
    ours, hf = [], []
    for _ in range(args.repeats):
        r = engine.generate(PROMPT, RunOptions(mode="sequential", limits=Limits(max_new_tokens=n)))
        ours.append(r.stats.generated / r.stats.wall_s)
        with torch.inference_mode():
            k = r.stats.generated
            t = timed(lambda k=k: engine.model.generate(ids, max_new_tokens=k, min_new_tokens=k, do_sample=False))
        hf.append(r.stats.generated / t)
    print(f"sequential {statistics.median(ours):.1f} tokens/s vs HF generate {statistics.median(hf):.1f} tokens/s: "
          f"{statistics.median(ours) / statistics.median(hf):.2f}x")


if __name__ == "__main__":
    main()
