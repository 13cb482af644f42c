"""``pastac serve --ray``: replicas of the server on Ray Serve, over a tiny random model saved to disk.

The command line's checks run without Ray (and never start it).  The tests marked ``ray`` start a local Ray
cluster in this process (two CPUs, no dashboard) and run ``pastac serve --ray ADDRESS --replicas 2`` against it
in a subprocess, as a user would, with Serve's HTTP proxy on 127.0.0.1 at a free port.  Each replica takes at
most two requests at once (``--max-concurrent 2 --max-waiting 0``), so eight sent at once must be spread over
both replicas; every answer must equal the one-process server's answer to the same (greedy) request.  Then
SIGTERM stops the command, and a last one is sent to a command whose replicas are still starting.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pastac.cli.main import build_parser, main

# Ray's own configuration classes warn on import under pydantic 2; not pastac's to fix
pytestmark = pytest.mark.filterwarnings("ignore:Using extra keyword arguments on `Field`:DeprecationWarning")

TIMEOUT = 60.0  # seconds: every request's bound
START_TIMEOUT = 180.0  # seconds for the command to connect, start Serve and load the model in both replicas
KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPLICA_HEADER = "x-pastac-replica"
REPLICAS = 2  # started by `pastac serve --ray`
# the model options of both servers; one torch thread and greedy decoding make their answers the same
MODEL_OPTIONS = ["--no-adapter", "--kernels", "stock", "--torch-threads", "1", "--max-concurrent", "2"]
TEMPLATE = 'A <promise topic="x"/> B <promise topic="y"/><sync/> C'


def chat(text: str, **more: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/chat/completions", {"messages": [{"role": "user", "content": text}], "max_tokens": 24, **more}


def completion(text: str, **more: Any) -> tuple[str, dict[str, Any]]:
    return "/v1/completions", {"prompt": text, "max_tokens": 24, **more}


# eight requests sent at once; the streamed ones are compared with the same request answered whole
REQUESTS = [
    chat("Name two rivers."),
    chat("Give me three tips for sleep."),
    chat("Plan a trip.", pasta={"template": TEMPLATE}),
    chat("List four fruits.", stream=True),
    chat("Count to five.", stream=True, stream_options={"include_usage": True}),
    completion("Once upon a time"),
    completion("The capital of France is"),
    chat("Why is the sky blue?", max_tokens=32),
]


# -- the command line, without Ray ------------------------------------------------------------------------------


@pytest.fixture
def no_ray_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command gets as far as Ray."""
    from pastac.serve import command

    def refused(_args: Any) -> int:
        raise AssertionError("the command went on to start Ray")

    monkeypatch.setattr(command, "_run_on_ray", refused)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--replicas", "2"], "--replicas needs --ray"),
        (["--max-replicas", "3"], "--max-replicas needs --ray"),
        (["--cpus-per-replica", "2"], "--cpus-per-replica needs --ray"),
        (["--ray", "--replicas", "2", "--max-replicas", "3"], "exclude each other"),
        (["--ray", "--replicas", "2", "--min-replicas", "1"], "exclude each other"),
        (["--ray", "--min-replicas", "2"], "--min-replicas needs --max-replicas"),
        (["--ray", "--target-ongoing-requests", "4"], "--target-ongoing-requests needs --max-replicas"),
        (["--ray", "--min-replicas", "3", "--max-replicas", "2"], "--min-replicas (3) is more than --max-replicas"),
        (["--ray", "--gpus-per-replica", "1"], "--gpus-per-replica needs --device cuda"),
        (["--ray", "--device", "cuda", "--gpus-per-replica", "0"], "--gpus-per-replica must be > 0"),
        (["--ray", "--port", "0"], "--ray needs a fixed --port"),
        (["--ray", ""], "the address is empty"),
    ],
)
def test_replica_options_that_make_no_sense_are_usage_errors(no_ray_started, capsys, argv, says):
    assert main(["serve", *argv]) == 2
    assert says in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["--ray", "--replicas", "0"],
        ["--ray", "--max-replicas", "0"],
        ["--ray", "--min-replicas", "-1", "--max-replicas", "2"],
        ["--ray", "--cpus-per-replica", "-1"],
        ["--ray", "--max-replicas", "2", "--target-ongoing-requests", "0"],
    ],
)
def test_bad_replica_numbers_exit_two(no_ray_started, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *argv])
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_ray_missing_is_a_usage_error_naming_the_extra(monkeypatch, capsys):
    import pastac.serve

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails: Ray cannot start
    monkeypatch.delitem(sys.modules, "pastac.serve.ray_serve", raising=False)
    monkeypatch.delattr(pastac.serve, "ray_serve", raising=False)
    assert main(["serve", "--ray", "--replicas", "2"]) == 2
    err = capsys.readouterr().err
    assert "--ray needs Ray Serve" in err and "pip install 'pastac[ray]'" in err


