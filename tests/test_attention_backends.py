"""The attention backends and the static decode step, end to end on tiny random models (CPU, float32).

Every backend that reads the visibility bitset (``reference``, ``flex``, ``triton`` under Triton's
interpreter) must give the logits the dense-mask sdpa path gives, while replaying an annotated document
through the scheduler and while decoding freely; the static step (padded widths over persistent buffers,
attention over the whole cache) must too, and so must requests packed together in the batch engine.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import run

from pastac.backend.attention import BackendError, resolve_attention
from pastac.backend.branched import triton_available
from pastac.models import random_model
from pastac.runtime import Engine
from pastac.runtime.batch import BatchEngine
from pastac.runtime.static import BUCKETS, bucket, resolve_decode_step

ATOL = 1e-4
PROMPT = "Give me tips."
DOC = (
    'Tips: <promise topic="sleep" tokens="2"/><async>Sleep well at night.</async>'
    '<promise topic="food" tokens="1"/><async>Eat <promise topic="greens"/><async>greens</async>'
    "<sync/> daily.</async> and <sync/> Done."
)
TEMPLATE = 'Tips:\n1. <promise topic="a"/>\n2. <promise topic="b"/>\n<sync/>End.'
# the Triton kernel on CPU tensors: only in Triton's interpreter (tests/conftest.py sets it without CUDA)
interpreted = pytest.mark.skipif(triton_available("cpu") is not None, reason=str(triton_available("cpu")))
on_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def engine_like(base: Engine, attention: str, decode_step: str = "eager") -> Engine:
    """An engine over ``base``'s model and tokenizer with another attention backend and decode step."""
    return Engine(base.model, base.tokenizer, attention=attention, decode_step=decode_step)


def replayed(engine: Engine, doc: str = DOC) -> tuple[list[int], torch.Tensor]:
    """The replay of ``doc``: its tokens and every logit the runtime sampled, in order."""
    result = engine.generate(PROMPT, replay=doc, keep_logits=True)
    return result.token_ids, torch.cat(engine.last_run.runner.logits)


def decoded(engine: Engine, **options: object) -> list[int]:
    return engine.generate(PROMPT, template=TEMPLATE, max_new_tokens=40, max_thread_tokens=8, **options).token_ids


@pytest.mark.parametrize(
    ("shape", "attention"),
    [("tiny-llama", "reference"), ("tiny-qwen2", "reference"), ("tiny-gpt2", "reference"), ("tiny-qwen2", "flex")],
)
def test_bitset_backends_replay_the_logits_of_sdpa(tiny_engine, shape, attention):
    base = tiny_engine(shape)
    tokens, expected = replayed(base)
    other = engine_like(base, attention)
    got_tokens, got = replayed(other)
    assert got_tokens == tokens
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert decoded(other) == decoded(base)


@interpreted
def test_triton_kernel_replays_the_logits_of_sdpa_under_the_interpreter(tiny_engine):
    base = tiny_engine("tiny-qwen2")  # grouped-query attention: two query heads per key/value head
    doc = 'Tips: <promise topic="a" tokens="2"/><async>Sleep well.</async><sync/> Done.'
    tokens, expected = replayed(base, doc)
    got_tokens, got = replayed(engine_like(base, "triton"), doc)
    assert got_tokens == tokens
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2"])
def test_the_static_step_pads_without_changing_a_logit(tiny_engine, shape):
    base = tiny_engine(shape)
    tokens, expected = replayed(base)
    static = engine_like(base, "reference", "static")
    got_tokens, got = replayed(static)
    assert got_tokens == tokens
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    runner = static.last_run.runner
    assert runner.static is not None and runner.cache.capacity % 1024 == 0
    assert decoded(static) == decoded(base)
    sampled = {"temperature": 0.9, "seed": 5, "repetition_penalty": 1.3}
    assert decoded(static, **sampled) == decoded(base, **sampled)
    assert static.last_run.runner is runner  # a later run takes the idle runner, and its buffers, again


def test_a_static_runner_too_small_is_replaced_and_one_in_use_is_not_shared(tiny_engine):
    static = engine_like(tiny_engine(), "reference", "static")
    first = static.stream(PROMPT, max_new_tokens=4)
    next(first)  # the prompt's step: this run holds its runner
    held = static.last_run.runner
    second = static.generate(PROMPT, max_new_tokens=4)
    assert static.last_run.runner is not held and second.token_ids
    list(first)  # the first run ends last: its runner is the idle one
    assert static._runner(1000) is held  # big enough: taken again
    bigger = static._runner(1500)  # not: a new one, rounded up
    assert bigger is not held and bigger.cache.capacity == 2048


