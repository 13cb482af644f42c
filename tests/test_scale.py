"""Batch work on Ray (``pastac.scale``, ``--ray``): results in order, a killed worker retried, nothing counted
twice, and the same report as one process.  The tests marked ``ray`` share one local cluster of two CPUs."""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_cli import run

from pastac.scale import RayError, RayOptions, ordered

# figures that are timings: they differ from run to run, and between one process and several
TIMINGS = ("wall_s", "sequential_wall_s", "hf_generate_wall_s", "speedup_vs_sequential", "speedup_vs_hf_generate")


def _count_setup(log: str) -> str:
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return log


def _die_once(flag: str, log: str, item: int) -> int:
    """The item times ten; the worker that gets item 5 first kills its own process (once: ``flag``)."""
    if item == 5 and not Path(flag).exists():
        Path(flag).write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.02)
    return item * 10


def _refuse_seven(_state: str, item: int) -> int:
    if item == 7:
        raise ValueError("item seven is refused")
    time.sleep(0.02)
    return item


@pytest.mark.ray
def test_a_killed_worker_is_restarted_and_nothing_is_lost_or_counted_twice(ray_cluster, tmp_path):
    log, flag = str(tmp_path / "setups"), str(tmp_path / "flag")
    got: list[tuple[int, int]] = []
    got += ordered(list(range(12)), functools.partial(_count_setup, log), functools.partial(_die_once, flag),
                   RayOptions(workers=2))  # fmt: skip
    assert Path(flag).exists()  # the worker was killed ...
    assert len(Path(log).read_text().split()) == 3  # ... and restarted: two set-ups, then one more
    assert got == [(i, i * 10) for i in range(12)]  # every item once, in order


@pytest.mark.ray
def test_a_records_own_error_is_raised_after_the_results_before_it(ray_cluster, tmp_path):
    got: list[int] = []
    with pytest.raises(ValueError, match="item seven is refused"):
        for _, result in ordered(
            list(range(12)), functools.partial(_count_setup, str(tmp_path / "setups")), _refuse_seven,
            RayOptions(workers=2),
        ):  # fmt: skip
            got.append(result)
    assert got == list(range(7))  # everything before the failed item was handed over, nothing after it
    assert len((tmp_path / "setups").read_text().split()) == 2  # not retried: the record's fault


def test_ray_options_are_checked():
    with pytest.raises(ValueError, match="workers"):
        RayOptions(workers=0)
    with pytest.raises(ValueError, match="CPUs"):
        RayOptions(cpus_per_worker=0)


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.jsonl"
    categories = ["list", "factual", "list", "code", "plan", "howto", "list", "sentence"]
    path.write_text(
        "".join(
            json.dumps({"id": f"p{i}", "prompt": f"Tip {i}?", "category": c}) + "\n" for i, c in enumerate(categories)
        )
    )
    return path


def _eval(capsys, prompts: Path, model: str, *more: str) -> tuple[int, str, str]:
    return run(
        capsys, "eval", "--prompts", str(prompts), "--model", model, "--no-adapter", "--max-new-tokens", "12", *more
    )


def _without_timings(report: dict) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in report["results"]]


