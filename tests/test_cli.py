"""The command line: exit codes, output formats, JSONL datasets, render and fmt."""

from __future__ import annotations

import json
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
        "mode": "strict",
        "valid": False,
    }
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
