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
        "-f",
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
        (["run", "-f", "missing.txt"], 2, "no such file"),
        (["run", "-f", "{tmp}"], 2, "it is a directory"),
        (["run"], 2, "one of the arguments PROMPT -f/--prompt-file is required"),
        (["run", "hi", "-f", "{tmp}/bad.pasta"], 2, "not allowed with argument PROMPT"),
        (["run", "hi", "--model", "{tmp}/nope"], 2, "nope"),
        (["run", "hi", "--model", "{model}", "--template", "{tmp}/bad.pasta"], 1, "E102"),
        (["run", "hi", "--model", "{model}", "--template", "{tmp}/none.pasta"], 2, "no such file"),
        (["run", "hi", "--model", "{model}", "--top-p", "0"], 2, "--top-p: must be in (0, 1]"),
        (["run", "hi", "--model", "{model}", "--temperature", "nan"], 2, "--temperature: must be a finite number"),
        (["run", "hi", "--model", "{model}", "--temperature", "inf"], 2, "--temperature: must be a finite number"),
        (["run", "hi", "--model", "{model}", "--temperature=-inf"], 2, "--temperature: must be a finite number"),
        (["run", "hi", "--model", "{model}", "--top-p", "nan"], 2, "--top-p: must be a finite number"),
        (["run", "-", "--model", "{model}", "--template", "-"], 2, "not PROMPT and --template"),
        (["run", "-f", "-", "--model", "{model}", "--replay", "-"], 2, "not --prompt-file and --replay"),
        (["run", "hi", "--model", "{model}", "--max-thread-tokens", "0"], 2, "--max-thread-tokens: must be >= 1"),
    ],
)
def test_run_errors(capsys, tmp_path, model_dir, argv, code, message):
    (tmp_path / "bad.pasta").write_text("a <promise topic=x/>")
    args = [a.format(tmp=tmp_path, model=model_dir) for a in argv]
    got, out, err = run(capsys, *args)
    assert got == code and message in err and out == ""


@pytest.mark.parametrize(
    ("given", "expected"),
    [("é。", "é。"), ("\\n", "\n"), ("。\\u00e9\\t", "。é\t"), ("", ""), ("naïve\\\\", "naïve\\")],
)
def test_child_stop_keeps_non_ascii_text_and_reads_escapes(given, expected):
    """Issue 23, item 6: --child-stop decoded its text with unicode_escape alone, and "é。" became mojibake."""
    from pastac.cli.main import build_parser
    from pastac.runtime.command import run_options

    args = build_parser().parse_args(["run", "hi", "--child-stop", given])
    assert args.child_stop == expected and run_options(args)["child_stop"] == expected


def test_a_bad_child_stop_escape_is_a_usage_error(capsys):
    code, out, err = run(capsys, "run", "hi", "--child-stop", "\\x4")
    assert (code, out) == (2, "") and "--child-stop: bad backslash escape" in err


