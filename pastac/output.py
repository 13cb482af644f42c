"""Writing output files and folders so that no command loses a file: the one helper every command writes through.

Invariants:

- A file is written whole or not at all: into a temporary file beside it, then renamed over it
  (``os.replace``). A crash, a full disk or a size limit leaves the old file (or none) and no half-written one.
  A replaced file keeps its permission bits; a symbolic link is written through, not replaced.
- An output is never an input of the same command (``refuse_input``: the same file by ``os.path.samefile``, or
  the same resolved path), nor two outputs of one command the same file (``refuse_overlap``).
- An existing file is replaced only where the command's rule allows it (``check_file``): when it is empty or
  reads as what the command writes (``ours``), or when the user forces it. A folder is written into only when
  it is new, empty, or pastac's own output of that kind (``check_folder``), or when the user forces it.
- Every ``OSError`` becomes an ``OutputError`` whose message names the file and says why; the command line
  reports it as a usage error (exit status 2).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

StrPath = str | os.PathLike[str]

#: The option, the same in every command, that writes where a file or folder that is not pastac's own output
#: would otherwise be refused (``pastac.cli.options.force_option``); refusals say to add it.
FORCE = "--force"


class OutputError(Exception):
    """An output that cannot or may not be written; the message names it, says why and, where it can be, how to
    force it."""


def reason(error: OSError) -> str:
    """Why an ``OSError`` happened, in words."""
    match error:
        case FileNotFoundError():
            return "no such folder"
        case IsADirectoryError():
            return "it is a folder"
        case NotADirectoryError():
            return "a part of the path is a file, not a folder"
        case PermissionError():
            return "permission denied"
    return error.strerror or str(error)


def same_file(a: StrPath, b: StrPath) -> bool:
    """Whether ``a`` and ``b`` name one file: the same file on disk (links included), or the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).resolve() == Path(b).resolve()


def refuse_input(output: StrPath, inputs: Iterable[tuple[str, StrPath | None]], *, what: str = "the output") -> None:
    """Refuse ``output`` (``what``, as the command names it: "--out") when it is one of ``inputs``, given as
    (how the command names it, path) pairs; ``None`` and ``-`` (standard input) are no file."""
    for name, path in inputs:
        if path is not None and str(path) != "-" and same_file(output, path):
            raise OutputError(f"{what} '{output}' is {name} '{path}', which this command reads; name another file")


def refuse_overlap(outputs: Iterable[tuple[str, StrPath]]) -> None:
    """Refuse two outputs of one command, given as (how the command names it, path) pairs, that are one file."""
    seen: list[tuple[str, StrPath]] = []
    for name, path in outputs:
        for other_name, other in seen:
            if same_file(path, other):
                raise OutputError(f"{other_name} '{other}' and {name} '{path}' are one file; name different files")
        seen.append((name, path))


def check_file(path: StrPath, *, ours: Callable[[Path], bool], what: str, force: bool = False, name: str = "") -> None:
    """Refuse to replace the file ``path`` (``name``, as the command names it: "--out") unless it is missing,
    empty, ``ours`` (it reads as ``what``, the kind of file the command writes) or ``force`` is given; refuse a
    folder in its place."""
    path = Path(path)
    shown = f"{name} '{path}'".lstrip()
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    except OSError as error:
        raise OutputError(f"cannot write '{path}': {reason(error)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise OutputError(f"cannot write '{path}': it is a folder")
    if force or info.st_size == 0 or ours(path):
        return
    raise OutputError(f"{shown} exists and is not {what}; name another file, or add {FORCE} to replace it")


def check_folder(
    path: StrPath, *, ours: Callable[[Path], bool], what: str, force: bool = False, name: str = ""
) -> None:
    """Refuse to write into the folder ``path`` (``name``, as the command names it: "--out") unless it is new,
    empty, ``ours`` (pastac's own ``what``, which the command may write into again) or ``force`` is given; a new
    folder's nearest existing parent must be a writable folder. Nothing is created."""
    path = Path(path)
    shown = f"{name} '{path}'".lstrip()
    if path.exists():
        if not path.is_dir():
            raise OutputError(f"{shown} is a file, not a folder")
        if not os.access(path, os.W_OK):
            raise OutputError(f"cannot write into '{path}': permission denied")
        try:
            empty = next(path.iterdir(), None) is None
        except OSError as error:
            raise OutputError(f"cannot read the folder '{path}': {reason(error)}") from None
        if empty or force or ours(path):
            return
        raise OutputError(
            f"{shown} holds files and is not {what}; name a new or empty folder, or add {FORCE} to write into it "
            "(files of the same names are replaced)"
        )
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot create '{path}': '{parent}' is not a writable folder")


def make_folder(path: StrPath) -> Path:
    """Create the folder ``path`` and its parents where missing."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"cannot create the folder '{path}': a file is in the way") from None
    except OSError as error:
        raise OutputError(f"cannot create the folder '{path}': {reason(error)}") from None
    return path


@contextlib.contextmanager
def atomic(path: StrPath, *, binary: bool = False, newline: str | None = None) -> Iterator[IO[Any]]:
    """A file to write ``path``'s new contents into (UTF-8 text, or bytes with ``binary``): it replaces ``path``
    when the block ends, and is removed, leaving ``path`` as it was, when the block raises."""
    shown = Path(path)
    target = Path(os.path.realpath(path)) if shown.is_symlink() else shown
    try:
        info: os.stat_result | None = target.stat()
    except FileNotFoundError:
        info = None
    except OSError as error:
        raise OutputError(f"cannot write '{shown}': {reason(error)}") from None
    if info is not None:
        if stat.S_ISDIR(info.st_mode):
            raise OutputError(f"cannot write '{shown}': it is a folder")
        if not os.access(target, os.W_OK):
            raise OutputError(f"cannot write '{shown}': the file is read-only")
    kept = "it is left as it was" if info is not None else "nothing was written"
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        # 0o666 under the umask, as open() gives a new file; a replaced file keeps its own mode
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileNotFoundError:
        raise OutputError(f"cannot write '{shown}': no such folder") from None
    except OSError as error:
        raise OutputError(f"cannot write '{shown}': {reason(error)}; {kept}") from None
    try:
        mode = "wb" if binary else "w"
        with os.fdopen(fd, mode, **({} if binary else {"encoding": "utf-8", "newline": newline})) as file:
            if info is not None:
                os.chmod(temporary, stat.S_IMODE(info.st_mode))
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"cannot write '{shown}': {reason(error)}; {kept}") from None
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: StrPath, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8, line endings as given), atomically."""
    with atomic(path, newline="") as file:
        file.write(text)


def write_bytes(path: StrPath, data: bytes) -> None:
    """Replace ``path`` with ``data``, atomically."""
    with atomic(path, binary=True) as file:
        file.write(data)
