"""JSON Lines: one JSON object per line, the format of pastac's datasets, suites and reports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any


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
