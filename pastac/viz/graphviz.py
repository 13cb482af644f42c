"""The dependency graph as Graphviz DOT source, and its rendering by ``dot``.

Nodes are the IR's nodes (labelled by kind, thread and length), drawn inside one
cluster per thread, a child's cluster nested in its parent's.  Edges are styled
by kind: ``seq`` solid, ``fork`` dashed, ``join`` bold.  Rendering needs the
Graphviz ``dot`` program; without it ``render_dot`` raises ``GraphvizMissing``
(the DOT source itself needs nothing).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator

from pastac.ir.graph import MAIN, EdgeKind, Join, Op, ThreadGraph
from pastac.output import write_bytes
from pastac.viz.labels import KIND_COLORS, excerpt, kind_name, node_label

_EDGE_STYLE = {
    EdgeKind.SEQ: 'color="#444444"',
    EdgeKind.FORK: 'style=dashed, color="#E69F00", label="fork", fontcolor="#A06F00"',
    EdgeKind.JOIN: 'style=bold, color="#CC79A7", label="join", fontcolor="#A0507F"',
}


class GraphvizMissing(RuntimeError):
    """The ``dot`` program is not installed."""


def _string(text: str) -> str:
    """A DOT double-quoted string showing ``text`` literally (backslashes, quotes and newlines escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _label(lines: tuple[str, ...]) -> str:
    """A multi-line DOT label: each line escaped, joined by DOT's centred line break."""
    return '"' + "\\n".join(_string(line)[1:-1] for line in lines) + '"'


def thread_title(graph: ThreadGraph, thread: int, limit: int = 40) -> str:
    """A thread's caption: ``t0 main``, or its id and its topic cut to ``limit`` characters."""
    topic = graph.threads[thread].topic
    return "t0 main" if thread == MAIN else f"t{thread} · {excerpt(topic or '', limit)}"


def nesting(graph: ThreadGraph) -> Iterator[tuple[int, bool]]:
    """(thread, True) when a thread's group opens, (thread, False) when it closes, children inside
    their parent in id order; an explicit stack, as lenient documents may nest to any depth."""
    children: dict[int, list[int]] = {t: [] for t in graph.threads}
    for thread in graph.threads.values():
        if thread.parent is not None:
            children[thread.parent].append(thread.id)
    stack = [(MAIN, True)]
    while stack:
        thread, opening = stack.pop()
        yield thread, opening
        if opening:
            stack.append((thread, False))
            stack.extend((c, True) for c in reversed(children[thread]))


MAX_INDENT = 16  # levels of nesting that indent the lines of ``cluster_lines``


def cluster_lines(
    graph: ThreadGraph, header: Callable[[int], list[str]], node_line: Callable[[int, Op], str], close: str
) -> Iterator[str]:
    """One nested group of lines per thread: its ``header`` lines, a ``node_line`` per node, then ``close``;
    indented two spaces per level up to ``MAX_INDENT`` levels (shared by the DOT and Mermaid writers; past
    that only the braces show the nesting, so that a deep document's output stays linear in its size)."""
    depth = 0
    for thread, opening in nesting(graph):
        if not opening:
            depth -= 1
            yield "  " * (min(depth, MAX_INDENT) + 1) + close
            continue
        head, *rest = header(thread)
        pad = "  " * (min(depth, MAX_INDENT) + 2)
        yield "  " * (min(depth, MAX_INDENT) + 1) + head
        yield from (pad + line for line in rest)
        yield from (pad + node_line(node, graph.op(node)) for node in graph.thread_nodes(thread))
        depth += 1


def _dot_node(node: int, op: Op) -> str:
    kind = kind_name(op)
    look = (
        'shape=diamond, fillcolor="#DDDDDD", fontcolor=black'
        if isinstance(op, Join)
        else f'fillcolor="{KIND_COLORS[kind]}"'
    )
    return f"n{node} [label={_label(node_label(node, op))}, {look}, tooltip={_string(kind)}];"


def to_dot(graph: ThreadGraph, name: str = "pasta") -> str:
    """The DOT source of ``graph``, a digraph called ``name``."""
    lines = [
        f"digraph {_string(name)} {{",
        '  graph [rankdir=TB, fontname="Helvetica", fontsize=11, compound=true, newrank=true];',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, fontcolor=white];',
        '  edge [fontname="Helvetica", fontsize=9, arrowsize=0.7];',
    ]
    lines.extend(
        cluster_lines(
            graph,
            lambda t: [
                f"subgraph cluster_t{t} {{",
                f'label={_string(thread_title(graph, t))}; style="rounded"; color="#999999";',
            ],
            _dot_node,
            "}",
        )
    )
    for u, v, kind in sorted(graph.g.edges(data="kind")):
        lines.append(f"  n{u} -> n{v} [{_EDGE_STYLE[EdgeKind(kind)]}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_program() -> str | None:
    """The path of Graphviz's ``dot``, or None if it is not installed."""
    return shutil.which("dot")


def render_dot(source: str, fmt: str, output: str) -> None:
    """Write ``source`` drawn by Graphviz as ``fmt`` (png, svg, ...) to ``output``, replacing it atomically
    (``pastac.output``; its ``OutputError`` when it cannot be written); ``RuntimeError`` when 'dot' fails."""
    program = dot_program()
    if program is None:
        raise GraphvizMissing("Graphviz 'dot' is not installed; install graphviz or use --format dot")
    done = subprocess.run([program, f"-T{fmt}"], input=source.encode("utf-8"), capture_output=True, check=False)
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
        raise RuntimeError(f"Graphviz 'dot' failed: {message}")
    write_bytes(output, done.stdout)
