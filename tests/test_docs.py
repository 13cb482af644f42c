"""The examples in README.md and docs/*.md: every command shown parses, and the marked ones run.

- Every line of a ```sh block that starts with ``pastac `` (joined with the lines it continues onto
  through a trailing backslash; a trailing ``# comment`` and anything after a shell operator such as
  ``>`` or ``&`` left out), and every ``.venv/bin/pastac`` line of scripts/demo, must be accepted by the
  CLI's argument parser; a ``pastac run`` among them gives a prompt file with ``-f``, not as PROMPT.
  Blocks in any other language (``text`` synopses with placeholders, program output) are not read.
- A ```sh or ```python block on the line right after ``<!-- example: run -->`` is run for real, from
  the repository root: each command through ``pastac.cli.main`` in this process, expecting exit
  status 0, or N after ``<!-- example: run, exit N -->``; a python block with ``exec`` in a fresh
  namespace. Mark only cheap examples that write nothing in the repository (a test checks the
  checkout is unchanged). No shell runs them: no globs, pipes or redirections in a marked block.
- A python block after ``<!-- example: run, model -->`` decodes with the embedded default model: it runs
  too, in a test of its own (the front page's library example is the script a new user writes first).

The decoding commands (run, bench, data, train, eval) are parsed, never run, here.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pastac.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*example:\s*run(?:\s*,\s*(?:exit\s+(\d+)|(model)))?\s*-->$")
SHELL_OPERATORS = frozenset({"|", "||", "&", "&&", ";", ";;", ">", ">>", "<", "<<", "(", ")"})
OTHER_SHELL_LANGUAGES = frozenset({"bash", "shell", "console", "zsh"})  # write ```sh: only it is read


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    lines: tuple[str, ...]
    run: bool  # marked <!-- example: run -->
    exit_status: int
    model: bool = False  # marked <!-- example: run, model -->: it loads the default model

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


@dataclass(frozen=True)
class Command:
    page: Path
    line: int  # 1-based line where the command starts
    text: str  # as written, continuation lines joined
    argv: tuple[str, ...]  # without the leading "pastac"
    shell: bool  # it uses a shell operator (redirection, pipe, background)

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i].strip())
        if not opening:
            i += 1
            continue
        start = i
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        marker = MARKER.match(lines[start - 1].strip()) if start > 0 else None
        found.append(
            Block(
                page=page,
                line=start + 1,
                language=opening.group(1).lower(),
                lines=tuple(lines[start + 1 : i]),
                run=marker is not None,
                exit_status=int(marker.group(1) or 0) if marker else 0,
                model=bool(marker and marker.group(2)),
            )
        )
        i += 1
    return found


def split(text: str) -> tuple[list[str], bool]:
    """The words of a shell command line up to its first operator, and whether it has one."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words: list[str] = []
    for word in lexer:
        if word in SHELL_OPERATORS:
            return words, True
        words.append(word)
    return words, False


def logical_lines(block: Block) -> list[tuple[int, str]]:
    """The block's lines, each joined with those it continues onto (trailing backslash), with line numbers."""
    found: list[tuple[int, str]] = []
    i = 0
    while i < len(block.lines):
        number = block.line + 1 + i
        text = block.lines[i].rstrip()
        while text.endswith("\\") and i + 1 < len(block.lines):
            i += 1
            text = text[:-1] + " " + block.lines[i].strip()
        found.append((number, text.strip()))
        i += 1
    return found


def commands(block: Block) -> list[Command]:
    found: list[Command] = []
    for number, text in logical_lines(block):
        if text.startswith("pastac "):
            words, shell = split(text)
            found.append(Command(block.page, number, text, tuple(words[1:]), shell))
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]
SH_COMMANDS = [command for block in ALL_BLOCKS if block.language == "sh" for command in commands(block)]
DEMO = ROOT / "scripts" / "demo"
DEMO_COMMANDS = [
    Command(DEMO, number, line, tuple(split(line)[0][1:]), False)
    for number, line in enumerate(DEMO.read_text(encoding="utf-8").splitlines(), start=1)
    if line.startswith(".venv/bin/pastac ")
]
RUN_BLOCKS = [block for block in ALL_BLOCKS if block.run and not block.model]
MODEL_BLOCKS = [block for block in ALL_BLOCKS if block.model]


