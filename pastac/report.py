"""Figures of a document's schedule and of a dataset, for ``pastac plan`` and ``pastac stats``.

Pure functions over the IR and the pass results: they print nothing
(``pastac.viz.terminal`` draws them as tables) and their JSON forms name every
figure by what it is.

- ``plan``: one document under chosen positions policy, thread order and width
  cap: per-thread rows (steps, tokens, positions) and the critical-path figures.
- ``document_figures``: the dataset figures of one document, always with no
  width cap (the paper's theoretical speedup: tokens / critical path).
- ``summarize``: their distributions over a dataset.

Steps are numbered from 0 and a thread's ``end_step`` is inclusive; token
counts are in the length function's units (``words`` or ``chars``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pastac.grammar.ast import decimal_digits
from pastac.ir.graph import MAIN, Fork, ThreadGraph, verify
from pastac.ir.printer import json_int
from pastac.passes import (
    DEFAULT_STEP_COST,
    CriticalPath,
    Order,
    PassManager,
    Policy,
    PositionOptions,
    Positions,
    Schedule,
    ScheduleOptions,
    StepCost,
    Width,
    critical_path,
    schedule,
    standard_pipeline,
    width,
)
from pastac.passes.positions import subtree_lengths


def int_text(n: int | None) -> str:
    """``n`` as decimal text, however long; '-' for None."""
    return "-" if n is None else decimal_digits(n)


@dataclass(frozen=True)
class PlanOptions:
    """How to plan a document: positions policy and unit, width cap, thread order, step-cost model."""

    policy: Policy = Policy.PREDICTED
    unit: int = 10  # tokens="N" predicts N x unit tokens
    max_width: int | None = None  # threads decoding per step, the main one included; None: no cap
    order: Order = Order.FIFO
    cost: StepCost = DEFAULT_STEP_COST

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", Policy(self.policy))
        object.__setattr__(self, "order", Order(self.order))


@dataclass(frozen=True)
class ThreadRow:
    """One thread of a plan: its place in the tree, its tokens, steps and positions."""

    thread: int
    parent: int | None
    depth: int
    topic: str | None
    predicted: int | None  # the promise's tokens="..", in the document's unit
    own_tokens: int  # tokens of the thread's own nodes (its tags included)
    subtree_tokens: int  # own tokens and those of all its descendants
    start_step: int | None  # the step of its first token; None: it writes none
    end_step: int | None  # the step of its last token (inclusive)
    positions: tuple[tuple[int, int], ...]  # the position ranges [start, end) its tokens take


@dataclass(frozen=True)
class Plan:
    """One document planned: the graph, the pass results under ``options``, a row per thread, the dumps asked for."""

    graph: ThreadGraph
    options: PlanOptions
    positions: Positions
    schedule: Schedule
    width: Width
    figures: CriticalPath
    threads: tuple[ThreadRow, ...]
    dumps: Mapping[str, str] = field(default_factory=dict)  # pass name -> annotated IR dump


def pass_names() -> tuple[str, ...]:
    """The passes of the standard pipeline, in order (what ``dump_after`` may name)."""
    return tuple(p.name for p in standard_pipeline())


def plan(
    graph: ThreadGraph, options: PlanOptions = PlanOptions(), dump_after: Sequence[str] = (), *, verified: bool = False
) -> Plan:
    """Run the standard pipeline over ``graph``, verified first (the nesting limit is the parser's) unless the
    caller says it is ``verified``: ``lower``'s graph is, being built only through the graph's checked appends
    from a parsed document (a whole-graph check costs a tenth of planning 10,000 promises)."""
    if not verified:
        verify(graph)
    pipeline = standard_pipeline(
        PositionOptions(options.policy, options.unit), ScheduleOptions(options.max_width, options.order), options.cost
    )
    results = PassManager(pipeline, dump_after=tuple(dump_after)).run(graph)
    positions: Positions = results["positions"]
    plan_: Schedule = results["resolution-order"]
    return Plan(
        graph,
        options,
        positions,
        plan_,
        results["width"],
        results["critical-path"],
        thread_rows(graph, positions, plan_),
        dict(results.dumps),
    )


def thread_rows(graph: ThreadGraph, positions: Positions, plan_: Schedule) -> tuple[ThreadRow, ...]:
    """A row per thread, in id order; a row's position ranges are its nodes', adjacent ones merged."""
    subtree = subtree_lengths(graph)
    start, length = positions.start, positions.length  # per node
    rows = []
    for thread in graph.threads.values():
        nodes = [n for n in graph.thread_nodes(thread.id) if length[n]]
        ranges: list[tuple[int, int]] = []
        for n in nodes:
            first, end = start[n], start[n] + length[n]
            if ranges and ranges[-1][1] == first:
                ranges[-1] = (ranges[-1][0], end)
            else:
                ranges.append((first, end))
        fork = graph.op(thread.fork) if thread.fork is not None else None
        rows.append(
            ThreadRow(
                thread=thread.id,
                parent=thread.parent,
                depth=thread.depth,
                topic=thread.topic,
                predicted=fork.predicted if isinstance(fork, Fork) else None,
                own_tokens=sum(length[n] for n in nodes),
                subtree_tokens=subtree[thread.id],
                start_step=min((plan_.first_step[n] for n in nodes), default=None),
                end_step=max((plan_.last_step[n] for n in nodes), default=None),
                positions=tuple(ranges),
            )
        )
    return tuple(rows)


# The figures of a plan, in the order tables and JSON show them, with what each means.
FIGURES: dict[str, str] = {
    "tokens": "tokens decoded, by all threads (tags included)",
    "steps": "decode steps of this schedule",
    "critical_path": "steps with no width cap: the longest chain of dependent tokens",
    "theoretical_speedup": "tokens / steps",
    "max_speedup": "tokens / critical_path (the paper's theoretical speedup)",
    "average_parallelism": "tokens decoded per step",
    "max_width": "most threads decoding in one step",
    "threads": "threads, the main one included",
    "predicted_speedup": "wall clock, sequential / this schedule, by the step-cost model",
}


def plan_figures(p: Plan) -> dict[str, int | float]:
    """The plan's figures under their names, in the order of ``FIGURES``."""
    f = p.figures
    return {
        "tokens": f.tokens,
        "steps": f.steps,
        "critical_path": f.critical_path,
        "theoretical_speedup": f.theoretical_speedup,
        "max_speedup": f.max_speedup,
        "average_parallelism": f.average_parallelism,
        "max_width": p.width.max_width,
        "threads": len(p.graph.threads),
        "predicted_speedup": f.predicted_speedup,
    }


def plan_json(p: Plan, *, length: str | None = None) -> dict[str, Any]:
    """The plan as one JSON object: figures under their names, settings, per-step widths, threads, nodes."""
    out: dict[str, Any] = plan_figures(p)
    out |= {
        "cost_model": p.figures.cost_model,
        "sequential_ms": p.figures.sequential_ms,
        "parallel_ms": p.figures.parallel_ms,
        "policy": str(p.options.policy),
        "order": str(p.options.order),
        "max_width_cap": p.options.max_width,
        "unit": p.options.unit,
        "length": length,
        "width_per_step": list(p.width.per_step),
        "per_thread": [
            {
                "thread": r.thread,
                "parent": r.parent,
                "depth": r.depth,
                "topic": r.topic,
                "predicted_tokens": json_int(None if r.predicted is None else r.predicted * p.options.unit),
                "own_tokens": r.own_tokens,
                "subtree_tokens": r.subtree_tokens,
                "start_step": r.start_step,
                "end_step": r.end_step,
                "positions": [[json_int(a), json_int(b)] for a, b in r.positions],
            }
            for r in p.threads
        ],
        "nodes": [
            {
                "node": n,
                "kind": type(op).__name__.lower(),
                "thread": op.thread,
                "length": op.length,
                "first_step": p.schedule.first_step[n],
                "last_step": p.schedule.last_step[n],
                "positions": [json_int(p.positions.start[n]), json_int(p.positions.start[n] + op.length)],
            }
            for n, op in p.graph.ops()
        ],
    }
    if length is None:
        del out["length"]
    if p.dumps:
        out["dumps"] = dict(p.dumps)
    return out


# -- datasets -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentFigures:
    """The dataset figures of one document, with no width cap."""

    tokens: int
    steps: int
    theoretical_speedup: float  # tokens / critical path; 1.0 for an empty document
    max_width: int
    promises: int  # fulfilled promises: threads forked
    async_tokens: int  # tokens of forked threads' nodes
    depth: int  # deepest thread (0: no promise)

    @property
    def async_token_share(self) -> float:
        """Tokens of forked threads / all tokens (0 for an empty document)."""
        return self.async_tokens / self.tokens if self.tokens else 0.0


def document_figures(graph: ThreadGraph) -> DocumentFigures:
    """The dataset figures of ``graph``, scheduled with no width cap."""
    plan_ = schedule(graph, ScheduleOptions())
    figures = critical_path(graph, plan_)
    return DocumentFigures(
        tokens=figures.tokens,
        steps=figures.steps,
        theoretical_speedup=figures.max_speedup,
        max_width=width(graph, plan_).max_width,
        promises=len(graph.threads) - 1,
        async_tokens=sum(op.length for _, op in graph.ops() if op.thread != MAIN),
        depth=max(t.depth for t in graph.threads.values()),
    )


@dataclass(frozen=True)
class Distribution:
    """The spread of one metric over a dataset (``distribution``): NaN figures when it has no values."""

    count: int
    mean: float
    min: float
    p50: float
    p90: float
    max: float
    geometric_mean: float | None = None  # for ratios (speedups); None where not meaningful

    def to_json(self) -> dict[str, float | int | None]:
        """Under their names; a figure of no values (NaN) is null, as JSON has no NaN."""
        out: dict[str, float | int | None] = {"count": self.count, "mean": self.mean}
        if self.geometric_mean is not None:
            out["geometric_mean"] = self.geometric_mean
        out |= {"min": self.min, "p50": self.p50, "p90": self.p90, "max": self.max}
        return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in out.items()}


