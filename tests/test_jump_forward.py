"""Jump-forward: the text a canonical tag forces is fed in the step of the token before it, not sampled.

``pastac.grammar.prefix.forced`` says what that text is after a held-back tag prefix; the scheduler feeds
it; the run's text and logits stay what they were, in fewer steps."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from test_guard import EVERYWHERE, canonical_tags
from test_runtime import DOC, PROMPT, check_replay_logits, replay, runtime_logits

from pastac.grammar.prefix import forced, viable
from pastac.grammar.scanner import opening
from pastac.models import random_model, tiny_tokenizer
from pastac.runtime.engine import Engine
from pastac.runtime.options import RunOptions
from pastac.runtime.threads import Limits


def writer(text: str) -> Engine:
    """A tiny random model that strongly prefers each token of ``text`` after the one before it, and the first
    after the last: it writes ``text`` over and over.  A token with several successors in ``text`` prefers the
    first, then the others (``="`` goes on with the topic where it can, else with the digits)."""
    tokenizer = tiny_tokenizer()
    model = random_model("tiny-llama", vocab_size=len(tokenizer), seed=2)
    script = tokenizer.encode(text, add_special_tokens=False)
    bigram = torch.zeros(len(tokenizer), len(tokenizer))
    bigram[:, script[0]] = 40.0
    bigram[script] = 0.0
    for prev, nxt in zip(script, script[1:] + script[:1], strict=True):
        if not bigram[prev, nxt]:
            bigram[prev, nxt] = 40.0 if not bigram[prev].any() else 30.0

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, out: object) -> None:
        ids, keep = kwargs["input_ids"][0], kwargs.get("logits_to_keep", 0)
        last = ids[keep] if isinstance(keep, torch.Tensor) else ids[-keep:] if keep else ids
        out.logits += bigram[last][None]

    model.register_forward_hook(hook, with_kwargs=True)
    return Engine(model, tokenizer, name="writer")


@pytest.mark.parametrize(
    "held, text",
    [
        ("<promise ", 'topic="'),
        ("<promise topic", '="'),
        ('<promise topic="a b"', ' tokens="'),
        ('<promise topic="a b" tok', 'ens="'),
        ('<promise topic="a" tokens="30"', "/>"),
        ('<promise topic="a" tokens="30"/', ">"),
        ('<promise topic="a" tokens="12345', '"/>'),  # the most digits an estimate may have
        ("<sync/", ">"),
        # a choice: the tag is not decided yet, or a topic or an estimate is being written
        ("<", ""),
        ("<promise", ""),
        ("<sync", ""),
        ("</async", ""),
        ('<promise topic="', ""),
        ('<promise topic="a', ""),
        ('<promise topic="a" tokens="', ""),
        ('<promise topic="a" tokens="3', ""),
        ('<promise topic=" "', ""),  # an empty topic cannot go on at all
        ("<promise  ", ""),  # not the canonical form: nothing is forced
    ],
)
def test_what_a_tag_forces(held, text):
    assert forced(held) == text


@settings(max_examples=300, deadline=None)
@given(canonical_tags)
def test_the_forced_text_is_how_every_canonical_tag_goes_on(tag):
    _, text = tag
    jumped = 0
    for cut in range(1, len(text)):
        held = text[:cut]
        rest = forced(held)
        assert text[cut:].startswith(rest), (held, rest)
        assert not rest or viable(held, rest, EVERYWHERE)
        jumped += bool(rest)
    if opening(text, final=True) is not None and text.startswith("<promise"):
        assert jumped >= 3  # within topic=", after the topic's quote and after the estimate's


def test_a_replay_that_jumps_computes_the_same_logits_in_fewer_steps(tiny_engine):
    e, stepped = replay(tiny_engine, "tiny-llama", jump_forward=False)
    sampled = len(runtime_logits(e))
    _, jumped = replay(tiny_engine, "tiny-llama")
    assert jumped.annotated == stepped.annotated == DOC and not jumped.warnings
    # two canonical promises: '="', ' tokens="' and '>' (the tiny tokenizer writes '"/' then '>'), 4 tokens each;
    # the third has no estimate, so only its '="' is forced; the syncs' '<sync' is not yet decided
    assert jumped.stats.jumped == 9 and stepped.stats.jumped == 0
    assert jumped.stats.tokens == stepped.stats.tokens
    assert jumped.stats.generated + jumped.stats.jumped == stepped.stats.generated
    assert jumped.stats.steps < stepped.stats.steps
    assert check_replay_logits(e) == sampled - jumped.stats.jumped  # a query for every token but those jumped over


@pytest.mark.parametrize("mode", ["async", "sequential"])
def test_a_sampled_run_writes_the_same_answer_in_fewer_steps(mode):
    e = writer('Tips <promise topic="rest well" tokens="3"/>')
    # per-thread budgets only: what each thread writes then does not depend on when the others write
    limits = Limits(max_thread_tokens=40, max_new_tokens=4_000)
    stepped = e.generate(PROMPT, RunOptions(mode=mode, limits=limits, jump_forward=False))
    jumped = e.generate(PROMPT, RunOptions(mode=mode, limits=limits))
    assert jumped.annotated.count('<promise topic="rest well" tokens="3"/>') >= 2
    assert jumped.annotated == stepped.annotated and jumped.text == stepped.text
    assert jumped.stats.jumped > 0 and jumped.stats.steps < stepped.stats.steps
    assert jumped.stats.generated + jumped.stats.jumped == stepped.stats.generated
    # without the guard a sampled run does not jump: its tags need not be canonical
    free = e.generate(PROMPT, RunOptions(mode=mode, limits=limits, tag_guard=False))
    assert free.stats.jumped == 0
