"""Fuzzing the command line: every command's arguments, the language and data commands end to end.

Argument lists are drawn from the parser itself (each command's options, their choices, values of every
kind: files that exist and do not, folders empty and full, standard input, messy Pasta-Lang, JSONL and
garbage, numbers that are not finite, long texts) and run through ``pastac.cli.main.main`` in a scratch
folder.  The commands that load a model (``run``, ``bench``, ``eval``, ``train``, ``data responses`` and
``build``) run up to the point where they would load it: everything they check of their arguments and
inputs before that is fuzzed; the model is replaced by a stop.  ``graph`` is not asked for pictures
(``png``, ``svg``: matplotlib, slow).

Properties: ``main`` returns 0, 1 or 2 (argparse's own exits are 0 or 2), never raises; a failure says
why on stderr, never with a traceback; a file that existed before the command is left byte for byte as it
was, unless the command succeeded and was asked to write it (an output option names it), or ``fmt --write``
rewrote it into a document that renders to what it rendered before.

Example counts: ``PASTAC_FUZZ_EXAMPLES`` (default 300; ``scripts/fuzz`` runs many more).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from strategies import messy_texts

import pastac.models
import pastac.runtime.engine
from pastac.cli.main import build_parser, main
from pastac.grammar import check, render

EXAMPLES = int(os.environ.get("PASTAC_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    settings.get_profile("properties"),
    max_examples=EXAMPLES,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# Options that name what a command writes: a file they name may change.
OUTPUT_OPTIONS = ("--out", "-o", "--output", "--split-dir", "--plot", "--write")
PICTURES = ("png", "svg")


# A stop, not an error: a BaseException, so that no handler of the command takes it.
class ModelReached(BaseException):
    """Raised where a command would load a model: its arguments and inputs got through."""


def _stop(*_args: object, **_kwargs: object) -> None:
    raise ModelReached


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], list]:
    """Each runnable command (``("check",)``, ``("data", "filter")``...) and its parser's actions."""
    out: dict[tuple[str, ...], list] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= _commands(sub, (*path, name))
    if path and not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions):
        out[path] = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    return out


COMMANDS = _commands(build_parser())
NAMES = sorted(COMMANDS)

# The scratch folder's files; recreated for every example.
DOC, JSONL, NOTES, REPORT, EMPTY, FULL, MISSING = (
    "doc.pasta",
    "data.jsonl",
    "notes.txt",
    "report.json",
    "empty",
    "full",
    "missing.jsonl",
)
PATHS = (DOC, JSONL, NOTES, REPORT, EMPTY, FULL, MISSING, "-", f"{FULL}/x.jsonl", "out.jsonl", "out")
NUMBERS = ("0", "1", "2", "3", "-1", "8", "64", "1e9", "1000000000", "nan", "inf", "-inf", "0.5", "x", "")
TEXTS = st.one_of(
    messy_texts,
    st.sampled_from(["a" * 300, "é。\\n\\u00e9", "\\x", "-", "--", "--help", "@doc.pasta", " ", "\x00"]),
)


@st.composite
def records(draw: st.DrawFn) -> str:
    """A JSONL file's text: records of the fields pastac's data steps read, with messy values, or garbage."""
    keys = ("id", "prompt", "response", "text", "annotated", "category", "split", "finished", "status")
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            lines.append(draw(st.text(max_size=20)))  # not JSON
        elif kind == 1:
            lines.append(json.dumps(draw(st.one_of(st.integers(), st.lists(st.integers(), max_size=2)))))
        else:
            record = {
                k: draw(st.one_of(messy_texts, st.booleans(), st.none(), st.integers()))
                for k in draw(st.lists(st.sampled_from(keys), max_size=len(keys), unique=True))
            }
            lines.append(json.dumps(record, ensure_ascii=draw(st.booleans())))
    end = draw(st.sampled_from(["\n", "", "\r\n"]))
    return "\n".join(lines) + (end if lines else "")


