"""``pastac bench serve``: the load benchmark against a tiny model's server (figures not asserted)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pastac.cli.main import main
from pastac.runtime.batch import BatchEngine
from pastac.serve import bench
from pastac.serve.app import create_app
from pastac.serve.bench import LoadOptions, load_prompts, percentile, run_load, targets
from pastac.serve.server import ServerThread

LEVEL_FIELDS = {
    "server_steps",
    "concurrency",
    "requests",
    "completed",
    "failed",
    "not_sent",
    "errors",
    "wall_s",
    "completion_tokens",
    "tokens_per_s",
    "requests_per_s",
    "mean_tokens",
    "ttft_s",
    "itl_s",
    "mismatches",
    "unchecked",
    "first_mismatch",
}


@pytest.fixture(scope="module")
def server(tiny_engine) -> Iterator[ServerThread]:
    app = create_app(BatchEngine(tiny_engine(), max_concurrent=4))
    with ServerThread(app) as running:
        yield running


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["bench", "serve", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_reports_every_level_and_writes_its_folder(capsys, server: ServerThread, tmp_path: Path) -> None:
    folder = tmp_path / "report"
    argv = ["--url", server.url, "--concurrency", "1,2", "--requests", "4", "--max-tokens", "8", "--out", str(folder)]
    code, out, err = run(capsys, *argv, "--json", "-q")
    assert code == 0, err
    report = json.loads(out)
    assert {"kind", "machine", "server", "options", "levels", "targets", "reference", "skipped_levels"} <= set(report)
    assert {"cpu", "cpu_flags", "cpu_count", "torch", "torch_threads"} <= set(report["machine"])
    assert set(report["machine"]["cpu_flags"]) == {"avx2", "avx512", "amx"}
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 2]
    for level in report["levels"]:
        assert set(level) == LEVEL_FIELDS
        assert level["completed"] == 4 and level["failed"] == 0 and level["mismatches"] == 0
        assert level["completion_tokens"] == 4 * 8 and level["mean_tokens"] == 8
        assert level["tokens_per_s"] > 0 and level["ttft_s"]["p50"] > 0 and level["itl_s"]["samples"] > 0
        assert level["itl_s"]["p99"] >= level["itl_s"]["p50"] > 0
        steps = level["server_steps"]  # read from the server's /metrics around the level
        assert steps["steps"] >= 8 and steps["rows_per_step"] >= 1 and steps["step_s"] > 0
    t = report["targets"]
    assert t["highest"] == 2 and t["throughput"]["ratio"] > 0 and t["itl_p99"]["ratio"] > 0
    assert t["answers"] == {"mismatches": 0, "failed": 0, "unchecked": 0, "met": True}
    assert len(report["reference"]) == 4 and all(r["answer"] for r in report["reference"])
    assert json.loads((folder / "report.json").read_text())["levels"] == report["levels"]
    assert "| clients |" in (folder / "report.md").read_text()
    # tables and verdicts; the folder of an earlier report is replaced, another one is refused
    code, out, err = run(capsys, *argv, "--requests", "2")
    assert code == 0, err
    assert "tokens/s" in out and "lost or mixed-up tokens" in out and "(target ≥ 3)" in out
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "--url", server.url, "--out", str(other))
    assert code == 2 and "--force" in err


def test_completions_and_a_prompts_file(server: ServerThread, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Name two rivers."}\n\nList three colours.\n')
    loaded = load_prompts(prompts)
    assert loaded == ["Name two rivers.", "List three colours."]
    options = LoadOptions(concurrency=(3,), requests=3, max_tokens=6, chat=False, warmup=False)
    report = asyncio.run(run_load(server.url, "tiny-llama", loaded, options))
    assert report["options"]["api"] == "completions" and [lv["concurrency"] for lv in report["levels"]] == [1, 3]
    assert all(lv["completed"] == 3 and lv["mismatches"] == 0 for lv in report["levels"])
    assert [r["prompt"] for r in report["reference"]] == loaded


def test_the_server_started_here(capsys, monkeypatch, tiny_engine) -> None:
    monkeypatch.setattr(bench, "load_engine", lambda args, adapter: tiny_engine())
    threads = torch.get_num_threads()
    try:
        code, out, err = run(capsys, "--concurrency", "2", "--requests", "2", "--max-tokens", "4", "--json", "-q")
    finally:
        torch.set_num_threads(threads)
    assert code == 0, err
    report = json.loads(out)
    assert report["server"]["started_here"] and report["server"]["max_concurrent"] == 2
    assert report["machine"]["model"] == "tiny-llama" and report["machine"]["torch_threads"] == 1
    assert report["options"]["url"].startswith("http://127.0.0.1:")


def test_a_mixed_up_answer_is_counted_and_shown() -> None:
    samples = [bench.Sample(0, answer="one two", tokens=2), bench.Sample(1, answer="three fout", tokens=2)]
    level = bench._summary(2, samples, 1.0, 0, {0: "one two", 1: "three four"}, ["a", "b"])
    assert level["mismatches"] == 1 and level["first_mismatch"]["prompt"] == "b"
    assert level["first_mismatch"]["at"] == 9
    one = bench._summary(1, samples, 2.0, 0, {0: "one two", 1: "three fout"}, ["a", "b"])
    verdict = targets([one, level])
    assert verdict["answers"]["met"] is False and verdict["throughput"]["ratio"] == pytest.approx(2.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--concurrency", "0"],
        ["--concurrency", "a,b"],
        ["--concurrency", ""],
        ["--requests", "0"],
        ["--max-tokens", "-1"],
        ["--timeout", "0"],
        ["--chat", "--completions"],
    ],
)
def test_bad_arguments_are_refused(capsys, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "serve", *argv])
    assert exit_.value.code == 2
    capsys.readouterr()


def test_unusable_inputs_are_usage_errors(capsys, tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, _, err = run(capsys, "--url", closed, "-q")
    assert code == 2 and "cannot list the models" in err
    code, _, err = run(capsys, "--url", "ftp://example.org")
    assert code == 2 and "--url" in err
    code, _, err = run(capsys, "--url", closed, "--prompts", str(tmp_path / "none.txt"))
    assert code == 2 and "no such file" in err
    (tmp_path / "empty.txt").write_text("\n\n")
    code, _, err = run(capsys, "--url", closed, "--prompts", str(tmp_path / "empty.txt"))
    assert code == 2 and "no prompt" in err


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)


def test_pastac_bench_keeps_its_own_options() -> None:
    from pastac.cli.main import build_parser

    args = build_parser().parse_args(["bench", "--quick", "-q", "--strategies", "pasta"])
    assert args.run.__name__ == "bench_command" and args.quick and args.bench_mode is None
    args = build_parser().parse_args(["bench", "serve", "--concurrency", "4,1,4"])
    assert args.run is bench.command and args.concurrency == (1, 4)