def _same_rows(a: dict, b: dict) -> None:
    """The two reports' rows are the same but for their timings (floats to rounding)."""
    first, second = _without_timings(a), _without_timings(b)
    assert [sorted(r) for r in first] == [sorted(r) for r in second]
    for x, y in zip(first, second, strict=True):
        for key, value in x.items():
            if isinstance(value, float):
                assert y[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (x["id"], key)
            else:
                assert y[key] == value, (x["id"], key)


def test_eval_results_file_resumes_where_it_stopped(capsys, tmp_path, prompts, saved_tiny_model):
    model = str(saved_tiny_model)
    code, out, err = _eval(capsys, prompts, model, "--json", "-q")
    assert code == 0, err
    whole = json.loads(out)
    results = tmp_path / "results.jsonl"
    code, out, err = _eval(capsys, prompts, model, "--json", "--limit", "3", "--results", str(results))
    assert code == 0, err
    assert len(results.read_text().splitlines()) == 3
    code, out, err = _eval(capsys, prompts, model, "--json", "--results", str(results))
    assert code == 0, err
    assert "3 of them done before" in err
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == sorted(f"p{i}" for i in range(8))  # each prompt once
    resumed = json.loads(out)
    assert [r["id"] for r in resumed["results"]] == [r["id"] for r in whole["results"]]
    _same_rows(resumed, whole)
    # another setting: the file is not continued
    code, out, err = _eval(capsys, prompts, model, "--results", str(results), "--no-tag-guard")
    assert code == 2 and "other settings" in err and "tag_guard" in err
    code, out, err = _eval(capsys, prompts, model, "--workers", "2")
    assert code == 2 and "--workers applies to --ray" in err


def test_eval_results_need_ids(capsys, tmp_path, saved_tiny_model):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a?"}\n{"prompt": "b?"}\n')
    code, _, err = _eval(capsys, prompts, str(saved_tiny_model), "--results", str(tmp_path / "r.jsonl"))
    assert code == 2 and "--results needs a distinct string id" in err


@pytest.mark.ray
def test_eval_on_two_ray_workers_gives_the_one_process_report(ray_cluster, capsys, prompts, saved_tiny_model):
    model = str(saved_tiny_model)
    code, out, err = _eval(capsys, prompts, model, "--json", "-q")
    assert code == 0, err
    alone = json.loads(out)
    code, out, err = _eval(capsys, prompts, model, "--json", "-q", "--ray", "--workers", "2")
    assert code == 0, err
    spread = json.loads(out)
    assert [r["id"] for r in spread["results"]] == [r["id"] for r in alone["results"]]
    _same_rows(spread, alone)
    for key in ("prompts", "valid_rate", "fork_rate", "fork_rate_by_category", "loglik_pasta", "tag_guard"):
        assert spread["summary"][key] == pytest.approx(alone["summary"][key]), key


def _worker_pids() -> list[int]:
    """The processes of pastac's Ray workers on this machine (Ray names them after the actor's class)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and title.startswith("ray::_Worker"):
            pids.append(int(entry.name))
    return pids


@pytest.mark.ray
def test_eval_survives_a_killed_worker(ray_cluster, capsys, tmp_path, prompts, saved_tiny_model):
    """A worker killed mid-run (from outside, as the machine would) is restarted by Ray: every prompt's row is
    written once, and the report is the one-process report."""
    model = str(saved_tiny_model)
    code, out, err = _eval(capsys, prompts, model, "--json", "-q")
    alone = json.loads(out)
    results = tmp_path / "results.jsonl"
    killed: list[tuple[int, int]] = []  # (pid, rows written when it was killed)

    def kill_one() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            written = len(results.read_text().splitlines()) if results.exists() else 0
            pids = _worker_pids()
            if written >= 1 and pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], written))
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one)
    killer.start()
    code, out, err = _eval(capsys, prompts, model, "--json", "-q", "--ray", "--workers", "2", "--results", str(results))
    killer.join()
    assert code == 0, err
    assert killed and killed[0][1] < 8, "the worker was not killed mid-run"
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in alone["results"]]  # each once, in order
    _same_rows(json.loads(out), alone)


def test_ray_missing_is_a_usage_error(capsys, monkeypatch, prompts, saved_tiny_model):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code, _, err = _eval(capsys, prompts, str(saved_tiny_model), "--ray")
    assert code == 2 and "pastac[ray]" in err


def test_a_cluster_address_where_nothing_answers_is_a_usage_error(capsys, prompts, saved_tiny_model):
    pytest.importorskip("ray")
    code, _, err = _eval(capsys, prompts, str(saved_tiny_model), "--ray", "127.0.0.1:1")
    assert code == 2 and "no Ray cluster answers at 127.0.0.1:1" in err, err
    code, _, err = _eval(capsys, prompts, str(saved_tiny_model), "--ray", "")
    assert code == 2 and "the address is empty" in err, err
    code, _, err = _eval(capsys, prompts, "/nonexistent/model", "--ray")
    assert code == 2 and "model not found: /nonexistent/model" in err, err


def test_ray_error_is_a_runtime_error():
    assert issubclass(RayError, RuntimeError)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.ray
def test_data_responses_and_annotate_on_ray_write_the_one_process_files(
    ray_cluster, capsys, tmp_path, prompts, saved_tiny_model
):
    model = str(saved_tiny_model)
    common = ("--prompts", str(prompts), "--model", model, "--max-new-tokens", "8", "--batch-size", "2", "-q")
    alone, spread = tmp_path / "alone.jsonl", tmp_path / "spread.jsonl"
    code, _, err = run(capsys, "data", "responses", *common, "--out", str(alone))
    assert code == 0, err
    code, _, err = run(capsys, "data", "responses", *common, "--out", str(spread), "--limit", "3", "--ray")
    assert code == 0, err
    assert len(_records(spread)) == 3
    code, out, err = run(capsys, "data", "responses", *common, "--out", str(spread), "--ray", "--workers", "2")
    assert code == 0, err
    assert "5 written, 3 already done" in out
    by_id = {r["id"]: r for r in _records(alone)}
    assert sorted(r["id"] for r in _records(spread)) == sorted(by_id)  # each once
    assert all(r == by_id[r["id"]] for r in _records(spread))
    # the annotation of those responses, with the tiny model's tokenizer counting the promised tokens
    annotated = {}
    for name, more in (("alone", ()), ("spread", ("--ray", "--workers", "2"))):
        target = tmp_path / f"annotated-{name}.jsonl"
        code, _, err = run(
            capsys, "data", "annotate", "--responses", str(alone), "--out", str(target),
            "--tokenizer-model", model, "-q", *more,
        )  # fmt: skip
        assert code == 0, err
        annotated[name] = _records(target)
    assert annotated["spread"] == annotated["alone"]
    served = ("--prompts", str(prompts), "--model", "m", "--out", str(spread), "--url", "http://127.0.0.1:9/v1")
    code, _, err = run(capsys, "data", "responses", *served, "--ray")
    assert code == 2 and "--ray spreads a local model's batches" in err


@pytest.mark.ray
def test_bench_on_ray_measures_every_response_once_on_the_workers(ray_cluster, capsys):
    common = ("bench", "--shape", "tiny-llama", "--quick", "--strategies", "sequential,pasta", "--sample", "3")
    code, out, err = run(capsys, *common, "--json", "-q")
    assert code == 0, err
    alone = json.loads(out)
    code, out, err = run(capsys, *common, "--json", "-q", "--ray", "--workers", "2")
    assert code == 0, err
    spread = json.loads(out)
    assert [r["id"] for r in spread["results"]] == [r["id"] for r in alone["results"]]
    for mine, theirs in zip(spread["results"], alone["results"], strict=True):  # the same replays, elsewhere
        assert (mine["tokens"], mine["threads"]) == (theirs["tokens"], theirs["threads"])
        assert mine["theoretical_speedup"] == pytest.approx(theirs["theoretical_speedup"])
    workers = spread["machine"]["workers"]
    assert len(workers) == 2 and {r["worker"] for r in spread["results"]} == {0, 1}
    assert spread["summary"].keys() == alone["summary"].keys()
    code, _, err = run(capsys, *common, "--ray", "--torch-threads", "2")
    assert code == 2 and "--cpus-per-worker" in err
