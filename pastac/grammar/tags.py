"""Reading one tag extent: the tag level of the grammar, and tag recovery.

Invariants:
- ``read_tag`` never raises on any string that the document level lexes as a
  tag; its result does not depend on the parsing mode.  A well-formed tag has
  no diagnostics.  A malformed one has diagnostics and, where the tag can be
  recovered, the tag as lenient mode reads it (strict mode reports the
  diagnostics and also uses the recovered tag for the structure, so that one
  bad tag does not cascade into structural errors).
- Only an unterminated tag (E101) is unrecoverable: it becomes text.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from pastac.grammar.ast import Position, Promise, Span, Sync, decimal_int, quote
from pastac.grammar.diagnostics import Diagnostic, Note


class TagKind(StrEnum):
    """The four tags, named as the grammar's terminals for them."""

    PROMISE = "PROMISE"
    ASYNC_OPEN = "ASYNC_OPEN"
    ASYNC_CLOSE = "ASYNC_CLOSE"
    SYNC = "SYNC"


# The text that opens each kind of tag; a delimiter must follow (see pasta.lark).
OPENERS: dict[TagKind, str] = {
    TagKind.PROMISE: "<promise",
    TagKind.ASYNC_OPEN: "<async",
    TagKind.ASYNC_CLOSE: "</async",
    TagKind.SYNC: "<sync",
}
# How diagnostics name each kind of tag.
DISPLAY: dict[TagKind, str] = {
    TagKind.PROMISE: "<promise/>",
    TagKind.ASYNC_OPEN: "<async>",
    TagKind.ASYNC_CLOSE: "</async>",
    TagKind.SYNC: "<sync/>",
}
DELIMITERS = " \t\r\n/>"
WHITESPACE = " \t\r\n"


@dataclass(frozen=True)
class AsyncOpen:
    """An ``<async>`` tag: its optional repeated topic; ``self_closed`` for ``<async/>`` (E107)."""

    topic: str | None
    self_closed: bool = False


@dataclass(frozen=True)
class AsyncClose:
    """An ``</async>`` tag."""


TagValue = Promise | AsyncOpen | AsyncClose | Sync


@dataclass(frozen=True)
class TextToken:
    """A run of text between tags."""

    value: str
    span: Span


@dataclass(frozen=True)
class TagToken:
    """One tag extent: its kind, raw text, the tag read from it, and what was wrong."""

    kind: TagKind
    raw: str
    span: Span
    tag: TagValue | None = None
    diagnostics: tuple[Diagnostic, ...] = ()


Lexeme = TextToken | TagToken


@functools.cache
def grammar_source() -> str:
    """The text of ``pasta.lark``, the grammar shipped in the package."""
    return resources.files("pastac.grammar").joinpath("pasta.lark").read_text(encoding="utf-8")


@functools.cache
def lark_parser(start: str) -> Lark:
    """The grammar's LALR parser from rule ``start`` (cached): the basic lexer for ``document``, else the contextual."""
    lexer = "basic" if start == "document" else "contextual"
    return Lark(grammar_source(), start=start, parser="lalr", lexer=lexer, propagate_positions=False)


class _Reader:
    """Turns offsets inside one tag's raw text into document positions."""

    def __init__(self, raw: str, start: Position) -> None:
        self.raw = raw
        self.start = start

    def at(self, offset: int) -> Position:
        return self.start.advance(self.raw[:offset]) if offset else self.start

    def span(self, begin: int, end: int) -> Span:
        return Span(self.at(begin), self.at(end))


@dataclass(slots=True)
class _Attribute:
    """One attribute of a tag; where it stands is kept as offsets into the tag's text and turned into spans
    only for a diagnostic (most tags have none)."""

    name: str
    value: str | None  # unescaped; None when the attribute has no value
    begin: int  # the name's first character
    value_begin: int  # the value's first character (its opening quote); ``end`` when it has none
    end: int
    reader: _Reader

    @property
    def span(self) -> Span:
        return self.reader.span(self.begin, self.end)

    @property
    def value_span(self) -> Span:
        return self.reader.span(self.value_begin, self.end)


_ENTITIES = {"&quot;": '"', "&amp;": "&", "&lt;": "<", "&gt;": ">"}
_ENTITY = re.compile(r"&(?:quot|amp|lt|gt);")


