"""The library API as Hugging Face and vLLM users guess it: ``Engine.generate(prompt, max_new_tokens=...,
temperature=..., seed=..., stop=...)``, chat messages, a list of prompts, token ids and finish reasons, the
stream's stitched text, and the adapter's settings as the engine's defaults (tiny random models)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import pastac
from pastac.adapters.settings import AdapterSettings
from pastac.models import prompt_ids
from pastac.runtime import Engine, FinishReason, Generation, InputError, Limits, RunOptions, StepEvent

PROMPT = "Give me tips."
DOC = (
    'Tips: <promise topic="sleep" tokens="2"/><async>Sleep well at night.</async>'
    '<promise topic="food" tokens="1"/><async>Eat greens and beans.</async><sync/> Done, that is all.'
)


@pytest.fixture
def engine(tiny_engine: Callable[..., Engine]) -> Engine:
    return tiny_engine("tiny-llama", 1)


def test_generate_takes_the_keywords_people_know(engine: Engine) -> None:
    first = engine.generate(PROMPT, max_new_tokens=12, temperature=0.7, top_p=0.9, seed=1)
    again = engine.generate(PROMPT, max_new_tokens=12, temperature=0.7, top_p=0.9, seed=1)
    assert isinstance(first, Generation)
    assert first.token_ids == again.token_ids and first.text == again.text  # the seed makes it repeatable
    assert len(first.token_ids) <= 12 and first.stats.generated + first.stats.jumped <= 12
    # the same run through an options object, and keywords over an options object
    options = RunOptions(limits=Limits(max_new_tokens=12))
    assert engine.generate(PROMPT, options, temperature=0.7, top_p=0.9, seed=1).token_ids == first.token_ids


def test_max_new_tokens_is_the_answers_budget_and_length_is_the_reason(engine: Engine) -> None:
    cut = engine.generate(PROMPT, max_new_tokens=7)
    assert cut.finish_reason is FinishReason.LENGTH
    assert cut.stats.generated + cut.stats.jumped == 7  # everything the threads chose, together
    assert any("max_new_tokens (7)" in w for w in cut.warnings) or cut.threads[0].finish_reason == "length"
    assert not any("--" in w for w in cut.warnings)  # warnings name options, not command-line flags


def test_a_thread_cap_is_a_separate_option(engine: Engine) -> None:
    result = engine.generate(PROMPT, replay=DOC, max_thread_tokens=3)  # a replay's budget covers its script
    assert result.annotated == DOC and result.finish_reason is FinishReason.STOP
    with pytest.raises(ValueError, match="max_thread_tokens"):
        engine.generate(PROMPT, max_thread_tokens=0)


def test_unknown_options_are_type_errors_that_suggest_the_name(engine: Engine) -> None:
    with pytest.raises(TypeError, match=r"max_new_token.*did you mean 'max_new_tokens'"):
        engine.generate(PROMPT, max_new_token=5)
    with pytest.raises(ValueError, match="temperature"):
        engine.generate(PROMPT, temperature=float("nan"))


def test_token_ids_and_finish_reasons_of_the_answer_and_each_thread(engine: Engine) -> None:
    result = engine.generate(PROMPT, replay=DOC)
    assert result.finish_reason is FinishReason.STOP
    assert engine.tokenizer.decode(list(result.token_ids)) == DOC  # the annotated answer's tokens, in its order
    assert set(result.threads) == {0, 1, 2}
    assert [t.parent for t in result.threads.values()] == [None, 0, 0]
    assert [t.topic for t in result.threads.values()] == [None, "sleep", "food"]
    assert result.threads[1].text == "Sleep well at night." and result.threads[2].text == "Eat greens and beans."
    assert all(t.finish_reason is FinishReason.STOP for t in result.threads.values())
    assert sum(len(t.token_ids) for t in result.threads.values()) == len(result.token_ids)
    assert result.to_json()["finish_reason"] == "stop" and result.to_json()["token_ids"] == list(result.token_ids)


def test_a_stop_string_ends_the_thread_that_writes_it(engine: Engine) -> None:
    result = engine.generate(PROMPT, replay=DOC, stop=["greens"])
    assert result.threads[2].text == "Eat " and result.threads[2].finish_reason is FinishReason.STOP
    assert result.threads[1].text == "Sleep well at night."  # the other threads go on
    assert "greens" not in result.text and result.text.startswith("Tips: Sleep well at night.Eat ")
    ended = engine.generate(PROMPT, replay=DOC, stop="that is")  # the main thread: the answer ends there
    assert ended.text.endswith("Done, ") and ended.finish_reason is FinishReason.STOP


def test_chat_messages_are_laid_out_by_the_chat_template(engine: Engine) -> None:
    messages = [{"role": "user", "content": PROMPT}]
    assert engine.prompt_ids(messages) == prompt_ids(engine.tokenizer, PROMPT)
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    assert engine.prompt_ids(with_system) == prompt_ids(engine.tokenizer, PROMPT, system="Be brief.")
    result = engine.generate(messages, max_new_tokens=5)
    assert result.token_ids == engine.generate(PROMPT, max_new_tokens=5).token_ids
    with pytest.raises(InputError, match="role"):
        engine.generate([{"role": "robot", "content": "hi"}])
    with pytest.raises(InputError, match="chat=False"):
        engine.generate(messages, chat=False)


def test_a_list_of_prompts_gives_a_list_of_answers(engine: Engine) -> None:
    prompts = [PROMPT, [{"role": "user", "content": "Another one."}]]
    results = engine.generate(prompts, max_new_tokens=4)
    assert isinstance(results, list) and len(results) == 2
    assert results[0].token_ids == engine.generate(PROMPT, max_new_tokens=4).token_ids
    with pytest.raises(InputError):
        engine.generate([])
    with pytest.raises(InputError, match="one prompt"):
        next(engine.stream([PROMPT, PROMPT]))


def test_stream_events_carry_the_stitched_text_so_far(engine: Engine) -> None:
    events = list(engine.stream(PROMPT, replay=DOC))
    steps = [e for e in events if isinstance(e, StepEvent)]
    final = events[-1].result
    assert steps[-1].text == final.text
    # the stitched text grows in reading order: each snapshot's threads' text stands where its promise is
    assert any(e.text.startswith("Tips: Sleep") and "Eat" in e.text and "Done" not in e.text for e in steps)
    for thread, result in final.threads.items():
        assert "".join(e.deltas.get(thread, "") for e in steps) == result.text


def test_streamed_deltas_never_hold_a_stop_string(engine: Engine) -> None:
    events = list(engine.stream(PROMPT, replay=DOC, stop=["green"]))
    streamed = "".join(e.deltas.get(2, "") for e in events[:-1])
    assert streamed == events[-1].result.threads[2].text == "Eat "


def test_an_interrupted_run_says_so(engine: Engine) -> None:
    stream = engine.stream(PROMPT, replay=DOC)
    for _ in range(6):
        next(stream)
    partial = engine.partial()
    assert partial is not None and partial.finish_reason is FinishReason.INTERRUPTED
    assert partial.threads[0].finish_reason is FinishReason.INTERRUPTED
    stream.close()


def test_the_adapters_settings_are_the_defaults_and_overrides_are_warned(engine: Engine) -> None:
    settings = AdapterSettings(policy="restart", unit=1, max_depth=1, chat=False, repetition_penalty=1.2)
    adapted = Engine(engine.model, engine.tokenizer, name="adapted", settings=settings)
    plain = adapted.generate(PROMPT, max_new_tokens=3)
    assert plain.warnings == ()
    assert adapted.last_run is not None and adapted.last_run.sampler.options.repetition_penalty == 1.2
    assert adapted.last_run.sched.rule.options.policy == "restart"
    assert adapted.last_run.prompt_tokens == len(prompt_ids(engine.tokenizer, PROMPT, chat=False))
    overridden = adapted.generate(PROMPT, max_new_tokens=3, chat=True, max_depth=2, policy="predicted", unit=1)
    notes = [w for w in overridden.warnings if "trained with" in w]
    assert sorted(n.split("=")[0].split()[-1] for n in notes) == ["chat", "max_depth", "policy"]
    assert adapted.last_run.prompt_tokens == len(prompt_ids(engine.tokenizer, PROMPT, chat=True))


def test_the_public_api_is_exported_and_documented() -> None:
    for name in (
        "Engine",
        "RunOptions",
        "Limits",
        "SamplingOptions",
        "Generation",
        "ThreadResult",
        "StepEvent",
        "DoneEvent",
        "FinishReason",
        "AdapterSettings",
        "InputError",
        "ModelError",
    ):
        assert name in pastac.__all__, name
    for name in pastac.__all__:
        value = getattr(pastac, name)
        if callable(value) and not isinstance(value, str):
            assert (value.__doc__ or "").strip(), f"pastac.{name} has no docstring"
