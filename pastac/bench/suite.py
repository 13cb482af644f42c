"""The replay suite: annotated responses of varied shapes, one JSON object per line (see ``SUITE.md``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SUITE = Path(__file__).with_name("replay.jsonl")


class SuiteError(ValueError):
    """A suite file that cannot be read (the message says where)."""


@dataclass(frozen=True)
class Response:
    id: str
    shape: str
    prompt: str
    text: str


def load_suite(path: str | Path | None = None) -> list[Response]:
    """The responses of a JSONL suite (default: the one shipped with pastac)."""
    path = SUITE if path is None else Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise SuiteError(f"cannot read the suite {path}: {error.strerror or error}") from None
    out: list[Response] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            response = Response(str(record.get("id", f"line-{number}")), str(record.get("shape", "")),
                                str(record["prompt"]), str(record["text"]))
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            what = f"missing field {error}" if isinstance(error, KeyError) else "not a JSON object"
            raise SuiteError(f"{path}:{number}: {what} (each line needs \"prompt\" and \"text\")") from None
        out.append(response)
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