def unescape(value: str) -> str:
    """An attribute value with ``&quot; &amp; &lt; &gt;`` decoded; any other ``&`` is kept."""
    if "&" not in value:
        return value
    return _ENTITY.sub(lambda m: _ENTITIES[m.group(0)], value)


def escape(value: str) -> str:
    """``value`` for a double-quoted attribute: ``& " < >`` as entities (``unescape`` reverses it)."""
    return value.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;").replace(">", "&gt;")


def read_tag(kind: TagKind, raw: str, start: Position, *, at_end: bool) -> TagToken:
    """Read the tag extent ``raw`` (of ``kind``) that starts at ``start``.

    ``at_end`` says whether the extent stops at the end of input (else at a '<'
    or after its '>').
    """
    r = _Reader(raw, start)
    whole = Span(start, start.advance(raw))
    name = OPENERS[kind]
    if not raw.endswith(">"):
        diag = Diagnostic(
            "E101",
            f"unterminated {DISPLAY[kind]} tag: expected '>' before "
            + ("the end of input" if at_end else "the next '<'"),
            r.span(len(raw), len(raw)),
            notes=(Note("tag starts here", r.span(0, len(name))),),
        )
        return TagToken(kind, raw, whole, None, (diag,))
    diagnostics: list[Diagnostic] = []
    self_closed = raw.endswith("/>")
    if _well_formed(kind).fullmatch(raw):
        attributes = _attributes_from_text(kind, raw, r)
    else:
        tree, error = _parse_tag(raw)
        if tree is not None:
            attributes = _attributes_from_tree(tree, r)
        else:
            assert error is not None
            diagnostics.append(_classify(kind, raw, error, r))
            attributes, self_closed = _recover(kind, raw, r)
    tag = _interpret(kind, attributes, self_closed, whole, diagnostics)
    return TagToken(kind, raw, whole, tag, tuple(diagnostics))


@functools.cache
def _tag_terminals() -> dict[str, str]:
    """The tag level's named terminals as regular expressions, taken from the grammar."""
    return {t.name: t.pattern.to_regexp() for t in lark_parser("tag").terminals if t.name in ("NAME", "VALUE", "_WS")}


@functools.cache
def _attribute_pattern() -> re.Pattern[str]:
    """The grammar's ``attribute`` rule (``_WS NAME _WS? "=" _WS? VALUE``) as one regular expression."""
    t = _tag_terminals()
    ws, name, value = t["_WS"], t["NAME"], t["VALUE"]
    return re.compile(f"{ws}(?P<name>{name})(?:{ws})?=(?:{ws})?(?P<value>{value})")


@functools.cache
def _well_formed(kind: TagKind) -> re.Pattern[str]:
    """A well-formed tag of ``kind``, as the tag level's rule for it reads one, as a regular expression.

    The fast path of ``read_tag``: lark's LALR parser costs a fraction of a millisecond a tag, which is most
    of the time spent on a document whose every promise has its own topic; a regular expression built from
    the same terminals matches exactly the tags the rule accepts (``tests/test_grammar_fast.py`` checks it
    against the parser).  A tag it does not match goes to the parser, whose errors the diagnostics read.
    """
    ws = _tag_terminals()["_WS"]
    attributes = f"(?:{_attribute_pattern().pattern})*"
    rest = {
        TagKind.PROMISE: f"{attributes}(?:{ws})?/>",
        TagKind.ASYNC_OPEN: f"{attributes}(?:{ws})?>",
        TagKind.ASYNC_CLOSE: f"(?:{ws})?>",
        TagKind.SYNC: f"(?:{ws})?/>",
    }[kind]
    return re.compile(re.escape(OPENERS[kind]) + rest)


def _attributes_from_text(kind: TagKind, raw: str, r: _Reader) -> list[_Attribute]:
    """The attributes of a tag that ``_well_formed`` matched: one ``attribute`` match after another."""
    pattern, out, at = _attribute_pattern(), [], len(OPENERS[kind])
    while (m := pattern.match(raw, at)) is not None:
        value = m.group("value")
        out.append(_Attribute(m.group("name"), unescape(value[1:-1]), m.start("name"), m.start("value"), m.end(), r))
        at = m.end()
    return out


