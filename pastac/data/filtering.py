"""The ``filter`` step: the annotated records that make good training data, and a log of what was dropped and why.

A record is dropped for the first reason of ``DROP_REASONS`` that applies: a duplicate id, an empty or
unfinished response, no annotation, or one that is not strict Pasta-Lang rendering back to the response.
Short answers that do not fork are kept: they teach the model when not to fork. Kept records carry the
dataset fields only (``DATA_FIELDS``), their promises recounted from the text, and keep their prompt's split.
The step is cheap and rewrites its output, its log (``filter_log_path``) and the split files, each
atomically; an existing one is replaced only when it is what the step writes (a dataset of ``DATA_RECORDS``, a
filter log) or when forced, and none may be the input.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pastac.data.annotate.annotation import count_promises, validate
from pastac.data.prompts import SPLITS, assign_split
from pastac.data.step import writing
from pastac.grammar import check
from pastac.jsonl import Kind, Record, holds, read_records, write_records
from pastac.output import check_file, refuse_input, refuse_overlap, write_text

#: The fields of a record of the final dataset, in this order.
DATA_FIELDS = ("id", "prompt", "text", "response", "category", "forkable", "split", "forks")
#: The records ``filter`` writes: those of the final dataset.
DATA_RECORDS = Kind("dataset", ("id", "prompt", "text"), only=DATA_FIELDS)

#: Why ``filter`` drops a record, in the order the checks are made.
DROP_REASONS: dict[str, str] = {
    "duplicate id": "an earlier record has the same id",
    "empty response": "the response is empty",
    "unfinished response": "the response hit the token limit before the end-of-sequence token",
    "no annotation": "the annotator gave no text (the response cannot be written as valid Pasta-Lang)",
    "invalid annotation": "the text is not strict Pasta-Lang, or does not render back to the response",
}


def filter_log_path(data: str | Path) -> Path:
    """Where ``filter_file`` writes its log: ``D.filter.json`` beside ``D.jsonl``."""
    return Path(data).with_suffix(".filter.json")


@dataclass(frozen=True)
class FilterResult:
    """The records kept, in their order, and the log: counts per drop reason and every dropped record's id."""

    kept: list[Record]
    log: dict[str, Any]


def _verdict(record: Record, seen: set[str]) -> tuple[str, str] | None:
    """(reason, detail) when the record is dropped, else None."""
    if record["id"] in seen:
        return "duplicate id", ""
    response, text = record.get("response"), record.get("text")
    if not isinstance(response, str) or not response.strip():
        return "empty response", ""
    if record.get("finished") is False:
        return "unfinished response", ""
    if text is None:
        return "no annotation", str(record.get("reason") or "")
    if not isinstance(text, str):
        return "invalid annotation", "the text is not a string"
    if problems := validate(response, text):
        return "invalid annotation", problems[0]
    return None


def filter_records(records: Sequence[Record], *, source: str = "") -> FilterResult:
    """The records that make training data, in their order, with the dataset fields only (``DATA_FIELDS``;
    forks recounted from the text), and a log: counts per drop reason and every dropped record's id."""
    kept: list[Record] = []
    dropped: Counter[str] = Counter()
    listed: list[dict[str, str]] = []
    seen: set[str] = set()
    generators: Counter[str] = Counter()
    annotators: Counter[str] = Counter()
    for record in records:
        verdict = _verdict(record, seen)
        seen.add(record["id"])
        generators[str(record.get("model") or f"imported from {record.get('source') or 'a file'}")] += 1
        annotators[str(record.get("annotator"))] += 1
        if verdict is not None:
            dropped[verdict[0]] += 1
            listed.append({"id": record["id"], "reason": verdict[0], "detail": verdict[1]})
            continue
        split = record.get("split") if record.get("split") in SPLITS else assign_split(record["prompt"])
        forks = count_promises(check(record["text"]).document)
        kept.append(
            {
                "id": record["id"],
                "prompt": record["prompt"],
                "text": record["text"],
                "response": record["response"],
                "category": record.get("category"),
                "forkable": record.get("forkable"),
                "split": split,
                "forks": forks,
            }
        )
    log = {
        "input": source,
        "records": len(records),
        "kept": len(kept),
        "dropped": {reason: dropped[reason] for reason in DROP_REASONS if dropped[reason]},
        "kept_by_split": {split: sum(r["split"] == split for r in kept) for split in SPLITS},
        "generators": dict(generators),
        "annotators": dict(annotators),
        "dropped_records": listed,
    }
    return FilterResult(kept, log)


def is_filter_log(path: Path) -> bool:
    """Whether the file ``path`` is a log that ``filter_file`` wrote."""
    try:
        log = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(log, dict) and {"records", "kept", "dropped"} <= log.keys()


def filter_file(
    annotated: str | Path, out: str | Path, *, split_dir: str | Path | None = None, force: bool = False
) -> FilterResult:
    """``filter_records`` over an annotated file: writes the kept records to ``out``, the log beside it
    (``filter_log_path``) and, with ``split_dir``, train.jsonl, validation.jsonl and test.jsonl there.

    Before anything is read or written, refuses an output that is the input or another output, and one that
    exists and is neither empty nor what the step writes, unless ``force``."""
    annotated, out = Path(annotated), Path(out)
    outputs = [("--out", out), ("the filter log", filter_log_path(out))]
    if split_dir is not None:
        outputs += [(f"--split-dir's {split}.jsonl", Path(split_dir) / f"{split}.jsonl") for split in SPLITS]
    with writing():
        for name, path in outputs:
            refuse_input(path, [("--annotated", annotated)], what=name)
        refuse_overlap(outputs)
        for name, path in outputs:
            if name == "the filter log":
                check_file(path, ours=is_filter_log, what="a filter log of pastac data filter", force=force, name=name)
            else:
                check_file(
                    path,
                    ours=lambda p: holds(p, DATA_RECORDS),
                    what="a dataset of pastac data filter",
                    force=force,
                    name=name,
                )
    result = filter_records(read_records(annotated, required=("id", "prompt", "response")), source=str(annotated))
    write_records(out, result.kept)
    log = result.log | {"output": str(out)}
    if split_dir is not None:
        folder = Path(split_dir)
        for split in SPLITS:
            write_records(folder / f"{split}.jsonl", [r for r in result.kept if r["split"] == split])
        log["split_dir"] = str(folder)
    with writing():
        write_text(filter_log_path(out), json.dumps(log, indent=2, ensure_ascii=False) + "\n")
    return FilterResult(result.kept, log)


def filter_summary(log: Mapping[str, Any]) -> list[str]:
    """Lines for the terminal: kept of all, then one line per drop reason."""
    total = log["records"]
    lines = [f"kept {log['kept']} of {total} records ({percent(log['kept'], total)})"]
    for reason, n in log["dropped"].items():
        lines.append(f"  dropped {n:>6}  {reason}: {DROP_REASONS.get(reason, '')}")
    return lines


def percent(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole``, one decimal (``-`` of nothing)."""
    return f"{100 * part / whole:.1f}%" if whole else "-"
