"""Fuzzing the runtime's interpreter with adversarial token streams, without a model.

The scheduler and the tag interpreter are driven as the engine drives them, but the tokens each sampled
thread "chooses" come from a hypothesis-drawn stream: promise storms, tags split at every byte (the tiny
byte-level tokenizer cuts tags anywhere), end-of-sequence tokens inside tags and blocks, nesting past the
depth cap, stray closing tags, random ids.  Under the tag guard the stream's token is replaced by the first
token the guard allows, as a sampler under the guard would choose among allowed ones.  Properties: the run
ends within its budget, never raises, and what it gives back holds together: the annotated answer is
Pasta-Lang that renders to the stitched answer (strict under the guard, lenient without), and the stitched
answer is every thread's text, none left out.

Example counts: ``PASTAC_FUZZ_EXAMPLES`` (default 300 per property; ``scripts/fuzz`` runs millions).
"""

from __future__ import annotations

import os
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import FRAGMENTS

from pastac.backend.visibility import Views
from pastac.grammar import check, render
from pastac.models import prompt_ids, tiny_tokenizer
from pastac.passes.positions import PositionOptions
from pastac.runtime.guard import TagGuard
from pastac.runtime.repeats import UnseenNgrams
from pastac.runtime.scheduler import Scheduler
from pastac.runtime.threads import Limits

