"""The command line: exit codes, output formats, JSONL datasets, render and fmt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pastac.cli.main import main

VALID = 'Tips: <promise topic="sleep" tokens="3"/><async>Sleep.</async><sync/> Done.'
INVALID = "a <promise topic=x/> b\n<async>c"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``pastac argv``; its exit status (argparse's own usage errors included), stdout and stderr."""
    try:
        code = main(list(argv))
    except SystemExit as exit:  # argparse rejected an argument
        code = exit.code if isinstance(exit.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "valid": tmp_path / "valid.pasta",
        "invalid": tmp_path / "invalid.pasta",
        "data": tmp_path / "data.jsonl",
        "messy": tmp_path / "messy.pasta",
    }
    out["valid"].write_text(VALID)
    out["invalid"].write_text(INVALID)
    out["messy"].write_text('x <promise\n   tokens="3"  topic="sleep" /><async topic="sleep" >y</async ><sync />')
    records = [{"response": VALID}, {"response": "<async>orphan</async>"}, {"other": 1}]
    out["data"].write_text("\n".join(json.dumps(r) for r in records) + "\nnot json\n")
    return out


def test_check_valid_exits_zero(capsys, files):
    code, out, _ = run(capsys, "check", str(files["valid"]))
    assert code == 0
    assert out.strip() == "checked 1 document (strict): no problems"


def test_check_errors_exact_location_and_carets(capsys, files):
    path = str(files["invalid"])
    code, out, _ = run(capsys, "check", path)
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"{path}:1:18: error[E102]: attribute value must be in double quotes"
    assert lines[1] == "   1 | a <promise topic=x/> b"
    assert lines[2] == "     |                  ^"
    # The unclosed block is reported at the real end of input, with a note at its opening.
    assert f"{path}:2:9: error[E301]: unclosed <async>: expected </async> before the end of input" in lines
    assert f"{path}:2:1: note: <async> opened here" in lines
    assert lines[-1] == "checked 1 document (strict): 2 errors"


def test_check_lenient_warns_and_passes(capsys, files):
    code, out, _ = run(capsys, "check", "--lenient", str(files["invalid"]))
    assert code == 0
    assert "warning[E102]" in out and "warning[E301]" in out and "error[" not in out