def test_neither_pastac_nor_its_command_line_imports_ray():
    code = "import sys, pastac, pastac.cli.main, pastac.serve.command, pastac.serve.app; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.ray
def test_replica_options_map_onto_serve_deployment_options():
    from pastac.serve.ray_serve import deployment_options, replica_options

    def options(*argv: str) -> dict[str, Any]:
        return deployment_options(build_parser().parse_args(["serve", "--ray", *argv]))

    fixed = options("--replicas", "3", "--max-concurrent", "4", "--max-waiting", "6", "--drain-timeout", "5")
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 10  # what a replica's engine takes: running and queued
    assert fixed["ray_actor_options"] == {"num_cpus": 1}
    assert fixed["graceful_shutdown_timeout_s"] > 5
    assert options()["num_replicas"] == 1
    scaling = options("--max-replicas", "4", "--max-concurrent", "3")
    assert scaling["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 3}
    assert "num_replicas" not in scaling
    scaling = options("--min-replicas", "0", "--max-replicas", "2", "--target-ongoing-requests", "1.5")
    assert scaling["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 1.5}
    assert options("--device", "cuda")["ray_actor_options"] == {"num_cpus": 1, "num_gpus": 1}
    assert options("--device", "cuda", "--gpus-per-replica", "0.5", "--cpus-per-replica", "2")["ray_actor_options"] == {
        "num_cpus": 2,
        "num_gpus": 0.5,
    }
    args = build_parser().parse_args(["serve", "--ray", "--model", "m", "--api-key", "k", "--port", "9000"])
    given = replica_options(args)
    assert given["model"] == "m" and given["api_key"] == "k" and "port" not in given and "run" not in given


@pytest.mark.ray
def test_a_proxy_that_does_not_start_is_a_clear_error(monkeypatch):
    from ray.exceptions import RayError

    from pastac.cli.common import UsageError
    from pastac.serve import ray_serve

    def dies(**_options: Any) -> None:
        raise RayError("The actor died unexpectedly before finishing this task.\n\tclass_name: ProxyActor")

    monkeypatch.setattr(ray_serve.serve, "start", dies)
    args = build_parser().parse_args(["serve", "--ray", "--port", "8123"])
    with pytest.raises(UsageError) as refused:
        ray_serve.Deployed(args).start()
    says = str(refused.value)
    assert "Serve's HTTP proxy did not start on 127.0.0.1:8123: The actor died unexpectedly" in says
    assert ray_serve.PROXY_READY_VARIABLE in says and "class_name" not in says


# -- replicas on a local Ray cluster -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(ray_cluster) -> Iterator[str]:
    """The session's local Ray cluster (``ray_cluster``, conftest.py): its address.  Serve is shut down at the
    end of the module."""
    from ray import serve

    try:
        yield ray_cluster.get_runtime_context().gcs_address
    finally:
        serve.shutdown()


@dataclass
class Served:
    """``pastac serve --ray`` running in a subprocess, and the one-process server's answers."""

    process: subprocess.Popen
    url: str
    log: Path
    expected: list[httpx.Response]
    model: str = ""
    sent: list[int] = field(default_factory=lambda: [0])  # requests sent to the engines so far

    def post(self, route: str, body: dict[str, Any]) -> httpx.Response:
        self.sent[0] += 1
        return httpx.post(self.url + route, json={"model": self.model, **body}, headers=AUTH, timeout=TIMEOUT)

    def said(self, text: str) -> bool:
        return text in self.log.read_text(errors="replace")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers_alone(model: Path) -> tuple[str, list[httpx.Response]]:
    """The model's id, and the one-process server's answer to each of ``REQUESTS`` (streamed ones whole)."""
    import torch

    from pastac.cli.options import load_engine
    from pastac.runtime.batch import BatchEngine
    from pastac.serve.app import create_app
    from pastac.serve.server import ServerThread

    args = build_parser().parse_args(["serve", "--model", str(model), *MODEL_OPTIONS, "-q"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        batch = BatchEngine(load_engine(args, adapter=None), max_concurrent=2)
        with ServerThread(create_app(batch, api_key=KEY)) as server:
            name = batch.engine.name
            whole = [(route, {k: v for k, v in body.items() if not k.startswith("stream")}) for route, body in REQUESTS]
            return name, [
                httpx.post(server.url + route, json={"model": name, **body}, headers=AUTH, timeout=TIMEOUT)
                for route, body in whole
            ]
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def served(cluster: str, saved_tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``pastac serve --ray CLUSTER --replicas 2`` on 127.0.0.1 at a free port, ready to answer."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-ray") / "serve.log"
    argv = [sys.executable, "-m", "pastac", "serve", "--ray", cluster, "--replicas", str(REPLICAS), "--model"]
    argv += [str(saved_tiny_model), *MODEL_OPTIONS, "--max-waiting", "0", "--api-key", KEY, "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        model, expected = answers_alone(saved_tiny_model)  # while the replicas start
        served = Served(process, f"http://127.0.0.1:{port}", log, expected, model)
        deadline = time.monotonic() + START_TIMEOUT
        # Serve's proxy answers as soon as one replica runs; the command says it serves once they all do
        while not served.said("pastac: serving"):
            assert process.poll() is None, f"pastac serve --ray exited {process.returncode}:\n{served.output()}"
            assert time.monotonic() < deadline, f"the replicas did not start in time:\n{served.output()}"
            time.sleep(0.5)
        # the proxy may route to the first replica alone for a moment more
        assert len(each_replica(served.url, "/v1/models")) == REPLICAS, served.output()
        yield served
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(TIMEOUT)


def each_replica(url: str, route: str, *, within: float = TIMEOUT) -> dict[str, httpx.Response]:
    """The latest answer of every replica to GET ``route`` through Serve's proxy, asked until each of the
    ``REPLICAS`` answered or ``within`` seconds passed.  The proxy routes each request to one replica, by the
    queue lengths it last heard of, which it keeps for ten seconds: a run of requests can all reach one."""
    seen: dict[str, httpx.Response] = {}
    deadline = time.monotonic() + within
    while len(seen) < REPLICAS and time.monotonic() < deadline:
        response = httpx.get(url + route, headers=AUTH, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        seen[response.headers[REPLICA_HEADER]] = response
        time.sleep(0.1)
    return seen


def events(response: httpx.Response) -> list[dict[str, Any]]:
    """The chunks of a server-sent event stream, checking it ends with [DONE]."""
    data = [line.removeprefix("data: ") for line in response.text.splitlines() if line]
    assert data and data[-1] == "[DONE]", response.text
    return [json.loads(d) for d in data[:-1]]


def same_answer(got: httpx.Response, expected: httpx.Response, body: dict[str, Any]) -> None:
    """``got`` (through Serve, maybe streamed) answers as ``expected`` (one process, whole) did."""
    assert got.status_code == 200 == expected.status_code, got.text
    want = expected.json()
    if not body.get("stream"):
        answer = got.json()
        assert answer["object"] == want["object"] and answer["id"].startswith(want["id"].split("-")[0])
        for key in ("model", "choices", "usage", "pasta"):
            assert answer[key] == want[key], key
        return
    assert got.headers["content-type"].startswith("text/event-stream")
    chunks = events(got)
    choices = [c["choices"][0] for c in chunks if c["choices"]]
    text = "".join(c["delta"].get("content") or "" for c in choices)
    assert text == want["choices"][0]["message"]["content"]
    assert choices[-1]["finish_reason"] == want["choices"][0]["finish_reason"]
    finals = [c for c in chunks if "pasta" in c]
    assert finals and finals[-1]["pasta"] == want["pasta"]
    if body.get("stream_options", {}).get("include_usage"):
        assert chunks[-1]["usage"] == want["usage"]


def per_replica(url: str) -> dict[str, dict[str, float]]:
    """Each replica's figures from ``/metrics`` (one replica answers each scrape)."""
    return {
        replica: {
            sample.name: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name.startswith("pastac_")
        }
        for replica, response in each_replica(url, "/metrics").items()
    }


@pytest.mark.ray
def test_two_replicas_answer_concurrent_requests_as_one_process_does(served):
    """Eight requests at once through Serve's proxy: well-formed answers, equal to the one-process server's,
    from both replicas; each replica's /metrics counts the requests it served."""
    start = threading.Barrier(len(REQUESTS))

    def send(request: tuple[str, dict[str, Any]]) -> httpx.Response:
        start.wait(TIMEOUT)
        return served.post(*request)

    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        futures = [pool.submit(send, request) for request in REQUESTS]
        replies = [future.result(TIMEOUT * 2) for future in futures]
    for reply, expected, (_route, body) in zip(replies, served.expected, REQUESTS, strict=True):
        same_answer(reply, expected, body)
    replicas = {reply.headers[REPLICA_HEADER] for reply in replies}
    assert len(replicas) == REPLICAS, f"one replica served every request: {replicas}"

    figures = per_replica(served.url)
    assert set(figures) == replicas
    finished = {replica: f["pastac_requests_finished_total"] for replica, f in figures.items()}
    assert all(count >= 1 for count in finished.values()), finished
    assert sum(finished.values()) == served.sent[0]  # each counts its own requests
    assert all(f["pastac_requests_running"] == 0 for f in figures.values())


@pytest.mark.ray
def test_models_health_and_the_api_key_answer_through_the_proxy(served):
    models = httpx.get(served.url + "/v1/models", headers=AUTH, timeout=TIMEOUT)
    assert models.status_code == 200 and models.headers[REPLICA_HEADER]
    assert [m["id"] for m in models.json()["data"]] == [served.model]
    refused = httpx.get(served.url + "/v1/models", timeout=TIMEOUT)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    wrong = httpx.post(served.url + "/v1/chat/completions", json={"model": served.model}, headers=AUTH, timeout=TIMEOUT)
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "messages"
    health = httpx.get(served.url + "/health", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json() == {"status": "ok"}


@pytest.mark.ray
def test_sigterm_deletes_the_replicas_and_exits_zero(served):
    """SIGTERM: the command deletes its replicas, shuts down Serve (nothing else ran on it), leaves the cluster
    it connected to running, and exits 0."""
    import ray
    from ray import serve

    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(TIMEOUT) == 0, served.output()
    assert "pastac" not in serve.status().applications
    with pytest.raises(httpx.TransportError):
        httpx.get(served.url + "/health", timeout=5)
    assert ray.is_initialized() and ray.cluster_resources().get("CPU", 0) >= 2


def serve_actors() -> list[str]:
    """The names of Serve's actors on the cluster (its controller, proxy and replicas), asked of Ray rather than of
    Serve, whose client in this process would go on using a controller that another process shut down."""
    import ray

    return [actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True) if actor["namespace"] == "serve"]


@pytest.mark.ray
def test_sigterm_while_the_replicas_start_deletes_them_and_is_an_interruption(cluster, saved_tiny_model, tmp_path):
    """SIGTERM before the replicas all run (here one cannot be placed: each asks for all the cluster's CPUs): the
    command deletes what it started, shuts Serve down and exits 130: neither 0 (it never served) nor killed by
    Ray's own handlers (exit status 1, or SIGABRT three seconds after the signal)."""
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "pastac", "serve", "--ray", cluster, "--model", str(saved_tiny_model), "--no-adapter"]
    argv += ["--replicas", "2", "--cpus-per-replica", "2", "--port", str(free_port()), "-q"]
    assert not serve_actors()
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not any("pastac" in name for name in serve_actors()):  # no replica yet
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            time.sleep(0.5)
        time.sleep(2.0)  # well into starting the replicas
        assert process.poll() is None, log.read_text(errors="replace")
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 130, log.read_text(errors="replace")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert "pastac: interrupted" in log.read_text(errors="replace")
    assert not serve_actors()