def quantile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default) of sorted values."""
    if not ordered:
        return math.nan
    at = q * (len(ordered) - 1)
    low = math.floor(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


def distribution(values: Iterable[float], *, geometric: bool = False) -> Distribution:
    """Count, mean, min, median, 90th percentile, max (NaN when empty); with ``geometric``, the
    geometric mean too (of positive values; NaN if there is another)."""
    ordered = sorted(values)
    n = len(ordered)
    if not n:
        nan = math.nan
        return Distribution(0, nan, nan, nan, nan, nan, nan if geometric else None)
    geo = None
    if geometric:
        geo = math.exp(math.fsum(math.log(v) for v in ordered) / n) if ordered[0] > 0 else math.nan
    return Distribution(
        n, math.fsum(ordered) / n, ordered[0], quantile(ordered, 0.5), quantile(ordered, 0.9), ordered[-1], geo
    )


@dataclass(frozen=True)
class InvalidRecord:
    """A record with no usable document: bad JSON, no such field, or (strict) parse errors."""

    label: str  # how the CLI names it: FILE, or FILE[LINE].FIELD
    message: str
    line: int | None = None  # the JSONL line


# The metrics of a dataset, in the order tables and JSON show them, with what each means.
METRICS: dict[str, str] = {
    "theoretical_speedup": "tokens / critical path",
    "max_width": "most threads in one step",
    "promises_per_response": "threads forked",
    "async_token_share": "async tokens / all tokens",
    "depth": "deepest nesting",
    "tokens": "tags included",
    "critical_path": "steps, no width cap",
}
COUNTS = frozenset({"max_width", "promises_per_response", "depth", "tokens", "critical_path"})  # integer metrics


@dataclass(frozen=True)
class Stats:
    """A dataset's figures: each metric of ``METRICS``'s distribution, the documents, the invalid records."""

    records: int  # documents and invalid records
    documents: tuple[DocumentFigures, ...]
    invalid: tuple[InvalidRecord, ...]
    metrics: Mapping[str, Distribution]

    @property
    def tokens(self) -> int:
        """Tokens of all documents together."""
        return sum(d.tokens for d in self.documents)

    @property
    def pooled_speedup(self) -> float:
        """All tokens / all critical-path steps: the speedup of decoding the whole dataset."""
        steps = sum(d.steps for d in self.documents)
        return self.tokens / steps if steps else 1.0

    @property
    def pooled_async_token_share(self) -> float:
        """Tokens of forked threads / all tokens, over the whole dataset (0 with no tokens)."""
        return sum(d.async_tokens for d in self.documents) / self.tokens if self.tokens else 0.0

    def to_json(self) -> dict[str, Any]:
        """Counts, each metric's distribution, the pooled figures and the invalid records, under their names."""
        return {
            "records": self.records,
            "documents": len(self.documents),
            "invalid": len(self.invalid),
            "metrics": {name: d.to_json() for name, d in self.metrics.items()},
            "pooled": {
                "tokens": self.tokens,
                "critical_path": sum(d.steps for d in self.documents),
                "theoretical_speedup": self.pooled_speedup,
                "async_token_share": self.pooled_async_token_share,
            },
            "invalid_records": [{"record": r.label, "line": r.line, "message": r.message} for r in self.invalid],
        }


def summarize(documents: Sequence[DocumentFigures], invalid: Sequence[InvalidRecord] = ()) -> Stats:
    """The statistics of a dataset from its documents' figures and its invalid records."""
    metrics = {
        "theoretical_speedup": distribution((d.theoretical_speedup for d in documents), geometric=True),
        "max_width": distribution(d.max_width for d in documents),
        "promises_per_response": distribution(d.promises for d in documents),
        "async_token_share": distribution(d.async_token_share for d in documents),
        "depth": distribution(d.depth for d in documents),
        "tokens": distribution(d.tokens for d in documents),
        "critical_path": distribution(d.steps for d in documents),
    }
    assert list(metrics) == list(METRICS)
    return Stats(len(documents) + len(invalid), tuple(documents), tuple(invalid), metrics)
