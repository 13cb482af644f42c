"""Which continuations of a stream keep its tags well formed: the grammar as a decoding constraint.

A thread's scanner holds back a suffix that may still become a tag (``Scanner.held``).  ``viable`` says
whether appending a piece of text to that suffix keeps every tag it completes well formed and allowed where
the thread is, and leaves a suffix that can still be completed so: it is what constrained decoding asks of
each candidate token.  Text that turns out not to be a tag (``a <b> c``, ``<profile``) is viable, unless it
begins with a tag's name (``</asyncio``, ``<sync<sync``): where a model may not write a tag it is not let
write its name either.  Nor may it write a tag's look-alike (``lookalike``): a name that begins as a tag's
does (``<promis>``, ``<promote``, ``</promise>``), or closing markup (``</list>``) where no markup was opened.  A model
that has learnt to end a block with ``</async>`` reaches for these where it may not close one.

The tags it lets a model write are the canonical forms, a subset of what the grammar accepts (so every tag
they complete parses without a diagnostic):

    <promise topic="TOPIC" tokens="DIGITS"/>     <sync/>     </async>

with a topic that holds something other than white space and no line break (and, as decoding enforces
it, at most ``TOPIC_LIMIT`` characters: a topic is a short label) and an estimate of at most
``TOKENS_DIGITS`` digits; ``<async>`` is never written
by a model (the runtime force-feeds it).  ``TagContext`` says which tags the thread may write: a
``<promise/>`` only where its block would not nest deeper than the language allows, a ``<sync/>`` only
with a promise to wait for, a ``</async>`` only with a block to close.

Inside a tag the canonical form leaves no choice between its fields: once ``<promise `` is written,
``topic="`` must follow; once the topic's quote closes, `` tokens="``; once the estimate's quote closes,
``/>``.  ``forced`` gives that text, which a decoder may feed at once instead of sampling it token by token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import regex

from pastac.grammar.scanner import Scanner, opening
from pastac.grammar.tags import OPENERS, TagKind, TagToken

TOKENS_DIGITS = 5  # a token estimate of at most 99,999
_VALUE_CHAR = r'(?:[^"<>&\r\n]|&(?:quot|amp|lt|gt);)'
_TOPIC = rf'[ \t]*(?:[^"<>&\s]|&(?:quot|amp|lt|gt);){_VALUE_CHAR}*'
CANONICAL: dict[TagKind, regex.Pattern[str]] = {
    TagKind.PROMISE: regex.compile(rf'<promise topic="{_TOPIC}" tokens="[0-9]{{1,{TOKENS_DIGITS}}}"/>'),
    TagKind.SYNC: regex.compile(r"<sync/>"),
    TagKind.ASYNC_CLOSE: regex.compile(r"</async>"),
}


TOPIC_LIMIT = 80  # characters; the dataset's topics are 2-6 words, at most 52 characters
_OPEN_TOPIC = re.compile(r'<promise topic="([^"]*)', re.DOTALL)


def topic_length(held: str) -> int | None:
    """The length of the topic ``held`` is writing, if it is inside a promise's unfinished topic."""
    m = _OPEN_TOPIC.fullmatch(held)
    return None if m is None else len(m.group(1))


@dataclass(frozen=True)
class TagContext:
    """Where a thread is: may it write ``<sync/>`` (it has promises to wait for), ``</async>`` (it is a
    child, or inside a block it opened inline) and ``<promise/>`` (its block would nest no deeper than the
    limit, E305)?  Has it written markup, so that ``</b>`` may close a ``<b>`` (``lookalike``)?"""

    sync: bool = False
    close: bool = False
    promise: bool = True
    markup: bool = False  # its text (or its prompt's) opened markup, ``<div>``: closing markup is text then

    def allows(self, kind: TagKind) -> bool:
        """May the thread write a tag of ``kind`` here?  Never an ``<async>``: the runtime writes those."""
        if kind is TagKind.PROMISE:
            return self.promise
        if kind is TagKind.SYNC:
            return self.sync
        if kind is TagKind.ASYNC_CLOSE:
            return self.close
        return False


def _complete_ok(token: TagToken, context: TagContext) -> bool:
    return (
        token.tag is not None
        and not token.diagnostics
        and context.allows(token.kind)
        and CANONICAL[token.kind].fullmatch(token.raw) is not None
    )


_ANGLED = re.compile(r"<(/?)([A-Za-z]*)")
_MARKUP = re.compile(r"<[A-Za-z]")
_STEMS = frozenset(opener.lstrip("</")[:4] for opener in OPENERS.values())  # prom, asyn, sync


def writes_markup(text: str) -> bool:
    """Does ``text`` open markup (``<div>``, ``<b>``, ``<T>``)?  A thread that has may close it."""
    return _MARKUP.search(text) is not None


def _near(name: str) -> bool:
    """Does ``name`` begin, in either case, with the first four letters of a tag's name (``prom``,
    ``promISE``, ``promote``, ``asyncio``, ``Sync``)?  A model kept from a ``<promise/>`` (its block would nest
    too deep) wrote ``<promISE``, ``<promES``, ``<promote`` … one after the other until its budget ran out.
    Every tag's name is among these, so text that begins with one (``<syncopation``) is a look-alike too."""
    return name[:4].lower() in _STEMS