def test_max_depth_option(capsys, tmp_path):
    doc = tmp_path / "nested.pasta"
    doc.write_text('<promise topic="a"/><async><promise topic="b"/><async>x</async></async>')
    assert run(capsys, "check", str(doc))[0] == 0
    code, out, _ = run(capsys, "check", "--max-depth", "1", str(doc))
    assert code == 1 and "error[E305]: <async> nested 2 deep; the limit is 1" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["check"],
        ["check", "--max-depth", "-1", "x.pasta"],
        ["check", "--max-depth", "two", "x.pasta"],
        ["check", "--strict", "--lenient", "x.pasta"],
        ["check", "--format", "xml", "x.pasta"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_two(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_missing_file_exits_two_but_checks_the_rest(capsys, files):
    code, out, err = run(capsys, "check", "missing.pasta", str(files["invalid"]))
    assert code == 2
    assert "pastac: error: cannot read 'missing.pasta': no such file" in err
    assert "error[E102]" in out


def test_jsonl_records_are_named(capsys, files):
    path = str(files["data"])
    code, out, _ = run(capsys, "check", "--field", "response", path)
    assert code == 1
    assert f"{path}[2].response:1:1: error[E303]:" in out
    assert f"{path}:3:1: error: record has no field 'response' (fields: other)" in out
    assert f"{path}:4:1: error: invalid JSON:" in out
    assert "checked 2 documents (strict): 1 error, 2 bad records" in out


def test_json_format(capsys, files):
    code, out, _ = run(capsys, "check", "--format", "json", "--field", "response", str(files["data"]))
    assert code == 1
    report = json.loads(out)
    assert report["summary"] == {
        "documents": 2,
        "errors": 1,
        "warnings": 0,
        "bad_records": 2,
        "unreadable": 0,
        "mode": "strict",
        "valid": False,
    }
    assert report["schema"] == 1
    first = report["diagnostics"][0]
    assert (first["code"], first["name"], first["record"], first["line"], first["column"]) == (
        "E303",
        "async-without-promise",
        2,
        1,
        1,
    )


def test_github_format(capsys, files):
    code, out, _ = run(capsys, "check", "--format", "github", str(files["invalid"]))
    assert code == 1
    first = out.splitlines()[0]
    assert first.startswith("::error file=")
    assert ",line=1,col=18,endLine=1,endColumn=19,title=E102 unquoted-value::" in first


def test_render(capsys, files):
    assert run(capsys, "render", str(files["valid"])) == (0, "Tips: Sleep. Done.", "")
    code, out, err = run(capsys, "render", str(files["invalid"]))
    assert (code, out) == (1, "") and "error[E102]" in err
    code, out, err = run(capsys, "render", "--lenient", str(files["invalid"]))
    assert (code, out) == (0, "a c b\n") and "warning[E301]" in err


def test_fmt_prints_canonical_form_and_checks(capsys, files):
    code, out, _ = run(capsys, "fmt", str(files["messy"]))
    assert code == 0
    assert out == 'x <promise topic="sleep" tokens="3"/><async topic="sleep">y</async><sync/>'
    code, _, err = run(capsys, "fmt", "--check", str(files["messy"]))
    assert code == 1 and "would reformat" in err
    assert run(capsys, "fmt", "--write", str(files["messy"]))[0] == 0
    assert run(capsys, "fmt", "--check", str(files["messy"]))[0] == 0
    assert run(capsys, "fmt", "--check", str(files["invalid"]))[0] == 1


def test_fmt_several_files_needs_check_or_write(capsys, files):
    code, _, err = run(capsys, "fmt", str(files["valid"]), str(files["messy"]))
    assert code == 2 and "needs --check or --write" in err


def test_console_script_reads_stdin():
    stdin = '<promise topic="a"/><async></async><sync>'
    done = subprocess.run(
        [sys.executable, "-m", "pastac", "check", "-"], input=stdin, text=True, capture_output=True, check=False
    )
    assert done.returncode == 1
    assert done.stdout.startswith("<stdin>:1:41: error[E106]: <sync/> must be self-closing")


# -- writing files ----------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="a file size limit stands in for a full disk")
def test_fmt_write_replaces_a_file_whole_or_not_at_all(tmp_path):
    import resource

    small = tmp_path / "small.pasta"
    small.write_text('x <promise  topic="a"/><async>y</async><sync/>')
    big = tmp_path / "big.pasta"
    text = "".join(f'<promise  topic="t{i}" tokens="3"/><async>part {i}</async>' for i in range(200)) + "<sync/>\n"
    big.write_text(text)
    limit = len(text) // 2

    def cut_writes_at_the_limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "pastac", "fmt", "--write", str(small), str(big)],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=cut_writes_at_the_limit,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"pastac: error: cannot write '{big}': File too large; it is left as it was" in done.stderr
    assert big.read_text() == text  # not cut mid-tag
    assert small.read_text() == 'x <promise topic="a"/><async>y</async><sync/>'  # the other file is done
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.pasta", "small.pasta"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes read-only files")
def test_fmt_write_to_a_read_only_file_is_an_error(capsys, files):
    files["messy"].chmod(0o444)
    before = files["messy"].read_text()
    code, _, err = run(capsys, "fmt", "--write", str(files["messy"]))
    assert code == 2 and f"pastac: error: cannot write '{files['messy']}': the file is read-only" in err
    assert files["messy"].read_text() == before


def test_fmt_write_into_a_folder_it_may_not_write_is_an_error(capsys, files, monkeypatch):
    # A folder that refuses new files (read-only, for a user who is not root): the temporary file is refused.
    real_open = os.open

    def refusing(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and Path(path).parent == files["messy"].parent:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing)
    before = files["messy"].read_text()
    code, _, err = run(capsys, "fmt", "--write", str(files["messy"]))
    assert code == 2
    assert err == f"pastac: error: cannot write '{files['messy']}': permission denied; it is left as it was\n"
    assert files["messy"].read_text() == before


def test_graph_never_writes_over_the_document_it_reads(capsys, files, tmp_path):
    source = files["valid"]
    (tmp_path / "link.pasta").symlink_to(source)
    for target in (str(source), str(tmp_path / "sub" / ".." / "valid.pasta"), str(tmp_path / "link.pasta")):
        for fmt in ("dot", "png"):
            code, out, err = run(capsys, "graph", str(source), "--format", fmt, "-o", target)
            assert source.read_text() == VALID
            assert (code, out) == (2, "")
            assert f"--output '{target}' is FILE '{source}', which this command reads; name another file" in err
    code, _, err = run(capsys, "graph", str(source), "--format", "dot", "-o", str(tmp_path / "missing" / "g.dot"))
    assert code == 2 and "no such folder" in err


# -- unreadable inputs and the JSON report's schema -------------------------------------------------------------


