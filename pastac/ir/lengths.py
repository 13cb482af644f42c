"""Length functions: how many tokens a piece of text is.

The IR needs lengths, not a model: ``chars`` and ``words`` work anywhere;
``tokenizer_length`` counts a Hugging Face tokenizer's tokens.  Lengths are
measured per node (segment, tag), as the runtime decodes them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

LengthFn = Callable[[str], int]

_WORD = re.compile(r"\S+")


def chars(text: str) -> int:
    """One token per character."""
    return len(text)


def words(text: str) -> int:
    """One token per run of non-white-space characters (white space joins the word before it)."""
    return len(_WORD.findall(text))


class _Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def tokenizer_length(tokenizer: _Encoder) -> LengthFn:
    """Count ``tokenizer``'s tokens (no special tokens)."""

    def length(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False)) if text else 0

    return length


LENGTHS: dict[str, LengthFn] = {"chars": chars, "words": words}


def by_name(name: str) -> LengthFn:
    """The length function called ``name`` in ``LENGTHS``; ``ValueError`` naming the choices if there is none."""
    try:
        return LENGTHS[name]
    except KeyError:
        raise ValueError(f"unknown length function {name!r}; choose from {', '.join(LENGTHS)}") from None
