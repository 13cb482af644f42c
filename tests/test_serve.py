"""``pastac serve`` over real HTTP: the OpenAI client against the app on 127.0.0.1, a tiny random model.

Every answer is checked against the same prompt decoded alone by ``Engine.generate`` (greedy): a request's
answer must not depend on the others decoded beside it, nor on being streamed.  Where a test needs the
engine's loop to stand still (a full queue, a client that goes away, a shutdown while a request runs) it
holds the loop in a listener of a request of its own (``loop_held``) rather than racing it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pastac.cli.main import main
from pastac.models.budget import context_length
from pastac.runtime import Engine
from pastac.runtime.batch import BatchEngine, Request, State, Update
from pastac.runtime.results import Generation
from pastac.serve.app import create_app
from pastac.serve.server import ServerThread

MODEL = "tiny-llama"
TIMEOUT = 60.0  # seconds: every client's bound, and every wait's
TEMPLATE = 'A <promise topic="x"/> B <promise topic="y"/><sync/> C'
MESSAGES = [{"role": "user", "content": "Name two rivers."}]


@dataclass
class Served:
    """A server on 127.0.0.1 and the batch engine behind it."""

    server: ServerThread
    batch: BatchEngine

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, api_key: str = "none") -> openai.OpenAI:
        """An OpenAI client of this server: bounded, no retries."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, timeout=TIMEOUT, max_retries=0)


@contextlib.contextmanager
def serving(engine: Engine, **settings: Any) -> Iterator[Served]:
    """Serve ``engine`` through a ``BatchEngine`` of ``settings`` (those of ``create_app`` apart)."""
    app_settings = {k: settings.pop(k) for k in ("api_key", "model_name", "drain_timeout") if k in settings}
    batch = BatchEngine(engine, **{"kv_slots": 4096, **settings})
    with ServerThread(create_app(batch, **app_settings)) as server:
        yield Served(server, batch)


@contextlib.contextmanager
def loop_held(batch: BatchEngine) -> Iterator[Request]:
    """The batch's loop held still (in the listener of a request of its own, after that request's first step)
    until the block ends; what is submitted meanwhile waits, what runs stays where it is."""
    entered, release = threading.Event(), threading.Event()

    def hold(update: Update) -> None:
        if not update.final:
            entered.set()
            release.wait(TIMEOUT)

    blocker = batch.submit("hold", chat=False, max_new_tokens=2, listener=hold)
    try:
        assert entered.wait(TIMEOUT), "the loop never stepped the holding request"
        yield blocker
    finally:
        release.set()
        assert blocker.wait(TIMEOUT)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def alone(engine: Engine, prompt: Any, **changes: Any) -> Generation:
    """``prompt`` decoded by itself (greedy), as the server should answer it."""
    result = engine.generate(prompt, **changes)
    assert isinstance(result, Generation)
    return result


def reason(result: Generation) -> str:
    """The OpenAI finish reason of ``result``."""
    return "length" if str(result.finish_reason) == "length" else "stop"


def sse_events(lines: Iterable[str]) -> Iterator[str]:
    """The data of each server-sent event in ``lines``, checking that every line is an event or blank."""
    for line in lines:
        if line:
            assert line.startswith("data: "), f"not a server-sent event: {line!r}"
            yield line.removeprefix("data: ")


def expect_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """Check ``response`` is an OpenAI-shaped error of ``status``; its ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    assert "param" in error and "code" in error
    return error


@pytest.fixture(scope="module")
def engine(tiny_engine: Callable[..., Engine]) -> Engine:
    return tiny_engine(MODEL)


@pytest.fixture(scope="module")
def served(engine: Engine) -> Iterator[Served]:
    """One server for the module: eight requests at once."""
    with serving(engine, max_concurrent=8, kv_slots=8192) as served:
        yield served


@pytest.fixture(scope="module")
def client(served: Served) -> openai.OpenAI:
    return served.client()


@pytest.fixture
def cancelled(served: Served, monkeypatch: pytest.MonkeyPatch) -> list[Request]:
    """The requests the app cancels on the module's server during the test (in order)."""
    calls: list[Request] = []
    cancel = served.batch.cancel

    def recording(request: Request) -> None:
        calls.append(request)
        cancel(request)

    monkeypatch.setattr(served.batch, "cancel", recording)
    return calls


