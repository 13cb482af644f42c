"""The ``annotate`` step: each response's annotation, appended record by record.

Records keep their fields and gain ``text``, ``forks``, ``reason`` and ``annotator``. The step resumes:
records whose id the output holds are skipped, and the output must have been made with the same annotator.
Empty and unfinished responses are not sent to the annotator (their text is null); an annotator's failure
(an unreachable server) stops the step, and what was written stays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
    annotations = _annotations(annotator, pending)
    with appending(out) as write, progress_bar(f"annotate ({annotator.name})", len(pending), progress) as advance:
        for record in pending:
            try:
                annotation = next(annotations)
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


def _annotations(annotator: Annotator, records: Sequence[Record]) -> Iterator[Annotation]:
    """Each record's annotation, in order: a record the annotator is not asked about (``_skip_reason``) gets
    text null; the others are annotated one by one, or through the annotator's ``stream`` when it has one
    (``pastac.data.workers.RayAnnotator``), which gets them all and gives them back in order."""
    asked = [(r["prompt"], r["response"]) for r in records if _skip_reason(r) is None]
    stream = getattr(annotator, "stream", None)
    answers = stream(asked) if stream is not None and asked else (annotator.annotate(*pair) for pair in asked)
    for record in records:
        skip = _skip_reason(record)
        yield Annotation(None, 0, skip) if skip is not None else next(answers)


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
