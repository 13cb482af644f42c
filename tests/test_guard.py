"""Grammar-constrained decoding of tags: which continuations keep a thread's tags well formed, and the
runtime that samples only those."""

from __future__ import annotations

import functools
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pastac.grammar import Scanner, check
from pastac.grammar.ast import START
from pastac.grammar.prefix import CANONICAL, TOPIC_LIMIT, TagContext, committed, lookalike, state_key, viable
from pastac.grammar.tags import TagKind, TagToken, read_tag
from pastac.models import random_model, tiny_tokenizer
from pastac.runtime.engine import Engine
from pastac.runtime.guard import TagGuard
from pastac.runtime.options import RunOptions
from pastac.runtime.sampling import Sampler, SamplingOptions
from pastac.runtime.threads import Limits

EVERYWHERE = TagContext(sync=True, close=True)
canonical_tags = st.sampled_from(sorted(CANONICAL)).flatmap(
    lambda kind: st.tuples(st.just(kind), st.from_regex(CANONICAL[kind].pattern, fullmatch=True))
)


def pieces(text: str, cuts: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=200, deadline=None)
@given(canonical_tags, st.lists(st.integers(0, 400), max_size=6))
def test_every_split_of_a_canonical_tag_is_viable_piece_by_piece(tag, cuts):
    _, text = tag
    scanner = Scanner()
    for piece in pieces(text, cuts):
        assert viable(scanner.held, piece, EVERYWHERE), (scanner.held, piece)
        scanner.feed(piece)
    assert scanner.held == ""


@settings(max_examples=200, deadline=None)
@given(canonical_tags)
def test_a_canonical_tag_reads_without_diagnostics(tag):
    kind, text = tag
    token = read_tag(kind, text, START, at_end=False)
    assert token.tag is not None and token.diagnostics == ()


@pytest.mark.parametrize(
    "held, piece, context",
    [
        ("", "<async>", EVERYWHERE),  # the runtime writes a thread's <async>
        ("", "<sync/>", TagContext(close=True)),  # nothing to wait for
        ("<sync", "/>", TagContext()),
        ("</async", ">", TagContext(sync=True)),  # the main thread closes no block
        ("<promise", " tokens", EVERYWHERE),  # topic first
        ("<promise ", "foo", EVERYWHERE),
        ('<promise topic="', '"', EVERYWHERE),  # an empty topic
        ('<promise topic="  ', '"', EVERYWHERE),
        ('<promise topic="a', "\n", EVERYWHERE),  # no line break in a topic
        ('<promise topic="a', "<", EVERYWHERE),  # a tag cut short by another
        ('<promise topic="a" tokens="', "x", EVERYWHERE),
        ('<promise topic="a" tokens="', '"', EVERYWHERE),  # no digits
        ('<promise topic="a" tokens="4"', ">", EVERYWHERE),  # a promise is self-closing
        ('<promise topic="a" tokens="12345', "6", EVERYWHERE),  # an estimate of five digits at most
        ("", "</async> and </async>", TagContext(close=False)),
        ("", '<promise topic="a" tokens="1"/>', TagContext(promise=False)),  # its block would nest too deep
        ("<promise", " ", TagContext(promise=False)),
        # text that begins with a tag's name: a model that writes the name means the tag
        ("</async", "io", EVERYWHERE),
        ("<promise", "s", EVERYWHERE),
        ("<sync", "<", EVERYWHERE),
        ("", "x <sync", TagContext()),
        ("<s", "ync", TagContext()),  # it could only be a <sync/>, not allowed here
        ("", "</async</async", TagContext(sync=True)),  # a main thread that loops on a </async> it may not write
        ("", "<async", EVERYWHERE),
    ],
)
def test_malformed_or_misplaced_tags_are_not_viable(held, piece, context):
    assert not viable(held, piece, context)


