"""The conformance suite: every specs/conformance/**/NAME.pasta against its golden sidecars.

Sidecars, compared byte for byte (``pytest --update-goldens`` rewrites them):
  NAME.ast      ``dump`` of the document: the strict parse if valid, else the lenient one
  NAME.render   its rendering (spec §5)
  NAME.diag     the strict diagnostics as text (spec §9); empty for a valid case
  NAME.lenient  the lenient diagnostics as text
  NAME.fmt      the canonical form (spec §6); valid cases only
  NAME.args     input, optional: ``--max-depth N``, ``--template``
A ``--template`` case is a template (spec §7.4): its NAME.diag holds the template-mode diagnostics (so
"valid" means valid as a template), its NAME.render the template's rendering (each promise's place marked).
A case is invalid if and only if its name starts with an error code, which it must report.
Valid cases must also print and parse back to the same document, and printing must be idempotent;
the streaming scanner must lex every case as the batch lexer does, however the input is split in two.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pastac.grammar import DEFAULT_MAX_DEPTH, Mode, Severity, check, dump, parse, render, to_source, tokenize
from pastac.grammar.diagnostics import format_text
from pastac.grammar.scanner import coalesce, scan

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "specs" / "conformance"
CASES = sorted(SUITE.rglob("*.pasta"))
SIDECARS = (".ast", ".render", ".diag", ".lenient", ".fmt")


def case_id(path: Path) -> str:
    return path.relative_to(SUITE).with_suffix("").as_posix()


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # bytes: no newline translation


def options(path: Path) -> tuple[int, Mode]:
    """The case's depth limit and its mode: strict, or template (``--template``)."""
    args = path.with_suffix(".args")
    match read(args).split() if args.exists() else []:
        case []:
            return DEFAULT_MAX_DEPTH, "strict"
        case ["--max-depth", n] if n.isdecimal():
            return int(n), "strict"
        case ["--template"]:
            return DEFAULT_MAX_DEPTH, "template"
        case words:
            raise ValueError(f"{args}: unsupported options {words}")


def outputs(path: Path) -> dict[str, str]:
    source, name = read(path), path.relative_to(ROOT).as_posix()
    depth, mode = options(path)
    strict = check(source, mode=mode, max_depth=depth, filename=name)  # strict, or template
    lenient = check(source, mode="lenient", max_depth=depth, filename=name)
    as_errors = [d.with_severity(Severity.ERROR) for d in lenient.diagnostics]
    if mode == "strict":  # Spec §7: the modes differ only in severity.
        assert as_errors == list(strict.diagnostics)
    else:  # Spec §7.4: a template's diagnostics are strict's, less E304, plus E307.
        assert [d for d in as_errors if d.code != "E304"] == [d for d in strict.diagnostics if d.code != "E307"]
    assert lenient.document == strict.document
    document = strict.document if strict.ok else lenient.document
    out = {
        ".ast": dump(document),
        ".render": render(document, template=mode == "template"),
        ".diag": format_text(strict.diagnostics, source, name),
        ".lenient": format_text(lenient.diagnostics, source, name),
    }
    if strict.ok:
        out[".fmt"] = to_source(document)
    return out


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_case(case: Path, update_goldens: bool) -> None:
    actual = outputs(case)
    code = re.match(r"E\d{3}", case.name)
    if code:
        assert f"[{code.group()}]" in actual[".diag"], f"{case.name} must report {code.group()}"
    else:
        assert ".fmt" in actual, f"{case.name} must be valid (or named after the code it reports)"
    for suffix in SIDECARS:
        golden = case.with_suffix(suffix)
        if update_goldens:
            if suffix in actual:
                golden.write_bytes(actual[suffix].encode("utf-8"))
            else:
                golden.unlink(missing_ok=True)
        elif suffix in actual:
            assert golden.exists(), f"{golden} is missing (pytest --update-goldens writes it)"
            assert read(golden) == actual[suffix], f"{golden} differs (pytest --update-goldens rewrites it)"
        else:
            assert not golden.exists(), f"{golden} is for valid cases only"
    if ".fmt" in actual:
        depth, mode = options(case)
        document = parse(read(case), mode=mode, max_depth=depth)
        printed = to_source(document)
        reparsed = parse(printed, mode=mode, max_depth=depth)
        assert reparsed == document
        assert to_source(reparsed) == printed


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_streaming(case: Path) -> None:
    source = read(case)
    expected = coalesce(tokenize(source))
    for i in range(len(source) + 1):
        assert scan([source[:i], source[i:]]) == expected, f"split at {i}"


def test_no_stray_files() -> None:
    assert CASES, "no conformance cases found"
    for path in SUITE.rglob("*"):
        if path.is_file() and path.name != ".gitattributes":
            assert path.suffix in {".pasta", ".args", *SIDECARS}, f"unexpected file {path}"
            assert path.with_suffix(".pasta").exists(), f"{path} has no case"
