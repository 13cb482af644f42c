"""The fast paths of reading and planning give what the slow ones gave.

``tokenize`` lexes with one regular expression made of the document level's terminals, ``read_tag`` reads a
well-formed tag with one made of the tag level's rule, and the builder nests blocks with a stack: each is
checked here against lark itself, on messy input and on documents built to hold every tag form.  And every
graph ``lower`` builds verifies, which lets the CLI's ``plan`` skip the whole-graph check.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from lark import Token, Tree
from lark.exceptions import UnexpectedInput
from strategies import documents, messy_texts

from pastac.grammar import check, tokenize
from pastac.grammar.ast import START, Async, Node
from pastac.grammar.tags import (
    OPENERS,
    TagKind,
    TagToken,
    _attributes_from_text,
    _Reader,
    _well_formed,
    lark_parser,
    read_tag,
    unescape,
)

# a fifth of the suite's property budget in CI: three properties over cheap functions
PROPERTIES = settings(
    settings.get_profile("properties"), max_examples=max(1, settings.get_profile("properties").max_examples // 5)
)

# Tag texts near the edge of the tag rule: white space, attribute forms, entities, stray characters.
_TAG_PIECES = (
    " ",
    "\t",
    "\n",
    "  ",
    "topic",
    "tokens",
    "x",
    "_a.b:c-d",
    "1a",
    "=",
    " = ",
    '"',
    '"t"',
    '"a b"',
    '""',
    '"&amp;&lt;&gt;&quot;"',
    '"&x;"',
    '"&"',
    "/",
    "'t'",
)
_ENDS = ("/>", ">", " />", "\n>", "")


@st.composite
def tag_texts(draw: st.DrawFn) -> tuple[TagKind, str]:
    kind = draw(st.sampled_from(list(TagKind)))
    body = "".join(draw(st.lists(st.sampled_from(_TAG_PIECES), max_size=10)))
    return kind, OPENERS[kind] + body + draw(st.sampled_from(_ENDS))


def _lark_attributes(tree: Tree) -> list[tuple[str, str, int, int, int]]:
    out = []
    for attr in tree.find_data("attribute"):
        name, value = attr.children
        assert isinstance(name, Token) and isinstance(value, Token)
        out.append((str(name), str(value)[1:-1], name.start_pos, value.start_pos, value.end_pos))
    return out


@PROPERTIES
@given(tag_texts())
def test_the_well_formed_tag_pattern_accepts_what_the_tag_rule_accepts(drawn: tuple[TagKind, str]) -> None:
    kind, raw = drawn
    try:
        tree = lark_parser("tag").parse(raw)
    except UnexpectedInput:
        tree = None
    accepted = (
        tree is not None
        and tree.children[0].data
        == {
            TagKind.PROMISE: "promise_tag",
            TagKind.ASYNC_OPEN: "async_open_tag",
            TagKind.ASYNC_CLOSE: "async_close_tag",
            TagKind.SYNC: "sync_tag",
        }[kind]
    )
    assert bool(_well_formed(kind).fullmatch(raw)) == accepted, raw
    if accepted:
        assert tree is not None
        token = read_tag(kind, raw, START, at_end=False)
        assert token.diagnostics == () or all(d.code.startswith("E2") for d in token.diagnostics)
        # the same attributes, where lark found them
        attributes = _attributes_from_text(kind, raw, _Reader(raw, START))
        got = [(a.name, a.value, a.begin, a.value_begin, a.end) for a in attributes]
        want = [(n, unescape(v), b, vb, e) for n, v, b, vb, e in _lark_attributes(tree)]
        assert got == want


def _lark_lexemes(text: str) -> list[tuple[str, str, int, int, int]]:
    return [(t.type, str(t), t.start_pos, t.line, t.column) for t in lark_parser("document").lex(text)]


@PROPERTIES
@given(st.one_of(messy_texts, documents().map(lambda d: d[1])))
def test_tokenize_lexes_as_the_grammar_does(text: str) -> None:
    got = [
        (
            str(x.kind) if isinstance(x, TagToken) else "TEXT",
            x.raw if isinstance(x, TagToken) else x.value,
            x.span.start.offset,
            x.span.start.line,
            x.span.start.column,
        )
        for x in tokenize(text)
    ]
    assert got == _lark_lexemes(text)


def _shape(nodes: tuple[Node, ...]) -> list[object]:
    """The nesting of a body: each block as the list of its body's shape, other nodes by type."""
    return [_shape(n.body) if isinstance(n, Async) else type(n).__name__ for n in nodes]


def _lark_shape(children: list[Tree | Token]) -> list[object]:
    out: list[object] = []
    for child in children:
        if isinstance(child, Tree):
            out.append(_lark_shape(child.children[1:-1]))
        elif child.type == "TEXT":
            if out and out[-1] == "Text":  # the builder joins adjacent text
                continue
            out.append("Text")
        else:
            out.append({"PROMISE": "Promise", "SYNC": "Sync"}[child.type])
    return out


@PROPERTIES
@given(st.one_of(messy_texts, documents().map(lambda d: d[1])))
def test_blocks_nest_as_the_grammar_nests_them(text: str) -> None:
    """Where the document level's LALR parser accepts a text whose every tag reads (no structural recovery is
    needed), the builder's blocks are the parser's."""
    result = check(text, mode="lenient", max_depth=1000)
    if any(d.code in ("E101", "E107", "E301", "E302") for d in result.diagnostics):
        return  # recovered: lark would stop at the first of these
    try:
        tree = lark_parser("document").parse(text)
    except UnexpectedInput:
        raise AssertionError(f"the builder accepted what the grammar refuses: {text!r}") from None
    assert _shape(result.document.body) == _lark_shape(tree.children)


@PROPERTIES
@given(messy_texts, st.booleans())
def test_every_lowered_document_verifies(text: str, template: bool) -> None:
    """``plan`` skips its whole-graph check for ``lower``'s graph (``verified=True`` in the CLI): whatever the
    parser recovers, and a template's promises made children, lowers to a graph that verifies."""
    from pastac.ir.graph import verify
    from pastac.ir.lengths import words
    from pastac.ir.lower import lower

    document = check(text, mode="lenient", max_depth=1000).document
    verify(lower(document, words, promised=(lambda p: p.tokens or 0) if template else None))
