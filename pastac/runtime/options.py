"""A run's options: what ``Engine.generate`` and ``pastac run`` decode with.

``RunOptions`` groups them: the mode, the budgets and caps (``Limits``), the
position policy, the sampling (``SamplingOptions``), stop strings, the chat
template, template handling, the tag guard and jump-forward.  Fields left
``None`` take the model's own settings (its adapter's ``pastac.json``,
``pastac.adapters.settings``), else the defaults.  ``with_options`` applies
keyword arguments by the flat names Hugging Face and vLLM users know
(``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``...), each
routed to the dataclass that defines it: every option is defined once, here and
in the dataclasses it names, and the command line takes its defaults from them.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from enum import StrEnum
from typing import Any

from pastac.passes.positions import PositionOptions
from pastac.runtime.repeats import DEFAULT_SIBLING_NGRAM
from pastac.runtime.threads import Limits

PENALTY_SCOPES = ("answer", "thread")  # what the repetition penalty counts as seen (SamplingOptions)


@dataclass(frozen=True)
class SamplingOptions:
    """``temperature`` 0 is greedy (argmax); otherwise softmax(logits / temperature) cut to the
    smallest set of tokens whose probability reaches ``top_p``.  ``seed`` makes sampling repeatable.

    ``repetition_penalty`` is Hugging Face's (``RepetitionPenaltyLogitsProcessor``): the logit of every token
    already in the context is divided by it when positive and multiplied by it when negative, the context
    being what the thread sees (the prompt, its ancestors' text up to its promise, its own text and, after a
    sync, its children's).  ``None`` takes the model's own setting (the adapter's ``pastac.json``), else 1,
    which is none.

    ``penalty_scope`` says which tokens count as already in the context: ``"thread"`` (the default) what the
    thread sees, as above; ``"answer"`` every token of the prompt and of the answer written so far, in
    whichever thread, as when one thread writes the whole answer and each part is penalised for what the
    parts before it hold (threads that cannot see each other are then kept from repeating each other's
    words, but also from the words any answer repeats).

    ``sibling_ngram`` n (0: off) bans a thread from writing a token that repeats an n-gram of tokens written
    by a thread it cannot see, a sibling say (``pastac.runtime.repeats``)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float | None = None
    penalty_scope: str = "thread"
    sibling_ngram: int = DEFAULT_SIBLING_NGRAM

    def __post_init__(self) -> None:
        if not (
            isinstance(self.temperature, int | float) and math.isfinite(self.temperature) and self.temperature >= 0
        ):
            raise ValueError(f"temperature must be a finite number >= 0, not {self.temperature!r}")
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p!r}")
        penalty = self.repetition_penalty
        if penalty is not None and not (isinstance(penalty, int | float) and math.isfinite(penalty) and penalty > 0):
            raise ValueError(f"repetition_penalty must be a finite number > 0, not {penalty!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer, not {self.seed!r}")
        if self.sibling_ngram != 0 and self.sibling_ngram < 2:
            raise ValueError(f"sibling_ngram must be 0 (off) or at least 2, not {self.sibling_ngram}")
        if self.penalty_scope not in PENALTY_SCOPES:
            raise ValueError(f"penalty_scope must be one of {', '.join(PENALTY_SCOPES)}, not {self.penalty_scope!r}")

    @property
    def greedy(self) -> bool:
        """Whether the next token is the argmax (temperature 0)."""
        return self.temperature == 0

    @property
    def penalty(self) -> float:
        """The repetition penalty to apply (1: none)."""
        return 1.0 if self.repetition_penalty is None else self.repetition_penalty

    def resolved(self, repetition_penalty: float | None) -> SamplingOptions:
        """These options with an unset repetition penalty taken from a model's setting."""
        if self.repetition_penalty is not None or repetition_penalty is None:
            return self
        return replace(self, repetition_penalty=repetition_penalty)


class Mode(StrEnum):
    """``async``: threads fork at promises; ``sequential``: one thread, every promise decoded inline."""

    ASYNC = "async"
    SEQUENTIAL = "sequential"


@dataclass(frozen=True)
class RunOptions:
    """How to decode one answer (see the module's docstring)."""

    mode: Mode = Mode.ASYNC
    limits: Limits = Limits()
    positions: PositionOptions | None = None  # None: the model's (its adapter's settings), else the defaults
    sampling: SamplingOptions = SamplingOptions()
    # a thread's body ends where it writes one of these; the stop and what follows are left out of the text
    stop: tuple[str, ...] = ()
    chat: bool | None = None  # lay the prompt out with the chat template (None: the adapter's setting, else yes)
    # Templates: keep the tags in the model's context (for a model trained on Pasta-Lang), or leave them
    # out (default: a model that never saw a tag reads plain text, and each child starts where its promise was).
    template_tags: bool = False
    child_stop: str | None = None  # a child's body ends where it writes this (templates default to a newline)
    # Constrain what the model writes so that its tags are well formed and allowed where they stand
    # (pastac.runtime.guard); off, a malformed tag is recovered from and reported in the warnings.
    tag_guard: bool = True
    # Feed the text a canonical tag forces (`="` after `<promise topic`, ...) in the step of the token before
    # it (pastac.runtime.interpreter); in a sampled run only under the tag guard, which keeps tags canonical.
    jump_forward: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop must be non-empty strings, not {self.stop!r}")
        object.__setattr__(self, "stop", stop)


# The flat names ``with_options`` takes, by the dataclass that defines each.
_OWN = tuple(f.name for f in fields(RunOptions) if f.name not in ("limits", "sampling", "positions"))
_LIMITS = tuple(f.name for f in fields(Limits))
_SAMPLING = tuple(f.name for f in fields(SamplingOptions))
_POSITIONS = ("policy", "unit")
OPTION_NAMES: tuple[str, ...] = (*_OWN, *_LIMITS, *_SAMPLING, *_POSITIONS, "limits", "sampling", "positions")


def with_options(options: RunOptions, base_positions: PositionOptions, /, **changes: Any) -> RunOptions:
    """``options`` with ``changes`` applied by their flat names (``max_new_tokens=120``, ``temperature=0.7``,
    ``policy="restart"``...).  ``policy`` and ``unit`` change ``options.positions``, or ``base_positions``
    when it is unset (the model's own).  An unknown name raises ``TypeError`` naming the closest ones; a bad
    value raises ``ValueError``."""
    unknown = [name for name in changes if name not in OPTION_NAMES]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
            hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        raise TypeError(f"unknown decoding option {', '.join(hints)}; the options are {', '.join(OPTION_NAMES)}")

    def picked(names: Sequence[str]) -> dict[str, Any]:
        return {name: changes[name] for name in names if name in changes}

    limits = replace(changes.get("limits", options.limits), **picked(_LIMITS))
    sampling = replace(changes.get("sampling", options.sampling), **picked(_SAMPLING))
    positions = changes.get("positions", options.positions)
    if picked(_POSITIONS):
        positions = replace(positions or base_positions, **picked(_POSITIONS))
    return replace(options, limits=limits, sampling=sampling, positions=positions, **picked(_OWN))


@dataclass(frozen=True)
class BatchLimits:
    """What a ``BatchEngine`` (``pastac serve``) takes on at once: ``max_concurrent`` requests decoding,
    ``max_waiting`` more queued, and ``max_rows`` queries in one forward pass (the running requests' new
    tokens first, then prompts in chunks).  On a CPU a step's time grows with its queries, so ``max_rows``
    bounds the time between a request's tokens; on a GPU a larger one costs little."""

    max_concurrent: int = 8
    max_waiting: int = 64
    max_rows: int = 32

    def __post_init__(self) -> None:
        for name in ("max_concurrent", "max_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, not {value!r}")
        if not isinstance(self.max_waiting, int) or isinstance(self.max_waiting, bool) or self.max_waiting < 0:
            raise ValueError(f"max_waiting must be an integer >= 0, not {self.max_waiting!r}")
