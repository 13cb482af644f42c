"""JSON Lines: one JSON object per line, UTF-8, the format of pastac's datasets, suites and reports.

The one module that reads and writes JSONL. ``parse`` reads text leniently (it says why a line holds no
object); the record functions are those of files the commands read and write, and raise ``RecordsError`` with
a message that names the file and the problem. Invariants:

- A line ends at a line feed alone (a carriage return before it is white space). A record is written as one line,
  ``ensure_ascii=False`` but with every other character that some reader takes for a line break (U+0085,
  U+2028, U+2029; JSON escapes the control characters) escaped, so that what pastac writes reads back
  whatever splits its lines, and with lone surrogates escaped, so that any ``str`` can be written as UTF-8.
- The appending writer flushes each record as soon as it is written: a crash loses at most the line being
  written. ``write_records`` replaces a file atomically (``pastac.output``).
- ``resume`` reads a file back only when all of it is records of the kind the step writes (``Kind``); only
  then does it remove a last line that a crash cut short (or complete one that lacks only its newline), so
  that appending goes on after the last whole record. A file of anything else is refused, untouched.
- Blank lines are skipped everywhere; line numbers count from 1 and include them.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pastac.files import InputFileError, problem, read_text
from pastac.output import OutputError, atomic, reason

Record = dict[str, Any]


class RecordsError(Exception):
    """An input or output that cannot be used; the message names the file and the problem."""


def lines(text: str) -> Iterator[tuple[int, str]]:
    """Each line of JSONL text that is not blank, with its number (from 1); a line ends at a line feed alone."""
    for number, text_line in enumerate(text.split("\n"), start=1):
        if text_line.strip():
            yield number, text_line


def parse(text: str) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """For each line that is not blank: its number (from 1) and its object, or why it holds none."""
    for number, text_line in lines(text):
        try:
            record = json.loads(text_line)
        except json.JSONDecodeError as error:
            yield number, f"invalid JSON: {error.msg} (column {error.colno})"
            continue
        yield number, record if isinstance(record, dict) else "the record is not a JSON object"


# What ``ensure_ascii=False`` leaves raw and ``line`` escapes: the line breaks of str.splitlines (and of some
# editors and readers) that JSON does not escape, and the lone surrogates (of a "\ud800" read in), which UTF-8
# cannot encode. Outside strings JSON is ASCII, so each of them is in a string, where its ``\u`` escape means the same.
_ESCAPED = re.compile("[\x85\u2028\u2029\ud800-\udfff]")


def line(record: Record) -> str:
    """The record as one line of JSONL, with its newline (escaped as ``_ESCAPED`` says)."""
    return _ESCAPED.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(record, ensure_ascii=False)) + "\n"


@dataclass(frozen=True)
class Kind:
    """The records a step writes: the fields each has, fields that mark another kind, and, when ``only`` is
    given, the only fields it may have. ``id`` must be a string when it is required."""

    name: str  # how messages name the records: "response" records
    required: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    only: tuple[str, ...] | None = None

    def problem(self, record: Record) -> str | None:
        """Why ``record`` is not of this kind, or None."""
        missing = [name for name in self.required if name not in record]
        if missing:
            return f"the record has no field {', '.join(map(repr, missing))}"
        if "id" in self.required and not isinstance(record["id"], str):
            return "the record's id is not a string"
        foreign = [name for name in self.excluded if name in record]
        if self.only is not None:
            foreign += [name for name in record if name not in self.only]
        if foreign:
            return f"the record has field {', '.join(map(repr, foreign))}, which {self.name} records do not have"
        return None


def holds(path: str | Path, kind: Kind) -> bool:
    """Whether the file ``path`` is UTF-8 JSONL whose every record is of ``kind``."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return all(not isinstance(record, str) and kind.problem(record) is None for _, record in parse(text))


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


def resume(path: str | Path, kind: Kind) -> dict[str, Record]:
    """The records an output file already holds, by id (empty when there is no file); each must be of
    ``kind``, else ``RecordsError`` names the line and the file is left as it was.  Then a last line that a
    crash cut short (an unterminated beginning of a record) is removed from the file, so that appending goes on
    after the last whole record."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise RecordsError(problem(path, error)) from None
    cut = data.rfind(b"\n") + 1
    whole, tail = data[:cut], data[cut:]
    try:
        text = whole.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RecordsError(_not_of(path, kind, problem(path, error))) from None
    records: list[Record] = []
    for number, record in parse(text):
        why = record if isinstance(record, str) else kind.problem(record)
        if why is not None:
            raise RecordsError(_not_of(path, kind, f"{path}:{number}: {why}"))
        assert isinstance(record, dict)
        records.append(record)
    if tail.strip():
        number = text.count("\n") + 1
        try:
            last = json.loads(tail.decode("utf-8"))
        except ValueError:  # bad JSON or a character cut in two
            last = None
        if isinstance(last, dict):
            why = kind.problem(last)
            if why is not None:
                raise RecordsError(_not_of(path, kind, f"{path}:{number}: {why}"))
            records.append(last)
        elif not tail.startswith(b'{"'):  # what ``line`` writes begins so: anything else is no record cut short
            raise RecordsError(_not_of(path, kind, f"{path}:{number}: not a JSON record"))
        try:
            with path.open("ab" if last is not None else "r+b") as f:
                if last is not None:
                    f.write(b"\n")
                else:
                    f.truncate(cut)
        except OSError as error:
            raise RecordsError(f"cannot repair '{path}': {reason(error)}") from None
    done: dict[str, Record] = {}
    for record in records:
        done.setdefault(record["id"], record)
    return done


def _not_of(path: Path, kind: Kind, why: str) -> str:
    return (
        f"{why}; '{path}' is not a file of {kind.name} records that this step could go on with: name another "
        "file (it is left as it was)"
    )


@contextlib.contextmanager
def appending(path: Path) -> Iterator[Callable[[Record], None]]:
    """A function that appends one record to ``path`` and flushes it (parent folders are created)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a", encoding="utf-8")
    except OSError as error:
        raise RecordsError(f"cannot write '{path}': {reason(error)}") from None
    with handle:

        def write(record: Record) -> None:
            try:
                handle.write(line(record))
                handle.flush()
            except OSError as error:
                raise RecordsError(f"cannot write '{path}': {reason(error)}") from None

        yield write


def write_records(path: str | Path, records: Sequence[Record]) -> None:
    """Write ``records`` to ``path`` as JSONL, replacing the file atomically (parent folders are created)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RecordsError(f"cannot write '{path}': {reason(error)}") from None
    try:
        with atomic(path) as f:
            for record in records:
                f.write(line(record))
    except OutputError as error:
        raise RecordsError(str(error)) from None
