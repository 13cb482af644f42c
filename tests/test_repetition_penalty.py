"""The repetition penalty: Hugging Face's, applied per thread over exactly the tokens that thread sees (the
default scope) or over the tokens the whole answer holds so far."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList

from pastac import PositionOptions
from pastac.adapters.settings import AdapterSettings
from pastac.models import random_model, tiny_tokenizer
from pastac.runtime import sampling
from pastac.runtime.engine import Engine
from pastac.runtime.options import RunOptions
from pastac.runtime.rows import RowRunner
from pastac.runtime.sampling import (
    RepetitionPenalty,
    Sampler,
    SamplingOptions,
    penalize,
    penalty_exempt_ids,
    seen_tokens,
    tag_token_ids,
)
from pastac.runtime.threads import Limits

SHAPES = ("tiny-llama", "tiny-qwen2", "tiny-gpt2")
PROMPT = "Give me tips."
PENALTY = 1.8
SEED = 1  # the tiny models' weights (``tiny_engine(shape, SEED)``)


def hf_generate(e: Engine, ids: list[int], n: int, penalty: float, exempt: list[int]) -> str:
    with torch.inference_mode():
        out = e.model.generate(
            torch.tensor([ids]),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=list(e.eos) or None,
            pad_token_id=e.tokenizer.pad_token_id,
            logits_processor=LogitsProcessorList([RepetitionPenalty(penalty, exempt)]),
        )
    return e.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_text_without_tags_equals_hf_generate_with_the_same_penalty(shape, tiny_engine):
    e = tiny_engine(shape, SEED)
    limits = Limits(max_thread_tokens=30, max_new_tokens=4096)
    penalized = RunOptions(limits=limits, sampling=SamplingOptions(repetition_penalty=PENALTY))
    a = e.generate(PROMPT, penalized)
    s = e.generate(PROMPT, RunOptions(mode="sequential", limits=limits, sampling=penalized.sampling))
    plain = e.generate(PROMPT, RunOptions(mode="sequential", limits=limits))
    assert "<promise" not in a.annotated
    assert a.text == s.text == hf_generate(e, e.prompt_ids(PROMPT), 30, PENALTY, e.exempt_tokens)
    assert s.text != plain.text  # the penalty changed what greedy decoding writes
    # with nothing exempt, the processor is Hugging Face's own repetition_penalty
    ids = torch.tensor([e.prompt_ids(PROMPT)])
    with torch.inference_mode():
        stock = e.model.generate(
            ids,
            max_new_tokens=30,
            do_sample=False,
            repetition_penalty=PENALTY,
            eos_token_id=list(e.eos) or None,
            pad_token_id=e.tokenizer.pad_token_id,
        )
    assert e.tokenizer.decode(stock[0, ids.shape[1] :], skip_special_tokens=True) == hf_generate(
        e, e.prompt_ids(PROMPT), 30, PENALTY, []
    )


TEMPLATE = 'Three tips:\n<promise topic="sleep" tokens="1"/>\n<promise topic="food" tokens="1"/>\n<sync/>\nThat is all.'


@pytest.mark.parametrize("shape", SHAPES)
def test_in_the_thread_scope_each_child_is_penalised_for_its_own_context_only(shape, tiny_engine):
    """A child, decoded among its siblings, writes what penalised greedy decoding of its context alone
    writes: its siblings' tokens, which it cannot see, do not count."""
    e = tiny_engine(shape, SEED)
    budget = 12
    options = RunOptions(
        limits=Limits(max_thread_tokens=budget, max_new_tokens=4096),
        positions=PositionOptions(policy="restart"),
        template_tags=True,
        child_stop="",
        sampling=SamplingOptions(repetition_penalty=PENALTY, penalty_scope="thread", sibling_ngram=0),
    )
    result = e.generate(PROMPT, options, template=TEMPLATE)
    assert result.stats.threads == 3
    sched = e.last_run.sched
    promises = ['<promise topic="sleep" tokens="1"/>', '<promise topic="food" tokens="1"/>']
    contexts = [["Three tips:\n", promises[0]], ["Three tips:\n", promises[0], "\n", promises[1]]]
    for child, pieces in zip((1, 2), contexts, strict=True):
        ids = e.prompt_ids(PROMPT) + [t for p in pieces for t in e.tokenizer.encode(p, add_special_tokens=False)]
        ids += e.tokenizer.encode("<async>", add_special_tokens=False)
        written = "".join(v for k, v in sched.threads[child].pieces if k == "text")
        assert written == hf_generate(e, ids, budget, PENALTY, e.exempt_tokens)


