"""Reading input files with the error messages every pastac command gives."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path


class InputFileError(ValueError):
    """A file that cannot be read as UTF-8 text; the message names it and says why."""


def read_text(path: str | Path, *, stdin: bool = False) -> str:
    """The file's UTF-8 text, line endings untouched; with ``stdin``, ``-`` reads standard input."""
    try:
        data = sys.stdin.buffer.read() if stdin and str(path) == "-" else Path(path).read_bytes()
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputFileError(problem(path, error)) from None


def problem(path: str | Path, error: OSError | UnicodeDecodeError) -> str:
    """Why ``path`` cannot be read, in words."""
    if isinstance(error, UnicodeDecodeError):
        return f"cannot read '{path}': not UTF-8 text ({error.reason} at byte {error.start})"
    if isinstance(error, FileNotFoundError):
        return f"cannot read '{path}': no such file"
    if isinstance(error, IsADirectoryError):
        return f"cannot read '{path}': it is a directory"
    return f"cannot read '{path}': {error.strerror or error}"


def shown_path(path: str | Path) -> str:
    """``path`` as a record written to a shared file shows it: relative to the working folder when it lies
    under it, relative to its ``site-packages`` folder when it is an installed package's file (the package
    and the file, not where one machine installed it), else as it is."""
    resolved = Path(path).resolve()
    with contextlib.suppress(ValueError):
        return str(resolved.relative_to(Path.cwd().resolve()))
    parts = resolved.parts
    for marker in ("site-packages", "dist-packages"):
        if marker in parts:
            return str(Path(*parts[len(parts) - parts[::-1].index(marker) :]))
    return str(path)
