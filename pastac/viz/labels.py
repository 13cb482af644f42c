"""What the pictures call each node, and the colour of each kind (shared by all of them)."""

from __future__ import annotations

from typing import assert_never

from pastac.grammar.ast import quote
from pastac.ir.graph import Close, Fork, Join, Op, Open, Segment, SyncTag

# Okabe-Ito colours: told apart with every common colour-vision deficiency.
KIND_COLORS: dict[str, str] = {
    "text": "#0072B2",  # blue
    "promise": "#E69F00",  # orange
    "async tag": "#009E73",  # green: <async> and </async>
    "sync": "#CC79A7",  # purple
    "join": "#555555",
}


def kind_name(op: Op) -> str:
    """The kind as a reader knows it: text, promise, async tag, sync, join."""
    match op:
        case Segment():
            return "text"
        case Fork():
            return "promise"
        case Open() | Close():
            return "async tag"
        case SyncTag():
            return "sync"
        case Join():
            return "join"
        case _:
            assert_never(op)


def excerpt(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def node_label(node: int, op: Op, *, text_limit: int = 24) -> tuple[str, ...]:
    """The lines that name a node: id and kind, thread and length, then what it holds."""
    match op:
        case Segment(text=text):
            what = quote(excerpt(text, text_limit))
            head = "text"
        case Fork(child=child, topic=topic, predicted=predicted):
            size = "" if predicted is None else f" tokens={predicted}" if predicted < 10**12 else " tokens=…"
            what = f"→ t{child} {quote(excerpt(topic, text_limit))}{size}"
            head = "promise"
        case Open():
            what, head = "", "<async>"
        case Close():
            what, head = "", "</async>"
        case SyncTag():
            what, head = "", "<sync/>"
        case Join(children=children, explicit=explicit):
            what = "waits for " + ", ".join(f"t{c}" for c in children)
            head = "join" if explicit else "join (end of body)"
        case _:
            assert_never(op)
    lines = (f"%{node} {head}", f"t{op.thread} · len {op.length}")
    return (*lines, what) if what else lines
