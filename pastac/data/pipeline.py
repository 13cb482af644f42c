"""The dataset pipeline behind ``pastac data``: prompts → responses → annotation → filter → splits → card.

Every step reads and writes JSONL (one JSON object per line, UTF-8) and is keyed by the records' ``id``:

- ``write_prompts``: the built-in prompt set (``build_prompts``).
- ``write_responses``: the base model's answer to each prompt, generated in batches (``HFResponder``:
  Hugging Face ``generate`` over left-padded prompts with an attention mask), appended batch by batch.
- ``import_pairs``: prompt/response pairs of the user's own (Alpaca-style or ShareGPT-style records).
- ``annotate_file`` / ``annotate_records``: the annotated text of each response (``StructuralAnnotator``,
  ``LLMAnnotator``), appended record by record.
- ``filter_file``: the records that make good training data, a log of what was dropped and why
  (``<data>.filter.json``) and, optionally, one file per split.
- ``card_file`` / ``data_card``: a Markdown data card.
- ``build_dataset``: all of them into one folder.

The generating steps resume: records of the output file whose id is done are kept and skipped, and a line
cut short by a crash is dropped, so re-running a command after an interruption loses at most one batch.
``filter`` and ``card`` are cheap and rewrite their output.  Problems with the inputs raise
``PipelineError`` (the command line reports them as usage errors).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pastac import jsonl
from pastac.data.annotate import Annotation, Annotator, StructuralAnnotator, count_promises, validate
from pastac.data.prompts import CATEGORIES, DEFAULT_SEED, FORKABLE, SPLITS, assign_split, build_prompts
from pastac.files import InputFileError, problem, read_text
from pastac.grammar import check
from pastac.progress import progress_bar as bar

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Record = dict[str, Any]

#: The fields of a record of the final dataset, in this order.
DATA_FIELDS = ("id", "prompt", "text", "response", "category", "forkable", "split", "forks")

#: Why ``filter`` drops a record, in the order the checks are made.
DROP_REASONS: dict[str, str] = {
    "duplicate id": "an earlier record has the same id",
    "empty response": "the response is empty",
    "unfinished response": "the response hit the token limit before the end-of-sequence token",
    "no annotation": "the annotator gave no text (the response cannot be written as valid Pasta-Lang)",
    "invalid annotation": "the text is not strict Pasta-Lang, or does not render back to the response",
}

#: The files ``build_dataset`` writes in its folder.
BUILD_FILES = {
    "prompts": "prompts.jsonl",
    "responses": "responses.jsonl",
    "annotated": "annotated.jsonl",
    "data": "data.jsonl",
    "card": "CARD.md",
    "settings": "build.json",
}


class PipelineError(Exception):
    """An input or output that cannot be used; the message names the file and the problem."""


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
        parts = [f"{self.written} written"]
        if self.already:
            parts.append(f"{self.already} already done")
        parts += [f"{n} dropped ({reason})" for reason, n in self.dropped.items() if n]
        parts += list(self.notes)
        return f"{self.step}: {', '.join(parts)} -> {self.path}"


# ----------------------------------------------------------------------------------------------- JSONL files


def _parse_lines(path: Path, text: str) -> list[Record]:
    out = []
    for number, record in jsonl.parse(text):
        if isinstance(record, str):
            raise PipelineError(f"{path}:{number}: {record}")
        out.append(record)
    return out


def read_records(path: str | Path, *, required: Sequence[str] = ("id",)) -> list[Record]:
    """The JSON objects of a JSONL file (blank lines skipped); each must have the ``required`` fields."""
    path = Path(path)
    try:
        text = read_text(path)
    except InputFileError as error:
        raise PipelineError(str(error)) from None
    records = _parse_lines(path, text)
    for index, record in enumerate(records, start=1):
        missing = [name for name in required if name not in record]
        if missing:
            raise PipelineError(
                f"{path}: record {index} has no field {', '.join(map(repr, missing))} "
                f"(fields: {', '.join(record) or 'none'})"
            )
        if "id" in required and not isinstance(record["id"], str):
            raise PipelineError(f"{path}: record {index} has an id that is not a string: {record['id']!r}")
    return records


def resume(path: str | Path) -> dict[str, Record]:
    """The records an output file already holds, by id (empty when there is no file).  A last line that a
    crash cut short is removed from the file, so that appending goes on after the last whole record."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise PipelineError(problem(path, error)) from None
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        tail = data[cut:]
        try:
            complete = isinstance(json.loads(tail), dict)
        except ValueError:
            complete = False
        try:
            with path.open("ab" if complete else "r+b") as f:
                if complete:
                    f.write(b"\n")
                else:
                    f.truncate(cut)
        except OSError as error:
            raise PipelineError(f"cannot repair '{path}': {error.strerror or error}") from None
        data = data + b"\n" if complete else data[:cut]
    try:
        records = _parse_lines(path, data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise PipelineError(problem(path, error)) from None
    done: dict[str, Record] = {}
    for index, record in enumerate(records, start=1):
        if not isinstance(record.get("id"), str):
            raise PipelineError(f"{path}: record {index} has no string id; is this file an output of pastac data?")
        done.setdefault(record["id"], record)
    return done


@contextlib.contextmanager
def _appending(path: Path) -> Iterator[Callable[[Record], None]]:
    """A function that appends one record to ``path`` and flushes it (parent folders are created)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a", encoding="utf-8")
    except OSError as error:
        raise PipelineError(f"cannot write '{path}': {error.strerror or error}") from None
    with handle:

        def write(record: Record) -> None:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            handle.flush()

        yield write


def write_records(path: str | Path, records: Sequence[Record]) -> None:
    """Write ``records`` to ``path`` as JSONL, replacing the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
    except OSError as error:
        raise PipelineError(f"cannot write '{path}': {error.strerror or error}") from None


def _distinct(source: Path, out: Path) -> None:
    if source.resolve() == out.resolve():
        raise PipelineError(f"the output '{out}' is the input file; name another file")


def _same_setting(done: Mapping[str, Record], key: str, value: object, out: Path, option: str) -> None:
    """Refuse to resume an output that was made with another model or annotator."""
    other = next((r.get(key) for r in done.values() if r.get(key) != value), None)
    if other is not None:
        raise PipelineError(
            f"'{out}' already holds records made with {key} {other!r}, not {value!r}; "
            f"name another output file, or give the same {option}"
        )


# ------------------------------------------------------------------------------------------------- progress


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on standard error; yields a function that advances it by n."""
    with bar(description, total, enabled=enabled) as update:
        yield lambda n: update(advance=n)


# --------------------------------------------------------------------------------------------------- prompts


def write_prompts(out: str | Path, seed: int = DEFAULT_SEED) -> StepResult:
    """Append the built-in prompt set's records (``build_prompts(seed)``) that ``out`` does not hold yet."""
    out = Path(out)
    done = resume(out)
    records = build_prompts(seed)
    for record in records:
        if record.id in done and done[record.id].get("prompt") != record.prompt:
            raise PipelineError(
                f"'{out}' holds another prompt under id {record.id!r} (made with another --seed?); "
                f"name another output file"
            )
    new = [record for record in records if record.id not in done]
    with _appending(out) as write:
        for record in new:
            write(asdict(record))
    return StepResult("prompts", out, len(new), len(records) - len(new))


# ------------------------------------------------------------------------------------------------- responses


class Responder(Protocol):
    """Answers a batch of prompts: for each, the response text and whether it ended by itself (EOS)."""

    def __call__(self, prompts: Sequence[str]) -> list[tuple[str, bool]]: ...


class HFResponder:
    """A causal LM's answers with Hugging Face ``generate``, several prompts per call.

    Each prompt is laid out by the chat template (``prompt_ids``), the batch is padded on the left with an
    attention mask of zeros over the padding (so a prompt's answer does not depend on its batch; the model
    derives position ids from the mask), and each answer is cut at its first end-of-sequence token: those of
    the generation config and the tokenizer, or ``eos_token_ids`` when given.  Temperature 0 is greedy.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_new_tokens: int = 384,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        chat: bool = True,
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if not repetition_penalty >= 1:
            raise ValueError(f"repetition_penalty must be at least 1, not {repetition_penalty}")
        self.repetition_penalty = repetition_penalty
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.chat = chat
        if eos_token_ids is None:
            found: list[int] = []
            for value in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
                found += value if isinstance(value, list) else [] if value is None else [value]
            eos_token_ids = found
        self.eos = frozenset(int(t) for t in eos_token_ids)
        if not self.eos:
            raise ValueError("the model and its tokenizer name no end-of-sequence token; pass eos_token_ids")
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = model.generation_config.pad_token_id
        self.pad = int(pad) if isinstance(pad, int) else min(self.eos)

    def encode(self, prompt: str) -> list[int]:
        from pastac.models import prompt_ids

        return prompt_ids(self.tokenizer, prompt, chat=self.chat)

    def length(self, prompt: str) -> int:
        """The prompt's length in tokens, as it is fed to the model."""
        return len(self.encode(prompt))

    def __call__(self, prompts: Sequence[str]) -> list[tuple[str, bool]]:
        import torch
        from transformers import GenerationConfig

        if not prompts:
            return []
        encoded = [self.encode(p) for p in prompts]
        width = max(len(ids) for ids in encoded)
        device = self.model.device
        input_ids = torch.full((len(encoded), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                mask[row, width - len(ids) :] = 1
        sampling: dict[str, Any] = (
            {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
            if self.temperature > 0
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        )
        if self.repetition_penalty != 1:
            sampling["repetition_penalty"] = self.repetition_penalty
        config = GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            pad_token_id=self.pad,
            eos_token_id=sorted(self.eos),
            bos_token_id=None,
            **sampling,
        )
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device), generation_config=config
            )
        answers = []
        for tokens in output[:, width:].tolist():
            end = next((i for i, token in enumerate(tokens) if token in self.eos), None)
            kept = tokens if end is None else tokens[:end]
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            answers.append((text.strip(), end is not None))
        return answers


def round_robin(records: Sequence[Record]) -> list[Record]:
    """The records taken in turn from each category (in file order within a category), so that the first N
    cover every category; a longer prefix extends a shorter one."""
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(str(record.get("category")), []).append(record)
    out = []
    for index in range(max((len(g) for g in groups.values()), default=0)):
        out += [g[index] for g in groups.values() if index < len(g)]
    return out


def _first_of_each_id(records: Sequence[Record]) -> list[Record]:
    seen: set[str] = set()
    out = []
    for record in records:
        if record["id"] not in seen:
            seen.add(record["id"])
            out.append(record)
    return out


def _check_prompts(records: Sequence[Record], source: str) -> None:
    for index, record in enumerate(records, start=1):
        if not isinstance(record.get("prompt"), str):
            raise PipelineError(f"{source}: record {index} ({record.get('id')!r}) has no string 'prompt'")


def write_responses(
    prompts: Sequence[Record],
    out: str | Path,
    responder: Responder,
    *,
    model_name: str,
    batch_size: int = 16,
    limit: int | None = None,
    progress: bool = True,
    source: str = "prompts",
) -> StepResult:
    """Append the responder's answer to each prompt that ``out`` has no response for yet.

    With ``limit``, only the first ``limit`` prompts of ``round_robin(prompts)`` are answered (a later run
    with a larger limit answers the rest).  Prompts are answered ``batch_size`` at a time; within a window
    of eight batches, prompts of one category share a batch where they can (answers to one kind of prompt
    have similar lengths, and a batch runs until its longest answer ends), then the longest prompts
    (``responder.length`` when it has one) first.  Each batch is appended as soon as it is done.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    out = Path(out)
    _check_prompts(prompts, source)
    unique = _first_of_each_id(prompts)
    wanted = round_robin(unique)[:limit] if limit is not None else round_robin(unique)
    done = resume(out)
    _same_setting(done, "model", model_name, out, "--model")
    pending = [r for r in wanted if r["id"] not in done]
    measure: Callable[[str], int] = getattr(responder, "length", len)
    window = batch_size * 8
    unfinished = 0
    with _appending(out) as write, progress_bar("responses", len(pending), progress) as advance:
        for start in range(0, len(pending), window):
            chunk = sorted(
                pending[start : start + window], key=lambda r: (str(r.get("category")), -measure(r["prompt"]))
            )
            for first in range(0, len(chunk), batch_size):
                batch = chunk[first : first + batch_size]
                answers = responder([r["prompt"] for r in batch])
                if len(answers) != len(batch):
                    raise PipelineError(f"the responder gave {len(answers)} answers to {len(batch)} prompts")
                for record, (text, finished) in zip(batch, answers, strict=True):
                    unfinished += not finished
                    split = record.get("split") if record.get("split") in SPLITS else assign_split(record["prompt"])
                    write(
                        {
                            "id": record["id"],
                            "prompt": record["prompt"],
                            "category": record.get("category"),
                            "forkable": record.get("forkable"),
                            "split": split,
                            "response": text,
                            "model": model_name,
                            "finished": bool(finished),
                        }
                    )
                advance(len(batch))
    notes = (f"{unfinished} of them hit the token limit",) if unfinished else ()
    return StepResult("responses", out, len(pending), len(wanted) - len(pending), notes=notes)


# ---------------------------------------------------------------------------------------------------- import

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
    _distinct(path, out)
    try:
        lines = [line for line in read_text(path).splitlines() if line.strip()]
    except InputFileError as error:
        raise PipelineError(str(error)) from None
    done = resume(out)
    dropped: Counter[str] = Counter()
    written = already = 0
    with _appending(out) as write:
        for number, line in enumerate(lines, start=1):
            try:
                record = json.loads(line)
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


# -------------------------------------------------------------------------------------------------- annotate


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
    _check_prompts(records, source)
    done = resume(out)
    _same_setting(done, "annotator", annotator.name, out, "--annotator")
    pending = [r for r in _first_of_each_id(records) if r["id"] not in done]
    already = len({r["id"] for r in records} & done.keys())
    forks = written = 0
    with _appending(out) as write, progress_bar(f"annotate ({annotator.name})", len(pending), progress) as advance:
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
    _distinct(Path(responses), Path(out))
    records = read_records(responses, required=("id", "prompt", "response"))
    if annotator is None:
        annotator = StructuralAnnotator() if count_tokens is None else StructuralAnnotator(count_tokens)
    return annotate_records(records, out, annotator, progress=progress, source=str(responses))


def local_generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, max_new_tokens: int = 1024
) -> Callable[[str], str]:
    """A ``str -> str`` function for ``LLMAnnotator``: the model's greedy answer to the prompt."""
    responder = HFResponder(model, tokenizer, max_new_tokens=max_new_tokens)

    def generate(prompt: str) -> str:
        return responder([prompt])[0][0]

    return generate


# ---------------------------------------------------------------------------------------------------- filter


def filter_log_path(data: str | Path) -> Path:
    """Where ``filter_file`` writes its log: ``D.filter.json`` beside ``D.jsonl``."""
    return Path(data).with_suffix(".filter.json")


@dataclass(frozen=True)
class FilterResult:
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


def filter_file(annotated: str | Path, out: str | Path, *, split_dir: str | Path | None = None) -> FilterResult:
    """``filter_records`` over an annotated file: writes the kept records to ``out``, the log beside it
    (``filter_log_path``) and, with ``split_dir``, train.jsonl, validation.jsonl and test.jsonl there."""
    annotated, out = Path(annotated), Path(out)
    _distinct(annotated, out)
    result = filter_records(read_records(annotated, required=("id", "prompt", "response")), source=str(annotated))
    write_records(out, result.kept)
    log = result.log | {"output": str(out)}
    if split_dir is not None:
        folder = Path(split_dir)
        for split in SPLITS:
            write_records(folder / f"{split}.jsonl", [r for r in result.kept if r["split"] == split])
        log["split_dir"] = str(folder)
    try:
        filter_log_path(out).write_text(json.dumps(log, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as error:
        raise PipelineError(f"cannot write '{filter_log_path(out)}': {error.strerror or error}") from None
    return FilterResult(result.kept, log)


def filter_summary(log: Mapping[str, Any]) -> list[str]:
    """Lines for the terminal: kept of all, then one line per drop reason."""
    total = log["records"]
    lines = [f"kept {log['kept']} of {total} records ({_percent(log['kept'], total)})"]
    for reason, n in log["dropped"].items():
        lines.append(f"  dropped {n:>6}  {reason}: {DROP_REASONS.get(reason, '')}")
    return lines


# ------------------------------------------------------------------------------------------------------ card


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


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
    lines = [f"# Data card: {name}", ""]
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
                _percent(forking, len(chosen)),
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
            f"({_percent(log['kept'], log['records'])})."
        )
        lines.append("")
        rows = [
            [reason, n, _percent(n, log["records"]), DROP_REASONS.get(reason, "")]
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


def card_file(data: str | Path, out: str | Path | None = None, *, filter_log: str | Path | None = None) -> str:
    """The data card of a filtered dataset file: reads the filter log (``filter_log``, else ``D.filter.json``
    beside it when present) and the build settings (``build.json`` in its folder, when present); writes the
    card to ``out`` when given and returns it."""
    data = Path(data)
    records = read_records(data, required=("id", "prompt", "text"))
    log_path = Path(filter_log) if filter_log is not None else filter_log_path(data)
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
    settings_path = data.parent / BUILD_FILES["settings"]
    if settings_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            loaded = json.loads(settings_path.read_text(encoding="utf-8"))
            settings = loaded if isinstance(loaded, dict) else None
    card = data_card(records, name=data.parent.name if data.parent.name else data.stem, log=log, settings=settings)
    if out is not None:
        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            Path(out).write_text(card, encoding="utf-8")
        except OSError as error:
            raise PipelineError(f"cannot write '{out}': {error.strerror or error}") from None
    return card


# ----------------------------------------------------------------------------------------------------- build


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
) -> FilterResult:
    """All steps into ``folder`` (the files of ``BUILD_FILES``, the filter log and one file per split), each
    resuming from what the folder already holds; ``report`` receives a line per step."""
    folder = Path(folder)
    files = {key: folder / name for key, name in BUILD_FILES.items()}
    if settings is not None:
        write_settings = dict(settings) | {"seed": seed, "batch_size": batch_size, "limit": limit}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            files["settings"].write_text(json.dumps(write_settings, indent=2) + "\n", encoding="utf-8")
        except OSError as error:
            raise PipelineError(f"cannot write '{files['settings']}': {error.strerror or error}") from None
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
    result = filter_file(files["annotated"], files["data"], split_dir=folder)
    for line in filter_summary(result.log):
        report(f"filter: {line.strip()}")
    card_file(files["data"], files["card"])
    report(f"card: -> {files['card']}")
    return result
