"""``pastac plan``, ``pastac graph`` and ``pastac stats``: every conformance case, hand-checked figures,
JSONL data, pictures and usage errors."""

from __future__ import annotations

import io
import json
import math
import os
import stat
import sys
from pathlib import Path

import pytest
from test_cli import run

from pastac.cli.main import main
from pastac.grammar import check

ROOT = Path(__file__).resolve().parent.parent
CASES = sorted((ROOT / "specs" / "conformance").rglob("*.pasta"))

# Lengths below are whitespace words (the default --length).
#
# No promise: one segment of 4 words, decoded one a step: 4 tokens in 4 steps, speedup exactly 1.
PLAIN = "Hello brave new world."
# One promise.  Main: "A " (1 word, step 0), the promise tag (<promise, topic="x", tokens="2"/>: 3 words,
# steps 1-3), <sync/> (step 4), waits; the child starts the step after its promise: <async> (4),
# "b c d" (5-7), </async> (8); the join passes and main writes " e f" (9-10).
# 12 tokens in 11 steps; 2 threads decode in step 4.
ONE = 'A <promise topic="x" tokens="2"/><async>b c d</async><sync/> e f'
# Two promises.  Main: "x " (0), promise a (2 words: 1-2), promise b (3-4), <sync/> (5), join.
# t1: <async> one two three </async>: 5 tokens, steps 3-7.  t2: <async> four </async>: steps 5-7.
# 14 tokens in 8 steps = 1.75; 3 threads decode in step 5.
# With --max-width 2 (fifo; started threads keep their slots): t2 waits for a slot until t1 is at its
# last two tokens and main waits at its join: main 0-5, t1 3-7, t2 6-8: 9 steps, 14/9.
TWO = 'x <promise topic="a"/><async>one two three</async><promise topic="b"/><async>four</async><sync/>'


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def plan_json(capsys: pytest.CaptureFixture[str], path: str, *extra: str) -> dict:
    code, out, err = run(capsys, "plan", path, "--json", *extra)
    assert code == 0, err
    return json.loads(out)


# -- every conformance case -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_conformance_cases(capsys, case):
    path = str(case)
    valid = check(case.read_bytes().decode("utf-8")).ok
    for mode in (["--lenient"], [] if valid else None):
        if mode is None:  # strict on an invalid case: the diagnostics, exit 1, nothing on stdout
            code, out, err = run(capsys, "plan", path)
            assert (code, out) == (1, "") and "error[E" in err
            continue
        figures = plan_json(capsys, path, *mode)
        assert figures["threads"] == len(figures["per_thread"]) >= 1
        assert figures["steps"] == len(figures["width_per_step"])
        capped = plan_json(capsys, path, "--max-width", "1", *mode)
        assert capped["theoretical_speedup"] == 1.0 and capped["steps"] == capped["tokens"]
        code, out, _ = run(capsys, "plan", path, *mode)
        assert code == 0 and "theoretical_speedup" in out
        code, out, _ = run(capsys, "graph", path, "--format", "dot", *mode)
        assert code == 0 and out.startswith("digraph ")
        code, out, _ = run(capsys, "graph", path, "--format", "mermaid", *mode)
        assert code == 0 and out.startswith("flowchart")
        code, out, _ = run(capsys, "graph", path, "--format", "json", *mode)
        assert code == 0 and json.loads(out)["format"] == "pastac-ir"
        code, out, _ = run(capsys, "graph", path, *mode)
        assert code == 0 and out.startswith("t0 main")
        code, out, _ = run(capsys, "stats", path, "--json", *mode)
        assert code == 0 and json.loads(out)["documents"] == 1


def test_conformance_as_a_dataset(capsys, tmp_path):
    records = [json.dumps({"response": case.read_bytes().decode("utf-8")}) for case in CASES]
    data = write(tmp_path, "conformance.jsonl", "\n".join(records) + "\n")
    valid = sum(check(case.read_bytes().decode("utf-8")).ok for case in CASES)
    code, out, _ = run(capsys, "stats", data, "--field", "response", "--json")
    result = json.loads(out)
    assert code == 0
    assert (result["records"], result["documents"], result["invalid"]) == (len(CASES), valid, len(CASES) - valid)
    code, out, _ = run(capsys, "stats", data, "--field", "response", "--json", "--lenient")
    assert code == 0 and json.loads(out)["documents"] == len(CASES)


