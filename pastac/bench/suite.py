"""The replay suite: annotated responses of varied shapes, one JSON object per line (see ``SUITE.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pastac import jsonl

SUITE = Path(__file__).with_name("replay.jsonl")


class SuiteError(ValueError):
    """A suite file that cannot be read (the message says where)."""


@dataclass(frozen=True)
class Response:
    """One response of the suite: its id, its shape (the kind of answer), the prompt, the annotated text."""

    id: str
    shape: str
    prompt: str
    text: str


def load_suite(path: str | Path | None = None) -> list[Response]:
    """The responses of a JSONL suite (default: the one shipped with pastac)."""
    path = SUITE if path is None else Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SuiteError(f"cannot read the suite {path}: {error.strerror or error}") from None
    out: list[Response] = []
    for number, record in jsonl.parse(text):
        if isinstance(record, str):
            raise SuiteError(f"{path}:{number}: {record}")
        missing = [name for name in ("prompt", "text") if name not in record]
        if missing:
            raise SuiteError(
                f'{path}:{number}: missing field {", ".join(map(repr, missing))} (each line needs "prompt" and "text")'
            )
        out.append(
            Response(
                str(record.get("id", f"line-{number}")),
                str(record.get("shape", "")),
                str(record["prompt"]),
                str(record["text"]),
            )
        )
    if not out:
        raise SuiteError(f"{path}: no responses")
    return out


def quick_selection(responses: list[Response]) -> list[Response]:
    """For a quick run: the shortest response that forks (or the shortest one, if none does)."""
    by_length = sorted(responses, key=lambda r: len(r.text))
    return [next((r for r in by_length if "<promise" in r.text), by_length[0])]


def spread_selection(responses: list[Response], count: int) -> list[Response]:
    """``count`` responses spread over the shapes: round robin over the shapes, each shape's responses
    taken in the suite's order."""
    shapes: dict[str, list[Response]] = {}
    for response in responses:
        shapes.setdefault(response.shape, []).append(response)
    picked: list[Response] = []
    while len(picked) < min(count, len(responses)):
        for group in shapes.values():
            if group and len(picked) < count:
                picked.append(group.pop(0))
    order = {id(r): n for n, r in enumerate(responses)}
    return sorted(picked, key=lambda r: order[id(r)])
