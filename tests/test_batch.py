"""The batch engine: many requests in the same forward passes, each answered as if it were alone."""

from __future__ import annotations

import itertools

import pytest
import torch

from pastac.backend.cache import SlotPool
from pastac.runtime import RunOptions
from pastac.runtime.batch import BatchEngine, Draining, QueueFull, RequestTooLarge, State, Update
from pastac.runtime.sampling import SamplingOptions
from pastac.runtime.threads import Limits

TEMPLATE = 'Tips:\n1. <promise topic="sleep"/>\n2. <promise topic="water"/>\n<sync/>In short, rest.'
NESTED = 'Plan: <promise topic="a"/> then <promise topic="b"/><sync/> done.'
# (prompt, template, options): plain and templated requests, greedy and sampled, with and without a penalty
REQUESTS = [
    ("Give me tips.", None, {"max_new_tokens": 24}),
    ("Three rivers?", TEMPLATE, {"max_new_tokens": 60, "max_thread_tokens": 10}),
    ("abc", None, {"max_new_tokens": 17, "temperature": 0.8, "seed": 3}),
    ("Plan my day", NESTED, {"max_new_tokens": 40, "max_thread_tokens": 8, "repetition_penalty": 1.3}),
    ("x y z", None, {"max_new_tokens": 9, "stop": ["e"]}),
    ("Tips on water", TEMPLATE, {"max_new_tokens": 50, "max_thread_tokens": 6, "temperature": 1.0, "seed": 11}),
    ("q", None, {"max_new_tokens": 30, "repetition_penalty": 1.2, "penalty_scope": "answer"}),
    ("last one", TEMPLATE, {"max_new_tokens": 45, "max_thread_tokens": 7, "mode": "sequential"}),
]


def alone(engine, prompt, template, options):
    result = engine.generate(prompt, template=template, keep_logits=True, **options)
    return result, [logits.clone() for logits in engine.last_run.runner.logits]


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2"])
def test_eight_requests_together_answer_as_each_alone(shape, tiny_engine):
    engine = tiny_engine(shape)
    expected = [alone(engine, *r) for r in REQUESTS]
    batch = BatchEngine(engine, max_concurrent=8, kv_slots=2048)
    requests = [batch.submit(p, template=t, keep_logits=True, **o) for p, t, o in REQUESTS]
    widths = []
    while batch.busy:
        batch.step()
        widths.append(len(batch.running))
    assert max(widths) == 8  # they did run together
    for (result, logits), request in zip(expected, requests, strict=True):
        assert request.state is State.DONE
        got = request.result
        assert got.token_ids == result.token_ids
        assert got.text == result.text and got.annotated == result.annotated
        assert got.finish_reason == result.finish_reason
        assert len(request.logits) == len(logits)
        for mine, theirs in zip(request.logits, logits, strict=True):
            torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=0)
    assert {r.result.stats.threads for r in requests} >= {1, 3}  # templated ones forked


def test_slots_go_back_to_the_pool_and_the_cache_never_grows(tiny_engine):
    batch = BatchEngine(tiny_engine(), max_concurrent=4, kv_slots=1024, page_size=16)
    cache = batch.runner.cache
    for _ in range(3):  # more requests than the pool could hold if slots were never given back
        batch.decode([p for p, _, _ in REQUESTS[:4]], max_new_tokens=40)
    assert batch.pool.free_pages == batch.pool.pages and batch.pool.used_slots == 0
    assert cache.growths == 0 and cache.capacity == 1024
    (alone,) = batch.decode(["a"], max_new_tokens=5)  # alone in the pool: it holds its lowest pages only
    assert cache.used == batch.pool.pages_for(alone.stats.prompt_tokens + alone.stats.tokens) * 16
    assert batch.stats()["kv_slots_used"] == 0 and batch.stats()["requests_finished"] == 13