# -- answers -------------------------------------------------------------------------------------------------


def test_chat_completion_answers_as_the_engine_decodes_alone(engine, client):
    expected = alone(engine, MESSAGES, chat=True, max_new_tokens=20)
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20)
    assert response.object == "chat.completion"
    assert response.model == MODEL
    [choice] = response.choices
    assert isinstance(choice.message.content, str)
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.finish_reason in ("stop", "length")
    assert choice.finish_reason == reason(expected)
    usage = response.usage
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected.stats.prompt_tokens, expected.stats.tokens)
    pasta = response.model_extra["pasta"]
    assert pasta["threads"] == expected.stats.threads == 1
    assert pasta["steps"] == expected.stats.steps
    assert pasta["theoretical_speedup"] == pytest.approx(expected.stats.theoretical_speedup, abs=1e-3)
    assert "annotated" not in pasta


def test_max_completion_tokens_is_the_chat_budget(engine, client):
    expected = alone(engine, MESSAGES, chat=True, max_new_tokens=7)
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_completion_tokens=7)
    assert response.choices[0].message.content == expected.text
    assert response.usage.completion_tokens == expected.stats.tokens


def test_completion_with_a_template_decodes_several_threads(engine, client):
    prompt = "Once upon a time"
    expected = alone(engine, prompt, template=TEMPLATE, chat=False, max_new_tokens=30)
    response = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=30, extra_body={"pasta": {"template": TEMPLATE, "annotated": True}}
    )
    assert response.object == "text_completion"
    [choice] = response.choices
    assert choice.text == expected.text
    assert choice.finish_reason == reason(expected)
    pasta = response.model_extra["pasta"]
    assert pasta["threads"] >= 3
    assert pasta["threads"] == expected.stats.threads
    assert pasta["steps"] == expected.stats.steps
    assert pasta["theoretical_speedup"] > 1
    assert pasta["annotated"] == expected.annotated
    assert '<promise topic="x"/>' in pasta["annotated"]
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_sequential_mode_decodes_a_template_in_one_thread(engine, client):
    expected = alone(engine, "Once", template=TEMPLATE, chat=False, max_new_tokens=20, mode="sequential")
    response = client.completions.create(
        model=MODEL, prompt="Once", max_tokens=20, extra_body={"pasta": {"template": TEMPLATE, "mode": "sequential"}}
    )
    assert response.choices[0].text == expected.text
    assert response.model_extra["pasta"]["threads"] == 1


def test_completion_of_several_prompts_answers_each(engine, client):
    prompts = ["Once upon a time", "The river"]
    expected = [alone(engine, p, chat=False, max_new_tokens=12) for p in prompts]
    response = client.completions.create(model=MODEL, prompt=prompts, max_tokens=12)
    assert [c.index for c in response.choices] == [0, 1]
    assert [c.text for c in response.choices] == [e.text for e in expected]
    assert response.usage.completion_tokens == sum(e.stats.tokens for e in expected)
    assert len(response.model_extra["pasta"]) == 2


def test_stop_strings_end_the_answer_streamed_or_not(engine, client):
    full = alone(engine, MESSAGES, chat=True, max_new_tokens=30).text
    stop = full[12:15]
    expected = alone(engine, MESSAGES, chat=True, max_new_tokens=30, stop=[stop])
    assert expected.text == full[: full.index(stop)]  # the stop string does end this answer early
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, stop=stop)
    assert response.choices[0].message.content == expected.text
    assert response.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, stop=[stop], stream=True)
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_sampled_answer_with_a_seed_is_the_engines_with_that_seed(engine, client):
    expected = alone(engine, MESSAGES, chat=True, max_new_tokens=20, temperature=0.8, top_p=0.9, seed=7)
    for _ in range(2):  # the same answer each time
        response = client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=20, temperature=0.8, top_p=0.9, seed=7
        )
        assert response.choices[0].message.content == expected.text
    assert expected.text != alone(engine, MESSAGES, chat=True, max_new_tokens=20).text  # it did sample