@functools.lru_cache(maxsize=4096)
def _parse_tag(raw: str) -> tuple[Tree | None, UnexpectedInput | None]:
    """The tag-level parse tree of ``raw``, or the parse error; remembered, since documents repeat their tags
    (every ``<async>``, ``</async>`` and ``<sync/>`` is the same text).  Callers only read the tree."""
    try:
        return lark_parser("tag").parse(raw), None
    except UnexpectedInput as error:
        return None, error.with_traceback(None)  # kept: no frames held with it


def _attributes_from_tree(tree: Tree, r: _Reader) -> list[_Attribute]:
    out = []
    for attr in tree.find_data("attribute"):
        name, value = attr.children
        assert isinstance(name, Token) and isinstance(value, Token)
        assert name.start_pos is not None and value.end_pos is not None and value.start_pos is not None
        out.append(_Attribute(str(name), unescape(str(value)[1:-1]), name.start_pos, value.start_pos, value.end_pos, r))
    return out


def _error_offset(error: UnexpectedInput, raw: str) -> int:
    pos = getattr(error, "pos_in_stream", None)
    token = getattr(error, "token", None)
    if isinstance(token, Token) and token.type == "$END":
        return len(raw)
    if isinstance(token, Token) and token.start_pos is not None:
        return token.start_pos
    return pos if isinstance(pos, int) else 0


def _classify(kind: TagKind, raw: str, error: UnexpectedInput, r: _Reader) -> Diagnostic:
    """Map a tag-level parse failure onto a located diagnostic with a stable code."""
    at = _error_offset(error, raw)
    rest = raw[at:]
    expected = set(getattr(error, "expected", ()) or ())
    here = r.span(at, at + 1)
    if "VALUE" in expected:
        if rest.startswith('"'):
            close = raw.find('"', at + 1)
            if close == -1:
                end = len(raw) - (2 if raw.endswith("/>") else 1)
                return Diagnostic("E104", "attribute value has no closing quote", r.span(at, max(end, at + 1)))
            bad = _BAD_AMPERSAND.search(raw, at + 1, close)
            where = bad.start() if bad else at
            return Diagnostic(
                "E105",
                "'&' in an attribute value must start &quot; &amp; &lt; or &gt;",
                r.span(where, where + 1),
            )
        if rest[:1] in ("/", ">", "") or rest[:1] in WHITESPACE:
            return Diagnostic("E103", "attribute has no value after '='", here)
        end = at + len(re.match(r"[^ \t\r\n/>]*", rest).group(0))  # type: ignore[union-attr]
        return Diagnostic(
            "E102",
            "attribute value must be in double quotes",
            r.span(at, end),
        )
    if rest.startswith(">") and kind in (TagKind.PROMISE, TagKind.SYNC):
        return Diagnostic("E106", f"{DISPLAY[kind]} must be self-closing: end it with '/>'", here)
    if rest.startswith("/>") and kind in (TagKind.ASYNC_OPEN, TagKind.ASYNC_CLOSE):
        what = "an empty block is <async></async>" if kind is TagKind.ASYNC_OPEN else "write </async>"
        return Diagnostic("E107", f"{DISPLAY[kind]} is not self-closing: {what}", r.span(at, at + 2))
    if kind in (TagKind.SYNC, TagKind.ASYNC_CLOSE) and rest[:1] not in ("", "/", ">"):
        end = len(raw) - (2 if raw.endswith("/>") else 1)
        return Diagnostic("E108", f"{DISPLAY[kind]} takes no attributes", r.span(at, max(end, at + 1)))
    if rest.startswith("/") and not rest.startswith("/>"):
        return Diagnostic("E103", f"stray '/' in {DISPLAY[kind]} tag: '/' may only come right before '>'", here)
    if "EQUAL" in expected:
        return Diagnostic("E103", "expected '=' after the attribute name", here)
    if "_WS" in expected and "NAME" not in expected and re.match(r"[A-Za-z_]", rest):
        return Diagnostic("E103", "attributes must be separated by white space", here)
    return Diagnostic("E103", f"malformed attribute in {DISPLAY[kind]} tag", here)


_BAD_AMPERSAND = re.compile(r"&(?!(?:quot|amp|lt|gt);)")
_RECOVER_NAME = re.compile(r"[^ \t\r\n=\"/>]+")
_RECOVER_UNQUOTED = re.compile(r"[^ \t\r\n/>\"]*")


