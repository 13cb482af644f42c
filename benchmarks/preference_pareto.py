"""The speed/quality front of the preference stage: adapters set side by side on the same prompts.

Reads the result rows that ``pastac eval --results FILE.jsonl`` wrote for each adapter (``--run
LABEL=FILE.jsonl``, the first being the one the others are set against), keeps the prompts every run
answered (so that each figure is taken over the same prompts), summarises each run with
``pastac.evaluation.run.summarize`` and writes to ``--out``:

- ``pareto.json``: each run's summary over the common prompts, and those prompts;
- ``pareto.md``: the table of the figures the preference stage trades (list-like speedup against
  ``generate``, the Q_ref and Q_async gaps, fork rates, validity) and which runs dominate the first;
- ``pareto.png``: the two list-like speedups against the Q_ref gap, one point per run.

    python benchmarks/preference_pareto.py --run sft=/tmp/eval-sft.jsonl --run l0=/tmp/eval-l0.jsonl \\
        --out benchmarks/results/preference
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import geometric_mean as geomean
from typing import Any

from pastac import jsonl
from pastac.evaluation.run import LIST_LIKE, summarize

FIGURES = (
    ("speedup_vs_hf_generate_list_like", "speedup vs generate, list-like (wall clock)", "{:.2f}"),
    ("critical_path_vs_generate_list_like", "base answer's tokens ÷ critical path, list-like", "{:.2f}"),
    ("q_ref_gap_list_like", "Q_ref gap, list-like (points)", "{:.1f}"),
    ("q_async_gap_list_like", "Q_async gap, list-like (points)", "{:.1f}"),
    ("fork_rate_list_like", "fork rate, list-like", "{:.0%}"),
    ("fork_rate_short", "fork rate, short", "{:.0%}"),
    ("valid_rate", "valid", "{:.0%}"),
    ("theoretical_speedup", "theoretical speedup", "{:.2f}"),
    ("rate_vs_hf_generate_list_like", "tokens/s vs generate, list-like", "{:.2f}"),
    ("length_vs_base_list_like", "length vs base answer, list-like", "{:.2f}"),
)


def _runs(specs: list[str]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--run takes LABEL=FILE.jsonl, not {spec!r}")
        runs[label] = jsonl.read_records(path, required=("id",))
    return runs


def critical_path_vs_generate(rows: list[dict[str, Any]]) -> float | None:
    """The geometric mean over ``rows`` of the base answer's tokens (what ``generate`` decodes one per step)
    over the stitched answer's critical path (its tokens over its theoretical speedup: the steps its threads
    need, one token each): the speedup against ``generate`` that the step counts give, free of the wall
    clock's noise when other jobs share the machine."""
    ratios = [
        r["baseline_tokens"] * r["theoretical_speedup"] / r["tokens"]
        for r in rows
        if r.get("baseline_tokens") and r.get("theoretical_speedup") and r.get("tokens")
    ]
    return geomean(ratios) if ratios else None


def _shown(value: Any, form: str) -> str:
    return "n/a" if value is None else form.format(value)


def dominates(row: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Better or equal than ``reference`` on the list-like speedup against ``generate`` (both by the wall clock
    and by the critical path) and on the Q_ref gap, and valid >= 99%: what the preference stage must reach to
    replace the shipped adapter."""
    keys = ("speedup_vs_hf_generate_list_like", "critical_path_vs_generate_list_like", "q_ref_gap_list_like")
    if any(row[k] is None or reference[k] is None for k in keys):
        return False
    faster = all(row[k] >= reference[k] for k in keys[:2])
    return faster and row["q_ref_gap_list_like"] <= reference["q_ref_gap_list_like"] and row["valid_rate"] >= 0.99


def main(argv: list[str] | None = None) -> int:
    """Read the runs, write the table, the summaries and the plot; print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="LABEL=FILE.jsonl")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    runs = _runs(args.run)
    common = set.intersection(*({r["id"] for r in rows} for rows in runs.values()))
    if not common:
        raise SystemExit("the runs have no prompt in common")
    summaries = {}
    for label, rows in runs.items():
        kept = [r for r in rows if r["id"] in common]
        listy = [r for r in kept if r.get("category") in LIST_LIKE]
        summaries[label] = summarize(kept) | {
            "critical_path_vs_generate_list_like": critical_path_vs_generate(listy),
            "settings": rows[0].get("settings"),
        }
    first = next(iter(summaries))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pareto.json").write_text(
        json.dumps({"prompts": sorted(common), "runs": summaries}, indent=2) + "\n", encoding="utf-8"
    )
    header = "| figure | " + " | ".join(summaries) + " |"
    lines = [
        f"# The preference stage's front: {len(common)} test prompts common to every run",
        "",
        header,
        "| --- |" + " ---: |" * len(summaries),
    ]
    for key, name, form in FIGURES:
        lines.append(f"| {name} | " + " | ".join(_shown(s.get(key), form) for s in summaries.values()) + " |")
    lines += ["", f"Dominating `{first}` (both speedups and the Q_ref gap no worse, valid ≥ 99%):"]
    better = [label for label, s in summaries.items() if label != first and dominates(s, summaries[first])]
    lines.append(", ".join(f"`{b}`" for b in better) if better else "none.")
    (args.out / "pareto.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
    else:
        fig = Figure(figsize=(10, 4.5), layout="constrained")
        panels = (
            ("speedup_vs_hf_generate_list_like", "speedup vs HF generate, list-like (wall clock)"),
            ("critical_path_vs_generate_list_like", "base answer's tokens ÷ critical path, list-like"),
        )
        for axes, (key, name) in zip(fig.subplots(1, 2), panels, strict=True):
            for label, s in summaries.items():
                x, y = s["q_ref_gap_list_like"], s[key]
                if x is None or y is None:
                    continue
                axes.scatter([x], [y], color="#d62728" if label == first else "#1f77b4")
                axes.annotate(label, (x, y), textcoords="offset points", xytext=(5, 5))
            axes.set_xlabel("Q_ref gap, list-like (points; lower is better)")
            axes.set_ylabel(name)
            axes.invert_xaxis()
            axes.grid(alpha=0.3)
        fig.suptitle(f"preference stage: {len(common)} test prompts")
        fig.savefig(args.out / "pareto.png", dpi=120)
    print((args.out / "pareto.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