@pytest.mark.parametrize(
    "held, piece",
    [
        ("", "a < b"),
        ("", "<b>bold</b>"),
        ("<pro", "file"),
        ("<", "p>"),
        ("<s", "yn"),
        ("<syn", "thesis"),
        ("", "x <syn"),  # undecided: "<synthesis" is text
        ("", "<pro>"),
        ("", "<T>"),
        ("", "<div>"),
        ("", "<Pr>"),
        ("", "<b>bold</b>"),
        ("", "<b>bold</"),  # closing markup the text itself opened
        ('<promise topic="a', 'b" tokens="12"/> then text'),
    ],
)
def test_text_and_unfinished_tags_stay_viable_where_no_tag_is_allowed(held, piece):
    context = TagContext() if "promise" not in held else EVERYWHERE
    assert viable(held, piece, context)


@pytest.mark.parametrize("held, piece", [("", "</as"), ("</as", "ide>"), ("", "</b>"), ("</", "div>\n")])
def test_closing_markup_is_text_once_the_thread_has_opened_markup(held, piece):
    assert viable(held, piece, TagContext(markup=True))
    assert not viable(held, piece, TagContext())  # where it opened none, only </async> closes anything


@pytest.mark.parametrize(
    "text",
    [
        "</promise>",
        "</sync>",
        "<promis>",
        '<promisable="x',
        "<promiso",
        "</asyn>",
        "<sync>",
        "x\n\n</promise>2.",
        "<promISE",
        "<promote",
        "<prompt>",
        "<SYNC/>",
        "<Async>",
    ],
)
@pytest.mark.parametrize("context", [EVERYWHERE, TagContext(markup=True)])
def test_a_tags_lookalike_is_not_viable_even_after_markup(text, context):
    """The language reads these as text; a model that writes them meant a tag (a main thread that has
    learnt to end an item with ``</async>`` writes ``</promise>`` where it may not close a block)."""
    assert lookalike(text, context) or "<sync>" in text  # that one is a malformed tag, not text
    assert not viable("", text, context)


def test_a_tags_unfinished_name_must_become_that_tag_where_it_would_imitate_one():
    assert viable("<promi", "se", TagContext()) and not viable("<promi", "se", TagContext(promise=False))
    assert not viable("<promi", "s>", TagContext()) and not viable("<prom", "ISE", TagContext())
    assert not viable("<pro", "m", TagContext(promise=False)) and viable("<pro", "file", TagContext(promise=False))
    assert viable("", "</", TagContext(close=True)) and viable("</", "async>", TagContext(close=True))
    assert not viable("</", "list>", TagContext(close=True)) and not viable("", "</", TagContext(sync=True))


@pytest.mark.parametrize(
    "held, piece, context",
    [
        ("", "x <sync", TagContext(sync=True)),
        ("<s", "ync", TagContext(sync=True)),
        ("", "</async", TagContext(close=True)),
        ("", "<promise", TagContext()),
    ],
)
def test_a_tags_name_is_viable_where_the_tag_is_allowed(held, piece, context):
    assert viable(held, piece, context)


def test_a_stream_may_not_end_inside_a_tag():
    assert committed("<promise ") and committed('<promise topic="a"') and committed("</async ")
    assert not committed("") and not committed("<pro") and not committed("<promise")


held_states = st.builds(
    lambda topic, digits, closed: f'<promise topic="{topic}' + (f'" tokens="{digits}' if closed else ""),
    st.text(st.sampled_from("ab &;\t"), max_size=6),
    st.text(st.sampled_from("0123456789"), max_size=4),
    st.booleans(),
)
continuations = st.sampled_from(['"', " ", "x", "\n", '" tokens="', "1", '"/>', '"/>\n', "&amp;", "<", "/>", "q>"])


@settings(max_examples=300, deadline=None)
@given(held_states, continuations)
def test_the_cache_key_of_a_state_keeps_its_viable_continuations(held, piece):
    assert viable(held, piece, EVERYWHERE) == viable(state_key(held), piece, EVERYWHERE)


# -- the runtime ----------------------------------------------------------------