def test_check_json_counts_an_unreadable_file_as_invalid(capsys, files):
    """Issue 23, item 10: --format json said "valid": true for a file it could not read, and had no schema."""
    code, out, err = run(capsys, "check", "--format", "json", "missing.pasta", str(files["valid"]))
    assert code == 2 and "cannot read 'missing.pasta': no such file" in err
    report = json.loads(out)
    assert report["schema"] == 1
    assert report["summary"]["valid"] is False and report["summary"]["unreadable"] == 1
    assert report["summary"]["documents"] == 1 and report["summary"]["errors"] == 0
    assert report["diagnostics"] == [
        {
            "file": "missing.pasta",
            "severity": "error",
            "code": None,
            "message": "cannot read 'missing.pasta': no such file",
        }
    ]


def test_check_text_does_not_say_no_problems_for_a_missing_file(capsys):
    code, out, _ = run(capsys, "check", "missing.pasta")
    assert code == 2 and out == "checked 0 documents (strict): 1 unreadable file\n"


def test_check_github_names_an_unreadable_file(capsys, tmp_path):
    code, out, _ = run(capsys, "check", "--format", "github", str(tmp_path))
    assert code == 2 and out.startswith(f"::error file={tmp_path},title=unreadable::cannot read")


# -- templates --------------------------------------------------------------------------------------------------

SLEEP = str(Path(__file__).resolve().parent.parent / "examples" / "templates" / "sleep.pasta")
TEMPLATE = 'Tips:\n1. <promise topic="sleep" tokens="4"/>\n2. <promise topic="food &amp; drink"/>\n<sync/>\nDone.\n'


def test_the_shipped_template_is_a_valid_template_not_a_valid_document(capsys):
    """Issue 23, item 10: the shipped template failed check (4 x E304), and render refused it."""
    code, out, _ = run(capsys, "check", SLEEP)
    assert code == 1 and out.count("error[E304]") == 4
    assert run(capsys, "check", "--template", SLEEP) == (0, "checked 1 document (template): no problems\n", "")
    assert run(capsys, "fmt", "--template", "--check", SLEEP)[0] == 0
    code, out, err = run(capsys, "render", "--template", SLEEP)
    assert (code, err) == (0, "")
    assert "1. **Keep a regular schedule.** [keep a regular schedule]\n" in out


def test_render_template_marks_each_promise_place(capsys, tmp_path):
    path = tmp_path / "t.pasta"
    path.write_text(TEMPLATE)
    assert run(capsys, "render", "--template", str(path)) == (0, "Tips:\n1. [sleep]\n2. [food & drink]\n\nDone.\n", "")
    code, _, err = run(capsys, "render", str(path))  # strict: not a document
    assert code == 1 and "error[E304]" in err
    code, _, err = run(capsys, "render", "--template", "--lenient", str(path))
    assert code == 2 and "not allowed with argument" in err


def test_a_promise_with_its_block_is_an_error_in_a_template(capsys, tmp_path):
    path = tmp_path / "t.pasta"
    path.write_text('A <promise topic="x"/><async>written</async> <promise topic="y"/><sync/>')
    code, out, _ = run(capsys, "check", "--template", str(path))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == (
        f"{path}:1:23: error[E307]: a template's promises are fulfilled by the model: remove this <async> block"
    )
    assert f"{path}:1:3: note: promise declared here" in lines
    assert lines[-1] == "checked 1 document (template): 1 error"
    code, out, _ = run(capsys, "check", "--template", "--format", "json", str(path))
    report = json.loads(out)
    assert [d["code"] for d in report["diagnostics"]] == ["E307"] and report["summary"]["mode"] == "template"
    code, _, err = run(capsys, "render", "--template", str(path))
    assert code == 1 and "error[E307]" in err


def test_an_argument_holding_a_nul_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Found by fuzzing the command line: a NUL in a path was a ValueError traceback ("embedded null byte").
    for argv in (
        ["check", "a\0b"],
        ["data", "filter", "--annotated", "x.jsonl", "--out", "\0"],
        ["bench", "--suite", "\0"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "NUL" in err and "Traceback" not in err


def test_an_empty_path_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Found by fuzzing the command line: "" named the current folder (data card --data "": a ValueError).
    for argv in (["data", "card", "--data", ""], ["data", "filter", "--annotated", "", "--out", "x"], ["check", ""]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "an empty path names no file" in capsys.readouterr().err


def test_a_file_name_longer_than_the_system_allows_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Found by fuzzing the command line: "File name too long" was an OSError traceback (run --model, train,
    # graph -o, data build --out).
    long = "a" * 300
    for argv in (["run", "hi", "--model", long], ["train", long, "--out", "x"], ["graph", "x", "-o", f"d/{long}"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2
        assert "300 bytes long" in capsys.readouterr().err
