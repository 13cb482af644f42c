"""What every command of the ``pastac`` command line shares: exit codes, the usage error, argument types.

Exit codes: 0 success (warnings allowed), 1 the input has errors (or ``fmt --check`` would reformat), 2 usage
or input/output error, 130 interrupted (Ctrl-C).  A command raises ``UsageError`` for a bad argument or an
unreadable input; the entry point prints it as ``pastac: error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

from pastac.files import InputFileError, read_text

EXIT_OK, EXIT_ERRORS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A bad argument or an unreadable input: exit status 2."""


def read_input(path: str) -> str:
    """The file's text, line endings untouched (columns and fmt depend on them); ``-`` reads standard input."""
    try:
        return read_text(path, stdin=True)
    except InputFileError as error:
        raise UsageError(str(error)) from None


def integer(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        return value

    return parse


count = integer(0)  # an argparse type: an integer >= 0
positive = integer(1)  # an argparse type: an integer >= 1


def number(ok: Callable[[float], bool], requirement: str) -> Callable[[str], float]:
    """An argparse type: a finite float for which ``ok`` holds, else an error that says ``requirement``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number {requirement}, not {text!r}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {requirement}, not {value}")
        return value

    return parse


def escaped(text: str) -> str:
    """An argparse type: text whose backslash escapes (``\\n``, ``\\t``, ``\\u00e9``) are decoded; other
    characters, non-ASCII ones included, are kept as they are."""
    try:
        return text.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except UnicodeDecodeError as error:
        raise argparse.ArgumentTypeError(f"bad backslash escape in {text!r}: {error.reason}") from None


def _name_max() -> int:
    try:
        return os.pathconf(".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


def path(text: str) -> str:
    """An argparse type: a file or folder name, not empty (an empty one would name the current folder), none of
    whose parts is longer than the file system allows (the system's error would come late, as a traceback)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no file")
    limit = _name_max()
    for part in text.split(os.sep):
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise argparse.ArgumentTypeError(
                f"{excerpt(part)} is {size:,} bytes long; a file name may have at most {limit} here"
            )
    return text


def excerpt(text: str, size: int = 40) -> str:
    """``text`` quoted, cut to about ``size`` characters with '...' where it was cut."""
    return repr(text if len(text) <= size else text[: size - 3] + "...")


#: The metavars of options and arguments that name a file or a folder; ``pastac.cli.main`` gives each the
#: type ``path``.
PATH_METAVARS = frozenset({"FILE", "PATH", "DIR", "FILE.jsonl", "FILE.json", "CARD.md", "DATA.jsonl", "REPORT.json"})