def lookalike(text: str, context: TagContext) -> bool:
    """Does the text ``text`` imitate a tag?  A name that begins as a tag's does (``<promis>``, ``<promote``,
    ``</promise>``, ``</asyn>``, ``<SYNC>``: the language has no tag by that name, so it is text, but a model
    that writes it was writing a tag); or closing markup (``</list>``, ``</``) in a thread that opened no markup, where
    only ``</async>`` closes anything.  ``</b>`` closes a ``<b>`` the thread wrote (``context.markup``) or
    that ``text`` opens before it."""
    opened = context.markup
    for m in _ANGLED.finditer(text):
        slash, name = m.groups()
        if (name and _near(name)) or (slash and not opened):
            return True
        opened = opened or bool(name and not slash)
    return False


def _held_ok(held: str, context: TagContext) -> bool:
    """Can the held-back suffix ``held`` still end as text or as an allowed canonical tag?"""
    if not held:
        return True
    kind = opening(held, final=False)
    if kind is None:  # text, but not text that imitates a tag (or begins with a tag's name)
        return not lookalike(held, context)
    if kind is True:  # not yet decided: ``<pro`` may become ``<profile``, but ``<prom`` only a promise
        if lookalike(held, context):  # ``<promi``, ``</``: as text it would imitate a tag, so it must be one
            return any(context.allows(k) and opener.startswith(held) for k, opener in OPENERS.items())
        return True
    return context.allows(kind) and CANONICAL[kind].fullmatch(held, partial=True) is not None


def viable(held: str, piece: str, context: TagContext) -> bool:
    """Does ``held + piece`` complete only well-formed, allowed tags and leave a suffix that can still be?
    Text that begins with a tag's name (``<syncopation``, ``</async</async``) is not viable either: a model
    that writes the name means the tag, and where the tag is not allowed the name is the start of a loop.

    ``held`` is what a thread's scanner holds back (empty, or a suffix starting with ``<``)."""
    if "<" not in piece and ">" not in piece:  # no tag can end, none but ``held``'s can start
        return _held_ok(held + piece, context) if held else True
    scanner = Scanner()
    for lexeme in scanner.feed(held + piece):
        if isinstance(lexeme, TagToken):
            if not _complete_ok(lexeme, context):
                return False
        elif lookalike(lexeme.value, context):
            return False
        elif not context.markup and writes_markup(lexeme.value):  # ``<b>bold</b>``: the </b> closes it
            context = replace(context, markup=True)
    return _held_ok(scanner.held, context)


_PROMISE_LEAD, _PROMISE_MIDDLE, _PROMISE_END = '<promise topic="', '" tokens="', '"/>'
_AFTER_TOPIC = re.compile(r'<promise topic="([^"]*)(".*)', re.DOTALL)
_AFTER_DIGITS = re.compile(r'" tokens="([0-9]+)(.*)', re.DOTALL)


def _rest(literal: str, written: str) -> str:
    """What is left of ``literal`` once ``written``, a proper prefix of it, is written ("" if it is not one)."""
    return literal[len(written) :] if len(written) < len(literal) and literal.startswith(written) else ""


def forced(held: str) -> str:
    """The text a canonical tag must go on with after the held-back suffix ``held``, whatever comes next
    ("" where there is a choice: text, a topic or an estimate being written, or a tag not yet decided)."""
    kind = opening(held, final=False)
    if kind is TagKind.SYNC:
        return _rest("<sync/>", held)
    if kind is not TagKind.PROMISE:
        return ""
    if len(held) < len(_PROMISE_LEAD):
        return _rest(_PROMISE_LEAD, held)
    topic = _AFTER_TOPIC.fullmatch(held)
    if topic is None or not topic.group(1).strip():  # inside the topic (or an empty one, which cannot go on)
        return ""
    after = topic.group(2)
    if len(after) < len(_PROMISE_MIDDLE):
        return _rest(_PROMISE_MIDDLE, after)
    digits = _AFTER_DIGITS.fullmatch(after)
    if digits is None:
        return ""
    if not digits.group(2):  # writing the estimate: its quote is forced only at the most digits allowed
        return _PROMISE_END if len(digits.group(1)) == TOKENS_DIGITS else ""
    return _rest(_PROMISE_END, digits.group(2))


def committed(held: str) -> bool:
    """Is the held-back suffix already a tag (it cannot become text any more)?  Then the stream may not end."""
    return bool(held) and isinstance(opening(held, final=False), TagKind)


_PROMISE_STATE = re.compile(r'(<promise topic=")([^"&\r\n]*)("(?: tokens="([0-9]*))?.*)?', re.DOTALL)


def state_key(held: str) -> str:
    """``held`` with what does not change which continuations are viable abstracted away (the topic's text,
    the token estimate's digits but for their count; ``TagGuard`` applies the topic's length limit itself), so
    that constraint masks can be computed once per state."""
    m = _PROMISE_STATE.fullmatch(held)
    if m is None:
        return held
    topic = "x" if m.group(2).strip() else m.group(2)
    rest = m.group(3) or ""
    if m.group(4):  # only how many digits there are matters
        rest = rest.replace(f'tokens="{m.group(4)}', 'tokens="' + "0" * len(m.group(4)), 1)
    return m.group(1) + topic + rest
