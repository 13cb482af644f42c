"""The library behind plan, graph and stats: report figures, DOT, Mermaid, the terminal views, the timeline."""

from __future__ import annotations

import io
import itertools
import math
import re
import shutil

import pytest

from pastac.grammar import check, parse
from pastac.ir.graph import EdgeKind
from pastac.ir.lengths import words
from pastac.ir.lower import lower
from pastac.passes.positions import subtree_lengths
from pastac.report import (
    PlanOptions,
    distribution,
    document_figures,
    json_int,
    plan,
    plan_json,
    quantile,
    summarize,
)
from pastac.viz import GraphvizMissing, render_dot, to_dot, to_mermaid
from pastac.viz.terminal import plan_view, show, stats_view, thread_tree
from pastac.viz.timeline import Bar, Wait, draw_timeline, timeline

# Words: "x " 1, each promise tag 2, <async>/</async>/<sync/> 1 each (see test_cli_plan.TWO for the steps).
TWO = 'x <promise topic="a"/><async>one two three</async><promise topic="b"/><async>four</async><sync/>'
# t1 forks t2 inside its block; t2 is joined by the end of t1's body, t1 by main's <sync/>.
NESTED = 'top <promise topic="outer"/><async>o <promise topic="inner"/><async>i i i</async> p</async><sync/> end'


def graph(text: str):
    return lower(parse(text), words)


# -- report ---------------------------------------------------------------------------------------------------


def test_plan_rows_and_json_keys():
    p = plan(graph(TWO))
    assert [(r.thread, r.parent, r.depth, r.topic, r.own_tokens, r.subtree_tokens) for r in p.threads] == [
        (0, None, 0, None, 6, 14),
        (1, 0, 1, "a", 5, 5),
        (2, 0, 1, "b", 3, 3),
    ]
    out = plan_json(p, length="words")
    for key in (
        "theoretical_speedup",
        "steps",
        "tokens",
        "max_width",
        "critical_path",
        "max_speedup",
        "average_parallelism",
        "threads",
        "predicted_speedup",
        "cost_model",
        "width_per_step",
        "policy",
        "order",
        "max_width_cap",
        "per_thread",
        "nodes",
    ):
        assert key in out
    assert len(out["nodes"]) == len(p.graph)
    assert out["nodes"][2] == {
        "node": 2,
        "kind": "open",
        "thread": 1,
        "length": 1,
        "first_step": 3,
        "last_step": 3,
        "positions": [3, 4],
    }


def test_plan_nested():
    g = graph(NESTED)
    p = plan(g, PlanOptions(policy="sequential"))
    # main: "top ", promise (2), <sync/>, " end" = 5; t1: <async>, "o ", promise (2), " p", </async> = 6;
    # t2: <async>, "i i i", </async> = 5.
    assert subtree_lengths(g) == {0: 16, 1: 11, 2: 5} and p.figures.tokens == 16
    # Sequential positions are those of the stitched text: every thread's ranges tile 0..tokens.
    ranges = sorted(r for row in p.threads for r in row.positions)
    assert ranges[0][0] == 0 and ranges[-1][1] == p.figures.tokens
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def test_document_figures_exact():
    f = document_figures(graph(TWO))
    assert (f.tokens, f.steps, f.theoretical_speedup, f.max_width, f.promises, f.async_tokens, f.depth) == (
        14,
        8,
        1.75,
        3,
        2,
        8,
        1,
    )
    assert f.async_token_share == 8 / 14
    empty = document_figures(graph(""))
    assert (empty.tokens, empty.steps, empty.theoretical_speedup, empty.async_token_share) == (0, 0, 1.0, 0.0)
    assert document_figures(graph(NESTED)).depth == 2


def test_distribution_and_quantiles():
    assert quantile([1, 2, 3, 4], 0.5) == 2.5
    assert quantile([1, 2, 3, 4], 0.9) == pytest.approx(3.7)
    assert quantile([5], 0.9) == 5
    d = distribution([4, 1, 2], geometric=True)
    assert (d.count, d.mean, d.min, d.p50, d.max) == (3, 7 / 3, 1, 2, 4)
    assert d.geometric_mean == pytest.approx(2.0)
    assert distribution([1, 2]).geometric_mean is None
    empty = distribution([], geometric=True)
    assert empty.count == 0 and math.isnan(empty.mean)
    assert empty.to_json() == {
        "count": 0,
        "mean": None,
        "geometric_mean": None,
        "min": None,
        "p50": None,
        "p90": None,
        "max": None,
    }


def test_json_int():
    assert json_int(None) is None and json_int(12) == 12
    assert json_int(10**4500) == "1" + "0" * 4500


# -- DOT and Mermaid ------------------------------------------------------------------------------------------


def test_dot_clusters_nest_and_edges_are_styled():
    g = graph(NESTED)
    dot = to_dot(g, "nested")
    assert dot.startswith('digraph "nested" {') and dot.endswith("}\n")
    # t2's cluster is inside t1's, inside t0's: three opens before the first close.
    opens = [m.start() for m in re.finditer(r"subgraph cluster_t\d", dot)]
    assert len(opens) == 3 and dot.index("}") > opens[-1]
    assert dot.count("{") == dot.count("}")
    kinds = [k for _, _, k in g.g.edges(data="kind")]
    assert dot.count("style=dashed") == kinds.count(EdgeKind.FORK) == 2
    assert dot.count("style=bold") == kinds.count(EdgeKind.JOIN) == 2
    assert dot.count(" -> ") == len(kinds)


