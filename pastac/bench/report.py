"""The benchmark report as tables (rich) and pictures (matplotlib), and its folder.

A report folder holds ``REPORT_FILES``; ``report.json`` is written first, so that a folder holding it is one
(``is_report_folder``) that a later report may replace. Every file is written atomically (``pastac.output``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pastac.output import atomic, check_folder, make_folder, write_text

#: the report's JSON, first of the files of a report folder
REPORT = "report.json"
#: the pictures ``plot`` draws
PICTURES = ("measured_vs_theoretical.png", "step_cost.png")
#: the files ``write_report`` writes into its folder
REPORT_FILES = (REPORT, "report.txt", *PICTURES)

#: the ratios the tables show (all of them are in the JSON)
SHOWN = (
    "pasta_vs_sequential",
    "pasta_vs_hf-generate",
    "pasta_vs_refork",
    "pasta_vs_batched-copy",
    "sequential_vs_hf-generate",
    "refork_vs_sequential",
    "batched-copy_vs_sequential",
    "sequential_vs_llamacpp",
    "pasta_vs_llamacpp",
)


def _ratio(value: float, paired: dict[str, Any] | None) -> str:
    """A ratio with the spread of its repeats, and a mark when the spread is larger than the effect."""
    if paired is None or paired["spread"] == 0:
        return f"{value:.2f}"
    return f"{value:.2f} ±{paired['spread'] / 2:.2f}" + (" ?" if paired["noisy"] else "")


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def tables(report: dict[str, Any]) -> list[Table]:
    """The report's tables: per response, the speedup summary, throughput and memory, the step cost."""
    results, summary = report["results"], report["summary"]
    strategies = report["options"]["strategies"]
    m = report["machine"]
    weights = f" · {m['quant']} weights" if m.get("quant") not in (None, "none") else ""
    title = (
        f"{m['model']} · {m['dtype']}{weights} · {m['device']}{' (' + m['gpu'] + ')' if 'gpu' in m else ''} · "
        f"{m['cpu']}, {m['torch_threads']} torch threads"
    )
    per = Table(title=f"pastac bench: {title}", title_justify="left")
    for name, justify in (
        ("response", "left"),
        ("shape", "left"),
        ("tokens", "right"),
        ("threads", "right"),
        ("theor.", "right"),
        ("bound", "right"),
    ):
        per.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in strategies:
        per.add_column(f"{s} s", justify="right")
    per.add_column("pasta/seq", justify="right")
    per.add_column("efficiency", justify="right")
    for r in results:
        paired = r.get("speedup_runs", {}).get("pasta_vs_sequential")
        speed = r["speedup"].get("pasta_vs_sequential")
        per.add_row(
            r["id"],
            r["shape"],
            str(r.get("tokens", "")),
            str(r.get("threads", "")),
            f"{r.get('theoretical_speedup', float('nan')):.2f}",
            f"{r.get('bound', float('nan')):.2f}",
            *(f"{r['strategies'][s]['wall_s']:.2f}" for s in strategies),
            "" if speed is None else _ratio(speed, paired),
            (f"{r['efficiency']:.2f}" + (" noise" if r.get("efficiency_noise") else "")) if "efficiency" in r else "",
        )
    agg = Table(
        title=f"summary over {summary['responses']} responses ({summary['forked_responses']} fork)",
        title_justify="left",
    )
    agg.add_column("speedup (geometric mean)")
    agg.add_column("value", justify="right")
    agg.add_column("min – max", justify="right")
    agg.add_column("")
    for key in SHOWN:
        spread = summary["speedup_spread"].get(key)
        if spread is not None:
            noisy = "noisy: spread > effect" if summary.get("speedup_noisy", {}).get(key) else ""
            agg.add_row(key, f"{spread['geomean']:.2f}", f"{spread['min']:.2f} – {spread['max']:.2f}", noisy)
    for key, label in (
        ("theoretical_speedup", "theoretical speedup"),
        ("bound", "cost-model bound"),
        ("bound_forked", "cost-model bound, forked responses"),
        ("pasta_vs_sequential_forked", "pasta vs sequential, forked responses"),
    ):
        if key in summary:
            agg.add_row(label, f"{summary[key]:.2f}", "")
    if "efficiency" in summary:
        e = summary["efficiency_spread"]
        agg.add_row(
            "efficiency (forked responses)",
            f"{summary['efficiency']:.2f}",
            f"{e['min']:.2f} – {e['max']:.2f}",
            "noise, not a result" if summary.get("efficiency_noise") else "",
        )
    llama = m.get("llamacpp")
    mem = Table(
        title="throughput and memory"
        + (
            f" (llamacpp: llama-cpp-python {llama['llama_cpp_python']}, {llama['gguf']}, {llama['quantisation']}, "
            f"{llama['threads']} threads)"
            if llama
            else ""
        ),
        title_justify="left",
    )
    vs_llama = summary.get("tokens_per_s_vs_llamacpp", {})
    for name in ("strategy", "tokens/s", *(("tokens/s vs llamacpp",) if vs_llama else ()), "peak KV MiB (largest)"):
        mem.add_column(name, justify="left" if name == "strategy" else "right")
    mem.add_column("peak KV vs pasta", justify="right")
    for s in strategies:
        mem.add_row(
            s,
            f"{summary['tokens_per_s'][s]:.1f}",
            *((f"{vs_llama[s]:.2f}",) if vs_llama else ()),
            _mib(summary["kv_peak_bytes"][s]),
            f"{summary['kv_peak_ratio_vs_pasta'].get(s, float('nan')):.2f}",
        )
    cal = report["calibration"]
    cost = Table(title="step cost (ms per step; threads × tokens in the cache)", title_justify="left")
    cost.add_column("threads", justify="right")
    for c in cal["contexts"]:
        cost.add_column(str(c), justify="right")
    for n, row in zip(cal["threads"], cal["ms_per_step"], strict=True):
        cost.add_row(str(n), *(f"{v:.1f}" for v in row))
    return [per, agg, mem, cost]


