"""``pastac bench``: strategies, calibration, report and CLI (figures are read by people, not asserted)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from test_cli import run

from pastac.bench import STRATEGIES, geomean, run_bench
from pastac.bench.calibrate import _fit, calibrate
from pastac.bench.report import REPORT_FILES, check_report_folder, is_report_folder, plot, tables, write_report
from pastac.bench.run import QUICK, BenchOptions, ratio_figure
from pastac.bench.strategies import Bench, kv_bytes_per_token
from pastac.bench.suite import SUITE, Response, SuiteError, load_suite, quick_selection, spread_selection
from pastac.grammar import check
from pastac.runtime.engine import Engine

SMALL = BenchOptions(repeats=2, threads=(1, 2, 4), contexts=(16, 64), calibration_repeats=1, warmup=False)
FORKED = Response(
    "tips",
    "list",
    "Give me tips.",
    'Tips: <promise topic="sleep" tokens="10"/><async>Sleep well at night, every night.</async>'
    '<promise topic="food" tokens="10"/><async>Eat <promise topic="greens"/><async>greens and beans'
    "</async><sync/> daily.</async><sync/> Done, that is all.",
)
PLAIN = Response("plain", "none", "What is the capital of France?", "The capital of France is Paris.")


@pytest.fixture(scope="module")
def engine(tiny_engine: Callable[..., Engine]) -> Engine:
    return tiny_engine("tiny-llama", 2)


@pytest.fixture(scope="module")
def report(engine: Engine) -> dict:
    return run_bench(engine, [FORKED, PLAIN], SMALL)


def test_the_shipped_suite_is_valid_and_varied():
    responses = load_suite()
    assert len(responses) >= 40 and len({r.id for r in responses}) == len(responses)
    for response in responses:
        result = check(response.text, mode="strict")
        assert not result.errors, (response.id, result.errors)
    shapes = {r.shape for r in responses}
    assert {"list", "list-long-items", "rounds", "nested", "sections", "none"} <= shapes
    assert sum("<promise" not in r.text for r in responses) >= 5
    assert quick_selection(responses)[0].shape != "none"
    sample = spread_selection(responses, 12)
    assert len(sample) == 12 and {r.shape for r in sample} == shapes


def test_every_engine_strategy_places_the_same_tokens_and_hf_generate_as_many(engine: Engine):
    bench = Bench(engine)
    runs = {s: bench.run(s, FORKED.prompt, FORKED.text) for s in STRATEGIES}
    texts = {s: m.generation.annotated for s, m in runs.items() if m.generation is not None}
    assert set(texts) == set(STRATEGIES) - {"hf-generate"} and set(texts.values()) == {FORKED.text}
    assert {m.tokens for m in runs.values()} == {runs["sequential"].tokens}
    assert runs["pasta"].steps < runs["sequential"].steps
    per_token = kv_bytes_per_token(engine.model)
    assert runs["sequential"].kv_peak_bytes == runs["pasta"].kv_peak_bytes  # one shared cache either way
    assert runs["batched-copy"].kv_peak_bytes > runs["pasta"].kv_peak_bytes  # copied prefixes
    assert runs["refork"].kv_peak_bytes == runs["batched-copy"].kv_peak_bytes  # re-encoded: the same entries
    assert runs["hf-generate"].kv_bytes % per_token == 0
    with pytest.raises(ValueError, match="unknown strategy"):
        bench.run("speculative", FORKED.prompt, FORKED.text)


def test_report_figures_are_consistent(report: dict):
    results, summary = report["results"], report["summary"]
    assert [r["id"] for r in results] == ["tips", "plain"]
    forked, plain = results
    assert forked["threads"] == 4 and plain["threads"] == 1 and plain["bound"] == pytest.approx(1.0)
    for r in results:
        for s in STRATEGIES:
            runs = r["strategies"][s]["runs_s"]
            assert len(runs) == 2 and r["strategies"][s]["wall_s"] == pytest.approx(sum(runs) / 2)  # the median
        speed = r["speedup"]
        # a ratio is the median of the ratios of the runs made in the same repeat (neighbours in time)
        pairs = [
            seq / pasta
            for seq, pasta in zip(
                r["strategies"]["sequential"]["runs_s"], r["strategies"]["pasta"]["runs_s"], strict=True
            )
        ]
        assert speed["pasta_vs_sequential"] == pytest.approx(sum(pairs) / 2)
        paired = r["speedup_runs"]["pasta_vs_sequential"]
        assert paired["spread"] == pytest.approx(max(pairs) - min(pairs))
        assert paired["noisy"] == (paired["spread"] > abs(paired["median"] - 1))
        assert r["efficiency_noise"] == (r["efficiency"] > 1.1)
        assert r["efficiency"] == pytest.approx(speed["pasta_vs_sequential"] / r["bound"])
    assert summary["forked_responses"] == 1
    assert summary["efficiency"] == pytest.approx(forked["efficiency"])
    assert summary["speedup"]["pasta_vs_sequential"] == pytest.approx(
        geomean([r["speedup"]["pasta_vs_sequential"] for r in results])
    )
    assert set(summary["speedup"]) == {f"{a}_vs_{b}" for a in STRATEGIES for b in STRATEGIES if a != b}
    assert report["calibration"]["threads"] == [1, 2, 4] and len(report["calibration"]["ms_per_step"]) == 3
    assert report["machine"]["model"] == "tiny-llama" and report["machine"]["cpu_count"] >= 1
    json.dumps(report)  # JSON-able as it is


def test_a_ratio_whose_spread_exceeds_its_effect_is_flagged():
    assert ratio_figure([1.30, 1.32, 1.31]) == pytest.approx(
        {"median": 1.31, "min": 1.30, "max": 1.32, "spread": 0.02, "noisy": False}
    )
    assert ratio_figure([0.9, 1.2, 1.05])["noisy"]  # either side of 1: another run may tell the other story
    assert not ratio_figure([1.05])["noisy"]  # one run has no spread to judge by
    assert QUICK.repeats >= 3  # --quick: a median and a spread


def test_report_tables_and_plots(report: dict, tmp_path: Path):
    assert len(tables(report)) == 4
    paths = plot(report, tmp_path / "plots")
    assert [p.name for p in paths] == ["measured_vs_theoretical.png", "step_cost.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    folder = tmp_path / "report"
    assert [p.name for p in write_report(report, folder)] == list(REPORT_FILES)
    assert json.loads((folder / "report.json").read_text()) == report and is_report_folder(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(REPORT_FILES)  # no temporary file is left
    check_report_folder(folder)  # a report may replace it


def test_cli_refuses_an_out_folder_that_is_not_a_report_folder(capsys, tmp_path: Path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "README.md").write_text("# project\n")
    code, _, err = run(capsys, "bench", "--out", str(checkout), "--ids", "no-such-response")  # before anything runs
    assert code == 2 and f"--out '{checkout}' holds files and is not a report folder of pastac bench" in err
    assert "--force" in err and [p.name for p in checkout.iterdir()] == ["README.md"]
    code, _, err = run(capsys, "bench", "--out", str(checkout), "--force", "--ids", "no-such-response")
    assert code == 2 and "no-such-response" in err  # accepted: the next problem is reported
    code, _, err = run(capsys, "bench", "--suite", str(tmp_path / "r" / "report.json"), "--out", str(tmp_path / "r"))
    assert code == 2 and "which this command reads" in err


def test_calibration_fit(engine: Engine):
    base, slope = _fit((100, 300, 500), (11.0, 13.0, 15.0))
    assert (base, slope) == (pytest.approx(10.0), pytest.approx(10.0))  # 10 ms + 10 ms per 1000 tokens
    cal = calibrate(engine.model, threads=(1, 3), contexts=(8, 32), repeats=1)
    assert len(cal.ms) == 2 and all(len(row) == 2 and all(v > 0 for v in row) for row in cal.ms)
    assert [t for t, _ in cal.cost.table] == [1, 3] and all(s >= 0 for _, s in cal.cost.per_context)
    assert cal.cost(1, 8) == pytest.approx(cal.cost.table[0][1] + cal.cost.per_context[0][1] * 8 / 1000)


def test_suite_errors(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "text": "t"}\n{"text": "no prompt"}\n', encoding="utf-8")
    with pytest.raises(SuiteError, match=r"bad.jsonl:2: missing field 'prompt'"):
        load_suite(bad)
    bad.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(SuiteError, match=r"bad.jsonl:1: the record is not a JSON object"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="cannot read"):
        load_suite(tmp_path / "missing.jsonl")
    assert load_suite(SUITE)[0].prompt
    with pytest.raises(ValueError, match="unknown strategy"):
        BenchOptions(strategies=("pasta", "magic"))


def test_cli_usage_errors(capsys, tmp_path: Path):
    assert run(capsys, "bench", "--strategies", "pasta,magic")[0] == 2
    code, _, err = run(capsys, "bench", "--suite", str(tmp_path / "none.jsonl"))
    assert code == 2 and "cannot read the suite" in err
    code, _, err = run(capsys, "bench", "--ids", "no-such-response")
    assert code == 2 and "no-such-response" in err


def test_bench_quick_on_the_default_model(capsys, tmp_path: Path):
    """Integration (about two minutes): `pastac bench --quick` with the embedded model; figures not asserted."""
    code, out, err = run(capsys, "bench", "--quick", "--json", "--out", str(tmp_path / "report"), "-q")
    assert code == 0, err
    report = json.loads(out)
    assert report["options"]["responses"] == 1 and report["summary"]["forked_responses"] == 1
    assert all(math.isfinite(v) and v > 0 for v in report["summary"]["speedup"].values())
    assert math.isfinite(report["summary"]["efficiency"])
    written = {p.name for p in (tmp_path / "report").iterdir()}
    assert written == {"report.json", "report.txt", "measured_vs_theoretical.png", "step_cost.png"}