# Drawing takes ~0.2 s a picture: one case of each section of the specification.
SAMPLE = sorted({case.parent: case for case in CASES}.values())


@pytest.mark.parametrize("case", SAMPLE, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_timeline_of_conformance_samples(capsys, tmp_path, case):
    out = tmp_path / "t.png"
    code, _, err = run(capsys, "graph", str(case), "--lenient", "--format", "png", "--output", str(out))
    assert code == 0, err
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# -- hand-checked figures -------------------------------------------------------------------------------------


def test_no_promise_speedup_is_one(capsys, tmp_path):
    figures = plan_json(capsys, write(tmp_path, "plain.pasta", PLAIN))
    assert {
        k: figures[k]
        for k in ("tokens", "steps", "critical_path", "theoretical_speedup", "max_speedup", "max_width", "threads")
    } == {
        "tokens": 4,
        "steps": 4,
        "critical_path": 4,
        "theoretical_speedup": 1.0,
        "max_speedup": 1.0,
        "max_width": 1,
        "threads": 1,
    }
    assert figures["width_per_step"] == [1, 1, 1, 1]
    assert figures["predicted_speedup"] == pytest.approx(1.0)


def test_one_promise_exact(capsys, tmp_path):
    figures = plan_json(capsys, write(tmp_path, "one.pasta", ONE))
    assert (figures["tokens"], figures["steps"], figures["critical_path"]) == (12, 11, 11)
    assert figures["theoretical_speedup"] == 12 / 11 and figures["max_speedup"] == 12 / 11
    assert figures["width_per_step"] == [1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1]
    assert (figures["max_width"], figures["threads"], figures["max_width_cap"]) == (2, 2, None)
    assert (figures["policy"], figures["order"], figures["unit"], figures["length"]) == (
        "predicted",
        "fifo",
        10,
        "words",
    )
    main_thread, child = figures["per_thread"]
    assert main_thread | {"positions": None} == {
        "thread": 0,
        "parent": None,
        "depth": 0,
        "topic": None,
        "predicted_tokens": None,
        "own_tokens": 7,
        "subtree_tokens": 12,
        "start_step": 0,
        "end_step": 10,
        "positions": None,
    }
    # Predicted policy: the child takes positions 4..9 right after the promise; main skips
    # <async> + 2 x 10 + </async> = 22 positions after its promise: <sync/> and " e f" at 26..29.
    assert main_thread["positions"] == [[0, 4], [26, 29]]
    assert child == {
        "thread": 1,
        "parent": 0,
        "depth": 1,
        "topic": "x",
        "predicted_tokens": 20,
        "own_tokens": 5,
        "subtree_tokens": 5,
        "start_step": 4,
        "end_step": 8,
        "positions": [[4, 9]],
    }
    # Oracle: main skips the child's real length, so the positions are those of the stitched text.
    oracle = plan_json(capsys, write(tmp_path, "one.pasta", ONE), "--policy", "oracle")
    assert oracle["per_thread"][0]["positions"] == [[0, 4], [9, 12]]


def test_two_promises_exact_and_width_cap(capsys, tmp_path):
    path = write(tmp_path, "two.pasta", TWO)
    figures = plan_json(capsys, path)
    assert (figures["tokens"], figures["steps"], figures["max_width"], figures["threads"]) == (14, 8, 3, 3)
    assert figures["theoretical_speedup"] == 1.75
    assert [(t["start_step"], t["end_step"]) for t in figures["per_thread"]] == [(0, 5), (3, 7), (5, 7)]
    capped = plan_json(capsys, path, "--max-width", "2")
    assert (capped["steps"], capped["critical_path"], capped["max_width"], capped["max_width_cap"]) == (9, 8, 2, 2)
    assert capped["theoretical_speedup"] == 14 / 9 and capped["max_speedup"] == 1.75
    assert [(t["start_step"], t["end_step"]) for t in capped["per_thread"]] == [(0, 5), (3, 7), (6, 8)]
    sequential = plan_json(capsys, path, "--max-width", "1")
    assert (sequential["steps"], sequential["theoretical_speedup"]) == (14, 1.0)
    longest = plan_json(capsys, path, "--max-width", "2", "--order", "longest-first")
    assert longest["order"] == "longest-first" and longest["steps"] == 9


def test_plan_table_text(capsys, tmp_path):
    code, out, _ = run(capsys, "plan", write(tmp_path, "two.pasta", TWO))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("plan of ") and "policy predicted, order fifo, no width cap" in lines[0]
    assert all(line == line.rstrip() for line in lines)
    rows = {line.split()[0]: line.split() for line in lines if line.startswith((" t", "t"))}
    assert rows["t1"][:4] == ["t1", "t0", "1", "a"]
    figures = {
        parts[0]: parts[1]
        for line in lines
        if (parts := line.split())
        and parts[0]
        in ("tokens", "steps", "critical_path", "theoretical_speedup", "max_width", "threads", "predicted_speedup")
    }
    assert figures == {
        "tokens": "14",
        "steps": "8",
        "critical_path": "8",
        "theoretical_speedup": "1.750",
        "max_width": "3",
        "threads": "3",
        "predicted_speedup": figures["predicted_speedup"],
    }
    assert "SmolLM2" in out  # the cost model's source is named


def test_plan_lengths_in_chars(capsys, tmp_path):
    figures = plan_json(capsys, write(tmp_path, "plain.pasta", PLAIN), "--length", "chars")
    assert (figures["tokens"], figures["steps"], figures["length"]) == (len(PLAIN), len(PLAIN), "chars")


def test_plan_dump_after(capsys, tmp_path):
    path = write(tmp_path, "one.pasta", ONE)
    code, out, _ = run(capsys, "plan", path, "--dump-after", "resolution-order")
    assert code == 0
    assert out.startswith("// IR after pass 'resolution-order'\nthread t0 depth=0\n")
    assert '%3 = t1 segment len=3 "b c d"  ; steps [5, 7]' in out
    figures = plan_json(capsys, path, "--dump-after", "positions")
    assert "; pos [4, 5)" in figures["dumps"]["positions"]


def test_plan_strict_errors_exit_one_lenient_recovers(capsys, tmp_path):
    path = write(tmp_path, "bad.pasta", 'a <promise topic="x"/> b')  # E304: never fulfilled
    code, out, err = run(capsys, "plan", path)
    assert (code, out) == (1, "")
    assert f"{path}:1:3: error[E304]" in err
    code, out, err = run(capsys, "plan", path, "--lenient", "--json")
    assert code == 0 and "warning[E304]" in err
    assert json.loads(out)["threads"] == 1


def test_plan_reads_stdin(capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(TWO.encode())))
    code, out, _ = run(capsys, "plan", "-", "--json")
    assert code == 0 and json.loads(out)["file"] == "<stdin>" and json.loads(out)["steps"] == 8


