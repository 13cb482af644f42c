"""The ``card`` step: a Markdown data card of a filtered dataset.

The card is drawn from the records themselves (sizes per split and category, fork rates, the figures of
``pastac stats``), from the filter log when there is one (what was dropped and why, who generated and
annotated the records) and from the build settings beside the data when there are some (how to reproduce
it). It is cheap and rewritten on every run, atomically; the same inputs give the same card. An existing file
is replaced only when it is a data card (``is_data_card``) or when forced.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pastac.data.filtering import DROP_REASONS, filter_log_path, percent
from pastac.data.prompts import CATEGORIES, DEFAULT_SEED, FORKABLE, SPLITS
from pastac.data.step import PipelineError, writing
from pastac.files import problem
from pastac.grammar import check
from pastac.jsonl import Record, read_records
from pastac.output import check_file, make_folder, refuse_input, write_text

#: The build settings the card reads in the data's folder, when present (``build_dataset`` writes them).
BUILD_SETTINGS = "build.json"
#: How a card begins.
CARD_TITLE = "# Data card: "


def _number(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


_NUMERIC = re.compile(r"-?[\d.,]+%?|-|")


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A Markdown table; columns of numbers are aligned right."""
    aligns = [
        "---:" if rows and all(_NUMERIC.fullmatch(str(row[i])) for row in rows) else "---" for i in range(len(header))
    ]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(aligns) + " |"]
    out += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*out, ""]


def _ordered_categories(records: Sequence[Record]) -> list[str]:
    present = {str(r.get("category")) for r in records}
    return [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))


def _figures(records: Sequence[Record]) -> tuple[Any, dict[str, list[Any]]]:
    """``pastac stats``' figures of the records' texts (lengths in words, strict, no width cap): the summary
    over all, and the documents' figures per category."""
    from pastac.ir.lengths import words
    from pastac.ir.lower import lower
    from pastac.report import InvalidRecord, document_figures, summarize

    documents, invalid = [], []
    per_category: dict[str, list[Any]] = {}
    for record in records:
        text = record.get("text")
        result = check(text, mode="strict") if isinstance(text, str) else None
        if result is None or result.errors:
            message = result.errors[0].message if result is not None else "no text"
            invalid.append(InvalidRecord(str(record.get("id")), message))
            continue
        figures = document_figures(lower(result.document, words))
        documents.append(figures)
        per_category.setdefault(str(record.get("category")), []).append(figures)
    return summarize(documents, invalid), per_category


