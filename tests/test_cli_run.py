"""``pastac run`` end to end on a tiny random model saved as a Hugging Face folder."""

from __future__ import annotations

import json

import pytest
from test_cli import run

from pastac.models import random_model, tiny_tokenizer

TEMPLATE = (
    'Tips:\n<promise topic="a" tokens="1"/>\n<promise topic="b" tokens="1"/>\n<promise topic="c"/>\n<sync/>\nEnd.'
)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = tiny_tokenizer()
    random_model("tiny-llama", vocab_size=len(tokenizer), seed=3).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_run_json_with_a_template_forks_three_threads(capsys, tmp_path, model_dir):
    template = tmp_path / "t.pasta"
    template.write_text(TEMPLATE)
    trace = tmp_path / "trace.json"
    code, out, err = run(
        capsys,
        "run",
        "Give tips.",
        "--model",
        model_dir,
        "--template",
        str(template),
        "--max-thread-tokens",
        "6",
        "--json",
        "--trace",
        str(trace),
        "-q",
    )
    assert code == 0, err
    result = json.loads(out)
    assert set(result) >= {"text", "annotated", "token_ids", "finish_reason", "threads", "stats", "warnings"}
    assert result["stats"]["threads"] == 4 and result["stats"]["steps"] >= 1
    assert result["text"].startswith("Tips:\n") and result["text"].endswith("\nEnd.")
    events = json.loads(trace.read_text())["traceEvents"]
    assert {e["tid"] for e in events if e.get("ph") == "X"} == {0, 1, 2, 3}


def test_run_prints_the_answer_and_a_stats_line(capsys, tmp_path, model_dir):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Hello")
    code, out, err = run(
        capsys,
        "run",
        str(prompt),
        "--model",
        model_dir,
        "--max-new-tokens",
        "5",
        "--show-annotated",
        "--mode",
        "sequential",
    )
    assert code == 0 and "--- annotated ---" in out
    assert "tokens in" in err and "1 thread" in err


def test_run_replay(capsys, tmp_path, model_dir):
    doc = tmp_path / "doc.pasta"
    doc.write_text('A <promise topic="x"/><async>b c</async><sync/> d')
    code, out, err = run(capsys, "run", "Hi", "--model", model_dir, "--replay", str(doc), "--json", "-q")
    assert code == 0, err
    result = json.loads(out)
    assert result["annotated"] == 'A <promise topic="x"/><async>b c</async><sync/> d'
    assert result["text"] == "A b c d" and result["stats"]["threads"] == 2


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["run", "missing.txt"], 2, "no such file"),
        (["run", "hi", "--model", "{tmp}/nope"], 2, "nope"),
        (["run", "hi", "--model", "{model}", "--template", "{tmp}/bad.pasta"], 1, "E102"),
        (["run", "hi", "--model", "{model}", "--template", "{tmp}/none.pasta"], 2, "no such file"),
        (["run", "hi", "--model", "{model}", "--top-p", "0"], 2, "--top-p: must be in (0, 1]"),
        (["run", "hi", "--model", "{model}", "--temperature", "nan"], 2, "--temperature: must be a finite number"),
        (["run", "hi", "--model", "{model}", "--max-thread-tokens", "0"], 2, "--max-thread-tokens: must be >= 1"),
    ],
)
def test_run_errors(capsys, tmp_path, model_dir, argv, code, message):
    (tmp_path / "bad.pasta").write_text("a <promise topic=x/>")
    args = [a.format(tmp=tmp_path, model=model_dir) for a in argv]
    got, out, err = run(capsys, *args)
    assert got == code and message in err and out == ""


def test_stdin_prompt(capsys, monkeypatch, model_dir):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": io.BytesIO(b"Hello")})())
    code, out, _ = run(capsys, "run", "-", "--model", model_dir, "--max-new-tokens", "3", "-q")
    assert code == 0 and out.endswith("\n")


def test_live_shows_each_thread_and_prints_the_same_answer(capsys, tmp_path, model_dir):
    template = tmp_path / "t.pasta"
    template.write_text(TEMPLATE)
    args = ("run", "Give tips.", "--model", model_dir, "--template", str(template), "--max-new-tokens", "6")
    code, plain, _ = run(capsys, *args, "-q")
    assert code == 0
    code, out, err = run(capsys, *args, "--live")
    assert code == 0 and out == plain
    for title in ("t0 main", "t1 a", "t2 b", "t3 c"):  # one panel per thread, in its final state
        assert title in err
    assert "done" in err and "tokens in" in err


def test_the_default_model_forks_with_its_shipped_adapter(capsys):
    """Integration (about 20 s): the README's promise. The default model, with the adapter shipped in
    pastac/adapters, writes its own promises for a list prompt; with --no-adapter it writes none."""
    from pastac import check

    prompt = "Give me five tips for better sleep."
    code, out, err = run(capsys, "run", prompt, "--json", "--max-new-tokens", "120")
    assert code == 0, err
    result = json.loads(out)
    assert result["stats"]["threads"] >= 3, result["annotated"]
    assert not check(result["annotated"], mode="strict").diagnostics, result["annotated"]
    code, out, err = run(capsys, "run", prompt, "--json", "--max-new-tokens", "40", "--no-adapter")
    assert code == 0, err
    assert json.loads(out)["stats"]["threads"] == 1


@pytest.mark.parametrize("option", ["--replay", "--template"])
def test_trace_never_writes_over_an_input(capsys, tmp_path, option):
    document = tmp_path / "answer.pasta"
    document.write_text(TEMPLATE)
    argv = ["run", "hi", option, str(document), "--trace", str(document), "--model", str(tmp_path / "no-model")]
    code, out, err = run(capsys, *argv)  # refused before the model loads
    assert (code, out) == (2, "")
    assert f"--trace '{document}' is {option} '{document}', which this command reads; name another file" in err
    assert document.read_text() == TEMPLATE
