"""``pastac.openai_client`` and ``pastac data responses --url``: against servers on 127.0.0.1 only.

A scripted fake server (``http.server`` on a thread) answers as each test says and records what it was
asked, when, and how many requests it held at once; the end-to-end tests run the command against
``pastac serve``'s app over a tiny random model. Every client here has a timeout and few attempts, and every
delay is a fraction of a second.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pastac.cli.main import main
from pastac.data.annotate import openai_generate
from pastac.data.responses import OpenAIResponder, write_responses
from pastac.data.step import PipelineError
from pastac.jsonl import read_records, write_records
from pastac.openai_client import (
    ChatRequest,
    Completion,
    OpenAIClient,
    Retries,
    ServerError,
    api_base,
    ordered_map,
    retry_after,
    seed_for,
)

TIMEOUT = 10.0  # seconds: every client's bound, and every wait's
QUICK = Retries(attempts=4, backoff=0.02, max_delay=1.0)


# -- a scripted server ---------------------------------------------------------------------------------------


@dataclass
class Reply:
    """What the fake server answers: a status, a JSON body, headers, after ``delay`` seconds."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Asked:
    """A request the fake server got."""

    time: float
    path: str
    headers: dict[str, str]
    body: Any


def completion(text: str, reason: str = "stop", model: str = "m") -> dict[str, Any]:
    """An OpenAI chat completion's body."""
    message = {"role": "assistant", "content": text}
    return {
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": reason}],
    }


def error(status: int, message: str) -> Reply:
    """An OpenAI-shaped error answer."""
    return Reply(status, {"error": {"message": message, "type": "error", "param": None, "code": None}})


def echo(index: int, body: Any) -> Reply:
    """The user's message back, finished."""
    return Reply(body=completion(f"answer to {body['messages'][-1]['content']}"))


class FakeServer:
    """A server on 127.0.0.1 that answers each request with ``answer(index, body)``, recording every request and
    the most it held at once.  ``with FakeServer(answer) as server: server.url``."""

    def __init__(self, answer: Callable[[int, Any], Reply]) -> None:
        self.answer = answer
        self.asked: list[Asked] = []
        self.lock = threading.Lock()
        self.in_flight = self.most = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.loads(raw) if raw else None
                with fake.lock:
                    index = len(fake.asked)
                    fake.asked.append(Asked(time.monotonic(), self.path, dict(self.headers), body))
                    fake.in_flight += 1
                    fake.most = max(fake.most, fake.in_flight)
                try:
                    reply = fake.answer(index, body)
                    time.sleep(reply.delay)
                    data = json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.http.handle_error = lambda *args: None  # a client that gave up: nothing to report
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> FakeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.thread.join(TIMEOUT)

    def client(self, **settings: Any) -> OpenAIClient:
        return OpenAIClient(self.url, **{"timeout": TIMEOUT, "retries": QUICK, **settings})


def scripted(*replies: Reply) -> Callable[[int, Any], Reply]:
    """Answer the i-th request with ``replies[i]`` (the last one from then on)."""
    return lambda index, body: replies[min(index, len(replies) - 1)]


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gaps(server: FakeServer) -> list[float]:
    """Seconds between the requests the server got."""
    times = [a.time for a in server.asked]
    return [b - a for a, b in itertools.pairwise(times)]


# -- the client ----------------------------------------------------------------------------------------------


def test_a_chat_completion_sends_the_settings_and_reads_text_and_finish_reason():
    with FakeServer(scripted(Reply(body=completion("Hello.", "length", "served")))) as server:
        request = ChatRequest("Say hi.", "m", max_tokens=7, temperature=0.5, top_p=0.9, seed=3, extra={"x": 1})
        with server.client(api_key="sekret") as client:
            reply = client.chat(request)
        assert reply == Completion("Hello.", "length", "served") and not reply.finished
        [asked] = server.asked
    assert asked.path == "/v1/chat/completions"
    assert asked.headers["Authorization"] == "Bearer sekret"
    assert asked.body == {
        "model": "m",
        "messages": [{"role": "user", "content": "Say hi."}],
        "max_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "seed": 3,
        "x": 1,
    }
    assert Completion("x", "stop").finished and not Completion("x", None).finished


