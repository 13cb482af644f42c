"""pastac: learned asynchronous decoding with Pasta-Lang.

The library's public API, importable from here:

- the language: ``parse``, ``check``, ``render``, ``to_source``, ``dump``, ``Scanner`` and the AST
  (``Document``, ``Text``, ``Promise``, ``Async``, ``Sync``), diagnostics (``Diagnostic``, ``ParseError``,
  ``ParseResult``, ``CODES``);
- the IR and its layout: ``lower``, ``ThreadGraph``, ``Policy``, ``PositionOptions``, ``training_layout``,
  ``Layout``;
- decoding: ``Engine`` and what it takes and gives (``RunOptions``, ``Limits``, ``SamplingOptions``,
  ``Mode``, ``Generation``, ``ThreadResult``, ``Stats``, ``StepEvent``, ``DoneEvent``, ``FinishReason``),
  an adapter's ``AdapterSettings``, and the errors ``InputError`` and ``ModelError``.

The names that need torch (the layout and decoding) are imported on first use, so that the language
tools start quickly.
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

_LAZY = {
    "Layout": "pastac.passes.layout",
    "training_layout": "pastac.passes.layout",
    "AdapterSettings": "pastac.adapters.settings",
    "Engine": "pastac.runtime.engine",
    "ModelError": "pastac.models",
    "DoneEvent": "pastac.runtime.results",
    "Generation": "pastac.runtime.results",
    "Stats": "pastac.runtime.results",
    "StepEvent": "pastac.runtime.results",
    "ThreadResult": "pastac.runtime.results",
    "InputError": "pastac.runtime.templates",
    "Limits": "pastac.runtime.threads",
    "FinishReason": "pastac.runtime.threads",
    "Mode": "pastac.runtime.options",
    "RunOptions": "pastac.runtime.options",
    "SamplingOptions": "pastac.runtime.options",
}

__all__ = [
    "CODES",
    "AdapterSettings",
    "Async",
    "Diagnostic",
    "Document",
    "DoneEvent",
    "Engine",
    "FinishReason",
    "Generation",
    "InputError",
    "Layout",
    "Limits",
    "Mode",
    "ModelError",
    "ParseError",
    "ParseResult",
    "Policy",
    "PositionOptions",
    "Promise",
    "RunOptions",
    "SamplingOptions",
    "Scanner",
    "Stats",
    "StepEvent",
    "Sync",
    "Text",
    "ThreadGraph",
    "ThreadResult",
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
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pastac' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