@pytest.fixture
def prompts(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The prompts the engine is asked to decode, in order (the decoding itself as usual)."""
    from pastac.runtime.engine import Engine

    seen: list[object] = []
    stream = Engine.stream

    def recording(self, prompt, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(prompt)
        return stream(self, prompt, *args, **kwargs)

    monkeypatch.setattr(Engine, "stream", recording)
    return seen


@pytest.mark.parametrize("argv", [["-"], ["-f", "-"], ["--prompt-file", "-"]])
def test_stdin_prompt(capsys, monkeypatch, model_dir, prompts, argv):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", type("S", (), {"buffer": io.BytesIO(b"Hello")})())
    code, out, _ = run(capsys, "run", *argv, "--model", model_dir, "--max-new-tokens", "3", "-q")
    assert code == 0 and out.endswith("\n") and prompts == ["Hello"]


def test_the_prompt_is_its_text_never_a_file_of_that_name(capsys, tmp_path, monkeypatch, model_dir, prompts):
    """Issue 23, item 1: a long prompt without '/' crashed (the file name was too long to look up), and a
    prompt that names an existing file decoded the file.  The text is the prompt; -f reads a file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hello").write_text("SECRET")
    args = ("--model", model_dir, "--max-new-tokens", "2", "-q")
    long = "Tell me " + "about sleep and " * 20 + "rest."  # over 255 bytes, no '/'
    assert len(long.encode()) > 255
    for prompt in ("hello", long, "notes.txt"):
        code, _, err = run(capsys, "run", prompt, *args)
        assert code == 0, err
    assert run(capsys, "run", "-f", "hello", *args)[0] == 0
    assert prompts == ["hello", long, "notes.txt", "SECRET"]


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


@pytest.mark.parametrize("option", ["--replay", "--template", "--prompt-file"])
def test_trace_never_writes_over_an_input(capsys, tmp_path, option):
    document = tmp_path / "answer.pasta"
    document.write_text(TEMPLATE)
    prompt = [] if option == "--prompt-file" else ["hi"]
    argv = ["run", *prompt, option, str(document), "--trace", str(document), "--model", str(tmp_path / "no-model")]
    code, out, err = run(capsys, *argv)  # refused before the model loads
    assert (code, out) == (2, "")
    assert f"--trace '{document}' is {option} '{document}', which this command reads; name another file" in err
    assert document.read_text() == TEMPLATE


# -- Ctrl-C ---------------------------------------------------------------------------------------------------


def interrupted(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``run(capsys, *argv)``, where a KeyboardInterrupt that escapes ``main`` (a traceback for the user) fails
    the test instead of stopping the test session."""
    try:
        return run(capsys, *argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped pastac's main: the user sees a traceback")


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "hi", "--model", "{model}"],
        ["run", "hi", "--model", "{model}", "--json"],
        ["eval", "--prompts", "{tmp}/prompts.jsonl", "--model", "{model}", "--no-adapter", "--json"],
        ["bench", "--model", "{model}", "--limit", "1"],
        ["train", "{tmp}/data.jsonl", "--out", "{tmp}/adapter", "--model", "{model}"],
    ],
    ids=["run", "run-json", "eval", "bench", "train"],
)
def test_ctrl_c_while_the_model_loads_is_one_line_and_exit_130(capsys, tmp_path, monkeypatch, model_dir, argv):
    """Issue 23, item 6: Ctrl-C during start-up printed a traceback."""

    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pastac.models.loading._load_folder", stop)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "Hi"}\n')
    (tmp_path / "data.jsonl").write_text('{"prompt": "Hi", "text": "Hello."}\n')
    code, out, err = interrupted(capsys, *[a.format(tmp=tmp_path, model=model_dir) for a in argv])
    assert (code, out) == (130, "")
    assert err.strip().splitlines()[-1] == "pastac: interrupted" and "Traceback" not in err


def test_ctrl_c_while_kernels_are_tuned(capsys, monkeypatch, model_dir):
    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pastac.runtime.engine.tune_linears", stop)
    code, out, err = interrupted(capsys, "run", "hi", "--model", model_dir, "--kernels", "tuned", "-q")
    assert (code, out, err) == (130, "", "pastac: interrupted\n")


@pytest.fixture
def ctrl_c_after_three_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the middle of decoding: after three forward passes, the prompt's and two decode steps."""
    from pastac.runtime.engine import Engine

    steps = Engine._steps

    def interrupted_steps(self, run):  # type: ignore[no-untyped-def]
        for done, _ in enumerate(steps(self, run), 1):
            yield
            if done == 3:
                raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "_steps", interrupted_steps)


def test_ctrl_c_mid_decode_prints_what_was_decoded(capsys, tmp_path, model_dir, ctrl_c_after_three_steps):
    template = tmp_path / "t.pasta"
    template.write_text(TEMPLATE)
    code, out, err = interrupted(capsys, "run", "hi", "--model", model_dir, "--template", str(template), "-q")
    assert code == 130 and out.startswith("Tips:")
    assert err == "pastac: interrupted; the answer above is what was decoded so far\n"


def test_ctrl_c_mid_decode_with_json_prints_the_partial_result_as_json(
    capsys, tmp_path, model_dir, ctrl_c_after_three_steps
):
    """Issue 23, item 6: with --json, Ctrl-C printed plain text."""
    template = tmp_path / "t.pasta"
    template.write_text(TEMPLATE)
    code, out, err = interrupted(capsys, "run", "hi", "--model", model_dir, "--template", str(template), "--json", "-q")
    assert code == 130 and "Traceback" not in err
    result = json.loads(out)
    assert result["finish_reason"] == "interrupted" and result["text"].startswith("Tips:")
    assert result["stats"]["steps"] == 2 and result["model"] and result["mode"] == "async"


def test_ctrl_c_while_training_says_where_to_resume(capsys, tmp_path, monkeypatch, model_dir):
    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("pastac.train.trainer.micro_batch_losses", stop)
    (tmp_path / "data.jsonl").write_text('{"prompt": "Hi", "text": "Hello."}\n')
    code, out, err = interrupted(
        capsys, "train", str(tmp_path / "data.jsonl"), "--out", str(tmp_path / "adapter"), "--model", model_dir, "-q"
    )
    assert (code, out) == (130, "")
    resume = f"pastac: interrupted; run the same command again to resume from {tmp_path / 'adapter' / 'checkpoint'}"
    assert err.strip().splitlines()[-1] == resume and "Traceback" not in err
