"""The runtime's correctness on tiny random models (CPU, float32).

The central check: every logit the runtime computes while replaying an
annotated document step by step, threads interleaved in one KV cache, equals
the logit of one forward over the training layout with the mask and positions
of the IR's passes; and equals a plain forward over exactly the tokens that
token may see.  Tolerance: 1e-4 absolute on logits of order 1 (float32; the
only differences are summation orders).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from pastac import PositionOptions
from pastac.grammar import check, render
from pastac.runtime import Engine, FinishReason, Generation, InputError, RunOptions
from pastac.runtime.interpreter import starts_item
from pastac.runtime.sampling import SamplingOptions
from pastac.runtime.threads import Limits
from pastac.train.data import encode_example

ATOL = 1e-4
SHAPES = ("tiny-llama", "tiny-qwen2", "tiny-gpt2")
SEED = 1  # the tiny models' weights (``tiny_engine(shape, SEED)``)
PROMPT = "Give me tips."
DOC = (
    'Tips: <promise topic="sleep" tokens="2"/><async>Sleep well at night, every night.</async>'
    '<promise topic="food" tokens="1"/><async>Eat <promise topic="greens"/><async>greens and beans</async>'
    "<sync/> daily.</async> and <sync/> Done, that is all."
)


def replay(
    tiny_engine: Callable[..., Engine], shape: str, doc: str = DOC, **options: object
) -> tuple[Engine, Generation]:
    """The shared engine of ``shape`` and its replay of ``doc`` with the logits it sampled kept."""
    e = tiny_engine(shape, SEED)
    result = e.generate(PROMPT, RunOptions(**options), replay=doc, keep_logits=True)  # type: ignore[arg-type]
    return e, result


def reference(
    e: Engine, doc: str, policy: str = "predicted"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[int, list[int]]]:
    """Tokens, positions and mask of prompt + training layout (the trainer's own ``encode_example``), and each
    IR thread's token indices in order (the prompt's in the main thread's)."""
    example = encode_example(e.tokenizer, PROMPT, doc, PositionOptions(policy=policy))
    order: dict[int, list[int]] = {}
    for index, thread in enumerate(example.thread_ids.tolist()):
        order.setdefault(thread, []).append(index)
    return example.input_ids, example.position_ids, example.mask, order


def forward(model: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    additive = torch.zeros(mask.shape).masked_fill_(~mask, torch.finfo(torch.float32).min)
    with torch.inference_mode():
        out = model(input_ids=tokens[None], position_ids=positions[None], attention_mask=additive[None, None])
    return out.logits[0]


def runtime_logits(e: Engine) -> list[tuple[int, int, torch.Tensor]]:
    """(runtime thread, index of the token in that thread, logits) for every query the runtime sampled."""
    runner = e.last_run.runner
    count: dict[int, int] = {}
    out = []
    for (_, threads, sample), logits in zip(runner.plans, runner.logits, strict=True):
        index_of = {}
        for q, thread in enumerate(threads):
            index_of[q] = count.get(thread, 0)
            count[thread] = index_of[q] + 1
        for row, q in enumerate(sample):
            out.append((threads[q], index_of[q], logits[row]))
    return out


def check_replay_logits(e: Engine, doc: str = DOC, policy: str = "predicted") -> int:
    """Check every logit the engine's last replay of ``doc`` sampled against one forward over the training
    layout; how many it checked."""
    tokens, positions, mask, order = reference(e, doc, policy)
    expected = forward(e.model, tokens, positions, mask)
    ir_of = {t: th.ir_thread for t, th in e.last_run.sched.threads.items()}
    checked = 0
    for thread, index, logits in runtime_logits(e):
        torch.testing.assert_close(logits, expected[order[ir_of[thread]][index]], atol=ATOL, rtol=0)
        checked += 1
    return checked


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("policy", ["predicted", "restart", "lockstep"])
def test_replay_logits_equal_one_forward_over_the_training_layout(shape, policy, tiny_engine):
    e, result = replay(tiny_engine, shape, positions=PositionOptions(policy=policy))
    assert result.stats.threads == 4 and not result.warnings
    checked = check_replay_logits(e, DOC, policy)
    assert checked >= result.stats.generated - result.stats.threads  # (nearly) every token the threads chose


@pytest.mark.parametrize("shape", SHAPES)
def test_each_token_sees_exactly_what_a_plain_forward_over_its_visible_tokens_sees(shape, tiny_engine):
    e, _ = replay(tiny_engine, shape)
    tokens, positions, mask, order = reference(e, DOC)
    ir_of = {t: th.ir_thread for t, th in e.last_run.sched.threads.items()}
    for n, (thread, index, logits) in enumerate(runtime_logits(e)):
        if n % 5:  # a fifth of the tokens: each is one forward
            continue
        i = order[ir_of[thread]][index]
        visible = mask[i].nonzero().squeeze(-1)
        assert visible[-1] == i
        alone = forward(e.model, tokens[visible], positions[visible], mask[visible][:, visible])
        torch.testing.assert_close(logits, alone[-1], atol=ATOL, rtol=0)


def test_sequential_replay_is_one_causal_thread(tiny_engine):
    e, result = replay(tiny_engine, "tiny-llama", mode="sequential")
    assert result.stats.threads == 1 and not result.warnings
    tokens, positions, _, _ = reference(e, DOC, "sequential")
    order = sorted(range(tokens.numel()), key=lambda i: positions[i].item())  # the sequential layout
    causal = torch.tril(torch.ones((len(order), len(order)), dtype=torch.bool))
    expected = forward(e.model, tokens[order], torch.arange(len(order)), causal)
    got = [logits for _, _, logits in runtime_logits(e)]
    # the sampled queries are the tokens the model chose, in order; forced <async> tags are fed with the promise
    seen = 0
    for row in range(expected.shape[0]):
        if seen < len(got) and torch.allclose(got[seen], expected[row], atol=ATOL, rtol=0):
            seen += 1
    assert seen == len(got)


def test_replay_reproduces_the_document_under_any_width_and_depth(tiny_engine):
    for limits in (Limits(), Limits(max_width=2), Limits(max_width=1), Limits(max_depth=1), Limits(max_depth=0)):
        _, result = replay(tiny_engine, "tiny-llama", limits=limits)
        assert result.annotated == DOC, limits
        assert result.text == (
            "Tips: Sleep well at night, every night.Eat greens and beans daily. and  Done, that is all."
        )
        if limits.max_width is not None:
            assert result.stats.max_width <= limits.max_width
    _, capped = replay(tiny_engine, "tiny-llama", limits=Limits(max_width=1))
    assert capped.stats.parallelism == pytest.approx(capped.stats.tokens / capped.stats.steps)


def test_kv_memory_of_a_forked_run_equals_the_sequential_run(tiny_engine):
    _, forked = replay(tiny_engine, "tiny-llama")
    _, sequential = replay(tiny_engine, "tiny-llama", mode="sequential")
    assert forked.stats.kv_bytes == sequential.stats.kv_bytes
    assert forked.stats.steps < sequential.stats.steps


@pytest.mark.parametrize("shape", SHAPES)
def test_text_without_tags_gives_the_same_tokens_in_every_mode_and_hf_generate(shape, tiny_engine):
    e = tiny_engine(shape, SEED)
    options = RunOptions(limits=Limits(max_thread_tokens=24, max_new_tokens=4096))
    a = e.generate(PROMPT, options)
    s = e.generate(PROMPT, RunOptions(mode="sequential", limits=Limits(max_thread_tokens=24, max_new_tokens=4096)))
    ids = torch.tensor([e.prompt_ids(PROMPT)])
    with torch.inference_mode():
        hf = e.model.generate(
            ids,
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=list(e.eos) or None,
            pad_token_id=e.tokenizer.pad_token_id,
        )
    text = e.tokenizer.decode(hf[0, ids.shape[1] :], skip_special_tokens=True)
    assert "<promise" not in a.annotated  # a random model that wrote a tag would test something else
    assert a.text == s.text == text


TEMPLATE = 'Three tips:\n<promise topic="sleep" tokens="1"/>\n<promise topic="food" tokens="1"/>\n<sync/>\nThat is all.'


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tags", [True, False])
def test_template_children_equal_decoding_each_thread_alone(shape, tags, tiny_engine):
    """Each child, decoded among the others, writes what greedy decoding of its context alone writes.
    (The restart policy keeps the context's positions contiguous, so a plain ``generate`` can compare; the
    ban on copying a sibling's n-grams, which decoding alone has no sibling for, is off.)"""
    e = tiny_engine(shape, SEED)
    budget = 10
    options = RunOptions(
        limits=Limits(max_thread_tokens=budget, max_new_tokens=4096),
        positions=PositionOptions(policy="restart"),
        template_tags=tags,
        child_stop="",
        sampling=SamplingOptions(sibling_ngram=0),
    )
    result = e.generate(PROMPT, options, template=TEMPLATE)
    assert result.stats.threads == 3
    doc = check(result.annotated, mode="strict")
    assert not doc.errors, doc.diagnostics
    sched = e.last_run.sched
    promises = ['<promise topic="sleep" tokens="1"/>', '<promise topic="food" tokens="1"/>']
    contexts = [["Three tips:\n", promises[0]], ["Three tips:\n", promises[0], "\n", promises[1]]]
    for child, pieces in zip((1, 2), contexts, strict=True):
        # the child sees the prompt, the main thread up to its promise, and its <async>: a plain prefix
        if not tags:
            pieces = [p for p in pieces if p not in promises]
        ids = e.prompt_ids(PROMPT) + [t for p in pieces for t in e.tokenizer.encode(p, add_special_tokens=False)]
        if tags:
            ids += e.tokenizer.encode("<async>", add_special_tokens=False)
        with torch.inference_mode():
            out = e.model.generate(
                torch.tensor([ids]),
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=list(e.eos) or None,
                pad_token_id=e.tokenizer.pad_token_id,
            )
        alone = e.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
        written = "".join(v for k, v in sched.threads[child].pieces if k == "text")
        assert written == alone


def test_a_child_ends_where_it_writes_the_stop_text(tiny_engine):
    e = tiny_engine("tiny-llama", SEED)
    limits = Limits(max_thread_tokens=16, max_new_tokens=4096)
    free = e.generate(PROMPT, RunOptions(limits=limits, child_stop=""), template=TEMPLATE)
    written = "".join(v for k, v in e.last_run.sched.threads[1].pieces if k == "text")
    stop = written.strip()[len(written.strip()) // 2 :][:2]  # text the child does write, after some content
    assert stop.strip() and free.stats.threads == 3
    e.generate(PROMPT, RunOptions(limits=limits, child_stop=stop), template=TEMPLATE)
    stopped = "".join(v for k, v in e.last_run.sched.threads[1].pieces if k == "text")
    assert stopped == written[: written.index(stop, len(written) - len(written.lstrip()) + 1)]


def test_template_children_stop_at_a_line_break_by_default(tiny_engine):
    e = tiny_engine("tiny-llama", SEED)
    result = e.generate(PROMPT, RunOptions(limits=Limits(max_thread_tokens=40, max_new_tokens=4096)), template=TEMPLATE)
    assert e.last_run.sched.interp.child_stop == "\n"
    assert result.text.startswith("Three tips:\n") and result.text.endswith("\nThat is all.")


def test_budget_and_eos_close_children_with_a_warning_and_a_valid_document(tiny_engine):
    e = tiny_engine("tiny-llama", SEED)
    result = e.generate(PROMPT, RunOptions(limits=Limits(max_thread_tokens=3, max_new_tokens=4096)), template=TEMPLATE)
    assert any("closed" in w for w in result.warnings)
    assert not check(result.annotated, mode="strict").errors
    assert result.text.startswith("Three tips:\n") and result.text.endswith("\nThat is all.")


def test_bad_template_and_replay_are_input_errors(tiny_engine):
    e = tiny_engine("tiny-llama", SEED)
    with pytest.raises(InputError, match="E102"):
        e.generate(PROMPT, template="a <promise topic=x/>")
    with pytest.raises(InputError, match=r"error\[E307\]: a template's promises are fulfilled by the model"):
        e.generate(PROMPT, template='a <promise topic="x"/><async>b</async>')  # template mode's own check
    with pytest.raises(InputError, match=r"error\[E306\]"):
        e.generate(PROMPT, template="a <sync/>")
    with pytest.raises(InputError, match="E301"):
        e.generate(PROMPT, replay='a <promise topic="x"/><async>b')


def test_stream_yields_steps_then_the_result(tiny_engine):
    e = tiny_engine("tiny-llama", SEED)
    events = list(
        e.stream(PROMPT, RunOptions(limits=Limits(max_thread_tokens=5, max_new_tokens=4096)), template=TEMPLATE)
    )
    assert events[-1].result.stats.steps == len(events) - 2  # the prompt's forward is not a step
    written = "".join(ev.deltas.get(0, "") for ev in events[:-1])
    assert written == "".join(v for k, v in e.last_run.sched.threads[0].pieces if k == "text")
    # each event's text is the stitched answer so far: children's text where their promises stand
    assert events[-2].text == events[-1].result.text
    for thread in events[-1].result.threads:
        assert "".join(ev.deltas.get(thread, "") for ev in events[:-1]) == events[-1].result.threads[thread].text


def test_a_reservation_is_no_larger_than_what_the_child_may_write(tiny_engine):
    doc = 'A <promise topic="x" tokens="40000"/><async>b</async> c<sync/> d'
    e = tiny_engine("tiny-llama", SEED)
    limits = Limits(max_thread_tokens=200, max_new_tokens=300)
    result = e.generate(PROMPT, RunOptions(limits=limits), replay=doc)
    assert result.annotated == doc and not result.warnings
    main = e.last_run.sched.threads[0]
    tags = len(e.last_run.sched.interp.open_ids) + len(e.last_run.sched.interp.close_ids)
    # the prompt's and the main thread's tokens, then a skip of what the child may write, not of 40,000
    assert main.pos == main.fed + tags + 200


# -- a child cut by its budget --------------------------------------------------------------------------------

CUT = RunOptions(limits=Limits(max_thread_tokens=4, max_new_tokens=4096), child_stop="")  # children cut at 4


def test_a_cut_childs_block_ends_with_a_line_break_before_the_next_item(tiny_engine):
    """Issue 23, item 11: a child cut by its budget ran into the next item ("...doesn3. **Take care**").  Its
    block now ends with a line break, the one character of the answer no thread wrote."""
    e = tiny_engine("tiny-llama", SEED)
    result = e.generate(PROMPT, CUT, template='Tips:\n1. <promise topic="a"/>2. <promise topic="b"/><sync/>')
    first, second = result.threads[1], result.threads[2]
    assert first.finish_reason is FinishReason.LENGTH and first.text and not first.text.endswith("\n")
    assert result.text.startswith(f"Tips:\n1. {first.text}\n2. {second.text}")
    assert result.annotated.startswith(f'Tips:\n1. <promise topic="a"/><async>{first.text}\n</async>2. <promise')
    doc = check(result.annotated, mode="strict")
    assert not doc.errors and render(doc.document) == result.text
    assert first.text == e.last_run.sched.threads[1].text  # the thread's own text is as it wrote it
    assert e.last_run.sched.interp.cut_breaks() == 1  # the second child's block ends the answer: no break


def test_a_cut_child_that_the_line_goes_on_from_is_left_as_written(tiny_engine):
    e = tiny_engine("tiny-llama", SEED)
    result = e.generate(PROMPT, CUT, template='Tips: <promise topic="a"/> and more.')
    assert result.threads[1].finish_reason is FinishReason.LENGTH
    assert result.text.startswith(f"Tips: {result.threads[1].text} and more.")


def test_a_child_that_ends_by_itself_is_left_as_written(tiny_engine):
    doc = 'Tips:\n1. <promise topic="x"/><async>Sleep</async>2. <promise topic="y"/><async>Eat</async><sync/>'
    result = tiny_engine("tiny-llama", SEED).generate(PROMPT, replay=doc)
    assert result.annotated == doc and result.text == "Tips:\n1. Sleep2. Eat"


@pytest.mark.parametrize(
    ("after", "began_line", "expected"),
    [
        ("3. **Take care", False, True),
        ("  12) next", False, True),
        ("- item", False, True),
        ("* item", False, True),
        ("+ item", False, True),
        ("## Heading", False, True),
        ("#", False, True),
        ("#hashtag", False, False),
        ("3.5 litres", False, False),
        (" and more", False, False),
        ("Next paragraph", False, False),
        ("Next paragraph", True, True),
        ("**Bold lead**", True, True),
        (", and then", True, False),
        ("\nalready broken", True, False),
        ("", True, False),
    ],
)
def test_what_starts_a_new_item(after, began_line, expected):
    assert starts_item(after, block_began_line=began_line) is expected
