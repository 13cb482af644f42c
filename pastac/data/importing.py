"""The ``import`` step: prompt/response pairs of the user's own, as response records the later steps take.

Alpaca-style records (instruction, input, output), ShareGPT/SlimOrca-style ones (``conversations``) and
OpenAI-style ones (``messages``) are detected record by record. Imported records are numbered by the file's
non-blank lines (``import-00001``, ...), so importing the same file again resumes; a record that holds no
usable pair is dropped and counted, never guessed at.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from pastac.data.prompts import assign_split
from pastac.data.step import RESPONSE_RECORDS, PipelineError, StepResult, distinct
from pastac.files import InputFileError, read_text
from pastac.jsonl import Record, appending, lines, resume

_HUMAN_ROLES = frozenset({"human", "user"})
_MODEL_ROLES = frozenset({"gpt", "assistant", "model", "bot"})


def _conversation_pair(turns: object, role_key: str, text_key: str) -> tuple[str, str, str | None] | str:
    """(prompt, response, system) of the first human turn and the model's reply to it, or why there is none."""
    if not isinstance(turns, list):
        return "the conversation is not a list"
    system = prompt = None
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get(text_key), str):
            return f"a turn is not an object with a text '{text_key}'"
        role = str(turn.get(role_key, "")).lower()
        if role == "system" and prompt is None and system is None:
            system = turn[text_key]
        elif role in _HUMAN_ROLES and prompt is None:
            prompt = turn[text_key]
        elif role in _MODEL_ROLES and prompt is not None:
            return prompt, turn[text_key], system
    return "no human turn followed by a model turn"


def pair_of(
    record: Record,
    *,
    prompt_field: str | None = None,
    input_field: str | None = None,
    response_field: str | None = None,
) -> tuple[str, str, str | None] | str:
    """(prompt, response, system prompt or None) of an imported record, or why it has none.

    Alpaca-style records have an instruction, an optional input (appended to the instruction after a blank
    line) and an output; the field names can be changed, and naming any of them accepts only this style.
    ShareGPT/SlimOrca-style records have ``conversations``: [{"from": "system" | "human" | "gpt", "value"}];
    OpenAI-style ones ``messages``: [{"role", "content"}]; the first human turn and the reply to it are the
    pair.
    """
    explicit = any(f is not None for f in (prompt_field, input_field, response_field))
    instruction, extra, output = prompt_field or "instruction", input_field or "input", response_field or "output"
    if instruction in record or output in record:
        if not isinstance(record.get(instruction), str) or not isinstance(record.get(output), str):
            return f"no text fields '{instruction}' and '{output}'"
        prompt = record[instruction].strip()
        addition = record.get(extra)
        if isinstance(addition, str) and addition.strip():
            prompt += "\n\n" + addition.strip()
        return prompt, record[output], None
    if not explicit and "conversations" in record:
        return _conversation_pair(record["conversations"], "from", "value")
    if not explicit and "messages" in record:
        return _conversation_pair(record["messages"], "role", "content")
    expected = f"'{instruction}' and '{output}'" + ("" if explicit else ", 'conversations' or 'messages'")
    return f"no fields {expected} (fields: {', '.join(record) or 'none'})"


def import_pairs(
    path: str | Path,
    out: str | Path,
    *,
    prompt_field: str | None = None,
    input_field: str | None = None,
    response_field: str | None = None,
) -> StepResult:
    """Append the prompt/response pairs of a JSONL file as response records ``import-00001``, ... (numbered by
    the file's non-blank lines), category "imported", forkable null, the split by ``assign_split``."""
    path, out = Path(path), Path(out)
    distinct(path, out, input_option="FILE")
    try:
        pairs = [text for _, text in lines(read_text(path))]
    except InputFileError as error:
        raise PipelineError(str(error)) from None
    done = resume(out, RESPONSE_RECORDS)
    dropped: Counter[str] = Counter()
    written = already = 0
    with appending(out) as write:
        for number, pair in enumerate(pairs, start=1):
            try:
                record = json.loads(pair)
            except json.JSONDecodeError:
                dropped["invalid JSON"] += 1
                continue
            got = (
                pair_of(record, prompt_field=prompt_field, input_field=input_field, response_field=response_field)
                if isinstance(record, dict)
                else "not a JSON object"
            )
            if isinstance(got, str):
                dropped["not a prompt/response pair"] += 1
                continue
            prompt, response, system = got
            if not prompt.strip() or not response.strip():
                dropped["empty prompt or response"] += 1
                continue
            key = f"import-{number:05d}"
            if key in done:
                if done[key].get("prompt") != prompt:
                    raise PipelineError(
                        f"'{out}' holds another prompt under id {key!r} (imported from another "
                        f"file?); name another output file"
                    )
                already += 1
                continue
            entry: Record = {
                "id": key,
                "prompt": prompt,
                "category": "imported",
                "forkable": None,
                "split": assign_split(prompt),
                "response": response.strip(),
                "model": None,
                "finished": True,
                "source": path.name,
            }
            if system:
                entry["system"] = system
            write(entry)
            written += 1
    return StepResult("import", out, written, already, dict(dropped))
