"""The dependency-graph IR of threads, promises and syncs.

``lower(document, length)`` builds a ``ThreadGraph`` from a parsed document;
the runtime grows one incrementally (``segment``, ``fork``, ``open``, ``close``,
``sync``, ``join``, ``end``).
``verify`` checks it, ``dump``/``to_json``/``from_json`` print and read it.
"""

from pastac.ir.graph import (
    MAIN,
    Close,
    EdgeKind,
    Fork,
    IRError,
    Join,
    Open,
    Segment,
    SyncTag,
    Thread,
    ThreadGraph,
    verify,
)
from pastac.ir.lengths import LENGTHS, by_name, chars, tokenizer_length, words
from pastac.ir.lower import lower
from pastac.ir.printer import dump, dumps_json, from_json, to_json

__all__ = [
    "LENGTHS",
    "MAIN",
    "Close",
    "EdgeKind",
    "Fork",
    "IRError",
    "Join",
    "Open",
    "Segment",
    "SyncTag",
    "Thread",
    "ThreadGraph",
    "by_name",
    "chars",
    "dump",
    "dumps_json",
    "from_json",
    "lower",
    "to_json",
    "tokenizer_length",
    "verify",
    "words",
]
