"""pastac: learned asynchronous decoding with Pasta-Lang.

The library entry points are re-exported here: for the language ``parse``,
``check``, ``render``, ``to_source``, ``Scanner``; for the IR ``lower`` and
``ThreadGraph``; for the attention layout ``training_layout`` and
``PositionOptions`` (more in ``pastac.ir`` and ``pastac.passes``).
"""

from pastac.grammar import (
    CODES,
    Async,
    Diagnostic,
    Document,
    ParseError,
    ParseResult,
    Promise,
    Scanner,
    Sync,
    Text,
    check,
    dump,
    parse,
    render,
    to_source,
)
from pastac.ir import ThreadGraph, lower
from pastac.passes import Policy, PositionOptions

__version__ = "0.1.0"

__all__ = [
    "CODES",
    "Async",
    "Diagnostic",
    "Document",
    "Layout",
    "ParseError",
    "ParseResult",
    "Policy",
    "PositionOptions",
    "Promise",
    "Scanner",
    "Sync",
    "Text",
    "ThreadGraph",
    "__version__",
    "check",
    "dump",
    "lower",
    "parse",
    "render",
    "to_source",
    "training_layout",
]


def __getattr__(name: str) -> object:
    if name in ("Layout", "training_layout"):  # need torch: imported on first use
        from pastac.passes import layout

        return getattr(layout, name)
    if name in ("Engine", "RunOptions", "Generation"):  # need torch and transformers
        from pastac.runtime import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'pastac' has no attribute {name!r}")
