"""Rich renderables for the terminal: the thread tree, the plan table, dataset statistics.

Rich markup is never parsed from document text: labels are ``Text`` objects.
``console`` gives plain, fixed-width output when the stream is not a terminal,
so that what a test or a pipe reads does not depend on the environment.
"""

from __future__ import annotations

import io
import math
from decimal import Decimal
from typing import TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from pastac.grammar.ast import quote
from pastac.ir.graph import Fork, ThreadGraph
from pastac.passes.positions import subtree_lengths
from pastac.report import COUNTS, FIGURES, METRICS, Plan, Stats, int_text, plan_figures
from pastac.viz.graphviz import nesting
from pastac.viz.labels import KIND_COLORS, excerpt, kind_name, node_label

PLAIN_WIDTH = 120


def console(file: TextIO, *, width: int | None = None) -> Console:
    """A console on ``file``: rich colours on a terminal; plain text, ``PLAIN_WIDTH`` wide, elsewhere."""
    if _isatty(file):
        return Console(file=file, width=width, highlight=False)
    return Console(
        file=file, force_terminal=False, no_color=True, width=width or PLAIN_WIDTH, highlight=False, emoji=False
    )


def show(file: TextIO, renderable: RenderableType) -> None:
    """Print ``renderable`` on ``file``; off a terminal as plain text without trailing blanks."""
    if _isatty(file):
        console(file).print(renderable)
        return
    buffer = io.StringIO()
    console(buffer).print(renderable)
    file.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


def _isatty(file: TextIO) -> bool:
    isatty = getattr(file, "isatty", None)
    return bool(isatty is not None and isatty())


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _int(n: int | None) -> str:
    """An integer for a table cell: in full up to 15 digits, else in scientific notation."""
    return int_text(n) if n is None or abs(n) < 10**15 else f"{Decimal(n):.3e}"


def _number(value: float | int, *, count: bool = False) -> str:
    """Three decimals; a count's figures (means, percentiles) with as few as they need, up to two."""
    if isinstance(value, int):
        return int_text(value)
    if math.isnan(value):
        return "-"
    return f"{value:.2f}".rstrip("0").rstrip(".") if count else f"{value:.3f}"


MAX_TREE_DEPTH = 8  # thread depths the tree indents; deeper threads are shown at this depth


def thread_tree(graph: ThreadGraph) -> Tree:
    """Threads nested under the promise that forked them, each with its nodes in order.

    A thread deeper than ``MAX_TREE_DEPTH`` is shown after its parent, at its parent's indentation, and its
    title names its parent: every line's guides are bounded, so that a deeply nested document's tree costs
    time linear in its size (rich measures each line's guides)."""
    subtree = subtree_lengths(graph)

    def title(thread: int) -> Text:
        info = graph.threads[thread]
        name = "t0 main" if info.parent is None else f"t{thread} {quote(info.topic or '')}"
        flattened = info.depth > MAX_TREE_DEPTH
        return Text.assemble(
            (name, "bold"),
            f"  forked by t{info.parent}," if flattened else "",
            f"  depth {info.depth}, {subtree[thread]} tokens with its children",
        )

    root = Tree(title(0), guide_style="dim")
    branches: dict[int, Tree] = {0: root}
    holders: dict[int, Tree] = {}  # per thread past the first: the tree its title was added to
    for thread, opening in nesting(graph):  # parents open before their children
        if not opening:
            continue
        branch = branches[thread]
        for node in graph.thread_nodes(thread):
            op = graph.op(node)
            kind = kind_name(op)
            head, *rest = node_label(node, op, text_limit=60)
            label = Text.assemble(
                (head, f"bold {KIND_COLORS[kind]}"), f"  len {op.length}", *(("  " + line) for line in rest[1:])
            )
            leaf = branch.add(label)
            if isinstance(op, Fork):
                holder = leaf if graph.threads[op.child].depth <= MAX_TREE_DEPTH else holders[thread]
                holders[op.child] = holder
                branches[op.child] = holder.add(title(op.child))
    return root


