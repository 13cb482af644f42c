"""Text and JSON forms of the IR.

The text dump is one node per line, SSA-like, in id order; pass results may add
annotations at the end of a node's line (``pastac plan --dump-after``).  The
JSON form round-trips: ``from_json(to_json(g))`` rebuilds an equal graph.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, assert_never

from pastac.grammar.ast import decimal_digits, decimal_int, quote
from pastac.ir.graph import Close, Fork, IRError, Join, Open, Segment, SyncTag, ThreadGraph

# Promise lengths have no upper bound, and Python refuses to write an int of more than 4300 digits as a
# JSON number (``sys.int_info``): such a length goes into JSON as a string of digits.
_JSON_INT_LIMIT = 10**4300


def json_int(n: int | None) -> int | str | None:
    """``n`` for JSON: a string of digits when it is too long to be written as a number."""
    return n if n is None or abs(n) < _JSON_INT_LIMIT else decimal_digits(n)


def _int(value: int | str | None) -> int | None:
    return decimal_int(value) if isinstance(value, str) else value


def dump(graph: ThreadGraph, annotations: Mapping[int, str] | None = None) -> str:
    """The text dump: the threads, then a line per node in id order, ``annotations[node]`` at its end."""
    lines = []
    for thread in graph.threads.values():
        parent = "" if thread.parent is None else f" parent=t{thread.parent} fork=%{thread.fork}"
        topic = "" if thread.topic is None else f" topic={quote(thread.topic)}"
        lines.append(f"thread t{thread.id} depth={thread.depth}{parent}{topic}")
    for node, op in graph.ops():
        head = f"%{node} = t{op.thread} "
        match op:
            case Segment(text=text, length=length):
                body = f"segment len={length} {quote(text)}"
            case Fork(child=child, topic=topic, predicted=predicted, length=length):
                size = "" if predicted is None else f" predicted={decimal_digits(predicted)}"
                body = f"fork t{child} len={length} topic={quote(topic)}{size}"
            case Open(length=length):
                body = f"open len={length}"
            case Close(length=length):
                body = f"close len={length}"
            case SyncTag(length=length):
                body = f"sync len={length}"
            case Join(children=children, explicit=explicit):
                joined = ", ".join(f"t{c}" for c in children)
                body = f"join {joined}" + ("" if explicit else " (end of body)")
            case _:
                assert_never(op)
        note = "" if annotations is None or node not in annotations else f"  ; {annotations[node]}"
        lines.append(head + body + note)
    return "\n".join(lines) + "\n"


def to_json(graph: ThreadGraph) -> dict[str, Any]:
    """Nodes in id order, each with its kind and fields; threads are implied by the forks.

    A predicted length of more than 4300 digits is a string of digits."""
    nodes = []
    for _, op in graph.ops():
        kind = type(op).__name__.lower()
        fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(op).items()}
        if "predicted" in fields:
            fields["predicted"] = json_int(fields["predicted"])
        nodes.append({"kind": kind, **fields})
    return {"format": "pastac-ir", "version": 1, "nodes": nodes, "ends": [list(e) for e in graph.ends]}


def from_json(data: Mapping[str, Any]) -> ThreadGraph:
    """Replay the nodes through the graph's appends (which re-check the invariants)."""
    if data.get("format") != "pastac-ir" or data.get("version") != 1:
        raise IRError("not a pastac-ir version 1 document")
    graph = ThreadGraph()
    ends = [tuple(e) for e in data.get("ends", [])]

    def end_threads(count: int) -> None:
        while ends and ends[0][1] <= count:
            thread, _ = ends.pop(0)
            if not graph.ended(thread):
                graph.end(thread)

    for entry in data["nodes"]:
        end_threads(len(graph))
        kind, thread = entry["kind"], entry["thread"]
        match kind:
            case "segment":
                graph.segment(thread, entry["text"], entry["length"])
            case "fork":
                predicted = _int(entry["predicted"])
                _, child = graph.fork(thread, entry["topic"], predicted, entry["text"], entry["length"])
                if child != entry["child"]:
                    raise IRError(f"fork creates t{child}, the JSON says t{entry['child']}")
            case "open":
                graph.open(thread, entry["text"], entry["length"])
            case "close":
                graph.close(thread, entry["text"], entry["length"])
            case "synctag":
                graph.sync(thread, entry["text"], entry["length"])
            case "join":
                if tuple(entry["children"]) != graph.unjoined(thread):
                    raise IRError(f"join of t{thread} lists {entry['children']}, expected {graph.unjoined(thread)}")
                if entry["explicit"]:
                    graph.join(thread, explicit=True)
                else:  # the implicit join is appended by the thread's end
                    if not ends or ends[0][0] != thread:
                        raise IRError(f"implicit join of t{thread} without its end")
                    ends.pop(0)
                    graph.end(thread)
            case _:
                raise IRError(f"unknown node kind {kind!r}")
    end_threads(len(graph))
    if ends:
        raise IRError(f"end of t{ends[0][0]} refers past the last node")
    return graph


def dumps_json(graph: ThreadGraph) -> str:
    """``to_json`` as indented JSON text."""
    return json.dumps(to_json(graph), indent=2, ensure_ascii=False)