def test_the_batch_engine_packs_requests_the_same_with_every_backend(tiny_engine):
    base = tiny_engine("tiny-qwen2")
    requests = [
        ("Give me tips.", None, {"max_new_tokens": 12}),
        ("Three rivers?", TEMPLATE, {"max_new_tokens": 40, "max_thread_tokens": 6}),
        ("abc", None, {"max_new_tokens": 9, "temperature": 0.8, "seed": 3}),
    ]

    def answers(engine: Engine) -> list[list[int]]:
        batch = BatchEngine(engine, max_concurrent=3, kv_slots=1024)
        handles = [batch.submit(p, template=t, **o) for p, t, o in requests]
        while batch.busy:
            batch.step()
        return [h.result.token_ids for h in handles]

    expected = answers(base)
    assert answers(engine_like(base, "reference")) == expected
    assert answers(engine_like(base, "reference", "static")) == expected


@on_cuda
@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2"])
def test_on_cuda_the_kernel_and_the_captured_step_give_the_logits_of_sdpa(tiny_engine, shape):
    cpu = tiny_engine(shape)
    model = random_model(shape, vocab_size=len(cpu.tokenizer), seed=1, device="cuda")
    base = Engine(model, cpu.tokenizer, attention="sdpa", decode_step="eager")
    tokens, expected = replayed(base)
    for attention, step in (("triton", "eager"), ("triton", "static"), ("flex", "eager")):
        engine = Engine(model, cpu.tokenizer, attention=attention, decode_step=step)
        got_tokens, got = replayed(engine)
        assert got_tokens == tokens, (attention, step)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
        assert decoded(engine) == decoded(base)
        static = engine.last_run.runner.static
        if step == "static":  # the steps were replayed from captured graphs
            assert static is not None and static.capture and static.captures >= 1 and static.replays > 0
    assert resolve_attention("auto", "cuda") == "triton"


def test_buckets_and_the_choices_that_resolve():
    assert [bucket(n) for n in (1, 2, 3, 5, 16, 17, 64)] == [1, 2, 4, 8, 16, 32, 64]
    assert bucket(BUCKETS[-1] + 1) is None
    assert resolve_attention("auto", "cpu") == "sdpa"
    assert resolve_decode_step("auto", "sdpa", "cpu") == "eager"
    assert resolve_decode_step("auto", "triton", "cpu") == "eager"
    assert resolve_decode_step("auto", "triton", "cuda") == "static"
    with pytest.raises(BackendError, match="triton or flex"):
        resolve_decode_step("static", "sdpa", "cpu")
    with pytest.raises(BackendError, match="decode step must be one of"):
        resolve_decode_step("graphs", "sdpa", "cpu")
    with pytest.raises(ValueError, match="attention must be one of"):
        resolve_attention("fast", "cpu")


@pytest.fixture
def model_dir(saved_tiny_model) -> str:
    return str(saved_tiny_model)


@interpreted
def test_pastac_run_with_the_triton_kernel_on_the_cpu(capsys, tmp_path, model_dir):
    template = tmp_path / "t.pasta"
    template.write_text(TEMPLATE)
    argv = ["run", "Hi", "--model", model_dir, "--template", str(template), "--max-thread-tokens", "3", "--json", "-q"]
    code, out, err = run(capsys, *argv, "--attention", "sdpa")
    assert code == 0, err
    code, got, err = run(capsys, *argv, "--attention", "triton")
    assert code == 0, err
    assert json.loads(got)["token_ids"] == json.loads(out)["token_ids"]
    assert json.loads(got)["stats"]["threads"] == 3


def test_an_attention_that_cannot_run_here_is_a_usage_error(capsys, model_dir, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    code, _, err = run(capsys, "run", "Hi", "--model", model_dir, "--attention", "triton", "-q")
    assert code == 2 and "TRITON_INTERPRET=1" in err
    code, _, err = run(capsys, "run", "Hi", "--model", model_dir, "--decode-step", "static", "-q")
    assert code == 2 and "--decode-step static" in err