#: The plan's thread table shows this many threads, the first ones; ``plan --json`` gives every one.
PLAN_ROWS = 200


def plan_view(p: Plan, *, label: str, length: str) -> RenderableType:
    """The plan: a header with its settings, a table of its threads, a table of its figures and what they mean."""
    options = p.options
    cap = "no width cap" if options.max_width is None else f"max width {options.max_width}"
    header = Text(
        f"plan of {label}: policy {options.policy}, order {options.order}, {cap}, "
        f"lengths in {length} (unit {options.unit})"
    )
    threads = Table(
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        caption_justify="left",
        caption="tokens own: of the thread's nodes; subtree: with its descendants; promised: "
        "tokens= x unit; steps from 0, last inclusive; positions a..b: [a, b)",
    )
    for name, justify in (
        ("thread", "left"),
        ("parent", "left"),
        ("depth", "right"),
        ("topic", "left"),
        ("promised", "right"),
        ("tokens own", "right"),
        ("subtree", "right"),
        ("first step", "right"),
        ("last step", "right"),
    ):
        threads.add_column(name, justify=justify, no_wrap=name != "topic")  # type: ignore[arg-type]
    threads.add_column("positions", overflow="fold", min_width=16)
    for r in p.threads[:PLAN_ROWS]:
        positions = " ".join(f"{_int(a)}..{_int(b)}" for a, b in r.positions)
        threads.add_row(
            f"t{r.thread}",
            "-" if r.parent is None else f"t{r.parent}",
            str(r.depth),
            "-" if r.topic is None else excerpt(r.topic, 32),
            "-" if r.predicted is None else _int(r.predicted * options.unit),
            str(r.own_tokens),
            str(r.subtree_tokens),
            int_text(r.start_step),
            int_text(r.end_step),
            excerpt(positions, 80),
        )
    if len(p.threads) > PLAN_ROWS:
        more = len(p.threads) - PLAN_ROWS
        threads.add_row("…", "", "", f"{more:,} more threads (plan --json lists them all)", *([""] * 6))
    figures = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_header=True)
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    figures.add_column("meaning")
    for name, value in plan_figures(p).items():
        meaning = FIGURES[name]
        if name == "predicted_speedup" and p.figures.cost_model:
            meaning += f" ({p.figures.cost_model})"
        figures.add_row(name, _number(value), meaning)
    return Group(header, threads, figures)


def stats_view(stats: Stats, *, label: str, length: str, mode: str, max_invalid: int = 10) -> RenderableType:
    """The statistics: a header, a table of metrics, the pooled figures, at most ``max_invalid`` invalid records."""
    header = Text(
        f"stats of {label}: {_plural(stats.records, 'record')}, "
        f"{_plural(len(stats.documents), 'document')} analysed, {len(stats.invalid)} invalid ({mode}); "
        f"lengths in {length}; no width cap"
    )
    columns = ("count", "mean", "geo mean", "min", "p50", "p90", "max")
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("metric")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("meaning")
    for name, d in stats.metrics.items():
        geo = "" if d.geometric_mean is None else _number(d.geometric_mean)
        count = name in COUNTS
        table.add_row(
            name,
            str(d.count),
            _number(d.mean, count=count),
            geo,
            *(_number(v, count=count) for v in (d.min, d.p50, d.p90, d.max)),
            METRICS[name],
        )
    pooled = Text(
        f"pooled over all documents: {stats.tokens} tokens, theoretical speedup "
        f"{stats.pooled_speedup:.3f}, async token share {stats.pooled_async_token_share:.3f}"
    )
    parts: list[RenderableType] = [header, table, pooled]
    if stats.invalid:
        parts.append(Text(f"invalid records ({len(stats.invalid)}):"))
        for r in stats.invalid[:max_invalid]:
            parts.append(Text(f"  {r.label}: {r.message}"))
        if len(stats.invalid) > max_invalid:
            parts.append(Text(f"  ... and {len(stats.invalid) - max_invalid} more (--json lists them all)"))
    return Group(*parts)