def test_the_sampler_chooses_only_allowed_tokens():
    logits = torch.tensor([[5.0, 1.0, 0.0], [0.0, 9.0, 2.0]])
    allowed = torch.tensor([[False, True, True], [True, True, True]])
    assert Sampler(SamplingOptions())(logits, None, allowed).tolist() == [1, 1]
    sampled = Sampler(SamplingOptions(temperature=1.0, seed=3))(logits.repeat(50, 1), None, allowed.repeat(50, 1))
    assert not sampled[0::2].eq(0).any()


def test_the_guard_masks_what_no_tag_can_continue_with():
    tokenizer = tiny_tokenizer()
    guard = TagGuard(tokenizer, [tokenizer.eos_token_id])
    inside = guard.allowed('<promise topic="a" tokens="1', EVERYWHERE)
    assert inside is not None
    allowed = set(inside.ids())
    ids = {piece: i for i, piece in enumerate(guard.pieces)}
    assert {ids[d] for d in "0123456789" if d in ids} | {ids['"']} <= allowed
    assert not {ids[c] for c in ("x", " ", "<", "/", ">") if c in ids} & allowed
    assert tokenizer.eos_token_id not in allowed  # the answer cannot end inside a tag
    outside = guard.allowed("", TagContext())  # plain text in the main thread: only tags and their look-alikes
    assert outside is not None
    masked = {guard.pieces[i] for i in range(len(guard.pieces))} - {guard.pieces[i] for i in outside.ids()}
    assert masked and all("<" in piece for piece in masked) and "</" in masked
    assert guard.allowed("", TagContext(markup=True)) is None  # closing markup too, once it opened some
    child = guard.allowed("", EVERYWHERE)  # plain text in a child: anything but the end of the answer
    assert child is not None and set(child.ids()) == set(range(len(guard.pieces))) - {tokenizer.eos_token_id}


def test_a_topic_must_close_within_its_limit():
    tokenizer = tiny_tokenizer()
    guard = TagGuard(tokenizer, [tokenizer.eos_token_id])
    full = guard.allowed('<promise topic="' + "a" * TOPIC_LIMIT, TagContext())
    assert full is not None and full.ids() and all(guard.pieces[i].startswith('"') for i in full.ids())
    near = guard.allowed('<promise topic="' + "a" * (TOPIC_LIMIT - 2), TagContext())
    assert near is not None
    assert {len(guard.pieces[i].split('"')[0]) for i in near.ids()} <= {0, 1, 2}
    assert max(len(guard.pieces[i]) for i in guard.allowed('<promise topic="a', TagContext()).ids()) > 2


@functools.cache
def biased(shape: str, text: str) -> Engine:
    """A tiny random model that strongly prefers to write ``text`` over and over (each token of it after the
    one before, its first after any other): left alone it writes broken or misplaced tags."""
    tokenizer = tiny_tokenizer()
    model = random_model(shape, vocab_size=len(tokenizer), seed=2)
    script = tokenizer.encode(text, add_special_tokens=False)
    bigram = torch.zeros(len(tokenizer), len(tokenizer))
    bigram[:, script[0]] = 40.0
    for prev, nxt in zip(script, script[1:] + script[:1], strict=True):
        bigram[prev] = 0.0
        bigram[prev, nxt] = 40.0

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, out: object) -> None:
        ids, keep = kwargs["input_ids"][0], kwargs.get("logits_to_keep", 0)
        last = ids[keep] if isinstance(keep, torch.Tensor) else ids[-keep:] if keep else ids
        out.logits += bigram[last][None]

    model.register_forward_hook(hook, with_kwargs=True)
    return Engine(model, tokenizer, name=shape)