def test_huge_predicted_length(capsys, tmp_path):
    # Positions past the promise follow a 5000-digit prediction: JSON holds them as strings of digits.
    digits = "9" * 5000
    path = write(tmp_path, "huge.pasta", f'a <promise topic="x" tokens="{digits}"/><async>b</async> c')
    figures = plan_json(capsys, path)
    assert figures["per_thread"][1]["predicted_tokens"] == digits + "0"
    # " c" comes after "a ", the promise tag (3 words), and the reservation: <async>, </async> and 10 x the digits.
    assert figures["per_thread"][0]["positions"][1][0] == "9" * 5000 + "6"
    code, out, _ = run(capsys, "plan", path)
    assert code == 0 and "e+5001" in out


# -- graph ----------------------------------------------------------------------------------------------------


def test_graph_formats(capsys, tmp_path):
    path = write(tmp_path, "two.pasta", TWO)
    code, out, _ = run(capsys, "graph", path, "--format", "dot")
    assert code == 0 and out.count("subgraph cluster_t") == 3 and out.count("style=dashed") == 2
    code, out, _ = run(capsys, "graph", path, "--format", "mermaid")
    assert code == 0 and out.count("subgraph t") == 3 and out.count("-. fork .->") == 2
    code, out, _ = run(capsys, "graph", path, "--format", "json")
    assert code == 0 and [n["kind"] for n in json.loads(out)["nodes"]][:3] == ["segment", "fork", "open"]
    code, out, _ = run(capsys, "graph", path)
    assert code == 0 and 't1 "a"' in out and "%2 <async>" in out
    target = tmp_path / "g.dot"
    code, out, _ = run(capsys, "graph", path, "--format", "dot", "--output", str(target))
    assert (code, out) == (0, "") and target.read_text().startswith("digraph ")


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_timeline_pictures(capsys, tmp_path, fmt):
    out = tmp_path / f"timeline.{fmt}"
    code, _, err = run(
        capsys, "graph", write(tmp_path, "two.pasta", TWO), "--format", fmt, "-o", str(out), "--max-width", "2"
    )
    assert code == 0, err
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") if fmt == "png" else b"<svg" in data[:1000]