@pytest.mark.parametrize("shape", SHAPES)
def test_in_the_answer_scope_every_thread_is_penalised_for_all_that_was_written(shape, monkeypatch):
    """The answer scope: each sampled token is penalised for every token in the cache so far (prompt, parent,
    siblings), less the exempt ones, as one thread writing the whole answer would be for the parts before."""
    tok = tiny_tokenizer()
    # no eos_token_id, unlike tiny_engine's: with it tiny-llama's children write the same text in both scopes
    e = Engine(random_model(shape, vocab_size=len(tok), seed=SEED), tok, name=shape)
    budget = 12
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def recording(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
        runner = e.last_run.runner
        expected = torch.zeros(logits.shape[-1], dtype=torch.bool)
        expected[runner.tokens[: runner.cache.used]] = True
        expected[e.exempt_tokens] = False
        calls.append((seen.clone(), expected))
        return penalize(logits, seen, penalty)

    monkeypatch.setattr(sampling, "penalize", recording)
    texts = {}
    for scope in ("answer", "thread"):
        calls.clear()
        options = RunOptions(
            limits=Limits(max_thread_tokens=budget, max_new_tokens=4096),
            positions=PositionOptions(policy="restart"),
            template_tags=True,
            child_stop="",
            sampling=SamplingOptions(repetition_penalty=PENALTY, penalty_scope=scope),
        )
        result = e.generate(PROMPT, options, template=TEMPLATE)
        assert result.stats.threads == 3 and calls
        matches = [bool((seen == expected[None]).all()) for seen, expected in calls]
        if scope == "answer":
            assert all(matches)
        else:  # a child does not see its sibling: the test can fail
            assert not all(matches)
        threads = e.last_run.sched.threads
        texts[scope] = ["".join(v for k, v in threads[t].pieces if k == "text") for t in sorted(threads)]
    if shape != "tiny-gpt2":  # (the random GPT-2 writes '>' here, a tag's token, exempt in either scope)
        assert texts["answer"][1:] != texts["thread"][1:]  # the children write something else
    # one thread sees the whole answer: both scopes are the same penalty
    sequential = [
        e.generate(
            PROMPT,
            RunOptions(
                mode="sequential",
                limits=Limits(max_thread_tokens=30, max_new_tokens=4096),
                sampling=SamplingOptions(repetition_penalty=PENALTY, penalty_scope=scope),
            ),
        ).text
        for scope in ("answer", "thread")
    ]
    assert sequential[0] == sequential[1]
    with pytest.raises(ValueError, match="penalty_scope"):
        SamplingOptions(penalty_scope="siblings")


def test_the_tags_tokens_are_exempt():
    tok = tiny_tokenizer()
    exempt = tag_token_ids(tok)
    for piece in ("<async>", "</async>", "<sync/>", "<promise"):
        assert set(tok.encode(piece, add_special_tokens=False)) <= set(exempt)
    assert not set(tok.encode("sleep", add_special_tokens=False)) & set(exempt)
    logits = torch.tensor([[2.0, -2.0, 2.0, 1.0]])
    seen = seen_tokens(
        torch.tensor([0, 1, 3, 3]),
        torch.tensor([[True, True, False, True]]),
        4,
        exempt=torch.tensor([False, False, False, True]),
    )
    assert seen.tolist() == [[True, True, False, False]]  # token 3 seen, but exempt; slot 2 not visible
    assert penalize(logits, seen, 2.0).tolist() == [[1.0, -4.0, 2.0, 1.0]]


def test_special_tokens_are_exempt_so_that_a_chat_prompt_does_not_keep_an_answer_from_ending(tiny_engine):
    tok = tiny_tokenizer()
    exempt = penalty_exempt_ids(tok, [tok.eos_token_id])
    assert set(tok.all_special_ids) | {tok.eos_token_id} <= set(exempt) and set(tag_token_ids(tok)) <= set(exempt)
    e = tiny_engine("tiny-llama", SEED)
    assert tok.eos_token_id in e.prompt_ids(PROMPT) and tok.eos_token_id in e.exempt_tokens  # the chat turn's end
    # a model that wants to end at once: the end of sequence, seen in the prompt, is not pushed below the rest
    model = random_model("tiny-llama", vocab_size=len(tok), seed=1, eos_token_id=tok.eos_token_id)

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict, out: object) -> None:
        out.logits[..., tok.eos_token_id] = out.logits.max() + 0.1

    model.register_forward_hook(hook, with_kwargs=True)
    ending = Engine(model, tok, name="ending")
    result = ending.generate(
        PROMPT,
        RunOptions(
            limits=Limits(max_thread_tokens=20, max_new_tokens=4096), sampling=SamplingOptions(repetition_penalty=4.0)
        ),
    )
    assert result.stats.generated == 0 and result.text == ""
    ids = ending.prompt_ids(PROMPT)
    assert hf_generate(ending, ids, 20, 4.0, ending.exempt_tokens) == ""
    assert hf_generate(ending, ids, 20, 4.0, tag_token_ids(tok)) != ""  # the test can fail: penalised, it goes on