def print_report(report: dict[str, Any], console: Console) -> None:
    """Print the report's ``tables`` on ``console``."""
    for table in tables(report):
        console.print(table)


def is_report_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a report of ``write_report``: a ``report.json`` with its machine and results."""
    try:
        report = json.loads((folder / REPORT).read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and {"machine", "results"} <= report.keys()


def check_report_folder(folder: str | Path, *, force: bool = False) -> None:
    """Refuse a ``folder`` that holds files and is not a report folder (``is_report_folder``), unless ``force``
    (``pastac.output.OutputError``)."""
    check_folder(folder, ours=is_report_folder, what="a report folder of pastac bench", force=force, name="--out")


def write_report(report: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write ``REPORT_FILES`` into ``folder`` (created): the JSON, the tables as text, the pictures; return
    their paths."""
    folder = make_folder(folder)
    write_text(folder / REPORT, json.dumps(report, indent=2) + "\n")
    text = io.StringIO()
    print_report(report, Console(file=text, width=200, color_system=None))
    write_text(folder / "report.txt", text.getvalue())
    return [folder / REPORT, folder / "report.txt", *plot(report, folder)]


def plot(report: dict[str, Any], folder: str | Path) -> list[Path]:
    """Write measured_vs_theoretical.png and step_cost.png (``PICTURES``) into ``folder`` (created), each
    replaced atomically; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = make_folder(folder)
    results = [r for r in report["results"] if "bound" in r and "pasta_vs_sequential" in r["speedup"]]
    m = report["machine"]
    label = f"{m['model']}, {m['dtype']}, {m['device']}"
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    xs = [r["theoretical_speedup"] for r in results]
    ax.scatter(xs, [r["bound"] for r in results], marker="x", color="0.55", label="cost-model bound")
    ax.scatter(xs, [r["speedup"]["pasta_vs_sequential"] for r in results], label="pasta vs sequential (measured)")
    if "pasta_vs_hf-generate" in (results[0]["speedup"] if results else {}):
        ax.scatter(
            xs,
            [r["speedup"]["pasta_vs_hf-generate"] for r in results],
            marker=".",
            label="pasta vs hf-generate (measured)",
        )
    top = max([*xs, 1.0]) * 1.05
    ax.plot([1, top], [1, top], color="0.8", linestyle="--", label="theoretical (tokens / steps)")
    paths.append(
        _finish(
            fig,
            ax,
            "theoretical speedup (tokens / steps)",
            "speedup",
            f"measured vs theoretical speedup per response\n{label}",
            folder / PICTURES[0],
        )
    )
    cal = report["calibration"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for j, context in enumerate(cal["contexts"]):
        ax.plot(cal["threads"], [row[j] for row in cal["ms_per_step"]], marker="o", label=f"{context} tokens cached")
    ax.set_ylim(bottom=0)
    paths.append(
        _finish(
            fig,
            ax,
            "threads decoding in the step",
            "ms per step",
            f"step cost vs threads\n{label}",
            folder / PICTURES[1],
        )
    )
    return paths


def _finish(fig: Any, ax: Any, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        with atomic(path, binary=True) as file:
            fig.savefig(file, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path
