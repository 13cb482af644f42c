"""Pictures of the IR and its schedule.

- ``graphviz``: the dependency graph as Graphviz DOT source, rendered by the
  ``dot`` program when it is installed;
- ``mermaid``: the same graph as a Mermaid flowchart;
- ``terminal``: rich renderables for the terminal: the thread tree, the plan
  table, the dataset statistics;
- ``timeline``: threads over decode steps (matplotlib, imported only when a
  picture is drawn).

Every function here is pure but for the ones that write the file they are
given; none prints.
"""

from pastac.viz.graphviz import GraphvizMissing, render_dot, to_dot
from pastac.viz.labels import KIND_COLORS, kind_name, node_label
from pastac.viz.mermaid import to_mermaid

__all__ = ["KIND_COLORS", "GraphvizMissing", "kind_name", "node_label", "render_dot", "to_dot", "to_mermaid"]
