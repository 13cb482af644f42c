"""The dataset pipeline behind ``pastac data``, in one go: prompts → responses → annotation → filter → splits → card.

Every step reads and writes JSONL (``pastac.jsonl``) and is keyed by the records' ``id``; each has a module:

- ``pastac.data.prompts.write_prompts``: the built-in prompt set (``build_prompts``).
- ``pastac.data.responses.write_responses``: the base model's answer to each prompt, generated in batches
  (``HFResponder``: Hugging Face ``generate`` over left-padded prompts with an attention mask), appended batch
  by batch.
- ``pastac.data.importing.import_pairs``: prompt/response pairs of the user's own (Alpaca-style or
  ShareGPT-style records), in place of the two steps above.
- ``pastac.data.annotate.annotate_records`` / ``annotate_file``: the annotated text of each response
  (``StructuralAnnotator``, ``LLMAnnotator``), appended record by record.
- ``pastac.data.filtering.filter_file``: the records that make good training data, a log of what was dropped
  and why (``<data>.filter.json``) and, optionally, one file per split.
- ``pastac.data.card.card_file`` / ``data_card``: a Markdown data card.
- ``build_dataset`` (here): all of them into one folder (``BUILD_FILES``).

The generating steps resume: records of the output file whose id is done are kept and skipped, and a line
cut short by a crash is dropped, so re-running a command after an interruption loses at most one batch.
``filter`` and ``card`` are cheap and rewrite their output.  ``build_dataset`` writes only into a new or empty
folder or one it built before (``is_build_folder``), unless forced.  Problems with the inputs and outputs raise
``PipelineError`` (``pastac.data.step``; the command line reports them as usage errors).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pastac.data.annotate import Annotator, annotate_records
from pastac.data.card import BUILD_SETTINGS, card_file
from pastac.data.filtering import FilterResult, filter_file, filter_summary
from pastac.data.prompts import DEFAULT_SEED, write_prompts
from pastac.data.responses import Responder, write_responses
from pastac.data.step import PROMPT_RECORDS, writing
from pastac.jsonl import holds, read_records
from pastac.output import check_folder, make_folder, write_text

#: The files ``build_dataset`` writes in its folder.
BUILD_FILES = {
    "prompts": "prompts.jsonl",
    "responses": "responses.jsonl",
    "annotated": "annotated.jsonl",
    "data": "data.jsonl",
    "card": "CARD.md",
    "settings": BUILD_SETTINGS,
}


def is_build_folder(folder: Path) -> bool:
    """Whether ``folder`` is one that ``build_dataset`` wrote into: it holds its settings or its prompts."""
    settings = folder / BUILD_FILES["settings"]
    with contextlib.suppress(OSError, ValueError):
        if isinstance(json.loads(settings.read_bytes()), dict):
            return True
    prompts = folder / BUILD_FILES["prompts"]
    return prompts.is_file() and holds(prompts, PROMPT_RECORDS)


def check_build_folder(folder: str | Path, *, force: bool = False) -> None:
    """Refuse a ``folder`` that holds files and is not one ``build_dataset`` wrote into, unless ``force``."""
    with writing():
        check_folder(
            folder, ours=is_build_folder, what="a dataset folder of pastac data build", force=force, name="--out"
        )


def build_dataset(
    folder: str | Path,
    *,
    responder: Responder,
    model_name: str,
    annotator: Annotator,
    seed: int = DEFAULT_SEED,
    batch_size: int = 16,
    limit: int | None = None,
    progress: bool = True,
    settings: Mapping[str, Any] | None = None,
    report: Callable[[str], None] = lambda line: None,
    force: bool = False,
) -> FilterResult:
    """All steps into ``folder`` (the files of ``BUILD_FILES``, the filter log and one file per split), each
    resuming from what the folder already holds; ``report`` receives a line per step.  A folder that holds
    files and is not one built before is refused (``check_build_folder``) unless ``force``, which also lets the
    filter and the card replace files of their names."""
    folder = Path(folder)
    check_build_folder(folder, force=force)
    files = {key: folder / name for key, name in BUILD_FILES.items()}
    if settings is not None:
        write_settings = dict(settings) | {"seed": seed, "batch_size": batch_size, "limit": limit}
        with writing():
            make_folder(folder)
            write_text(files["settings"], json.dumps(write_settings, indent=2) + "\n")
    report(write_prompts(files["prompts"], seed).line())
    prompts = read_records(files["prompts"], required=("id", "prompt"))
    report(
        write_responses(
            prompts,
            files["responses"],
            responder,
            model_name=model_name,
            batch_size=batch_size,
            limit=limit,
            progress=progress,
            source=str(files["prompts"]),
        ).line()
    )
    responses = read_records(files["responses"], required=("id", "prompt", "response"))
    report(
        annotate_records(
            responses, files["annotated"], annotator, progress=progress, source=str(files["responses"])
        ).line()
    )
    result = filter_file(files["annotated"], files["data"], split_dir=folder, force=force)
    for line in filter_summary(result.log):
        report(f"filter: {line.strip()}")
    card_file(files["data"], files["card"], force=force)
    report(f"card: -> {files['card']}")
    return result
