"""JSON Lines: one JSON object per line, UTF-8, the format of pastac's datasets, suites and reports.

The one module that reads and writes JSONL. ``parse`` reads text leniently (it says why a line holds no
object); the record functions are those of files the commands read and write, and raise ``RecordsError`` with
a message that names the file and the problem. Invariants:

- A record is written as one line, ``ensure_ascii=False``, and flushed by the appending writer as soon as it
  is written: a crash loses at most the line being written.
- ``resume`` removes a last line that a crash cut short (or completes one that lacks only its newline), so
  that appending goes on after the last whole record.
- Blank lines are skipped everywhere; line numbers count from 1 and include them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pastac.files import InputFileError, problem, read_text

Record = dict[str, Any]


class RecordsError(Exception):
    """An input or output that cannot be used; the message names the file and the problem."""


def parse(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """For each line that is not blank: its number (from 1) and its object, or why it holds none."""
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, f"invalid JSON: {error.msg} (column {error.colno})"
            continue
        yield number, record if isinstance(record, dict) else "the record is not a JSON object"


def line(record: Record) -> str:
    """The record as one line of JSONL, with its newline."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def parse_records(path: Path, text: str) -> list[Record]:
    """The objects of the JSONL text read from ``path``; the first line that holds none raises ``RecordsError``."""
    out = []
    for number, record in parse(text):
        if isinstance(record, str):
            raise RecordsError(f"{path}:{number}: {record}")
        out.append(record)
    return out


def read_records(path: str | Path, *, required: Sequence[str] = ("id",)) -> list[Record]:
    """The JSON objects of a JSONL file (blank lines skipped); each must have the ``required`` fields."""
    path = Path(path)
    try:
        text = read_text(path)
    except InputFileError as error:
        raise RecordsError(str(error)) from None
    records = parse_records(path, text)
    for index, record in enumerate(records, start=1):
        missing = [name for name in required if name not in record]
        if missing:
            raise RecordsError(
                f"{path}: record {index} has no field {', '.join(map(repr, missing))} "
                f"(fields: {', '.join(record) or 'none'})"
            )
        if "id" in required and not isinstance(record["id"], str):
            raise RecordsError(f"{path}: record {index} has an id that is not a string: {record['id']!r}")
    return records


def resume(path: str | Path) -> dict[str, Record]:
    """The records an output file already holds, by id (empty when there is no file).  A last line that a
    crash cut short is removed from the file, so that appending goes on after the last whole record."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise RecordsError(problem(path, error)) from None
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            complete = isinstance(json.loads(tail), dict)
        except ValueError:
            complete = False
        try:
            with path.open("ab" if complete else "r+b") as f:
                if complete:
                    f.write(b"\n")
                else:
                    f.truncate(cut)
        except OSError as error:
            raise RecordsError(f"cannot repair '{path}': {error.strerror or error}") from None
        data = data + b"\n" if complete else data[:cut]
    try:
        records = parse_records(path, data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise RecordsError(problem(path, error)) from None
    done: dict[str, Record] = {}
    for index, record in enumerate(records, start=1):
        if not isinstance(record.get("id"), str):
            raise RecordsError(f"{path}: record {index} has no string id; is this file an output of pastac data?")
        done.setdefault(record["id"], record)
    return done


@contextlib.contextmanager
def appending(path: Path) -> Iterator[Callable[[Record], None]]:
    """A function that appends one record to ``path`` and flushes it (parent folders are created)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a", encoding="utf-8")
    except OSError as error:
        raise RecordsError(f"cannot write '{path}': {error.strerror or error}") from None
    with handle:

        def write(record: Record) -> None:
            handle.write(line(record))
            handle.flush()

        yield write


def write_records(path: str | Path, records: Sequence[Record]) -> None:
    """Write ``records`` to ``path`` as JSONL, replacing the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(line(record))
    except OSError as error:
        raise RecordsError(f"cannot write '{path}': {error.strerror or error}") from None