def test_content_given_as_text_parts_is_the_text(client):
    parts = [{"type": "text", "text": "Name two "}, {"type": "text", "text": "rivers."}]
    as_parts = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": parts}], max_tokens=8)
    as_text = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)
    assert as_parts.choices[0].message.content == as_text.choices[0].message.content


# -- streams -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", [None, TEMPLATE], ids=["plain", "template"])
def test_streamed_chat_gives_the_answer_in_order(engine, client, template):
    extra = {"pasta": {"template": template}} if template else None
    whole = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=30, extra_body=extra)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    *answer, last = chunks
    text = "".join(c.choices[0].delta.content or "" for c in answer)
    assert text == whole.choices[0].message.content
    assert text == alone(engine, MESSAGES, chat=True, max_new_tokens=30, template=template).text
    assert [c.choices[0].finish_reason for c in answer[:-1]] == [None] * (len(answer) - 1)
    assert answer[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.choices == []
    assert last.usage == whole.usage


def test_streamed_completion_gives_the_answer_in_order(engine, client):
    extra = {"pasta": {"template": TEMPLATE}}
    whole = client.completions.create(model=MODEL, prompt="Once", max_tokens=30, extra_body=extra)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Once",
            max_tokens=30,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra,
        )
    )
    *answer, last = chunks
    assert "".join(c.choices[0].text for c in answer) == whole.choices[0].text
    assert answer[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert answer[-1].model_extra["pasta"]["threads"] == whole.model_extra["pasta"]["threads"]
    assert last.choices == [] and last.usage == whole.usage


def test_a_stream_with_progress_reports_every_step(engine, client):
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="Once",
            max_tokens=20,
            stream=True,
            extra_body={"pasta": {"template": TEMPLATE, "progress": True}},
        )
    )
    expected = alone(engine, "Once", chat=False, max_new_tokens=20, template=TEMPLATE)
    assert "".join(c.choices[0].text for c in chunks) == expected.text
    progress = [c.model_extra["pasta"] for c in chunks if "tokens" in c.model_extra.get("pasta", {})]
    assert [p["steps"] for p in progress] == list(range(expected.stats.steps + 1))  # 0: the prompt's step
    tokens = [p["tokens"] for p in progress]
    assert tokens == sorted(tokens) and tokens[-1] == expected.stats.tokens


def test_a_stream_without_usage_asked_has_no_usage_chunk(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Once", max_tokens=5, stream=True))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert all(c.choices for c in chunks)


def test_a_stream_is_server_sent_events_ending_in_done(served):
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 10, "stream": True}
    with (
        httpx.Client(timeout=TIMEOUT) as http,
        http.stream("POST", served.url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response.iter_lines()))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


# -- many at once ---------------------------------------------------------------------------------------------