@st.composite
def argument_lists(draw: st.DrawFn) -> tuple[tuple[str, ...], list[str]]:
    """A command and an argument list for it: its options (known and unknown), values of every kind."""
    command = draw(st.sampled_from(NAMES))
    actions = COMMANDS[command]
    args: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        action = draw(st.sampled_from(actions)) if actions else None
        if action is None or draw(st.integers(0, 9)) == 0:
            args.append(draw(st.sampled_from(["--no-such-option", "-z", "--", "-"])))
            continue
        if action.option_strings:
            args.append(draw(st.sampled_from(action.option_strings)))
            if action.nargs == 0:
                continue
        value = st.one_of(st.sampled_from(PATHS), st.sampled_from(NUMBERS), TEXTS)
        if action.choices:
            value = st.one_of(st.sampled_from(sorted(map(str, action.choices))), value)
        args.append(draw(value))
    if draw(st.booleans()):
        args.append(draw(st.sampled_from(PATHS)))  # a positional file, most commands want one
    if command == ("graph",):
        args = [a for a in args if a not in PICTURES]
    return command, args


def scratch(folder: Path, doc: str, data: str, stdin: str) -> None:
    """Write the scratch folder's files afresh."""
    for path in sorted(folder.rglob("*"), reverse=True):
        path.unlink() if path.is_file() or path.is_symlink() else path.rmdir()
    (folder / DOC).write_text(doc, encoding="utf-8", errors="surrogatepass")
    (folder / JSONL).write_text(data, encoding="utf-8", errors="surrogatepass")
    (folder / NOTES).write_text("notes, not JSONL\nsecond line without end", encoding="utf-8")
    (folder / REPORT).write_text(json.dumps({"results": [{"valid": True}], "summary": []}), encoding="utf-8")
    (folder / EMPTY).mkdir()
    (folder / FULL).mkdir()
    (folder / FULL / "keep.txt").write_text(stdin, encoding="utf-8", errors="surrogatepass")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def named_outputs(args: list[str]) -> set[str]:
    """The files an argument list asks to be written: those after an output option, and ``fmt --write``'s."""
    named = {args[i + 1] for i, a in enumerate(args[:-1]) if a in OUTPUT_OPTIONS}
    return {os.path.normpath(n) for n in named}


@pytest.fixture(scope="module")
def folder() -> Path:
    with tempfile.TemporaryDirectory(prefix="pastac-fuzz-") as name:
        yield Path(name)


@FUZZ
@given(argument_lists(), messy_texts, records(), messy_texts)
def test_every_command_line_ends_in_a_status_and_keeps_its_inputs(
    folder: Path, call: tuple[tuple[str, ...], list[str]], doc: str, data: str, stdin: str
) -> None:
    command, args = call
    argv = [*command, *args]
    scratch(folder, doc, data, stdin)
    before = snapshot(folder)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.chdir(folder))
        stack.enter_context(contextlib.redirect_stdout(out))
        stack.enter_context(contextlib.redirect_stderr(err))
        patch = pytest.MonkeyPatch()
        stack.callback(patch.undo)
        patch.setattr(pastac.models, "load_model", _stop)
        patch.setattr(pastac.models, "random_model", _stop)
        patch.setattr(pastac.runtime.engine, "load_model", _stop)
        patch.setattr(
            sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8", "surrogatepass")), encoding="utf-8")
        )
        try:
            status = main(argv)
        except ModelReached:
            status = None
        except SystemExit as exit_:  # argparse: --help, --version (0), a usage error (2)
            assert exit_.code in (0, 2), (argv, exit_.code)
            status = int(exit_.code or 0)
    assert status in (None, 0, 1, 2), (argv, status)
    assert "Traceback" not in err.getvalue(), (argv, err.getvalue())
    if status == 2:
        assert err.getvalue().strip(), (argv, "a usage error that says nothing")
    after = snapshot(folder)
    rewrite = command == ("fmt",) and "--write" in args
    # A command that failed, or stopped where it would load the model, has written over nothing.
    allowed = named_outputs(args) if status == 0 else set()
    for name, content in before.items():
        if after.get(name) == content or name in allowed:
            continue
        # fmt --write may rewrite a file it was given, into the canonical form of the same document
        assert rewrite and name in {os.path.normpath(a) for a in args} and name in after, (argv, f"{name} changed")
        old, new = check(content.decode("utf-8"), mode="strict"), check(after[name].decode("utf-8"), mode="strict")
        assert old.document is not None and new.document is not None and not old.errors, argv
        assert render(new.document) == render(old.document), argv
