"""The runtime: decode a model's answer with its promised parts in parallel threads, on one KV cache.

``Engine`` (``engine.py``) drives a Hugging Face causal LM: the scheduler (``scheduler.py``) plans each
step from the threads' state (``threads.py``) and the tag interpreter (``interpreter.py``); the runner
(``runner.py``) runs one packed forward per step.  The names below are importable from here; they load
torch and transformers on first use, so that ``pastac.runtime.threads`` and ``pastac.runtime.options``
stay cheap to import for the command line.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pastac.runtime.engine import Engine
    from pastac.runtime.options import Mode, RunOptions, SamplingOptions
    from pastac.runtime.results import DoneEvent, Generation, Stats, StepEvent, ThreadResult
    from pastac.runtime.templates import InputError
    from pastac.runtime.threads import FinishReason, Limits

_HOMES = {
    "Engine": "engine",
    "Mode": "options",
    "RunOptions": "options",
    "DoneEvent": "results",
    "Generation": "results",
    "Stats": "results",
    "StepEvent": "results",
    "ThreadResult": "results",
    "SamplingOptions": "options",
    "InputError": "templates",
    "FinishReason": "threads",
    "Limits": "threads",
}

__all__ = [
    "DoneEvent",
    "Engine",
    "FinishReason",
    "Generation",
    "InputError",
    "Limits",
    "Mode",
    "RunOptions",
    "SamplingOptions",
    "Stats",
    "StepEvent",
    "ThreadResult",
]


def __getattr__(name: str) -> object:
    if name in _HOMES:
        return getattr(importlib.import_module(f"pastac.runtime.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'pastac.runtime' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