def test_unset_penalty_takes_the_models_setting(tiny_engine):
    assert SamplingOptions().penalty == 1
    assert SamplingOptions().resolved(1.2).penalty == 1.2
    assert SamplingOptions(repetition_penalty=1.0).resolved(1.2).penalty == 1.0  # an explicit one stays
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingOptions(repetition_penalty=0)
    e = tiny_engine("tiny-llama", SEED)
    limits = Limits(max_thread_tokens=20, max_new_tokens=4096)
    explicit = e.generate(PROMPT, RunOptions(limits=limits, sampling=SamplingOptions(repetition_penalty=PENALTY)))
    adapted = Engine(e.model, e.tokenizer, name="adapted", settings=AdapterSettings(repetition_penalty=PENALTY))
    assert adapted.generate(PROMPT, RunOptions(limits=limits)).text == explicit.text


def test_a_runner_that_cannot_penalise_says_so(tiny_engine):
    with pytest.raises(ValueError, match="repetition penalty"):
        Sampler(SamplingOptions(repetition_penalty=1.3))(torch.zeros(1, 4))
    e = tiny_engine("tiny-llama", SEED)
    with pytest.raises(ValueError, match="repetition penalty"):
        e.generate(
            PROMPT,
            RunOptions(
                limits=Limits(max_thread_tokens=4, max_new_tokens=4096),
                sampling=SamplingOptions(repetition_penalty=1.3),
            ),
            runner=lambda model, capacity: RowRunner(model, capacity, fork="copy"),
        )


@pytest.mark.parametrize("seed", range(4))
def test_the_penalty_touches_exactly_the_seen_ids_as_the_dense_formula_would(seed):
    g = torch.Generator().manual_seed(seed)
    rows, vocab, slots = 3, 50, 40
    tokens = torch.randint(0, vocab, (slots,), generator=g)
    visible = torch.rand(rows, slots, generator=g) > 0.5
    exempt = torch.rand(vocab, generator=g) > 0.8
    seen = seen_tokens(tokens, visible, vocab, exempt)
    want = torch.zeros(rows, vocab, dtype=torch.bool)
    for r in range(rows):
        for s in range(slots):
            want[r, tokens[s]] |= bool(visible[r, s]) and not bool(exempt[tokens[s]])
    assert torch.equal(seen, want)
    logits = torch.randn(rows, vocab, generator=g)
    dense = torch.where(want, torch.where(logits > 0, logits / 1.3, logits * 1.3), logits)
    assert torch.equal(penalize(logits, seen, 1.3), dense)
    # the forms a GPU takes, which make the host wait for nothing, give the same
    assert torch.equal(seen_tokens(tokens, visible, vocab, exempt, dense=True), want)
    assert torch.equal(penalize(logits, seen, 1.3, dense=True), dense)
    assert torch.equal(penalize(logits, seen.expand(rows, -1), 1.3), dense)