def test_view_graph_without_graphviz(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "graph.png"
    code, _, err = run(
        capsys, "graph", write(tmp_path, "one.pasta", ONE), "--format", "png", "-o", str(out), "--view", "graph"
    )
    assert code == 2
    assert "Graphviz 'dot' is not installed; install graphviz or use --format dot" in err
    assert not out.exists()


@pytest.mark.skipif(os.name != "posix", reason="a shell script stands in for dot")
def test_view_graph_runs_dot(capsys, tmp_path, monkeypatch):
    # A stand-in 'dot' that records its arguments and copies its input (the DOT source) to its output.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"
    fake.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"open({str(tmp_path / 'args')!r}, 'w').write(' '.join(sys.argv[1:]))\n"
        "sys.stdout.buffer.write(sys.stdin.buffer.read())\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(bin_dir))
    out = tmp_path / "graph.svg"
    code, _, err = run(
        capsys, "graph", write(tmp_path, "one.pasta", ONE), "--format", "svg", "-o", str(out), "--view", "graph"
    )
    assert code == 0, err
    assert (tmp_path / "args").read_text().split() == ["-Tsvg"]  # its output is written by pastac, atomically
    assert out.read_text().startswith("digraph ")


# -- stats ----------------------------------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> str:
    records = [{"response": PLAIN}, {"response": TWO}, {"response": 'a <promise topic="x"/> b'}, {"other": 1}]
    return write(tmp_path, "data.jsonl", "\n".join(json.dumps(r) for r in records) + "\n\nnot json\n")


def test_stats_json_exact(capsys, data):
    code, out, _ = run(capsys, "stats", data, "--field", "response", "--json")
    result = json.loads(out)
    assert code == 0
    assert (result["records"], result["documents"], result["invalid"]) == (5, 2, 3)
    assert (result["mode"], result["field"], result["length"]) == ("strict", "response", "words")
    speedup = result["metrics"]["theoretical_speedup"]
    # PLAIN: 1.0; TWO: 14 tokens in 8 steps = 1.75.
    assert speedup == {
        "count": 2,
        "mean": 1.375,
        "geometric_mean": pytest.approx(math.sqrt(1.75)),
        "min": 1.0,
        "p50": 1.375,
        "p90": pytest.approx(1.675),
        "max": 1.75,
    }
    assert result["metrics"]["promises_per_response"] | {"p90": 0} == {
        "count": 2,
        "mean": 1.0,
        "min": 0,
        "p50": 1.0,
        "p90": 0,
        "max": 2,
    }
    assert result["metrics"]["max_width"]["max"] == 3
    assert result["metrics"]["depth"]["max"] == 1
    # TWO: the children write <async> one two three </async> and <async> four </async>: 8 of 14 tokens.
    assert result["metrics"]["async_token_share"]["max"] == 8 / 14
    assert result["pooled"] == {
        "tokens": 18,
        "critical_path": 12,
        "theoretical_speedup": 1.5,
        "async_token_share": 8 / 18,
    }
    invalid = {r["line"]: r["message"] for r in result["invalid_records"]}
    assert invalid[3].startswith("1:3: error[E304]")
    assert invalid[4] == "record has no field 'response' (fields: other)"
    assert invalid[6].startswith("invalid JSON")


def test_stats_lenient_and_text(capsys, data):
    code, out, _ = run(capsys, "stats", data, "--field", "response", "--lenient", "--json")
    assert code == 0 and (json.loads(out)["documents"], json.loads(out)["invalid"]) == (3, 2)
    code, out, _ = run(capsys, "stats", data, "--field", "response")
    assert code == 0
    assert "5 records, 2 documents analysed, 3 invalid (strict)" in " ".join(out.split())
    row = next(line.split() for line in out.splitlines() if line.strip().startswith("theoretical_speedup"))
    assert row[1:8] == ["2", "1.375", "1.323", "1.000", "1.375", "1.675", "1.750"]
    assert f"{data}[3].response: 1:3: error[E304]" in out


def test_stats_of_pasta_files_and_empty_data(capsys, tmp_path):
    files = [write(tmp_path, "plain.pasta", PLAIN), write(tmp_path, "two.pasta", TWO)]
    code, out, _ = run(capsys, "stats", *files, "--json")
    assert code == 0 and json.loads(out)["metrics"]["theoretical_speedup"]["max"] == 1.75
    code, out, _ = run(capsys, "stats", write(tmp_path, "empty.jsonl", ""), "--json")
    result = json.loads(out)
    assert code == 0 and result["records"] == 0 and result["metrics"]["tokens"]["mean"] is None
    code, out, _ = run(capsys, "stats", str(tmp_path / "empty.jsonl"))
    assert code == 0 and "0 records" in out


# -- usage errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["plan", "missing.pasta"],
        ["graph", "missing.pasta"],
        ["stats", "missing.jsonl"],
        ["plan", "{one}", "--max-width", "0"],
        ["plan", "{one}", "--max-width", "x"],
        ["plan", "{one}", "--order", "random"],
        ["plan", "{one}", "--policy", "magic"],
        ["plan", "{one}", "--dump-after", "no-such-pass"],
        ["plan", "{one}", "--length", "tokens"],
        ["graph", "{one}", "--format", "png"],
        ["graph", "{one}", "--format", "gif"],
        ["graph", "{one}", "--format", "dot", "--view", "graph"],
        ["graph", "{one}", "--format", "dot", "--output", "{tmp}/no/such/dir/g.dot"],
        ["graph", "{one}", "--format", "png", "--output", "{tmp}/no/such/dir/g.png"],
        ["stats"],
    ],
)
def test_usage_errors_exit_two(capsys, tmp_path, argv):
    one = write(tmp_path, "one.pasta", ONE)
    args = [a.format(one=one, tmp=tmp_path) for a in argv]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    out, err = capsys.readouterr()
    assert err.startswith(("pastac: error:", "usage:")) and err.strip()
    assert out == ""  # nothing half-done on standard output