def _recover(kind: TagKind, raw: str, r: _Reader) -> tuple[list[_Attribute], bool]:
    """Read the attributes of a malformed tag as forgivingly as possible."""
    self_closed = raw.endswith("/>")
    body_end = len(raw) - (2 if self_closed else 1)
    i = len(OPENERS[kind])
    out: list[_Attribute] = []
    while i < body_end:
        ch = raw[i]
        if ch in WHITESPACE or ch == "/":
            i += 1
            continue
        m = _RECOVER_NAME.match(raw, i, body_end)
        if not m:  # a stray '=' or quote: skip it
            i += 1
            continue
        name_start, i = i, m.end()
        j = i
        while j < body_end and raw[j] in WHITESPACE:
            j += 1
        if j >= body_end or raw[j] != "=":
            out.append(_Attribute(m.group(0), None, name_start, i, i, r))
            continue
        j += 1
        while j < body_end and raw[j] in WHITESPACE:
            j += 1
        if j < body_end and raw[j] == '"':
            close = raw.find('"', j + 1, body_end)
            end = body_end if close == -1 else close + 1
            value = raw[j + 1 : close if close != -1 else body_end]
        else:
            end = _RECOVER_UNQUOTED.match(raw, j, body_end).end()  # type: ignore[union-attr]
            value = raw[j:end]
        out.append(_Attribute(m.group(0), unescape(value), name_start, j, end, r))
        i = max(end, j)
    return out, self_closed


_TOKENS = re.compile(r"[0-9]+")
_ALLOWED: dict[TagKind, tuple[str, ...]] = {TagKind.PROMISE: ("topic", "tokens"), TagKind.ASYNC_OPEN: ("topic",)}


def _interpret(
    kind: TagKind, attributes: list[_Attribute], self_closed: bool, whole: Span, diagnostics: list[Diagnostic]
) -> TagValue:
    """Give the attributes their meaning (the tag spans ``whole``); append the semantic diagnostics."""
    allowed = _ALLOWED.get(kind, ())
    seen: dict[str, _Attribute] = {}
    for attr in attributes:
        if attr.name in seen:
            diagnostics.append(
                Diagnostic(
                    "E205",
                    f"duplicate attribute '{attr.name}'",
                    attr.span,
                    notes=(Note("first given here", seen[attr.name].span),),
                )
            )
        elif attr.name not in allowed:
            if allowed:
                known = " and ".join(f"'{a}'" for a in allowed)
                diagnostics.append(
                    Diagnostic("E204", f"unknown attribute '{attr.name}' ({DISPLAY[kind]} takes {known})", attr.span)
                )
            elif not any(d.code == "E108" for d in diagnostics):
                diagnostics.append(Diagnostic("E108", f"{DISPLAY[kind]} takes no attributes", attr.span))
        elif attr.value is not None:
            seen[attr.name] = attr
    match kind:
        case TagKind.PROMISE:
            topic_attr = seen.get("topic")
            topic = topic_attr.value if topic_attr is not None and topic_attr.value is not None else ""
            if topic_attr is None:
                if not any(a.name == "topic" for a in attributes):
                    diagnostics.append(Diagnostic("E201", "promise has no 'topic' attribute", whole))
            elif not topic.strip():
                diagnostics.append(Diagnostic("E202", "promise topic is empty", topic_attr.value_span))
            tokens: int | None = None
            tokens_attr = seen.get("tokens")
            if tokens_attr is not None and tokens_attr.value is not None:
                if _TOKENS.fullmatch(tokens_attr.value):
                    tokens = decimal_int(tokens_attr.value)  # no upper bound (spec §3.1)
                else:
                    diagnostics.append(
                        Diagnostic(
                            "E203",
                            f"'tokens' must be a non-negative integer, not {quote(tokens_attr.value)}",
                            tokens_attr.value_span,
                        )
                    )
            return Promise(topic, tokens, span=whole)
        case TagKind.ASYNC_OPEN:
            topic_attr = seen.get("topic")
            return AsyncOpen(topic_attr.value if topic_attr else None, self_closed)
        case TagKind.ASYNC_CLOSE:
            return AsyncClose()
        case TagKind.SYNC:
            return Sync(span=whole)