def test_concurrent_requests_each_answer_as_decoded_alone(engine, served, client, monkeypatch):
    """Eight requests at once, chat and completions, with templates and without: each answer is the one its
    request gets decoded by itself, token for token.  They are queued while the loop is held, so that they
    are decoded together (several requests in one step)."""
    asks: list[tuple[str, Any, int, str | None]] = [
        ("chat", [{"role": "user", "content": "Name two rivers."}], 24, None),
        ("chat", [{"role": "user", "content": "Three tips for sleep."}], 30, TEMPLATE),
        ("chat", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], 16, None),
        ("chat", [{"role": "user", "content": "Why is the sky blue?"}], 36, 'X <promise topic="a"/><sync/> Y'),
        ("text", "Once upon a time", 20, None),
        ("text", "The river", 30, TEMPLATE),
        ("text", "In a land far away", 40, None),
        ("text", "Tips:", 28, '1. <promise topic="p"/> 2. <promise topic="q"/> 3. <promise topic="r"/><sync/>'),
    ]
    expected = [
        alone(engine, prompt, chat=kind == "chat", max_new_tokens=budget, template=template).text
        for kind, prompt, budget, template in asks
    ]

    def ask(kind: str, prompt: Any, budget: int, template: str | None) -> str:
        extra = {"pasta": {"template": template}} if template else None
        if kind == "chat":
            response = client.chat.completions.create(model=MODEL, messages=prompt, max_tokens=budget, extra_body=extra)
            return response.choices[0].message.content
        response = client.completions.create(model=MODEL, prompt=prompt, max_tokens=budget, extra_body=extra)
        return response.choices[0].text

    batch = served.batch
    metrics = batch.metrics
    assert metrics is not None
    together: list[int] = []  # requests in each step
    step = metrics.step

    def counting(rows: int, requests: int, seconds: float) -> None:
        together.append(requests)
        step(rows, requests, seconds)

    monkeypatch.setattr(metrics, "step", counting)
    with ThreadPoolExecutor(len(asks)) as pool:
        with loop_held(batch):
            futures = [pool.submit(ask, *a) for a in asks]
            wait_until(lambda: batch.stats()["requests_waiting"] == len(asks), "every request to queue")
        answers = [f.result(TIMEOUT) for f in futures]
    assert answers == expected
    assert max(together) >= len(asks) - 1  # all but one at once beside the holding request, then all eight


# -- a client that goes away ---------------------------------------------------------------------------------


def test_a_client_that_disconnects_mid_stream_cancels_its_request(engine, served, client, cancelled):
    batch = served.batch
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 500, "stream": True}  # still running when held
    with (
        httpx.Client(timeout=TIMEOUT) as http,
        http.stream("POST", served.url + "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        events = sse_events(response.iter_lines())
        [job] = batch.running + list(batch.waiting)  # the stream's request
        said = 0
        while said < 2:  # two chunks of text: the request runs
            said += bool(json.loads(next(events))["choices"][0]["delta"].get("content"))
        with loop_held(batch):
            assert job.state == State.RUNNING
            assert batch.stats()["kv_slots_used"] > 0
            response.close()  # the client goes away while its request is still decoding
            wait_until(lambda: job in cancelled, "the server to cancel the request")
    assert job.wait(TIMEOUT)
    assert job.state == State.CANCELLED
    stats = batch.stats
    wait_until(lambda: stats()["requests_running"] == 0 and stats()["kv_slots_used"] == 0, "the pages to go back")
    assert stats()["requests_waiting"] == 0
    expected = alone(engine, MESSAGES, chat=True, max_new_tokens=12).text
    response = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
    assert response.choices[0].message.content == expected


def test_a_client_that_gives_up_waiting_cancels_its_request(engine, served, client, cancelled):
    """Not streamed: the client times out while its request waits (the loop held); the server notices it has
    gone and cancels the request before it ever runs."""
    batch = served.batch
    body = {"model": MODEL, "prompt": "Once", "max_tokens": 200}
    with loop_held(batch):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(served.url + TEXT, json=body, timeout=httpx.Timeout(TIMEOUT, read=0.5))
        wait_until(lambda: len(cancelled) == 1, "the server to cancel the request")
        [job] = cancelled
        assert job.state == State.WAITING
    assert job.wait(TIMEOUT)
    assert job.state == State.CANCELLED
    wait_until(lambda: batch.stats()["kv_slots_used"] == 0, "the pages to go back")
    expected = alone(engine, "Once", chat=False, max_new_tokens=6).text
    assert client.completions.create(model=MODEL, prompt="Once", max_tokens=6).choices[0].text == expected


# -- errors --------------------------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(CHAT, {"model": MODEL, "messages": []}, id="no-messages"),
        pytest.param(CHAT, {"model": MODEL, "messages": MESSAGES, "max_tokens": -1}, id="negative-max-tokens"),
        pytest.param(TEXT, {"model": MODEL, "prompt": "x", "max_tokens": 0}, id="zero-max-tokens"),
        pytest.param(CHAT, {"model": MODEL, "messages": MESSAGES, "temperature": 5}, id="temperature-5"),
        pytest.param(CHAT, {"model": MODEL, "messages": MESSAGES, "n": 2}, id="n-2"),
        pytest.param(CHAT, {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, id="bad-role"),
        pytest.param(CHAT, {"messages": MESSAGES}, id="no-model"),
        pytest.param(CHAT, {"model": MODEL, "messages": MESSAGES, "pasta": {"wdith": 2}}, id="unknown-pasta-option"),
        pytest.param(
            TEXT, {"model": MODEL, "prompt": "x", "pasta": {"template": "a <promise topic=x/>"}}, id="bad-template"
        ),
        pytest.param(TEXT, {"model": MODEL, "prompt": []}, id="no-prompt"),
        pytest.param(TEXT, {"model": MODEL, "prompt": ["a", "b"], "stream": True}, id="stream-of-two-prompts"),
        pytest.param(TEXT, {"model": MODEL, "prompt": "x", "max_tokens": 10**6}, id="budget-past-the-context"),
    ],
)
def test_bad_requests_get_400_in_openai_shape(served, path, body):
    expect_error(httpx.post(served.url + path, json=body, timeout=TIMEOUT), 400)


def test_malformed_json_gets_400(served):
    response = httpx.post(
        served.url + CHAT,
        content=b'{"model": "tiny-llama", "messages": [',
        headers={"content-type": "application/json"},
        timeout=TIMEOUT,
    )
    expect_error(response, 400)


def test_the_openai_client_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=5)
    assert error.value.status_code == 400
    assert "temperature" in error.value.message