EXAMPLES = int(os.environ.get("PASTAC_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    settings.get_profile("properties"),
    max_examples=EXAMPLES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TAGS = (
    '<promise topic="t" tokens="2"/>',
    '<promise topic="a topic" tokens="30"/>',
    "<promise",
    ' topic="',
    '" tokens="',
    '"/>',
    "<async>",
    "</async>",
    "</async",
    "<sync/>",
    "<sync",
    "/>",
    ">",
    "<",
    "\n1. ",
    "\n- ",
)
TOKENIZER = tiny_tokenizer()
EOS = TOKENIZER.eos_token_id
GUARD = TagGuard(TOKENIZER, [EOS])
# Encoded once: the strategies below draw from these.
ENCODED_TAGS = [TOKENIZER.encode(t, add_special_tokens=False) for t in TAGS]
ENCODED_FRAGMENTS = [TOKENIZER.encode(t[:200], add_special_tokens=False) for t in FRAGMENTS]
STORMS = [TOKENIZER.encode('<promise topic="s" tokens="1"/>' * n) for n in range(1, 13)]  # 1 to 12 promises


@st.composite
def token_streams(draw: st.DrawFn) -> list[int]:
    """A stream of token ids: encoded tag pieces and fragments, random ids, end-of-sequence tokens."""
    piece = st.one_of(
        st.sampled_from(ENCODED_TAGS),
        st.sampled_from(ENCODED_FRAGMENTS),
        st.lists(st.integers(0, len(TOKENIZER) - 1), min_size=1, max_size=3),
        st.just([EOS]),
    )
    storm = st.sampled_from(STORMS)
    pieces = draw(st.lists(st.one_of(piece, storm), max_size=40))
    return [t for p in pieces for t in p]


def drive(stream: list[int], *, guard: bool, limits: Limits, max_depth: int, ngram: int) -> Scheduler:
    """Run a scheduler as the engine does, each sampled thread taking the stream's next token."""
    views = Views(64)
    repeats = UnseenNgrams(ngram, [EOS]) if ngram else None
    sched = Scheduler(
        TOKENIZER,
        limits=limits,
        positions=PositionOptions(),
        eos=[EOS],
        views=views,
        max_depth=max_depth,
        max_nesting=max(max_depth, 2),
        guard=GUARD if guard else None,
        jump=guard,
        repeats=repeats,
    )
    sched.threads[0].inputs = prompt_ids(TOKENIZER, "Tips?")
    tokens = deque(stream)
    steps = 0
    while not sched.done:
        plan = sched.plan()
        if not plan.tokens:
            break
        chosen = []
        for allowed in plan.allowed:
            token = tokens.popleft() if tokens else EOS
            if allowed is not None and token < allowed.ok.shape[0] and not bool(allowed.ok[token]):
                token = allowed.ids()[0]  # the guard's choice: the first allowed token
            chosen.append(token)
        sched.advance(chosen)
        steps += 1
        # every step places at least one token; nothing runs away from its budget
        assert steps <= 4 * limits.max_new_tokens + 200, "the run does not end"
    return sched


@FUZZ
@given(
    token_streams(),
    st.booleans(),
    st.integers(1, 80),
    st.one_of(st.none(), st.integers(1, 30)),
    st.one_of(st.none(), st.integers(1, 4)),
    st.integers(0, 3),
    st.sampled_from([0, 2, 4]),
)
def test_adversarial_token_streams(
    stream: list[int],
    guard: bool,
    budget: int,
    thread_cap: int | None,
    width: int | None,
    max_depth: int,
    ngram: int,
) -> None:
    limits = Limits(max_new_tokens=budget, max_thread_tokens=thread_cap, max_width=width)
    sched = drive(stream, guard=guard, limits=limits, max_depth=max_depth, ngram=ngram)
    interp = sched.interp
    assert interp.chosen <= budget  # the answer's budget holds, tags and jumps included
    annotated, stitched = interp.annotated(), interp.stitched()
    result = check(annotated, mode="strict" if guard else "lenient", max_depth=64)
    assert result.document is not None
    if guard:
        assert not result.errors, (annotated, [d.message for d in result.errors])
    assert render(result.document) == stitched
    # every thread's text is in the answer, each child's where its promise stands; and a line break at the end
    # of each cut child's block that the next item would run into
    written = sum(len(thread.text) for thread in sched.threads.values())
    assert len(stitched) == written + interp.cut_breaks()
    assert all(
        t.parent is None or t.id in dict(sched.threads[t.parent].children_at).values() or not t.fed
        for t in sched.threads.values()
    )


@pytest.mark.parametrize("guard", [False, True])
def test_a_promise_storm_past_every_cap(guard: bool) -> None:
    stream = TOKENIZER.encode('<promise topic="s" tokens="1"/>' * 200 + "<sync/>")
    sched = drive(stream, guard=guard, limits=Limits(max_new_tokens=400, max_width=3), max_depth=1, ngram=4)
    assert sched.done and sched.interp.chosen <= 400 and len(sched.threads) > 1
    assert check(sched.interp.annotated(), mode="lenient", max_depth=64).document is not None


@pytest.mark.parametrize("guard", [False, True])
def test_a_token_that_goes_on_past_a_childs_close(guard: bool) -> None:
    # Found by the fuzzer: the child's "</async>" ends inside the token "><"; the "<" after it made a text node
    # after the thread's close when its parent joined it (IRError), instead of being dropped with a warning.
    stream = [*TOKENIZER.encode('<promise topic="t" tokens="2"/>'), EOS, *TOKENIZER.encode("</async></async>")]
    sched = drive(stream, guard=guard, limits=Limits(max_new_tokens=14), max_depth=1, ngram=0)
    assert sched.done and len(sched.threads) == 2
    assert check(sched.interp.annotated(), mode="strict", max_depth=64).errors == ()
    assert len(sched.interp.stitched()) == sum(len(thread.text) for thread in sched.threads.values())


@pytest.mark.parametrize(
    "written",
    [
        "<promise<async>/>",  # found by the fuzzer, as the tokens "<" "promise" "<" "async" ">" "/>"
        "<promise<async>>",  # found by the fuzzer
        "a<sync</async>/>b",
        '<prom</async>ise topic="x" tokens="2"/>',
        '<promise topic="a<async>b" tokens="3"/>',
        "x<async>y",
    ],
)
def test_a_dropped_tag_does_not_join_the_text_around_it_into_a_tag(written: str) -> None:
    # Without the tag guard, the tag a thread writes inside an unfinished one is dropped; the annotated answer
    # still renders as the stitched one (it once read "<promise" + "/>" as a promise and rendered nothing).
    stream = TOKENIZER.encode(written, add_special_tokens=False)
    sched = drive(stream, guard=False, limits=Limits(max_new_tokens=60), max_depth=1, ngram=0)
    interp = sched.interp
    assert any(w.message.startswith("dropped") for w in interp.warnings)
    document = check(interp.annotated(), mode="lenient", max_depth=64).document
    assert render(document) == interp.stitched()