# -- templates ------------------------------------------------------------------------------------------------


def test_plan_and_graph_of_a_template(capsys, tmp_path):
    """Issue 23, item 10: plan and graph refused templates.  With --template each promise forks a part of its
    predicted length: tokens= x --unit (a promise without tokens=, an empty part)."""
    path = write(tmp_path, "t.pasta", 'Tips: <promise topic="a" tokens="3"/> and <promise topic="b"/><sync/> done')
    assert run(capsys, "plan", path)[0] == 1  # not a document: its promises have no blocks
    figures = plan_json(capsys, path, "--template", "--unit", "2")
    assert figures["threads"] == 3
    children = [t for t in figures["per_thread"] if t["parent"] is not None]
    # <async>, the part, </async>: 1 + 3 x 2 + 1 words; and 1 + 0 + 1
    assert [(t["topic"], t["subtree_tokens"]) for t in children] == [("a", 8), ("b", 2)]
    code, out, _ = run(capsys, "graph", path, "--template")
    assert code == 0 and '"[a]"' in out and "t2" in out
    code, _, err = run(capsys, "plan", path, "--template", "--lenient")
    assert code == 2 and "not allowed with argument" in err


def test_the_shipped_template_plans(capsys):
    template = str(ROOT / "examples" / "templates" / "sleep.pasta")
    figures = plan_json(capsys, template, "--template")
    assert figures["threads"] == 5 and figures["theoretical_speedup"] > 1


def test_a_language_command_pauses_the_collector_and_restores_it() -> None:
    import argparse
    import gc
    import io

    from pastac.cli.language import _collector_paused

    seen: list[bool] = []

    def command(args: argparse.Namespace, out: io.StringIO) -> int:
        seen.append(gc.isenabled())
        if args.fail:
            raise RuntimeError("boom")
        return 0

    run = _collector_paused(command)
    assert gc.isenabled()
    assert run(argparse.Namespace(fail=False), io.StringIO()) == 0
    with pytest.raises(RuntimeError):
        run(argparse.Namespace(fail=True), io.StringIO())
    assert seen == [False, False] and gc.isenabled()
    gc.disable()
    try:  # a caller that paused it itself finds it paused still
        run(argparse.Namespace(fail=False), io.StringIO())
        assert not gc.isenabled()
    finally:
        gc.enable()