def test_an_unknown_model_gets_404(served, client):
    error = expect_error(httpx.post(served.url + TEXT, json={"model": "gpt-9", "prompt": "x"}, timeout=TIMEOUT), 404)
    assert error["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-9", messages=MESSAGES, max_tokens=5)


def test_a_prompt_longer_than_the_context_gets_413(engine, served):
    context = context_length(engine.model.config)
    assert context is not None
    prompt = "the river runs " * context
    assert len(engine.prompt_ids(prompt, chat=False)) > context
    error = expect_error(
        httpx.post(served.url + TEXT, json={"model": MODEL, "prompt": prompt, "max_tokens": 5}, timeout=TIMEOUT), 413
    )
    assert error["code"] == "context_length_exceeded"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 5}
    expect_error(httpx.post(served.url + CHAT, json=chat, timeout=TIMEOUT), 413)
    assert served.batch.stats()["requests_waiting"] == 0


def test_a_refused_prompt_among_several_cancels_the_others(engine, served, cancelled):
    context = context_length(engine.model.config)
    assert context is not None
    body = {"model": MODEL, "prompt": ["Once", "the river runs " * context], "max_tokens": 200}
    expect_error(httpx.post(served.url + TEXT, json=body, timeout=TIMEOUT), 413)
    [first] = cancelled
    assert first.wait(TIMEOUT)
    assert first.state == State.CANCELLED


def test_an_api_key_guards_v1_but_not_health_or_metrics(engine):
    with serving(engine, max_concurrent=1, kv_slots=1024, api_key="sesame") as served:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sesame"}):
            response = httpx.get(served.url + "/v1/models", headers=headers, timeout=TIMEOUT)
            assert expect_error(response, 401)["code"] == "invalid_api_key"
        body = {"model": MODEL, "prompt": "x", "max_tokens": 3}
        expect_error(httpx.post(served.url + TEXT, json=body, timeout=TIMEOUT), 401)
        with pytest.raises(openai.AuthenticationError):
            served.client("wrong").completions.create(**body)
        assert served.client("sesame").completions.create(**body).choices[0].finish_reason in ("stop", "length")
        assert [m.id for m in served.client("sesame").models.list()] == [MODEL]
        assert httpx.get(served.url + "/health", timeout=TIMEOUT).status_code == 200
        assert httpx.get(served.url + "/metrics", timeout=TIMEOUT).status_code == 200