@pytest.mark.parametrize("text", ["</async> <sync/>", '<promise topic=" tokens=""/> </async>'])
@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_a_model_bent_on_broken_tags_writes_only_well_formed_ones_under_the_guard(text, mode):
    e = biased("tiny-llama", text)
    limits = Limits(max_thread_tokens=40, max_new_tokens=200)
    free = e.generate("Tips?", RunOptions(mode=mode, limits=limits, tag_guard=False))
    assert free.warnings or check(free.annotated, mode="lenient").diagnostics  # the test can fail
    guarded = e.generate("Tips?", RunOptions(mode=mode, limits=limits))
    assert guarded.stats.generated > 0
    # the model never stops, so a budget may still cut a thread inside a tag it was writing: that is all
    cut = ("max_thread_tokens", "max_new_tokens", "ended inside this tag")
    assert all(any(c in w for c in cut) for w in guarded.warnings), guarded.warnings
    assert not check(guarded.annotated, mode="lenient").diagnostics
    written = [
        lexeme
        for lexeme in Scanner().feed(guarded.annotated)
        if isinstance(lexeme, TagToken) and lexeme.kind is not TagKind.ASYNC_OPEN and lexeme.raw.endswith(">")
    ]
    for tag in written:  # every tag it completed is canonical
        assert CANONICAL[tag.kind].fullmatch(tag.raw), tag.raw
    if "promise" in text:
        assert any(tag.kind is TagKind.PROMISE for tag in written)


@pytest.mark.parametrize(
    "held",
    [
        "<",
        "<pro",
        "<promise",
        "<promise ",
        '<promise topic="',
        '<promise topic="a b',
        '<promise topic="a"',
        '<promise topic="a" tokens="12',
        "<sync",
        "</async ",
        "</",
        "<promi",
    ],
)
@pytest.mark.parametrize("context", [TagContext(), EVERYWHERE, TagContext(markup=True)])
def test_the_guard_masks_exactly_the_tokens_that_are_not_viable(held, context):
    tokenizer = tiny_tokenizer()
    guard = TagGuard(tokenizer, [tokenizer.eos_token_id])
    allowed = guard.allowed(held, context)
    got = set(range(len(guard.pieces))) if allowed is None else set(allowed.ids())
    eos = tokenizer.eos_token_id
    want = {i for i, piece in enumerate(guard.pieces) if i != eos and viable(held, piece, context)}
    if not committed(held) and not context.close:
        want.add(eos)
    if not want:  # a state the guard never lets a thread reach (a </async in the main thread): left alone
        assert allowed is None
    else:
        assert got == want


def test_a_tag_cut_short_by_the_budget_is_dropped_with_a_warning_that_quotes_it():
    e = biased("tiny-llama", '<promise topic="a topic that takes a while to write" tokens="30"/>')
    result = e.generate("Tips?", RunOptions(limits=Limits(max_thread_tokens=6, max_new_tokens=4096)))
    assert "<promise" not in result.text and not check(result.annotated, mode="strict").errors
    dropped = [w for w in result.warnings if "ended inside this tag" in w]
    assert len(dropped) == 1 and "<promise topic=" in dropped[0] and "max_thread_tokens (6)" in dropped[0]


@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_no_promise_nests_deeper_than_the_language_allows(mode):
    e = biased("tiny-llama", '<promise topic="a" tokens="9"/>')
    limits = Limits(max_thread_tokens=60, max_new_tokens=600)
    free = e.generate("Tips?", RunOptions(mode=mode, limits=limits, tag_guard=False))
    assert "E305" in {d.code for d in check(free.annotated, mode="lenient").diagnostics}  # the test can fail
    guarded = e.generate("Tips?", RunOptions(mode=mode, limits=limits))
    assert "<promise" in guarded.annotated
    assert not check(guarded.annotated, mode="lenient").diagnostics


def test_a_thread_writes_closing_markup_only_once_it_or_its_prompt_opened_some():
    e = biased("tiny-llama", "step</b>")
    limits = Limits(max_thread_tokens=30, max_new_tokens=100)
    free = e.generate("Tips?", RunOptions(limits=limits, tag_guard=False))
    assert "</" in free.text  # the test can fail
    assert "</" not in e.generate("Tips?", RunOptions(limits=limits)).text
    assert "</" in e.generate("Tips in <b>bold</b>?", RunOptions(limits=limits)).text