def test_the_pages_show_commands_and_runnable_examples() -> None:
    assert (ROOT / "docs" / "README.md").is_file()
    assert len(SH_COMMANDS) > 20
    assert any(block.page.name == "README.md" and block.page.parent == ROOT for block in RUN_BLOCKS)
    assert any(block.language == "python" for block in RUN_BLOCKS)


@pytest.mark.parametrize("block", ALL_BLOCKS, ids=lambda b: b.where)
def test_shell_blocks_are_sh_and_markers_precede_runnable_blocks(block: Block) -> None:
    assert block.language not in OTHER_SHELL_LANGUAGES, f"{block.where}: write ```sh, the language this test reads"
    if block.run:
        assert block.language in ("sh", "python"), f"{block.where}: only sh and python blocks can be run"
    if block.model:
        assert block.language == "python", f"{block.where}: a model example is a python block"


def test_every_marker_is_followed_by_a_block() -> None:
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if MARKER.match(line.strip()):
                following = lines[number] if number < len(lines) else ""
                assert FENCE.match(following.strip()), (
                    f"{page.relative_to(ROOT)}:{number}: the marker must be right before a ``` block"
                )


@pytest.fixture(scope="module")
def parser():
    return build_parser()


@pytest.mark.parametrize("command", [*SH_COMMANDS, *DEMO_COMMANDS], ids=lambda c: c.where)
def test_command_parses(parser, command: Command) -> None:
    errors = io.StringIO()
    status: int | str | None = 0
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(list(command.argv))
    except SystemExit as exit:
        status = exit.code
    if status not in (0, None):
        message = errors.getvalue().strip().splitlines()
        pytest.fail(
            f"{command.where}: `{command.text}` is rejected: {message[-1] if message else status}", pytrace=False
        )


def _checkout_state() -> str | None:
    """``git status`` of the checkout, or None outside a git work tree."""
    if shutil.which("git") is None:
        return None
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return status.stdout if status.returncode == 0 else None


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=lambda b: b.where)
def test_marked_example_runs(block: Block, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    before = _checkout_state()
    if block.language == "python":
        source = "\n".join(block.lines) + "\n"
        exec(compile(source, block.where, "exec"), {"__name__": "__docs__"})
    else:
        others = [text for _, text in logical_lines(block) if text and not text.startswith(("#", "pastac "))]
        assert not others, f"{block.where}: a marked sh block holds pastac commands only, not `{others[0]}`"
        runnable = commands(block)
        for command in runnable:
            assert not command.shell, f"{command.where}: no shell runs marked examples: `{command.text}`"
            status = main(list(command.argv))
            output = capsys.readouterr()
            assert status == block.exit_status, (
                f"{command.where}: `{command.text}` exited {status}, not {block.exit_status}\n"
                f"{output.out[-2000:]}{output.err[-2000:]}"
            )
    assert _checkout_state() == before, f"{block.where}: the example wrote into the checkout"


@pytest.mark.parametrize("block", MODEL_BLOCKS, ids=lambda b: b.where)
def test_marked_model_example_runs(block: Block, monkeypatch) -> None:
    """The front page's library example, as a new user would paste it: the default model and its adapter."""
    monkeypatch.chdir(ROOT)
    before = _checkout_state()
    namespace: dict[str, object] = {"__name__": "__docs__"}
    exec(compile("\n".join(block.lines) + "\n", block.where, "exec"), namespace)
    assert _checkout_state() == before, f"{block.where}: the example wrote into the checkout"
    if "result" in namespace:  # what the example says it gives
        result = namespace["result"]
        assert result.text and result.token_ids and result.finish_reason in ("stop", "length")


def test_the_front_page_has_a_model_example() -> None:
    assert any(block.page == ROOT / "README.md" for block in MODEL_BLOCKS)


def test_the_demo_shows_commands() -> None:
    assert len(DEMO_COMMANDS) >= 3


@pytest.mark.parametrize("command", [*SH_COMMANDS, *DEMO_COMMANDS], ids=lambda c: c.where)
def test_a_run_prompt_is_text_and_a_prompt_file_is_given_with_f(parser, command: Command) -> None:
    """``pastac run PROMPT`` decodes the text PROMPT, never a file of that name: an example whose PROMPT names
    a file of the checkout means ``-f FILE``."""
    if command.argv[:1] != ("run",):
        return
    with contextlib.redirect_stderr(io.StringIO()):
        args = parser.parse_args(list(command.argv))
    if args.prompt not in (None, "-"):
        assert not (ROOT / args.prompt).exists(), f"{command.where}: `{command.text}` reads a file: write -f FILE"