def test_a_full_queue_gets_429(engine):
    """One request at once and none waiting: while one runs (the loop held in its step), the next is refused
    with 429 and a Retry-After; once it has ended the same request is answered."""
    with serving(engine, max_concurrent=1, max_waiting=0, kv_slots=1024) as served:
        body = {"model": MODEL, "prompt": "Once", "max_tokens": 5}
        with loop_held(served.batch):
            assert served.batch.stats()["requests_running"] == 1
            response = httpx.post(served.url + TEXT, json=body, timeout=TIMEOUT)
            assert expect_error(response, 429)["type"] == "rate_limit_error"
            assert response.headers["retry-after"] == "1"
            with pytest.raises(openai.RateLimitError):
                served.client().completions.create(**body)
        wait_until(lambda: served.batch.stats()["requests_running"] == 0, "the holding request to end")
        expected = alone(engine, "Once", chat=False, max_new_tokens=5).text
        assert served.client().completions.create(**body).choices[0].text == expected


# -- the rest of the API -------------------------------------------------------------------------------------


def test_models_lists_the_served_model(client):
    models = list(client.models.list())
    assert [m.id for m in models] == [MODEL]
    assert models[0].object == "model"


def test_a_served_model_name_is_the_one_clients_name(engine):
    with serving(engine, max_concurrent=1, kv_slots=1024, model_name="house-model") as served:
        assert [m.id for m in served.client().models.list()] == ["house-model"]
        response = served.client().completions.create(model="house-model", prompt="x", max_tokens=3)
        assert response.model == "house-model"
        with pytest.raises(openai.NotFoundError):
            served.client().completions.create(model=MODEL, prompt="x", max_tokens=3)