def test_requests_wait_for_slots_and_answer_the_same(tiny_engine):
    """A pool too small for all of them at once: they wait (or one starts over), none is dropped or changed."""
    engine = tiny_engine()
    options = {"max_new_tokens": 60, "max_thread_tokens": 12}
    prompts = ["one", "two two", "three three three", "four"]
    expected = [engine.generate(p, template=TEMPLATE, **options) for p in prompts]
    need = max(engine.start_run(p, None, options, TEMPLATE, None, False, None).views.capacity for p in prompts)
    batch = BatchEngine(engine, max_concurrent=4, kv_slots=need + 48, page_size=16)
    requests = [batch.submit(p, template=TEMPLATE, **options) for p in prompts]
    waited = False
    while batch.busy:
        batch.step()
        waited |= bool(batch.waiting) or any(r.pending is not None for r in batch.running)
    assert waited
    for result, request in zip(expected, requests, strict=True):
        assert request.state is State.DONE
        assert request.result.token_ids == result.token_ids
    assert batch.pool.used_slots == 0


def test_a_request_that_could_never_fit_is_refused_at_once(tiny_engine):
    batch = BatchEngine(tiny_engine(), kv_slots=256)
    with pytest.raises(RequestTooLarge, match="cache holds 256"):
        batch.submit("hello", max_new_tokens=400)


def test_cancelling_frees_the_slots_at_the_next_step_and_leaves_the_others_alone(tiny_engine):
    engine = tiny_engine()
    expected = engine.generate("keep me", max_new_tokens=30)
    batch = BatchEngine(engine, max_concurrent=4, kv_slots=2048)
    heard: list[Update] = []
    keep = batch.submit("keep me", max_new_tokens=30)
    drop = batch.submit("drop me", max_new_tokens=200, listener=heard.append)
    waiting = batch.submit("never admitted", max_new_tokens=30)
    batch.max_concurrent = 2  # the third waits
    for _ in range(5):
        batch.step()
    held = batch.pool.used_slots
    assert drop.state is State.RUNNING and drop.slots.pages
    batch.cancel(drop)
    batch.cancel(waiting)
    batch.step()
    assert drop.state is State.CANCELLED and waiting.state is State.CANCELLED
    assert not drop.slots.pages and batch.pool.used_slots < held
    assert heard[-1].final and heard[-1].result is None
    while batch.busy:
        batch.step()
    assert keep.result.token_ids == expected.token_ids
    assert batch.pool.used_slots == 0 and drop.wait(0) and waiting.wait(0)


class Steps:
    """A ``Metrics`` that keeps each step's queries and requests."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, int]] = []

    def step(self, rows: int, requests: int, seconds: float) -> None:
        self.steps.append((rows, requests))

    def first_token(self, seconds: float) -> None:
        pass

    def inter_token(self, seconds: float) -> None:
        pass


def test_a_step_holds_at_most_max_rows_queries_and_a_long_prompt_goes_in_chunks(tiny_engine):
    engine = tiny_engine()
    long_prompt = " ".join(["word"] * 60)
    seen = Steps()
    batch = BatchEngine(engine, max_concurrent=4, max_rows=24, kv_slots=4096, metrics=seen)
    short = [batch.submit(p, max_new_tokens=20, chat=False) for p in ("a", "b", "c")]
    for _ in range(3):
        batch.step()
    late = batch.submit(long_prompt, max_new_tokens=5)
    while batch.busy:
        batch.step()
    assert late.run.prompt_tokens > 24 and late.run.prefill_steps >= 3
    assert max(rows for rows, _ in seen.steps) == 24
    assert max(requests for _, requests in seen.steps) == 4
    expected = engine.generate(long_prompt, max_new_tokens=5)
    assert late.result.token_ids == expected.token_ids
    assert late.result.stats.steps == expected.stats.steps  # the chunks count as the prefill, not as steps
    assert all(r.state is State.DONE for r in short)


def test_a_full_queue_and_a_draining_engine_refuse_new_requests(tiny_engine):
    batch = BatchEngine(tiny_engine(), max_concurrent=1, max_waiting=1, kv_slots=1024)
    batch.submit("one", max_new_tokens=5)
    batch.step()  # admitted: one running
    batch.submit("two", max_new_tokens=5)  # waits
    with pytest.raises(QueueFull):
        batch.submit("three", max_new_tokens=5)
    assert batch.drain(timeout=0) is False  # still busy: what is left is cancelled
    with pytest.raises(Draining):
        batch.submit("four", max_new_tokens=5)
    while batch.busy:
        batch.step()
    assert batch.pool.used_slots == 0


def test_bad_requests_are_refused_when_submitted(tiny_engine):
    batch = BatchEngine(tiny_engine(), kv_slots=1024)
    with pytest.raises(ValueError, match="max_new_tokens"):
        batch.submit("x", max_new_tokens=0)
    with pytest.raises(ValueError):
        batch.submit("x", template="a <promise topic=x/>")
    assert not batch.busy


def test_the_engine_loop_runs_on_its_own_thread(tiny_engine):
    engine = tiny_engine()
    expected = [engine.generate(p, max_new_tokens=15) for p in ("first", "second")]
    batch = BatchEngine(engine, max_concurrent=2, kv_slots=1024)
    batch.start()
    try:
        requests = [batch.submit(p, max_new_tokens=15) for p in ("first", "second")]
        assert all(r.wait(60) for r in requests)
    finally:
        batch.stop()
    assert [r.result.token_ids for r in requests] == [e.token_ids for e in expected]


def test_settled_text_only_grows_and_ends_as_the_answer(tiny_engine):
    """What a stream sends (``Update.settled``) is never taken back: each is the start of the next and of the
    answer; a child's text waits until the text before it is settled."""
    engine = tiny_engine()
    batch = BatchEngine(engine, max_concurrent=4, kv_slots=4096)
    heard: dict[str, list[Update]] = {}
    cases = [
        ("a", TEMPLATE, {"max_new_tokens": 80, "max_thread_tokens": 9}),
        ("b", NESTED, {"max_new_tokens": 30, "max_thread_tokens": 5}),  # children cut by their budget
        ("c", TEMPLATE, {"max_new_tokens": 60, "stop": [" t", "e "], "temperature": 1.0, "seed": 5}),
        ("d", None, {"max_new_tokens": 40, "stop": ["a"], "temperature": 1.0, "seed": 2}),
    ]
    requests = [batch.submit(p, template=t, listener=heard.setdefault(p, []).append, **o) for p, t, o in cases]
    while batch.busy:
        batch.step()
    for request in requests:
        updates = heard[request.prompt]
        assert updates[-1].final and updates[-1].settled == request.result.text
        texts = [u.settled for u in updates]
        for before, after in itertools.pairwise(texts):
            assert after.startswith(before)
    assert any(0 < len(u.settled) < len(heard["a"][-1].settled) for u in heard["a"])  # it did stream


