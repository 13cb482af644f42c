"""The streaming scanner: recognises tags in text that arrives in arbitrary chunks.

Invariants:
- Text is emitted as soon as it is certain to be text; only a suffix that
  starts with a '<' that could still begin a tag is held back.
- Nothing emitted as text ever turns out to be part of a tag.
- For every input and every way of splitting it into chunks, the lexemes
  emitted (adjacent text joined, see ``coalesce``) equal ``tokenize(input)``.
"""

from __future__ import annotations

from collections.abc import Iterable

from pastac.grammar.ast import START, Position, Span
from pastac.grammar.tags import DELIMITERS, OPENERS, Lexeme, TagKind, TextToken, read_tag


def opening(pending: str, final: bool) -> TagKind | bool | None:
    """For ``pending`` starting with '<': the tag kind it opens, None if it is
    text, or True if more input is needed to tell."""
    for kind, opener in OPENERS.items():
        if pending.startswith(opener):
            if len(pending) == len(opener):
                return kind if final else True
            if pending[len(opener)] in DELIMITERS:
                return kind
        elif opener.startswith(pending) and not final:
            return True
    return None


class Scanner:
    """Feed it chunks with ``feed``; call ``close`` at the end of the stream.

    Both return the lexemes that became certain.  ``held`` is the text held
    back, which can only be a possible tag start or an unfinished tag.
    """

    def __init__(self, start: Position = START) -> None:
        self._held = ""
        self._at = start
        self._closed = False

    @property
    def held(self) -> str:
        """The text held back: a possible tag start or an unfinished tag."""
        return self._held

    @property
    def position(self) -> Position:
        """Where the held-back text starts."""
        return self._at

    def feed(self, chunk: str) -> list[Lexeme]:
        """Take the next chunk; the lexemes that became certain.  ``ValueError`` after ``close``."""
        if self._closed:
            raise ValueError("feed() after close()")
        self._held += chunk
        return self._drain(final=False)

    def close(self) -> list[Lexeme]:
        """End the stream: the held text as lexemes (an unfinished tag as an unterminated one); [] if already closed."""
        if self._closed:
            return []
        out = self._drain(final=True)
        self._closed = True
        return out

    def _text(self, value: str, out: list[Lexeme]) -> None:
        span = Span.of(self._at, value)
        out.append(TextToken(value, span))
        self._at = span.end
        self._held = self._held[len(value) :]

    def _drain(self, *, final: bool) -> list[Lexeme]:
        out: list[Lexeme] = []
        while self._held:
            held = self._held
            lt = held.find("<")
            if lt != 0:
                self._text(held if lt == -1 else held[:lt], out)
                continue
            kind = opening(held, final)
            if kind is True:
                break
            if kind is None:
                nxt = held.find("<", 1)
                self._text(held if nxt == -1 else held[:nxt], out)
                continue
            assert isinstance(kind, TagKind)
            begin = len(OPENERS[kind])
            stops = [i for i in (held.find("<", begin), held.find(">", begin)) if i != -1]
            if stops:
                stop = min(stops)
                raw = held[: stop + 1] if held[stop] == ">" else held[:stop]
                at_end = False
            elif final:
                raw, at_end = held, True
            else:
                break
            token = read_tag(kind, raw, self._at, at_end=at_end)
            out.append(token)
            self._at = token.span.end
            self._held = held[len(raw) :]
        return out


def coalesce(lexemes: Iterable[Lexeme]) -> list[Lexeme]:
    """Join adjacent text lexemes (the scanner may split text the lexer keeps whole)."""
    out: list[Lexeme] = []
    for lexeme in lexemes:
        prev = out[-1] if out else None
        if isinstance(lexeme, TextToken) and isinstance(prev, TextToken):
            out[-1] = TextToken(prev.value + lexeme.value, Span(prev.span.start, lexeme.span.end))
        else:
            out.append(lexeme)
    return out


def scan(chunks: Iterable[str], start: Position = START) -> list[Lexeme]:
    """Scan a whole stream; the lexemes, adjacent text joined."""
    scanner = Scanner(start)
    out: list[Lexeme] = []
    for chunk in chunks:
        out.extend(scanner.feed(chunk))
    out.extend(scanner.close())
    return coalesce(out)