def test_settings_left_unset_are_not_sent_and_no_key_no_header():
    with FakeServer(scripted(Reply(body=completion("ok")))) as server, server.client() as client:
        client.chat(ChatRequest([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "m"))
        [asked] = server.asked
    assert asked.body == {
        "model": "m",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    }
    assert "Authorization" not in asked.headers


def test_429_and_503_are_retried_with_growing_backoff_then_the_answer_comes():
    retries = Retries(attempts=4, backoff=0.1, max_delay=1.0)
    replies = (error(429, "slow down"), error(503, "overloaded"), Reply(body=completion("done")))
    with FakeServer(scripted(*replies)) as server, server.client(retries=retries) as client:
        assert client.chat(ChatRequest("p", "m")).text == "done"
        assert len(server.asked) == 3
        first, second = gaps(server)
    # jitter keeps at least half of each step: 0.1 x 2^(k-1) / 2 before retry k
    assert first >= 0.05 and second >= 0.1


def test_retry_after_is_honoured():
    replies = (Reply(429, {"error": {"message": "busy"}}, {"Retry-After": "0.3"}), Reply(body=completion("done")))
    with FakeServer(scripted(*replies)) as server, server.client(retries=Retries(attempts=2, backoff=0.001)) as client:
        assert client.chat(ChatRequest("p", "m")).text == "done"
        [gap] = gaps(server)
    assert gap >= 0.29


def test_the_client_gives_up_after_its_attempts_with_a_clear_error():
    with FakeServer(scripted(error(503, "the engine is overloaded"))) as server, server.client() as client:
        with pytest.raises(ServerError) as caught:
            client.chat(ChatRequest("p", "m"))
        assert len(server.asked) == QUICK.attempts == 4
    failure = caught.value
    assert isinstance(failure, RuntimeError)
    assert (failure.status, failure.attempts) == (503, 4)
    message = str(failure)
    assert f"POST {server.url}/chat/completions" in message
    assert "HTTP 503" in message and "the engine is overloaded" in message and "after 4 attempts" in message


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        (error(400, "max_tokens: must be >= 1"), "max_tokens: must be >= 1"),
        (Reply(404, {"message": "The model `x` does not exist."}), "The model `x` does not exist."),  # vLLM's shape
        (Reply(422, {"detail": "bad field"}), "bad field"),
        (Reply(401, "no key"), "no key"),
    ],
)
def test_other_4xx_fail_at_once_with_the_servers_message(reply, shown):
    with FakeServer(scripted(reply)) as server, server.client() as client:
        with pytest.raises(ServerError) as caught:
            client.chat(ChatRequest("p", "m"))
        assert len(server.asked) == 1
    message = str(caught.value)
    assert message.startswith(f"POST {server.url}/chat/completions: HTTP {reply.status} ")
    assert shown in message and "attempts" not in message


def test_a_timeout_is_retried():
    replies = (Reply(body=completion("late"), delay=1.0), Reply(body=completion("on time")))
    with FakeServer(scripted(*replies)) as server, server.client(timeout=0.3) as client:
        assert client.chat(ChatRequest("p", "m")).text == "on time"
        assert len(server.asked) == 2


def test_an_unreachable_server_is_retried_then_named():
    url = f"http://127.0.0.1:{closed_port()}/v1"
    started = time.monotonic()
    client = OpenAIClient(url, timeout=TIMEOUT, retries=Retries(attempts=3, backoff=0.1))
    with client, pytest.raises(ServerError) as caught:
        client.chat(ChatRequest("p", "m"))
    assert time.monotonic() - started >= 0.05 + 0.1  # two backoffs, each at least half its step
    assert caught.value.status is None and caught.value.attempts == 3
    assert f"POST {url}/chat/completions: cannot connect" in str(caught.value)


def test_a_reply_that_is_not_a_completion_is_an_error():
    with (
        FakeServer(scripted(Reply(body={"choices": []}))) as server,
        server.client() as client,
        pytest.raises(ServerError, match="unexpected reply"),
    ):
        client.chat(ChatRequest("p", "m"))


@pytest.mark.parametrize("concurrency", [1, 3])
def test_concurrency_is_bounded_and_used(concurrency):
    total = 4 * concurrency
    server: FakeServer

    def first_held(index: int, body: Any) -> Reply:
        """Hold the first requests until ``concurrency`` are held (bounded): a client that sent more at once
        would be seen holding more; the others overlap a little."""
        deadline = time.monotonic() + TIMEOUT
        while index < concurrency and time.monotonic() < deadline:
            with server.lock:
                if server.in_flight >= concurrency:
                    break
            time.sleep(0.002)
        return Reply(body=echo(index, body).body, delay=0.01)

    with FakeServer(first_held) as server, server.client() as client:
        requests = [ChatRequest(f"p{i}", "m") for i in range(total)]
        replies = client.chat_all(requests, concurrency=concurrency)
        assert server.most == concurrency  # never more, and all of them used
        assert len(server.asked) == total
    assert [r.text for r in replies] == [f"answer to p{i}" for i in range(total)]


