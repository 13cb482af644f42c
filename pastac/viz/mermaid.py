"""The dependency graph as a Mermaid flowchart (for Markdown that renders Mermaid).

One subgraph per thread, a child's nested in its parent's; edges ``-->`` seq,
``-.->|fork|`` and ``==>|join|``.  Labels are quoted, with Mermaid's entity codes
for the characters its parser or HTML labels would read.
"""

from __future__ import annotations

from pastac.ir.graph import EdgeKind, Join, Op, ThreadGraph
from pastac.viz.graphviz import cluster_lines, thread_title
from pastac.viz.labels import KIND_COLORS, kind_name, node_label

_ARROWS = {EdgeKind.SEQ: "-->", EdgeKind.FORK: "-. fork .->", EdgeKind.JOIN: "== join ==>"}
_ENTITIES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "\n": " ", "\r": " "}


def _escape(text: str) -> str:
    return "".join(_ENTITIES.get(ch, ch) for ch in text)


def _class(kind: str) -> str:
    return kind.replace(" ", "_")


def _node(node: int, op: Op) -> str:
    label = "<br/>".join(_escape(line) for line in node_label(node, op))
    shape = ("{{", "}}") if isinstance(op, Join) else ("[", "]")
    return f'n{node}{shape[0]}"{label}"{shape[1]}:::{_class(kind_name(op))}'


def to_mermaid(graph: ThreadGraph) -> str:
    """The Mermaid flowchart of ``graph``, its nodes coloured by kind."""
    lines = ["flowchart TD"]
    lines.extend(
        cluster_lines(
            graph, lambda t: [f'subgraph t{t} ["{_escape(thread_title(graph, t))}"]', "direction TB"], _node, "end"
        )
    )
    for u, v, kind in sorted(graph.g.edges(data="kind")):
        lines.append(f"  n{u} {_ARROWS[EdgeKind(kind)]} n{v}")
    for kind, color in KIND_COLORS.items():
        text = "#000" if kind == "join" else "#fff"
        fill = "#DDDDDD" if kind == "join" else color
        lines.append(f"  classDef {_class(kind)} fill:{fill},stroke:{color},color:{text}")
    return "\n".join(lines) + "\n"
