"""The ``responses`` step: the base model's answer to each prompt, generated in batches and appended as they come.

``HFResponder`` answers with Hugging Face ``generate`` over left-padded prompts with an attention mask, so
that a prompt's answer does not depend on the batch it is in; ``OpenAIResponder`` asks an OpenAI-compatible
server (``pastac.openai_client``), several requests at once. ``write_responses`` resumes: prompts whose id the
output already holds are skipped, and a line cut short by a crash is dropped, so re-running after an
interruption loses at most one batch (or the requests in flight). A response records whether the model ended
it (``finished``) or the token limit cut it. ``local_generate`` makes a ``str -> str`` function of a local
model for ``LLMAnnotator``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pastac.data.prompts import SPLITS, assign_split
from pastac.data.step import (
    RESPONSE_RECORDS,
    PipelineError,
    StepResult,
    check_prompts,
    first_of_each_id,
    progress_bar,
    same_setting,
)
from pastac.jsonl import Record, appending, resume
from pastac.openai_client import ChatRequest, OpenAIClient, ServerError, seed_for

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


class Responder(Protocol):
    """Answers a batch of prompts: for each, the response text and whether it ended by itself (EOS).

    A responder may also have ``stream(prompts, keys)``, which yields the answers in the prompts' order, each as
    soon as it and those before it are done (``keys``, the prompts' ids, name the prompts, for seeds, say):
    ``write_responses`` then streams all the prompts through it and writes each answer as it comes.
    """

    def __call__(self, prompts: Sequence[str]) -> list[tuple[str, bool]]:
        """One (text, finished) pair per prompt, in the prompts' order."""


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
        """The prompt's token ids, as they are fed to the model (``prompt_ids``)."""
        from pastac.models import prompt_ids

        return prompt_ids(self.tokenizer, prompt, chat=self.chat)

    def length(self, prompt: str) -> int:
        """The prompt's length in tokens, as it is fed to the model."""
        return len(self.encode(prompt))

    def __call__(self, prompts: Sequence[str]) -> list[tuple[str, bool]]:
        """The model's answers to the prompts, one batch, each cut at its first end-of-sequence token."""
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


class OpenAIResponder:
    """Answers from an OpenAI-compatible server: a chat completion per prompt (the prompt as the user's message),
    at most ``concurrency`` requests in flight.

    A response is finished when the server's finish reason is ``"stop"`` (``"length"``: the token limit cut
    it). Temperature 0 asks for greedy answers; above 0 each request also carries ``top_p`` and a seed derived
    from ``seed`` and the prompt's key (its id), so that a rerun asks the same. A ``repetition_penalty`` other
    than 1 is sent as the non-standard field of that name, which vLLM and SGLang read (a server that does not know
    it ignores it). The server's failures, after the client's retries, raise ``ServerError``.
    """

    def __init__(
        self,
        client: OpenAIClient,
        model: str,
        *,
        max_new_tokens: int = 384,
        temperature: float = 0.0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        concurrency: int = 8,
    ) -> None:
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, not {repetition_penalty}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency}")
        self.client = client
        self.model = model
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.seed = seed
        self.concurrency = concurrency

    def request(self, prompt: str, key: str) -> ChatRequest:
        """The chat request for ``prompt``, whose id (for its seed) is ``key``."""
        sampled = self.temperature > 0
        extra = {"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1 else {}
        return ChatRequest(
            prompt,
            self.model,
            max_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p if sampled else None,
            seed=seed_for(self.seed, key) if sampled else None,
            extra=extra,
        )

    def stream(self, prompts: Sequence[str], keys: Sequence[str] | None = None) -> Iterator[tuple[str, bool]]:
        """The answers to ``prompts`` in their order, each as soon as it and those before it are done.  ``keys``
        (default: the prompts) seed the sampled requests."""
        keys = prompts if keys is None else keys
        if len(keys) != len(prompts):
            raise ValueError(f"{len(keys)} keys for {len(prompts)} prompts")
        requests = (self.request(p, k) for p, k in zip(prompts, keys, strict=True))
        with contextlib.closing(self.client.chat_each(requests, concurrency=self.concurrency)) as completions:
            for completion in completions:
                yield completion.text.strip(), completion.finished

    def __call__(self, prompts: Sequence[str], keys: Sequence[str] | None = None) -> list[tuple[str, bool]]:
        """The answers to ``prompts``, in their order (``stream``, all at once)."""
        return list(self.stream(prompts, keys))


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
    (``responder.length`` when it has one) first.  Each batch is appended as soon as it is done; a responder
    with ``stream`` (``Responder``) gets the prompts in that order in one stream, and each answer is appended
    as soon as it and those before it are done.  A server that fails (``ServerError``) stops the step with a
    ``PipelineError`` that says how many records this run wrote; they stay.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    out = Path(out)
    check_prompts(prompts, source)
    unique = first_of_each_id(prompts)
    wanted = round_robin(unique)[:limit] if limit is not None else round_robin(unique)
    done = resume(out, RESPONSE_RECORDS)
    same_setting(done, "model", model_name, out, "--model")
    pending = [r for r in wanted if r["id"] not in done]
    measure: Callable[[str], int] = getattr(responder, "length", len)
    window = batch_size * 8
    ordered: list[Record] = []
    for start in range(0, len(pending), window):
        ordered += sorted(
            pending[start : start + window], key=lambda r: (str(r.get("category")), -measure(r["prompt"]))
        )
    unfinished = written = 0
    with appending(out) as write, progress_bar("responses", len(pending), progress) as advance:
        try:
            for record, (text, finished) in _answered(responder, ordered, batch_size):
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
                written += 1
                advance(1)
        except ServerError as error:
            raise PipelineError(
                f"the server failed: {error}; {written} responses written to '{out}' this run; run again to resume"
            ) from None
    notes = (f"{unfinished} of them hit the token limit",) if unfinished else ()
    return StepResult("responses", out, len(pending), len(wanted) - len(pending), notes=notes)


def _answered(
    responder: Responder, records: Sequence[Record], batch_size: int
) -> Iterator[tuple[Record, tuple[str, bool]]]:
    """Each record with the responder's answer to its prompt, in order: through ``responder.stream`` when it
    has one, else ``batch_size`` records at a time."""
    stream = getattr(responder, "stream", None)
    if stream is not None:
        count = 0
        with contextlib.closing(stream([r["prompt"] for r in records], [r["id"] for r in records])) as answers:
            for record, answer in zip(records, answers, strict=False):
                count += 1
                yield record, answer
        if count != len(records):
            raise PipelineError(f"the responder gave {count} answers to {len(records)} prompts")
        return
    for first in range(0, len(records), batch_size):
        batch = records[first : first + batch_size]
        answers = responder([r["prompt"] for r in batch])
        if len(answers) != len(batch):
            raise PipelineError(f"the responder gave {len(answers)} answers to {len(batch)} prompts")
        yield from zip(batch, answers, strict=True)


def local_generate(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, max_new_tokens: int = 1024
) -> Callable[[str], str]:
    """A ``str -> str`` function for ``LLMAnnotator``: the model's greedy answer to the prompt."""
    responder = HFResponder(model, tokenizer, max_new_tokens=max_new_tokens)

    def generate(prompt: str) -> str:
        return responder([prompt])[0][0]

    return generate
