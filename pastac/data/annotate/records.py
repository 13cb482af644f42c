"""The ``annotate`` step: each response's annotation, appended record by record.

Records keep their fields and gain ``text``, ``forks``, ``reason`` and ``annotator``. The step resumes:
records whose id the output holds are skipped, and the output must have been made with the same annotator.
Empty and unfinished responses are not sent to the annotator (their text is null); an annotator's failure
(an unreachable server) stops the step, and what was written stays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pastac.data.annotate.annotation import Annotation, Annotator
from pastac.data.annotate.structural import StructuralAnnotator
from pastac.data.step import (
    ANNOTATED_RECORDS,
    PipelineError,
    StepResult,
    check_prompts,
    distinct,
    first_of_each_id,
    progress_bar,
    same_setting,
)
from pastac.jsonl import Record, appending, read_records, resume


def _skip_reason(record: Record) -> str | None:
    response = record.get("response")
    if not isinstance(response, str) or not response.strip():
        return "not annotated: the response is empty"
    if record.get("finished") is False:
        return "not annotated: the response hit the token limit"
    return None


def annotate_records(
    records: Sequence[Record],
    out: str | Path,
    annotator: Annotator,
    *,
    progress: bool = True,
    source: str = "responses",
) -> StepResult:
    """Append each record with the annotator's ``text``, ``forks``, ``reason`` and ``annotator`` name, unless
    ``out`` holds it already.  Empty and unfinished responses are not sent to the annotator (text null).
    An annotator's failure (an unreachable server) stops the step; what was written stays."""
    out = Path(out)
    check_prompts(records, source)
    done = resume(out, ANNOTATED_RECORDS)
    same_setting(done, "annotator", annotator.name, out, "--annotator")
    pending = [r for r in first_of_each_id(records) if r["id"] not in done]
    already = len({r["id"] for r in records} & done.keys())
    forks = written = 0
    with appending(out) as write, progress_bar(f"annotate ({annotator.name})", len(pending), progress) as advance:
        for record in pending:
            skip = _skip_reason(record)
            if skip is not None:
                annotation = Annotation(None, 0, skip)
            else:
                try:
                    annotation = annotator.annotate(record["prompt"], record["response"])
                except (RuntimeError, OSError, ValueError) as error:
                    raise PipelineError(
                        f"annotating {record['id']!r} failed: {error} ({written} records written "
                        f"to '{out}' this run; run again to resume)"
                    ) from None
            write(
                {
                    **record,
                    "text": annotation.text,
                    "forks": annotation.forks,
                    "reason": annotation.reason,
                    "annotator": annotator.name,
                }
            )
            written += 1
            forks += annotation.forks > 0
            advance(1)
    return StepResult("annotate", out, written, already, notes=(f"{forks} of them fork",))


def annotate_file(
    responses: str | Path,
    out: str | Path,
    *,
    annotator: Annotator | None = None,
    count_tokens: Callable[[str], int] | None = None,
    progress: bool = True,
) -> StepResult:
    """``annotate_records`` over a responses file; the default annotator is ``StructuralAnnotator`` counting
    tokens with ``count_tokens`` (a model's tokenizer; words when None)."""
    distinct(Path(responses), Path(out), input_option="the responses")
    records = read_records(responses, required=("id", "prompt", "response"))
    if annotator is None:
        annotator = StructuralAnnotator() if count_tokens is None else StructuralAnnotator(count_tokens)
    return annotate_records(records, out, annotator, progress=progress, source=str(responses))
