"""The timeline: threads over decode steps, the picture of a schedule.

One row per thread (the main thread on top, children below in id order): a bar
for each node over the steps its tokens are decoded in, coloured by kind, and a
hatched band where the thread waits: at a join for its children, or for a free
slot under a width cap.  Below, the number of threads decoding at each step.

``timeline`` computes the intervals (pure, tested without matplotlib);
``draw_timeline`` draws them with matplotlib's Agg canvas, imported only when
called (matplotlib is an optional dependency: the ``viz`` extra).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pastac.ir.graph import Join, Segment, ThreadGraph
from pastac.output import atomic
from pastac.passes import CriticalPath, Schedule
from pastac.viz.graphviz import thread_title
from pastac.viz.labels import KIND_COLORS, kind_name

WAIT_COLOR = "#BBBBBB"


@dataclass(frozen=True)
class Bar:
    """A node's tokens: decoded over steps [start, end)."""

    thread: int
    node: int
    kind: str  # labels.kind_name
    start: int
    end: int


@dataclass(frozen=True)
class Wait:
    """A thread that cannot decode over steps [start, end): at a ``join`` for its children, or
    (under a width cap) for a ``slot``."""

    thread: int
    start: int
    end: int
    reason: Literal["join", "slot"]


@dataclass(frozen=True)
class Timeline:
    """The intervals of a schedule: the bars and waits, and the width per step."""

    steps: int
    bars: tuple[Bar, ...]
    waits: tuple[Wait, ...]
    width: tuple[int, ...]  # threads decoding, per step


def timeline(graph: ThreadGraph, plan: Schedule) -> Timeline:
    """The bars and waits of each thread under ``plan``."""
    bars: list[Bar] = []
    waits: list[Wait] = []
    for info in graph.threads.values():
        thread = info.id
        # The first step the thread could decode in: a child's, the step after its promise is complete.
        free = 0 if info.fork is None else plan.last_step[info.fork] + 1
        for node in graph.thread_nodes(thread):
            op = graph.op(node)
            if isinstance(op, Join):
                resume = plan.last_step[node] + 1  # it goes on the step after the join passes
                if resume > free:
                    waits.append(Wait(thread, free, resume, "join"))
                free = max(free, resume)
            elif op.length:
                first, last = plan.first_step[node], plan.last_step[node]
                if first > free:
                    waits.append(Wait(thread, free, first, "slot"))
                bars.append(Bar(thread, node, kind_name(op), first, last + 1))
                free = last + 1
    return Timeline(plan.steps, tuple(bars), tuple(waits), tuple(len(d) for d in plan.decoding))


def _title(label: str, figures: CriticalPath, plan: Schedule, max_width: int) -> str:
    cap = plan.options.max_width
    capped = "no width cap" if cap is None else f"width cap {cap}"
    return (
        f"{label}\n{figures.tokens} tokens in {figures.steps} steps: theoretical speedup "
        f"{figures.theoretical_speedup:.2f}× (critical path {figures.critical_path} steps, "
        f"max {figures.max_speedup:.2f}×) · max width {max_width} · {capped}, order {plan.options.order}"
    )