def data_card(
    records: Sequence[Record],
    *,
    name: str = "dataset",
    log: Mapping[str, Any] | None = None,
    settings: Mapping[str, Any] | None = None,
) -> str:
    """A Markdown data card for the records of a filtered dataset, with the filter log's counts and the
    build settings when given."""
    from pastac.report import COUNTS, METRICS, distribution

    settings = settings or {}
    stats, per_category = _figures(records)
    categories = _ordered_categories(records)
    builtin = [c for c in categories if c in FORKABLE]
    lines = [f"{CARD_TITLE}{name}", ""]
    lines += [
        f"Pasta-Lang training data for learned asynchronous decoding: {len(records)} prompt/response "
        'pairs whose responses are written with `<promise topic=".." tokens=".."/>`, `<async>…</async>` '
        "and `<sync/>` tags, so that a model can learn to decode independent parts of an answer in "
        "parallel. Each record has `id`, `prompt`, `text` (the annotated response), `response` (the "
        "plain response), `category`, `forkable`, `split` and `forks` (promises in `text`).",
        "",
    ]

    lines += ["## Sources", ""]
    prompt_source = []
    if builtin:
        seed = settings.get("seed", DEFAULT_SEED)
        prompt_source.append(
            f"pastac's built-in prompt set (`pastac data prompts`, seed {seed}; "
            f"{len(builtin)} of its {len(CATEGORIES)} categories present)"
        )
    if "imported" in categories:
        prompt_source.append("prompt/response pairs imported with `pastac data import`")
    lines.append(f"- Prompts: {'; '.join(prompt_source) or 'not recorded'}.")
    if log and log.get("generators"):
        gens = ", ".join(f"`{g}` ({n} of {log['records']} annotated records)" for g, n in log["generators"].items())
        lines.append(f"- Responses: {gens}.")
    elif settings.get("model"):
        lines.append(f"- Responses: `{settings['model']}`.")
    else:
        lines.append("- Responses: not recorded (no filter log).")
    if log and log.get("annotators"):
        annotators = ", ".join(f"`{a}` ({n} records)" for a, n in log["annotators"].items())
        lines.append(f"- Annotation: {annotators}.")
    lines.append("")

    generation = ""
    if settings.get("max_new_tokens"):
        generation = (
            f" (at most {settings['max_new_tokens']} new tokens, temperature "
            f"{settings.get('temperature', 0)}, repetition penalty "
            f"{settings.get('repetition_penalty', 1.0)}, batches of {settings.get('batch_size', '?')})"
        )
    lines += ["## Method", ""]
    lines += [
        "**Prompts.** Instructions are built offline from hand-written templates and word lists with a "
        "seeded random generator, so every run gives the same prompts; each has a category and whether a "
        "good answer to it has independent parts (`forkable`). The split (90% train, 5% validation, 5% "
        "test) is a hash of the normalised prompt, so it never changes when the set grows.",
        "",
    ]
    lines += [
        f"**Responses.** The base model answers each prompt through its chat template{generation}, "
        "greedy unless a temperature is set, several prompts per batch (left-padded, with an attention "
        "mask, so an answer does not depend on its batch). A response records whether the model ended it "
        "(end-of-sequence token) or the token limit cut it.",
        "",
    ]
    lines += [
        "**Annotation.** Each response is rewritten in Pasta-Lang. The structural annotator forks what the "
        "response's own layout marks as independent (sections, bold-titled blocks, numbered and bulleted "
        "lists, middle paragraphs of an essay) and promises each part's length in the model's tokens; the "
        "LLM annotator asks a language model, given a description of the language and examples. Either "
        "way an annotation is kept only if it is strict Pasta-Lang that renders back to the response.",
        "",
    ]
    lines += [
        "**Filtering.** A record is dropped when its response is empty, when it hit the token limit, when "
        "the annotator gave no text (a response that contains text Pasta-Lang reads as a tag), or when "
        "the text fails validation. Short answers that do not fork are kept: they teach the model when "
        "not to fork.",
        "",
    ]
    lines += ["**Splits.** Records keep the split of their prompt.", ""]

    lines += ["## Sizes", ""]
    rows = []
    for category in categories:
        in_category = [r for r in records if str(r.get("category")) == category]
        forkable = FORKABLE.get(category)
        rows.append(
            [
                category,
                "-" if forkable is None else ("yes" if forkable else "no"),
                *(sum(r.get("split") == s for r in in_category) for s in SPLITS),
                len(in_category),
            ]
        )
    rows.append(["**all**", "", *(sum(r.get("split") == s for r in records) for s in SPLITS), len(records)])
    lines += _table(["category", "forkable", *SPLITS, "total"], rows)

    lines += ["## Forks per category", ""]
    rows = []
    for category in [*categories, None]:
        chosen = records if category is None else [r for r in records if str(r.get("category")) == category]
        figures = stats.documents if category is None else per_category.get(category, [])
        forking = sum((r.get("forks") or 0) > 0 for r in chosen)
        speedup = distribution((f.theoretical_speedup for f in figures), geometric=True).geometric_mean
        promises = distribution(f.promises for f in figures).mean
        rows.append(
            [
                "**all**" if category is None else category,
                len(chosen),
                forking,
                percent(forking, len(chosen)),
                _number(promises),
                _number(speedup),
            ]
        )
    lines += _table(
        ["category", "records", "forking", "fork rate", "promises per response", "theoretical speedup (geo mean)"], rows
    )

    if log:
        lines += ["## Validity and filtering", ""]
        lines.append(
            f"`pastac data filter` kept {log['kept']} of {log['records']} annotated records "
            f"({percent(log['kept'], log['records'])})."
        )
        lines.append("")
        rows = [
            [reason, n, percent(n, log["records"]), DROP_REASONS.get(reason, "")]
            for reason, n in log.get("dropped", {}).items()
        ]
        lines += _table(["dropped because", "records", "share", "meaning"], rows or [["nothing", 0, "-", ""]])

    lines += [
        "## Distributions",
        "",
        "Computed as `pastac stats` does (`pastac.report.summarize`): strict parse, lengths in "
        "white-space-separated words, no cap on the number of threads; the theoretical speedup is total "
        "tokens ÷ tokens on the critical path.",
        "",
    ]
    rows = []
    for metric, dist in stats.metrics.items():
        digits = 1 if metric in COUNTS else 3
        rows.append(
            [
                metric,
                dist.count,
                _number(dist.mean, digits),
                _number(dist.geometric_mean, 3) if dist.geometric_mean is not None else "",
                *(_number(v, digits) for v in (dist.p50, dist.p90, dist.max)),
                METRICS[metric],
            ]
        )
    lines += _table(["metric", "count", "mean", "geo mean", "p50", "p90", "max", "meaning"], rows)
    lines.append(
        f"Pooled over all records: {stats.tokens} tokens, theoretical speedup "
        f"{stats.pooled_speedup:.3f}, async token share {stats.pooled_async_token_share:.3f}"
        + (f"; {len(stats.invalid)} records with an invalid text were left out." if stats.invalid else ".")
    )
    lines.append("")

    lines += ["## Reproduce", "", "```sh"]
    if settings.get("command"):
        lines.append(str(settings["command"]))
    else:
        lines.append("pastac data build --out DIR [--model PATH] [--annotator structural|llm]")
    lines += [
        "```",
        "",
        "Every step of `pastac data build` resumes where it stopped; its files are listed in `pastac data --help`.",
        "",
    ]
    return "\n".join(lines)


