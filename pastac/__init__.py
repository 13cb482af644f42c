"""pastac: learned asynchronous decoding with Pasta-Lang.

The library entry points for the language are re-exported here:
``parse``, ``check``, ``render``, ``to_source``, ``Scanner``.
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

__version__ = "0.1.0"

__all__ = [
    "CODES", "Async", "Diagnostic", "Document", "ParseError", "ParseResult", "Promise", "Scanner", "Sync",
    "Text", "__version__", "check", "dump", "parse", "render", "to_source",
]