def draw_timeline(
    graph: ThreadGraph,
    plan: Schedule,
    figures: CriticalPath,
    output: str | os.PathLike[str],
    *,
    label: str = "",
    fmt: str | None = None,
    dpi: int = 150,
) -> None:
    """Draw the timeline of ``plan`` into the file ``output`` (``fmt``: png, svg, pdf; default: its suffix),
    replacing it atomically (``pastac.output``; its ``OutputError`` when it cannot be written)."""
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure  # the Agg canvas, no pyplot: no global state, no display
    from matplotlib.patches import Patch

    line = timeline(graph, plan)
    threads = list(graph.threads)
    row = {t: i for i, t in enumerate(threads)}
    steps = max(1, line.steps)
    plot_height = min(0.42 * len(threads) + 0.6, 30.0)
    fig = Figure(figsize=(13, plot_height + 2.6), layout="constrained")
    axes, width_axes = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [plot_height, 1.1]})

    # One collection per kind: a document may have thousands of nodes.
    for reason, hatch in (("join", "////"), ("slot", "....")):
        waits = [(row[w.thread], w.start, w.end) for w in line.waits if w.reason == reason]
        if waits:
            axes.add_collection(
                PolyCollection(
                    _rectangles(waits, 0.5), facecolors="white", edgecolors=WAIT_COLOR, hatch=hatch, linewidths=0.6
                )
            )
    edge = 0.8 if steps <= 300 else 0.0  # white gaps between nodes, while they are wider than the gaps
    for kind, color in KIND_COLORS.items():
        bars = [(row[b.thread], b.start, b.end) for b in line.bars if b.kind == kind]
        if bars:
            axes.add_collection(
                PolyCollection(_rectangles(bars, 0.72), facecolors=color, edgecolors="white", linewidths=edge)
            )

    # The text of a segment inside its bar, where there is room (pixels per step over pixels per character).
    fig_px = 13 * dpi * 0.86
    chars_per_step = fig_px / steps / (7.0 * dpi / 100)
    if len(threads) <= 60:
        for bar in line.bars:
            op = graph.op(bar.node)
            room = int((bar.end - bar.start) * chars_per_step) - 1
            if isinstance(op, Segment) and room >= 4:
                text = " ".join(op.text.split())
                text = text if len(text) <= room else text[: room - 1] + "…"
                axes.text(
                    bar.start + 0.3,
                    row[bar.thread],
                    text,
                    va="center",
                    ha="left",
                    fontsize=7.5,
                    color="white",
                    clip_on=True,
                )

    # Fork and join arrows between rows, for graphs small enough to read them.
    if len(threads) <= 40:
        for info in graph.threads.values():
            if info.fork is None or info.parent is None:
                continue
            bars = [b for b in line.bars if b.thread == info.id]
            if not bars:
                continue
            at = plan.last_step[info.fork] + 1
            axes.annotate(
                "",
                xy=(at, row[info.id] - 0.36),
                xytext=(at, row[info.parent] + 0.36),
                arrowprops={"arrowstyle": "->", "color": KIND_COLORS["promise"], "lw": 0.9, "shrinkA": 0, "shrinkB": 0},
            )
            joins = [
                n
                for n in graph.thread_nodes(info.parent)
                if isinstance(op := graph.op(n), Join) and info.id in op.children
            ]
            if joins:
                resume = plan.last_step[joins[0]] + 1
                axes.annotate(
                    "",
                    xy=(resume, row[info.parent] + 0.36),
                    xytext=(bars[-1].end, row[info.id] - 0.36),
                    arrowprops={
                        "arrowstyle": "->",
                        "color": KIND_COLORS["sync"],
                        "lw": 0.9,
                        "linestyle": "--",
                        "shrinkA": 0,
                        "shrinkB": 0,
                    },
                )

    every = max(1, math.ceil(len(threads) / 60))  # at most 60 thread names
    shown = range(0, len(threads), every)
    axes.set_yticks(shown, [_row_label(graph, threads[i]) for i in shown], fontsize=9 if every == 1 else 7)
    axes.set_ylim(len(threads) - 0.5, -0.5)  # main on top
    axes.set_xlim(0, steps)
    axes.grid(axis="x", color="#E5E5E5", linewidth=0.6)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
        width_axes.spines[side].set_visible(False)

    if line.width:
        width_axes.stairs(line.width, range(len(line.width) + 1), fill=True, color="#56B4E9")
    top = max(line.width, default=1)
    width_axes.set_ylim(0, top + 0.5)
    width_axes.set_yticks(sorted({0, top}))
    width_axes.set_ylabel("threads\ndecoding", fontsize=8.5)
    width_axes.set_xlabel("decode step", fontsize=9.5)
    width_axes.grid(axis="x", color="#E5E5E5", linewidth=0.6)
    width_axes.set_axisbelow(True)

    kinds = [k for k in KIND_COLORS if k != "join"]
    handles = [Patch(color=KIND_COLORS[k], label=k) for k in kinds]
    reasons = {w.reason for w in line.waits}
    handles += [
        Patch(facecolor="white", edgecolor=WAIT_COLOR, hatch=hatch, label=f"waiting {what}")
        for reason, hatch, what in (("join", "////", "at a join"), ("slot", "....", "for a slot"))
        if reason in reasons
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8.5, frameon=False)
    fig.suptitle(_title(label or "timeline", figures, plan, max(line.width, default=0)), fontsize=10.5)
    with warnings.catch_warnings():
        # A character the font lacks is drawn as a box; saying so for each one helps no reader.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        with atomic(output, binary=True) as file:
            fig.savefig(file, format=fmt or Path(output).suffix.lstrip(".") or None, dpi=dpi)


def _rectangles(spans: list[tuple[int, int, int]], height: float) -> list[list[tuple[float, float]]]:
    """Rectangles [start, end) x [row - height/2, row + height/2] for (row, start, end)."""
    h = height / 2
    return [[(a, y - h), (b, y - h), (b, y + h), (a, y + h)] for y, a, b in spans]


def _row_label(graph: ThreadGraph, thread: int) -> str:
    return thread_title(graph, thread, limit=30)