def test_health_says_ok(served):
    response = httpx.get(served.url + "/health", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_metrics_are_prometheus_text_with_the_serving_figures(client, served):
    client.completions.create(model=MODEL, prompt="Once", max_tokens=8, extra_body={"pasta": {"template": TEMPLATE}})
    response = httpx.get(served.url + "/metrics", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for gauge in (
        "pastac_requests_running",
        "pastac_requests_waiting",
        "pastac_tokens_per_second",
        "pastac_kv_slots_used",
        "pastac_kv_slots_total",
    ):
        assert families[gauge].type == "gauge"
    assert families["pastac_kv_slots_total"].samples[0].value == served.batch.pool.capacity
    assert families["pastac_tokens_per_second"].samples[0].value > 0
    for histogram in (
        "pastac_rows_per_step",
        "pastac_time_to_first_token_seconds",
        "pastac_inter_token_latency_seconds",
    ):
        family = families[histogram]
        assert family.type == "histogram"
        count = next(s.value for s in family.samples if s.name == histogram + "_count")
        assert count > 0, histogram
    rows = families["pastac_rows_per_step"]
    assert next(s.value for s in rows.samples if s.name == "pastac_rows_per_step_sum") >= served.batch.steps


# -- shutting down --------------------------------------------------------------------------------------------


def test_shutdown_lets_a_running_stream_finish_and_refuses_new_requests(engine):
    """``ServerThread.stop`` while a stream is under way: the server drains (503 for new requests, /health
    503) and the stream still ends with its whole answer; then the server stops listening."""
    budget = 300  # long enough to be still decoding when the loop is held
    expected = alone(engine, MESSAGES, chat=True, max_new_tokens=budget)
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": budget, "stream": True}
    events: list[str] = []
    under_way = threading.Event()

    def listen(url: str) -> None:
        with httpx.Client(timeout=TIMEOUT) as http, http.stream("POST", url + CHAT, json=body) as response:
            assert response.status_code == 200
            said = 0
            for event in sse_events(response.iter_lines()):
                events.append(event)
                said += event != "[DONE]" and bool(json.loads(event)["choices"][0]["delta"].get("content"))
                if said >= 2:  # two chunks of text: the request runs
                    under_way.set()

    with serving(engine, max_concurrent=2, kv_slots=2048, drain_timeout=10.0) as served:
        batch = served.batch
        stopper = threading.Thread(target=served.server.stop)
        with ThreadPoolExecutor(1) as pool:
            stream = pool.submit(listen, served.url)
            assert under_way.wait(TIMEOUT)
            with loop_held(batch) as blocker:
                [job] = [r for r in batch.running if r is not blocker]
                assert job.state == State.RUNNING
                stopper.start()
                wait_until(lambda: batch.draining, "the server to drain")
                health = httpx.get(served.url + "/health", timeout=TIMEOUT)
                assert health.status_code == 503 and health.json() == {"status": "draining"}
                refused = httpx.post(served.url + TEXT, json={"model": MODEL, "prompt": "x"}, timeout=TIMEOUT)
                assert expect_error(refused, 503)["type"] == "server_error"
                assert refused.headers["retry-after"] == "1"
                assert stopper.is_alive()  # still draining: the running request has not ended
            stream.result(TIMEOUT)
        stopper.join(TIMEOUT)
        assert not stopper.is_alive() and not served.server.thread.is_alive()
        assert job.state == State.DONE
        with pytest.raises(httpx.ConnectError):
            httpx.get(served.url + "/health", timeout=TIMEOUT)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == expected.text
    assert chunks[-1]["choices"][0]["finish_reason"] == reason(expected)


# -- the command line -----------------------------------------------------------------------------------------


def test_serve_help_describes_the_server(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--host", "--port", "--api-key", "--max-concurrent", "--max-waiting", "--drain-timeout"):
        assert option in out


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--max-concurrent", "0"],
        ["serve", "--max-waiting", "-1"],
        ["serve", "--port", "many"],
    ],
)
def test_serve_usage_errors_exit_two(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_serve_refuses_a_negative_drain_timeout(capsys):
    assert main(["serve", "--drain-timeout", "-1"]) == 2
    assert "--drain-timeout" in capsys.readouterr().err


# -- the default model ----------------------------------------------------------------------------------------


def test_the_default_model_served_forks_and_answers_as_alone():
    """Integration (about 30 s): the default model and its shipped adapter behind the server.  Two list
    prompts, streamed and not, decoded together: each forks, and each answer is the one decoded alone."""
    engine = Engine.from_pretrained(kernels="stock", progress=False)
    prompts = ["Give me three tips for better sleep.", "List three benefits of exercise."]
    expected = [engine.generate([{"role": "user", "content": p}], max_new_tokens=80) for p in prompts]
    with serving(engine, max_concurrent=2) as served:
        client = served.client()
        name = client.models.list().data[0].id
        with ThreadPoolExecutor(2) as pool:
            plain = pool.submit(
                client.chat.completions.create,
                model=name,
                messages=[{"role": "user", "content": prompts[0]}],
                max_tokens=80,
            )
            streamed = pool.submit(
                lambda: list(
                    client.chat.completions.create(
                        model=name,
                        messages=[{"role": "user", "content": prompts[1]}],
                        max_tokens=80,
                        stream=True,
                    )
                )
            )
            answer, chunks = plain.result(TIMEOUT * 3), streamed.result(TIMEOUT * 3)
    assert answer.choices[0].message.content == expected[0].text
    assert answer.model_extra["pasta"]["threads"] >= 2
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected[1].text and expected[1].stats.threads >= 2


def test_a_request_the_server_cancels_gets_503_not_a_crash(engine, served):
    """A request cancelled by the server (a shutdown's drain that ran out of time) is answered 503."""
    with ThreadPoolExecutor(1) as pool:
        with loop_held(served.batch):
            reply = pool.submit(
                httpx.post,
                served.url + "/v1/completions",
                json={"model": MODEL, "prompt": "long", "max_tokens": 400},
                timeout=TIMEOUT,
            )
            wait_until(lambda: len(served.batch.waiting) == 1, "the request to be queued")
            served.batch.cancel(served.batch.waiting[0])
        response = reply.result(TIMEOUT)
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "the request was cancelled: the server is shutting down"