def test_completions_come_in_the_requests_order_whatever_order_they_end_in():
    def later_first(index: int, body: Any) -> Reply:
        number = int(body["messages"][0]["content"][1:])
        return Reply(body=completion(f"a{number}"), delay=0.02 * (6 - number))

    with FakeServer(later_first) as server, server.client() as client:
        replies = client.chat_all([ChatRequest(f"p{i}", "m") for i in range(6)], concurrency=6)
    assert [r.text for r in replies] == [f"a{i}" for i in range(6)]


def test_each_completion_comes_as_soon_as_those_before_it_are_done():
    release = threading.Event()

    def second_waits(index: int, body: Any) -> Reply:
        if body["messages"][0]["content"] == "p1":
            release.wait(TIMEOUT)
        return echo(index, body)

    with FakeServer(second_waits) as server, server.client() as client:
        each = client.chat_each([ChatRequest(f"p{i}", "m") for i in range(3)], concurrency=2)
        try:
            assert next(each).text == "answer to p0"
            assert not release.is_set()  # p1 still held: p0 came first
            release.set()
            assert [c.text for c in each] == ["answer to p1", "answer to p2"]
        finally:
            release.set()
            each.close()


def test_ordered_map_takes_few_items_ahead_and_stops_at_the_first_failure():
    called: list[int] = []

    def fail_first(item: int) -> int:
        called.append(item)
        if item == 0:
            raise ValueError("no")
        return item

    with pytest.raises(ValueError, match="no"):
        list(ordered_map(fail_first, range(1000), concurrency=1))
    time.sleep(0.05)
    assert set(called) <= {0, 1}  # two taken ahead at most; the rest never started
    assert list(ordered_map(lambda x: x * x, range(10), concurrency=4)) == [x * x for x in range(10)]
    with pytest.raises(ValueError, match="concurrency"):
        ordered_map(abs, [1], concurrency=0)