def is_data_card(path: Path) -> bool:
    """Whether the file ``path`` begins as ``data_card`` writes a card."""
    try:
        with path.open("rb") as file:
            return file.read(len(CARD_TITLE.encode())) == CARD_TITLE.encode()
    except OSError:
        return False


def card_file(
    data: str | Path, out: str | Path | None = None, *, filter_log: str | Path | None = None, force: bool = False
) -> str:
    """The data card of a filtered dataset file: reads the filter log (``filter_log``, else ``D.filter.json``
    beside it when present) and the build settings (``build.json`` in its folder, when present); writes the
    card to ``out`` when given and returns it. ``out`` may be none of those files, and an existing ``out`` that
    is not empty is replaced only when it is a data card, or with ``force``."""
    data = Path(data)
    log_path = Path(filter_log) if filter_log is not None else filter_log_path(data)
    settings_path = data.parent / BUILD_SETTINGS
    if out is not None:
        with writing():
            log_name = "--filter-log" if filter_log is not None else "the filter log"
            inputs = [("--data", data), (log_name, log_path), ("the build settings", settings_path)]
            refuse_input(out, inputs, what="--out")
            check_file(out, ours=is_data_card, what="a data card of pastac data card", force=force, name="--out")
    records = read_records(data, required=("id", "prompt", "text"))
    log = None
    if filter_log is not None or log_path.is_file():
        try:
            log = json.loads(log_path.read_text(encoding="utf-8"))
        except OSError as error:
            raise PipelineError(problem(log_path, error)) from None
        except ValueError as error:
            raise PipelineError(f"cannot read '{log_path}': not a filter log ({error})") from None
        if not isinstance(log, dict) or not {"records", "kept", "dropped"} <= log.keys():
            raise PipelineError(f"'{log_path}' is not a filter log written by pastac data filter")
    settings = None
    if settings_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(settings_path.read_text(encoding="utf-8"))
            settings = loaded if isinstance(loaded, dict) else None
    card = data_card(records, name=data.parent.name if data.parent.name else data.stem, log=log, settings=settings)
    if out is not None:
        with writing():
            make_folder(Path(out).parent)
            write_text(out, card)
    return card