def test_a_pool_hands_out_the_lowest_pages_first():
    pool = SlotPool(64, page_size=16)
    first = pool.take(2)
    second = pool.take(1)
    assert first == [0, 1] and second == [2] and pool.high_water == 48
    pool.give(first)
    assert pool.take(1) == [0] and pool.take(5) is None and pool.free_pages == 2


def test_options_objects_work_as_keywords_do(tiny_engine):
    engine = tiny_engine()
    options = RunOptions(limits=Limits(max_new_tokens=12), sampling=SamplingOptions(temperature=0.7, seed=4))
    expected = engine.generate("hi", options)
    batch = BatchEngine(engine, kv_slots=1024)
    (got,) = batch.decode(["hi"], options)
    assert got.token_ids == expected.token_ids


WIDE = (
    'List:\n1. <promise topic="a"/>\n2. <promise topic="b"/>\n3. <promise topic="c"/>\n4. <promise topic="d"/>\n<sync/>'
)


@pytest.mark.parametrize("max_rows", [5, 9])
def test_a_full_step_never_splits_a_requests_threads(max_rows, tiny_engine):
    """With little room per step, a request's threads still advance together: each sees its siblings' text
    as far as it would alone (the sibling n-gram ban reads it), so the answers are those decoded alone."""
    engine = tiny_engine()
    prompts = [f"request {i}" for i in range(8)]
    options = {"max_new_tokens": 120, "max_thread_tokens": 14}
    expected = [engine.generate(p, template=WIDE, **options) for p in prompts]
    assert all(e.stats.max_width == 5 for e in expected)
    seen = Steps()
    batch = BatchEngine(engine, max_concurrent=8, max_rows=max_rows, kv_slots=8192, metrics=seen)
    requests = [batch.submit(p, template=WIDE, **options) for p in prompts]
    while batch.busy:
        batch.step()
    assert all(rows <= max_rows or n == 1 for rows, n in seen.steps)  # a step of one request's threads is whole
    assert max(n for _, n in seen.steps) >= 2
    for result, request in zip(expected, requests, strict=True):
        assert request.result.token_ids == result.token_ids
