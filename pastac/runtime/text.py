"""Token ids to text, incrementally: a thread's text as its tokens arrive."""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Decodes a growing list of token ids, emitting only text that is complete.

    A byte-level tokenizer may split one character over several tokens; until the
    character is whole the decoded tail ends in U+FFFD and is held back.  Decoding
    a short window (from the last emitted point) keeps each step's cost constant.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # start of the decoding window
        self._read = 0  # tokens whose text has been emitted

    def add(self, token: int) -> str:
        """Append ``token`` and return the text that became complete with it (often "", while a character
        waits for its last bytes)."""
        self.ids.append(token)
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=False)
        after = decode(self.ids[self._prefix :], skip_special_tokens=False)
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return after[len(before) :]
        return ""

    @property
    def settled(self) -> bool:
        """Has the text of every token added been emitted (no character is waiting for its last bytes)?"""
        return self._read == len(self.ids)

    def skip(self, tokens: list[int]) -> None:
        """Append tokens whose text the caller handles itself (forced text, tags)."""
        self.ids.extend(tokens)
        self._prefix = self._read = len(self.ids)

    def flush(self) -> str:
        """What is still held back (an incomplete character, shown as U+FFFD)."""
        if self._read == len(self.ids):
            return ""
        decode = self.tokenizer.decode
        before = decode(self.ids[self._prefix : self._read], skip_special_tokens=False)
        after = decode(self.ids[self._prefix :], skip_special_tokens=False)
        self._prefix = self._read = len(self.ids)
        return after[len(before) :]
