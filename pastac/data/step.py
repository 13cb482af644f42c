"""What the steps of ``pastac data`` share: their result, their error, and the checks on their inputs.

Every step reads and writes JSONL through ``pastac.jsonl`` and is keyed by the records' ``id``. Invariants
the helpers here keep for all of them: a step never writes over its own input (``distinct``); a generating
step goes on with an output only if all of it is records of the kind the step writes (``PROMPT_RECORDS``,
``RESPONSE_RECORDS``, ``ANNOTATED_RECORDS``) made with the same model or annotator (``same_setting``); the
first record of an id wins (``first_of_each_id``); every other file is written through ``pastac.output``
(``writing`` turns its errors into the pipeline's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pastac.jsonl import Kind, Record, RecordsError
from pastac.output import OutputError, refuse_input
from pastac.progress import progress_bar as bar

#: The error of every step (the command line reports it as a usage error). It is the JSONL layer's error
#: under the pipeline's name, so that one ``except`` catches an unreadable file and a step's own refusal alike.
PipelineError = RecordsError

#: What ``prompts`` writes (and ``responses`` reads).
PROMPT_RECORDS = Kind("prompt", ("id", "prompt", "category", "forkable", "split"), excluded=("response",))
#: What ``responses`` and ``import`` write.
RESPONSE_RECORDS = Kind("response", ("id", "prompt", "response", "finished"), excluded=("text", "annotator"))
#: What ``annotate`` writes: the response records with their annotation.
ANNOTATED_RECORDS = Kind("annotated", ("id", "prompt", "response", "text", "annotator"))


@dataclass(frozen=True)
class StepResult:
    """What a step did: records written now, records its output already held, records it dropped."""

    step: str
    path: Path
    written: int
    already: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def line(self) -> str:
        """One line for the terminal: the counts, the notes and the output file."""
        parts = [f"{self.written} written"]
        if self.already:
            parts.append(f"{self.already} already done")
        parts += [f"{n} dropped ({reason})" for reason, n in self.dropped.items() if n]
        parts += list(self.notes)
        return f"{self.step}: {', '.join(parts)} -> {self.path}"


def distinct(source: Path, out: Path, *, option: str = "--out", input_option: str = "the input") -> None:
    """Refuse an output that is the input file (the same file, whatever the path that names it)."""
    with writing():
        refuse_input(out, [(input_option, source)], what=option)


@contextlib.contextmanager
def writing() -> Iterator[None]:
    """Errors of ``pastac.output`` (a file that may not or cannot be written) as ``PipelineError``."""
    try:
        yield
    except OutputError as error:
        raise PipelineError(str(error)) from None


def same_setting(done: Mapping[str, Record], key: str, value: object, out: Path, option: str) -> None:
    """Refuse to resume an output that was made with another model or annotator."""
    other = next((r.get(key) for r in done.values() if r.get(key) != value), None)
    if other is not None:
        raise PipelineError(
            f"'{out}' already holds records made with {key} {other!r}, not {value!r}; "
            f"name another output file, or give the same {option}"
        )


def check_prompts(records: Sequence[Record], source: str) -> None:
    """Refuse records without a string ``prompt``; ``source`` names where they come from."""
    for index, record in enumerate(records, start=1):
        if not isinstance(record.get("prompt"), str):
            raise PipelineError(f"{source}: record {index} ({record.get('id')!r}) has no string 'prompt'")


def first_of_each_id(records: Sequence[Record]) -> list[Record]:
    """The records in their order, each id's first only."""
    seen: set[str] = set()
    out = []
    for record in records:
        if record["id"] not in seen:
            seen.add(record["id"])
            out.append(record)
    return out


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on standard error; yields a function that advances it by n."""
    with bar(description, total, enabled=enabled) as update:
        yield lambda n: update(advance=n)