def test_urls_with_or_without_v1():
    assert api_base("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert api_base("http://127.0.0.1:8000/") == "http://127.0.0.1:8000/v1"
    assert api_base("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    assert api_base("https://example.org/api/v1") == "https://example.org/api/v1"
    for bad in ("file:///etc/passwd", "ftp://host/v1", "127.0.0.1:8000/v1", "http://", "http://h/v1?key=x"):
        with pytest.raises(ValueError):
            api_base(bad)


def test_backoff_delays_and_retry_after_values():
    retries = Retries(attempts=5, backoff=1.0, max_delay=3.0)
    for retry, step in ((1, 1.0), (2, 2.0), (3, 3.0), (4, 3.0)):
        delays = [retries.delay(retry) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays) and len(set(delays)) > 1
    assert retries.delay(1, retry_after=2.5) == 2.5 and retries.delay(1, retry_after=100) == 3.0
    assert retry_after("2") == 2.0 and retry_after("0.5") == 0.5
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date past
    assert retry_after(None) is retry_after("soon") is retry_after("-1") is None
    with pytest.raises(ValueError):
        Retries(attempts=0)


def test_seeds_are_stable_and_differ_across_prompts():
    assert seed_for(0, "a") == seed_for(0, "a")
    assert len({seed_for(0, k) for k in "abcdef"}) == 6 and seed_for(1, "a") != seed_for(0, "a")
    assert all(0 <= seed_for(s, k) < 2**31 for s in range(5) for k in "abc")


def test_openai_generate_is_the_client_at_temperature_0():
    with FakeServer(scripted(Reply(body=completion("annotated")))) as server:
        generate = openai_generate(server.url, "judge", api_key="k", timeout=TIMEOUT)
        assert generate("Which is better?") == "annotated"
        [asked] = server.asked
    assert asked.body["temperature"] == 0 and asked.body["model"] == "judge"
    assert asked.headers["Authorization"] == "Bearer k"
    with FakeServer(scripted(error(400, "context too long"))) as server:
        with pytest.raises(RuntimeError, match="context too long") as caught:
            openai_generate(server.url, "judge", timeout=TIMEOUT)("x")
        assert server.url in str(caught.value)


# -- the responder and the command against the fake server ---------------------------------------------------


def prompt_records(n: int, category: str = "list") -> list[dict[str, Any]]:
    return [{"id": f"q{i}", "prompt": f"p{i}", "category": category} for i in range(n)]


def test_a_failure_keeps_the_answers_before_it(tmp_path):
    def fourth_is_bad(index: int, body: Any) -> Reply:
        prompt = body["messages"][0]["content"]
        return error(400, "prompt p3 is refused") if prompt == "p3" else echo(index, body)

    out = tmp_path / "r.jsonl"
    with FakeServer(fourth_is_bad) as server, server.client() as client:
        responder = OpenAIResponder(client, "m", concurrency=2)
        with pytest.raises(PipelineError) as caught:
            write_responses(prompt_records(8), out, responder, model_name="m", batch_size=2, progress=False)
    message = str(caught.value)
    assert "HTTP 400" in message and "prompt p3 is refused" in message and server.url in message
    assert f"3 responses written to '{out}' this run; run again to resume" in message
    assert [r["response"] for r in read_records(out)] == ["answer to p0", "answer to p1", "answer to p2"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``pastac ARGV`` in this process: the exit status, stdout and stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's own errors
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_command_sends_the_settings_and_seeds_sampled_requests(capsys, tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    write_records(prompts, prompt_records(4))

    def some_cut(index: int, body: Any) -> Reply:
        prompt = body["messages"][0]["content"]
        return Reply(body=completion(f"  answer to {prompt}\n", "length" if prompt in ("p1", "p2") else "stop"))

    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    with FakeServer(some_cut) as server:
        common = ["data", "responses", "--url", server.url, "--model", "served", "--prompts", str(prompts), "-q"]
        code, out, err = run(
            capsys,
            *common,
            "--out",
            str(tmp_path / "sampled.jsonl"),
            "--temperature",
            "0.7",
            "--sample-seed",
            "5",
            "--repetition-penalty",
            "1.2",
            "--max-new-tokens",
            "9",
            "--concurrency",
            "2",
        )
        assert code == 0, err
        assert "4 written" in out and "2 of them hit the token limit" in out
        sampled = list(server.asked)
        code, _, err = run(capsys, *common, "--out", str(tmp_path / "greedy.jsonl"), "--api-key", "given")
        assert code == 0, err
        greedy = server.asked[len(sampled) :]
    records = read_records(tmp_path / "sampled.jsonl")
    assert [(r["id"], r["response"], r["finished"], r["model"]) for r in records] == [
        ("q0", "answer to p0", True, "served"),
        ("q1", "answer to p1", False, "served"),
        ("q2", "answer to p2", False, "served"),
        ("q3", "answer to p3", True, "served"),
    ]
    assert set(records[0]) == {"id", "prompt", "category", "forkable", "split", "response", "model", "finished"}
    seeds = {}
    for asked in sampled:
        body = asked.body
        assert asked.headers["Authorization"] == "Bearer from-env"
        assert (body["model"], body["max_tokens"], body["temperature"], body["top_p"]) == ("served", 9, 0.7, 1.0)
        assert body["repetition_penalty"] == 1.2
        seeds[body["messages"][0]["content"]] = body["seed"]
    assert seeds == {f"p{i}": seed_for(5, f"q{i}") for i in range(4)}  # the same on every run
    assert len(set(seeds.values())) == 4
    for asked in greedy:
        assert asked.headers["Authorization"] == "Bearer given"
        assert asked.body["temperature"] == 0 and asked.body["max_tokens"] == 384
        assert not {"seed", "top_p", "repetition_penalty"} & set(asked.body)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--url", "http://127.0.0.1:9/v1"], "--url needs --model NAME"),
        (["--url", "ftp://127.0.0.1/v1", "--model", "m"], "--url: the URL must start with http:// or https://"),
        (["--url", "http://127.0.0.1:9/v1", "--model", "m", "--device", "cpu"], "--device applies to a local model"),
        (["--url", "http://127.0.0.1:9/v1", "--model", "m", "--batch-size", "4"], "--batch-size applies to a local"),
        (["--concurrency", "2"], "--concurrency applies to --url"),
        (["--api-key", "k", "--timeout", "5"], "--api-key, --timeout applies to --url"),
        (["--url", "http://127.0.0.1:9/v1", "--model", "m", "--concurrency", "0"], "must be >= 1"),
    ],
)
def test_server_options_usage_errors_exit_2(capsys, tmp_path, options, message):
    prompts = tmp_path / "prompts.jsonl"
    write_records(prompts, prompt_records(1))
    code, out, err = run(
        capsys, "data", "responses", "--prompts", str(prompts), "--out", str(tmp_path / "r.jsonl"), *options
    )
    assert (code, out) == (2, "") and message in err
    assert not (tmp_path / "r.jsonl").exists()


def test_the_annotators_url_is_checked_as_the_clients(capsys, tmp_path):
    responses = tmp_path / "responses.jsonl"
    write_records(responses, [{"id": "a", "prompt": "p", "response": "r", "finished": True}])
    for url, message in (("http://", "names no host"), ("ftp://h/v1", "must start with http:// or https://")):
        argv = ["--annotator", "llm", "--url", url, "--llm-model", "m"]
        code, _, err = run(
            capsys, "data", "annotate", "--responses", str(responses), "--out", str(tmp_path / "a"), *argv
        )
        assert code == 2 and f"--url: the URL {message}" in err


# -- end to end: pastac serve --------------------------------------------------------------------------------

MODEL = "tiny-llama"
KEY = "secret"


@dataclass
class Served:
    """``pastac serve``'s app on 127.0.0.1, the engine behind it, and the chat completions it was asked for."""

    url: str
    engine: Any
    asked: list[str]


@pytest.fixture(scope="module")
def served(tiny_engine) -> Iterator[Served]:
    from pastac.runtime.batch import BatchEngine
    from pastac.serve.app import create_app
    from pastac.serve.server import ServerThread

    engine = tiny_engine(MODEL)
    app = create_app(BatchEngine(engine, kv_slots=4096, max_concurrent=4), api_key=KEY)
    asked: list[str] = []

    @app.middleware("http")
    async def count(request, call_next):
        if request.method == "POST" and request.url.path == "/v1/chat/completions":
            asked.append(request.url.path)
        return await call_next(request)

    with ServerThread(app) as server:
        yield Served(server.url, engine, asked)


def test_responses_from_pastac_serve_resume_and_survive_an_unreachable_server(capsys, tmp_path, served, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    records = [
        {"id": f"{category}-{i}", "prompt": f"Name {i + 2} {category}.", "category": category}
        for i in range(3)
        for category in ("rivers", "trees")
    ]
    write_records(prompts, records)
    out = tmp_path / "responses.jsonl"
    argv = ["data", "responses", "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "6", "-q"]
    server = ["--url", served.url + "/v1", "--model", MODEL, "--concurrency", "2"]
    code, stdout, err = run(capsys, *argv, *server, "--api-key", KEY, "--limit", "3")
    assert code == 0, err
    assert stdout.startswith("responses: 3 written") and len(served.asked) == 3
    written = read_records(out)
    for record in written:
        alone = served.engine.generate([{"role": "user", "content": record["prompt"]}], chat=True, max_new_tokens=6)
        assert record["response"] == alone.text.strip()
        assert record["finished"] is (str(alone.finish_reason) != "length")
        assert record["model"] == MODEL
    before = out.read_text()

    # a rerun asks for the rest only (the key from the environment, the URL without /v1)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    code, stdout, err = run(capsys, *argv, "--url", served.url, "--model", MODEL, "--limit", "5")
    assert code == 0, err
    assert "2 written, 3 already done" in stdout and len(served.asked) == 5
    assert out.read_text().startswith(before) and len(read_records(out)) == 5
    before = out.read_text()

    # another model may not be mixed in; nothing is asked
    code, _, err = run(capsys, *argv, "--url", served.url, "--model", "other", "--limit", "6")
    assert code == 2 and "made with model 'tiny-llama'" in err and len(served.asked) == 5

    # a wrong key fails at once (no retry), what was written stays
    code, _, err = run(capsys, *argv, *server, "--api-key", "wrong", "--limit", "6")
    assert code == 2 and "HTTP 401" in err and "a valid API key is needed" in err
    assert "0 responses written" in err and "run again to resume" in err
    assert len(served.asked) == 6 and out.read_text() == before

    # an unreachable server: exit 2, a clear message, the file as it was
    unreachable = f"http://127.0.0.1:{closed_port()}/v1"
    code, stdout, err = run(capsys, *argv, "--url", unreachable, "--model", MODEL, "--retries", "1", "--limit", "6")
    assert (code, stdout) == (2, "")
    assert f"POST {unreachable}/chat/completions: cannot connect" in err and "after 2 attempts" in err
    assert f"0 responses written to '{out}' this run; run again to resume" in err
    assert out.read_text() == before

    # and the same command against the server again finishes the file
    code, stdout, err = run(capsys, *argv, *server, "--limit", "6")
    assert code == 0, err
    assert "1 written, 5 already done" in stdout and len(served.asked) == 7 and len(read_records(out)) == 6