def test_dot_and_mermaid_escape_labels():
    g = lower(check('<promise topic="say &quot;hi&quot; \\ # &lt;b&gt;"/><async>"q" \\n</async>').document, words)
    dot = to_dot(g, 'a "name"')
    assert 'digraph "a \\"name\\""' in dot
    assert 'label="t1 · say \\"hi\\" \\\\ # <b>"' in dot
    mermaid = to_mermaid(g)
    assert '"' not in mermaid.replace('["', "").replace('"]', "").replace('{{"', "").replace('"}}', "")
    assert "#quot;hi#quot;" in mermaid and "#35;" in mermaid and "#lt;b#gt;" in mermaid
    assert mermaid.count("subgraph ") == 2 and mermaid.count("\n  end") + mermaid.count("    end") == 2


def test_render_dot_needs_graphviz(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphvizMissing, match="install graphviz or use --format dot"):
        render_dot(to_dot(graph(TWO)), "png", str(tmp_path / "g.png"))


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_render_dot_with_graphviz(tmp_path):
    out = tmp_path / "g.png"
    render_dot(to_dot(graph(NESTED)), "png", str(out))
    assert out.read_bytes().startswith(b"\x89PNG")


# -- terminal -------------------------------------------------------------------------------------------------


def test_thread_tree_nests_threads_under_their_promise():
    buffer = io.StringIO()
    show(buffer, thread_tree(graph(NESTED)))
    lines = buffer.getvalue().splitlines()
    assert lines[0] == "t0 main  depth 0, 16 tokens with its children"
    outer = next(i for i, line in enumerate(lines) if 't1 "outer"  depth 1' in line)
    inner = next(i for i, line in enumerate(lines) if 't2 "inner"  depth 2' in line)
    assert "promise" in lines[outer - 1] and outer < inner
    assert lines[inner].index("t2") > lines[outer].index("t1")  # deeper


def test_markup_in_documents_is_text():
    buffer = io.StringIO()
    g = graph('[bold]x[/bold] <promise topic="[red]t"/><async>[i]y</async>')
    show(buffer, thread_tree(g))
    show(buffer, plan_view(plan(g), label="[b]f", length="words"))
    text = buffer.getvalue()
    assert '"[bold]x[/bold] "' in text and '"[red]t"' in text and "plan of [b]f" in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_stats_view_lists_invalid_records():
    from pastac.report import InvalidRecord

    stats = summarize([document_figures(graph(TWO))], [InvalidRecord(f"d[{i}]", "bad", i) for i in range(12)])
    buffer = io.StringIO()
    show(buffer, stats_view(stats, label="d", length="words", mode="strict", max_invalid=10))
    text = buffer.getvalue()
    assert "13 records, 1 document analysed, 12 invalid (strict)" in " ".join(text.split())
    assert "d[9]: bad" in text and "d[10]: bad" not in text and "and 2 more" in text


# -- timeline -------------------------------------------------------------------------------------------------


def test_timeline_intervals_exact():
    g = graph(TWO)
    line = timeline(g, plan(g).schedule)
    assert line.steps == 8 and line.width == (1, 1, 1, 2, 2, 3, 2, 2)
    assert [(b.thread, b.kind, b.start, b.end) for b in line.bars if b.thread == 0] == [
        (0, "text", 0, 1),
        (0, "promise", 1, 3),
        (0, "promise", 3, 5),
        (0, "sync", 5, 6),
    ]
    assert Bar(2, 6, "async tag", 5, 6) in line.bars
    assert line.waits == (Wait(0, 6, 8, "join"),)  # main waits at its join until both children end


def test_timeline_slot_waits_under_a_cap():
    g = graph(TWO)
    line = timeline(g, plan(g, PlanOptions(max_width=2)).schedule)
    assert Wait(2, 5, 6, "slot") in line.waits  # promised by step 4, started in step 6
    assert sum(b.end - b.start for b in line.bars) == 14


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_draw_timeline(tmp_path, fmt):
    g = graph(NESTED)
    p = plan(g, PlanOptions(max_width=2))
    out = tmp_path / f"t.{fmt}"
    draw_timeline(g, p.schedule, p.figures, str(out), label="nested")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG") if fmt == "png" else b"<svg" in data[:1000]


def test_draw_timeline_of_an_empty_document(tmp_path):
    g = graph("")
    p = plan(g)
    draw_timeline(g, p.schedule, p.figures, str(tmp_path / "e.png"))
    assert (tmp_path / "e.png").stat().st_size > 0


def test_the_plan_table_shows_the_first_threads_and_counts_the_rest() -> None:
    from pastac.viz.terminal import PLAN_ROWS

    many = PLAN_ROWS + 5
    doc = "".join(f'<promise topic="p{i}" tokens="1"/><async>x</async>' for i in range(many)) + "<sync/>"
    buffer = io.StringIO()
    show(buffer, plan_view(plan(graph(doc)), label="d", length="words"))
    text = buffer.getvalue()
    assert f"t{PLAN_ROWS - 1} " in text and f"t{PLAN_ROWS + 1} " not in text
    assert "6 more threads" in text  # the main thread and many children: PLAN_ROWS shown
