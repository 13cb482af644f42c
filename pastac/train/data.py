"""Training examples: a prompt and an annotated response as one sequence, its mask, positions and labels.

``encode_example`` lays out the prompt (causal, at positions ``0..P-1``) followed by the *training layout* of
the annotated response (``pastac.passes.layout.training_layout``): the tokens of the IR nodes in node order,
each node's text encoded on its own (``pastac.runtime.replay.node_token_ids``), at the layout's position ids
shifted by ``P``; a layout token sees the whole prompt and, within the layout, what the layout's mask allows.
This is exactly what the runtime computes while it decodes (or replays) the response, so one forward over an
example gives, at every position, the logits the runtime would compute there (tests/test_train.py checks it).

Before lowering, a repeated topic on an opening tag (``<async topic="..">``) is dropped: the runtime
force-feeds a bare ``<async>``, and the model must be trained on what it will see.

Labels: one per position, the token that the runtime *chooses* after the token at that position (``-100``
where it chooses none).  Let ``next(i)`` be the token that follows position ``i`` in its own thread, in
layout order (``Layout.thread_ids``; the prompt belongs to the main thread).

- A prompt position: ``-100``, except the prompt's last position, which is labelled with the answer's first
  token (the runtime samples the main thread's first token there, as in ordinary fine-tuning).
- A main-thread position: ``next(i)``; the main thread's last token is labelled with the end-of-sequence id
  (the runtime ends the main thread when the model writes it).  After a ``<sync/>`` the next token is the
  parent's token after the sync (predicted, as at run time, before the children's text is visible).
- The last token of a ``<promise .../>``: the *parent's* next token, ``next(i)`` of the parent's thread.
  The child's first tokens are not predicted from the promise: the runtime force-feeds the child's opening
  ``<async>`` (the child thread's ``Open`` node, ``Scheduler.open_ids``).
- Every position whose ``next(i)`` lies in an ``Open`` node gets ``-100``: nothing is trained to predict the
  force-fed ``<async>``.  So all tokens of a child's ``<async>`` but its last get ``-100``, and the last
  token of ``<async>`` is labelled with the child's first content token.
- A child's last token (the last token of its ``</async>``) gets ``-100``: the runtime closes the thread
  there and samples nothing.  (The tokens of ``</async>`` before the last are labelled as text: the model
  writes ``</async>`` itself.)

``load_examples`` reads a JSONL dataset (``{"prompt": .., "text": ..}`` per line), checks each response with
the strict checker and measures the valid ones (``Dataset.example`` encodes one when it is needed);
``collate`` pads examples into a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from pastac import jsonl
from pastac.files import InputFileError, read_text
from pastac.grammar import DEFAULT_MAX_DEPTH, Async, Document, Node, Promise, check, parse
from pastac.ir.graph import MAIN, Open, Segment, ThreadGraph
from pastac.ir.lengths import tokenizer_length
from pastac.ir.lower import lower
from pastac.models import prompt_ids
from pastac.passes.layout import Layout, training_layout
from pastac.passes.positions import PositionOptions
from pastac.runtime.replay import node_token_ids

__all__ = [
    "IGNORE",
    "PAIR_FIELDS",
    "Batch",
    "DataError",
    "Dataset",
    "Example",
    "Item",
    "Pair",
    "Pairs",
    "collate",
    "encode_example",
    "layout_labels",
    "load_examples",
    "load_pairs",
    "runtime_form",
    "text_positions",
    "text_tokens",
]

#: The label of a position that is not trained (PyTorch's cross-entropy ``ignore_index``).
IGNORE = -100


class DataError(ValueError):
    """A dataset that cannot be read."""


@dataclass(frozen=True)
class Example:
    """One training sequence: the prompt, then the layout of its annotated response, with the mask, position
    ids and labels of the forward the runtime computes."""

    input_ids: torch.Tensor  # long [N]: the prompt's tokens, then the layout's
    position_ids: torch.Tensor  # long [N]
    mask: torch.Tensor  # bool [N, N]: mask[i, j] is True when position i may attend to position j
    labels: torch.Tensor  # long [N]: the token the runtime chooses after position i, or IGNORE
    thread_ids: torch.Tensor  # long [N]: the IR thread of each position (the prompt's is the main thread, 0)
    prompt_length: int
    # The answer as plain text: the prompt, then the layout's text tokens in document order (no tags, each
    # part where its promise stands), read causally; ``teacher[i]`` is where position i's token stands in it,
    # where that token and its label are both plain text (``text_positions``), else -1.  There the next
    # token of the plain text is position i's label too.
    teacher_ids: torch.Tensor  # long [M]
    teacher: torch.Tensor  # long [N]

    def __len__(self) -> int:
        return int(self.input_ids.numel())

    @property
    def text(self) -> torch.Tensor:
        """bool [N]: the positions whose token and label are both plain text (no tag, not the prompt)."""
        return self.teacher >= 0

    @property
    def targets(self) -> int:
        """Positions with a label."""
        return int((self.labels != IGNORE).sum())

    def additive_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[1, 1, N, N] additive float mask (0 allowed, dtype's min blocked), as HF models take it."""
        out = torch.zeros(self.mask.shape, dtype=dtype)
        out.masked_fill_(~self.mask, torch.finfo(dtype).min)
        return out[None, None]


def runtime_form(document: Document) -> Document:
    """The document as the runtime writes it: every ``<async topic="..">`` a bare ``<async>``."""

    def strip(body: tuple[Node, ...]) -> tuple[Node, ...]:
        return tuple(replace(n, body=strip(n.body), topic=None) if isinstance(n, Async) else n for n in body)

    return replace(document, body=strip(document.body))


def layout_labels(graph: ThreadGraph, tokens: Sequence[int], layout: Layout, eos_id: int) -> torch.Tensor:
    """long [T]: the label of each layout token (the rule in this module's docstring), without the prompt."""
    count = layout.node_ids.numel()
    if len(tokens) != count:
        raise ValueError(f"{len(tokens)} tokens for a layout of {count}")
    opens = torch.tensor([isinstance(op, Open) for _, op in graph.ops()], dtype=torch.bool)
    forced = opens[layout.node_ids].tolist() if count else []
    labels = [IGNORE] * count
    by_thread: dict[int, list[int]] = {}
    for index, thread in enumerate(layout.thread_ids.tolist()):
        by_thread.setdefault(thread, []).append(index)
    for thread, indices in by_thread.items():
        for here, after in pairwise(indices):
            if not forced[after]:
                labels[here] = int(tokens[after])
        if thread == MAIN:
            labels[indices[-1]] = eos_id
    return torch.tensor(labels, dtype=torch.long)


def text_tokens(graph: ThreadGraph, layout: Layout) -> torch.Tensor:
    """bool [T]: the layout tokens that are plain text (not a tag's)."""
    if not layout.node_ids.numel():
        return torch.zeros(0, dtype=torch.bool)
    return torch.tensor([isinstance(op, Segment) for _, op in graph.ops()], dtype=torch.bool)[layout.node_ids]


#: A child's first tokens of text, which its topic decides (a list item's title: 6 tokens in the median
#: item of the shipped dataset, to its first ':', '.' or line break).
CHILD_HEAD = 8


def text_positions(graph: ThreadGraph, layout: Layout, labels: torch.Tensor) -> torch.Tensor:
    """bool [T]: the layout positions whose token is plain text and whose label is the next token of the same
    text (a label that is a tag's token, or none, is left out): where a base model that reads the answer as
    plain text predicts the same next token, and a fine-tune should not drift from what it predicts
    (``TrainOptions.kl_weight``).  Two such tokens of a thread are neighbours in document order too: a
    child's part lies between its promise and the parent's next token, and the promise is a tag.

    A child's first ``CHILD_HEAD`` tokens of text are left out: there its topic, which the plain text does not
    hold, decides what it writes, and the base model, which sees the parts before it instead, would only
    teach it to ignore the topic."""
    count = layout.node_ids.numel()
    texts = text_tokens(graph, layout)
    out = torch.zeros(count, dtype=torch.bool)
    by_thread: dict[int, list[int]] = {}
    for index, thread in enumerate(layout.thread_ids.tolist()):
        by_thread.setdefault(thread, []).append(index)
    for thread, indices in by_thread.items():
        head = 0 if thread == MAIN else CHILD_HEAD
        for here, after in pairwise(indices):
            if texts[here] and head:
                head -= 1
                continue
            out[here] = bool(texts[here] and texts[after]) and int(labels[here]) != IGNORE
    return out


def encode_example(
    tokenizer: Any,
    prompt: str,
    annotated: str | Document,
    options: PositionOptions,
    *,
    chat: bool = True,
    eos_id: int | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Example:
    """The prompt and the training layout of an annotated response as one sequence (see the module docstring).

    ``annotated`` is Pasta-Lang text (parsed strictly; ``ParseError`` if invalid) or a parsed document;
    ``options`` are the position options the runtime will decode with; ``chat`` formats the prompt with the
    tokenizer's chat template (``pastac.models.prompt_ids``). ``eos_id`` (default: the tokenizer's)
    labels the main thread's last token.
    """
    eos = tokenizer.eos_token_id if eos_id is None else eos_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token; give eos_id")
    document = parse(annotated, max_depth=max_depth) if isinstance(annotated, str) else annotated
    graph = lower(runtime_form(document), tokenizer_length(tokenizer))
    layout = training_layout(graph, options)
    tokens = [token for node in node_token_ids(graph, tokenizer) for token in node]
    if not tokens:
        raise ValueError("the response is empty")
    prompt = prompt_ids(tokenizer, prompt, chat=chat)
    p, t = len(prompt), len(tokens)
    mask = torch.zeros((p + t, p + t), dtype=torch.bool)
    mask[:p, :p] = torch.tril(torch.ones((p, p), dtype=torch.bool))
    mask[p:, :p] = True
    mask[p:, p:] = layout.mask
    labels = torch.full((p + t,), IGNORE, dtype=torch.long)
    labels[p:] = layout_labels(graph, tokens, layout, int(eos))
    plain = text_tokens(graph, layout)
    teacher = torch.full((t,), -1, dtype=torch.long)
    teacher[plain] = p + torch.arange(int(plain.sum()))
    teacher[~text_positions(graph, layout, labels[p:])] = -1
    if p:
        labels[p - 1] = tokens[0]  # the main thread's first token: the layout's first is always the main's
    return Example(
        input_ids=torch.tensor(prompt + tokens, dtype=torch.long),
        position_ids=torch.cat([torch.arange(p), p + layout.position_ids]),
        mask=mask,
        labels=labels,
        thread_ids=torch.cat([torch.full((p,), MAIN, dtype=torch.long), layout.thread_ids]),
        prompt_length=p,
        teacher_ids=torch.tensor(prompt + [tokens[i] for i in plain.nonzero().flatten().tolist()], dtype=torch.long),
        teacher=torch.cat([torch.full((p,), -1, dtype=torch.long), teacher]),
    )


@dataclass(frozen=True)
class Item:
    """A usable record: what ``Dataset.example`` encodes again when a batch needs it (masks are T x T: a
    dataset's worth of them would not fit in memory)."""

    line: int  # the JSONL line
    prompt: str
    document: Document
    length: int  # tokens, prompt included
    targets: int  # labelled positions


_Usable = TypeVar("_Usable", "Item", "Pair")


@dataclass
class _Read(Generic[_Usable]):
    """What reading a JSONL file of training records keeps: its usable items (each with its ``length`` and
    ``targets``), how to encode them (the tokenizer and the layout's settings) and what was left out."""

    tokenizer: Any = field(repr=False)
    positions: PositionOptions
    chat: bool = True
    eos_id: int | None = None
    records: int = 0  # non-blank lines read
    invalid: int = 0  # bad JSON, missing fields, or a response the strict checker rejects
    too_long: int = 0  # longer than max_length tokens, or positions past the model's
    problems: list[str] = field(default_factory=list)  # the first few reasons, for the log
    items: list[_Usable] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def tokens(self) -> int:
        """The tokens of all usable items (both answers of a pair)."""
        return sum(i.length for i in self.items)

    @property
    def targets(self) -> int:
        """The labelled positions of all usable items (a pair's chosen answer's)."""
        return sum(i.targets for i in self.items)

    def note(self, line: int, message: str) -> None:
        """Keep why the record on ``line`` was left out, for the log (the first 20 reasons only)."""
        if len(self.problems) < 20:
            self.problems.append(f"line {line}: {message}")

    def encode(self, prompt: str, document: Document) -> Example:
        """A prompt and its annotated response in the layout (encoded again on each call: a dataset keeps
        documents, not tensors)."""
        return encode_example(self.tokenizer, prompt, document, self.positions, chat=self.chat, eos_id=self.eos_id)


@dataclass
class Dataset(_Read[Item]):
    """The usable records of a JSONL file, how to encode them, and what was left out."""

    def example(self, index: int) -> Example:
        """Example ``index`` encoded."""
        item = self.items[index]
        return self.encode(item.prompt, item.document)

    def forks(self, index: int) -> bool:
        """Whether example ``index`` makes a promise (a nested one always sits inside a top-level one's part)."""
        return any(isinstance(node, Promise) for node in self.items[index].document.body)


def _usable(
    data: _Read,
    number: int,
    prompt: str,
    annotated: str,
    *,
    max_depth: int,
    max_length: int | None,
    max_position: int | None,
) -> Item | None:
    """The record's item, or None with why noted and counted on ``data`` (invalid, or too long)."""
    result = check(annotated, mode="strict", max_depth=max_depth)
    if result.errors:
        data.invalid += 1
        first = result.errors[0]
        data.note(number, f"{first.code}: {first.message}")
        return None
    try:
        example = data.encode(prompt, result.document)
    except ValueError as error:
        data.invalid += 1
        data.note(number, str(error))
        return None
    if max_length is not None and len(example) > max_length:
        data.too_long += 1
        data.note(number, f"{len(example)} tokens, more than {max_length}")
        return None
    if max_position is not None and int(example.position_ids.max()) >= max_position:
        data.too_long += 1
        data.note(number, f"position {int(example.position_ids.max())} past the model's {max_position}")
        return None
    return Item(number, prompt, result.document, len(example), example.targets)


def _records(path: str | Path) -> list[tuple[int, dict[str, Any] | str]]:
    try:
        text = read_text(Path(path))
    except InputFileError as error:
        raise DataError(str(error)) from None
    return list(jsonl.parse(text))


def load_examples(
    path: str | Path,
    tokenizer: Any,
    options: PositionOptions,
    *,
    field: str = "text",
    prompt_field: str = "prompt",
    chat: bool = True,
    eos_id: int | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_length: int | None = None,
    max_position: int | None = None,
) -> Dataset:
    """Read a JSONL dataset and measure its usable records; invalid and too long ones are skipped and counted.

    ``max_length`` caps the tokens of an example (prompt included); ``max_position`` caps its position ids
    (a model's ``max_position_embeddings``: predicted reservations may place tokens past the sequence length).
    Raises ``DataError`` when the file cannot be read.
    """
    data = Dataset(tokenizer, options, chat=chat, eos_id=eos_id)
    limits = {"max_depth": max_depth, "max_length": max_length, "max_position": max_position}
    for number, record in _records(path):
        data.records += 1
        if isinstance(record, str):
            data.invalid += 1
            data.note(number, record)
            continue
        prompt, annotated = record.get(prompt_field), record.get(field)
        if not isinstance(prompt, str) or not isinstance(annotated, str):
            data.invalid += 1
            data.note(number, f"no string fields {prompt_field!r} and {field!r}")
            continue
        item = _usable(data, number, prompt, annotated, **limits)
        if item is not None:
            data.items.append(item)
    return data


#: The fields of a preference pair (``load_pairs``): the prompt, the chosen and the rejected annotated
#: answers, and the log-probability of each under the reference model (summed over its labelled positions).
PAIR_FIELDS = ("prompt", "chosen", "rejected", "chosen_reference", "rejected_reference")


@dataclass(frozen=True)
class Pair:
    """A usable preference pair: its two answers and their log-probabilities under the reference model."""

    chosen: Item
    rejected: Item
    chosen_reference: float
    rejected_reference: float

    @property
    def length(self) -> int:
        """The tokens of both sequences, prompts included."""
        return self.chosen.length + self.rejected.length

    @property
    def targets(self) -> int:
        """The chosen answer's labelled positions: what the supervised term is a mean over."""
        return self.chosen.targets


@dataclass
class Pairs(_Read[Pair]):
    """The usable pairs of a JSONL file of preference pairs (``PAIR_FIELDS``), as ``Dataset`` holds examples:
    a batch of pairs is the chosen and the rejected answer of each, in that order, row after row."""

    def examples(self, index: int) -> tuple[Example, Example]:
        """Pair ``index``'s chosen and rejected examples."""
        chosen, rejected = self.items[index].chosen, self.items[index].rejected
        return self.encode(chosen.prompt, chosen.document), self.encode(rejected.prompt, rejected.document)

    def references(self, indices: Sequence[int]) -> torch.Tensor:
        """float64 [K, 2]: the reference log-probabilities of the chosen and rejected answers of these pairs."""
        rows = [(self.items[i].chosen_reference, self.items[i].rejected_reference) for i in indices]
        return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), 2)

    def forks(self, index: int) -> bool:
        """Whether pair ``index``'s chosen answer makes a promise."""
        return any(isinstance(node, Promise) for node in self.items[index].chosen.document.body)


def load_pairs(
    path: str | Path,
    tokenizer: Any,
    options: PositionOptions,
    *,
    chat: bool = True,
    eos_id: int | None = None,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_length: int | None = None,
    max_position: int | None = None,
) -> Pairs:
    """Read a JSONL file of preference pairs (one object per line with ``PAIR_FIELDS``); a pair whose answers
    are not both usable (as ``load_examples`` judges them) is skipped and counted.  ``DataError`` when the
    file cannot be read."""
    data = Pairs(tokenizer, options, chat=chat, eos_id=eos_id)
    limits = {"max_depth": max_depth, "max_length": max_length, "max_position": max_position}
    for number, record in _records(path):
        data.records += 1
        if isinstance(record, str):
            data.invalid += 1
            data.note(number, record)
            continue
        texts = [record.get(name) for name in PAIR_FIELDS[:3]]
        references = [record.get(name) for name in PAIR_FIELDS[3:]]
        if not all(isinstance(t, str) for t in texts) or not all(
            isinstance(r, int | float) and not isinstance(r, bool) and math.isfinite(r) for r in references
        ):
            data.invalid += 1
            data.note(
                number, f"not a pair: string fields prompt, chosen, rejected and numbers {', '.join(PAIR_FIELDS[3:])}"
            )
            continue
        prompt, chosen, rejected = (str(t) for t in texts)
        first = _usable(data, number, prompt, chosen, **limits)
        second = _usable(data, number, prompt, rejected, **limits) if first is not None else None
        if first is not None and second is not None:
            data.items.append(Pair(first, second, float(references[0]), float(references[1])))  # type: ignore[arg-type]
    return data


@dataclass(frozen=True)
class Batch:
    """Examples padded to one length and stacked (``collate``), ready for one forward."""

    input_ids: torch.Tensor  # long [B, N]
    position_ids: torch.Tensor  # long [B, N]
    mask: torch.Tensor  # bool [B, N, N]
    labels: torch.Tensor  # long [B, N]
    teacher_ids: torch.Tensor  # long [B, M]: Example.teacher_ids, right-padded
    teacher_mask: torch.Tensor  # long [B, M]: 1 on a real token of teacher_ids, 0 on a pad
    teacher: torch.Tensor  # long [B, N]: Example.teacher (-1 on pads)
    tokens: int  # real (not padding) tokens

    @property
    def text(self) -> torch.Tensor:
        """bool [B, N]: ``Example.text`` (False on pads)."""
        return self.teacher >= 0

    def additive_mask(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[B, 1, N, N] additive float mask: 0 allowed, dtype's min blocked."""
        out = torch.zeros(self.mask.shape, dtype=dtype)
        out.masked_fill_(~self.mask, torch.finfo(dtype).min)
        return out[:, None]

    def to(self, device: torch.device | str) -> Batch:
        """The batch with its tensors on ``device``."""
        return replace(
            self,
            input_ids=self.input_ids.to(device),
            position_ids=self.position_ids.to(device),
            mask=self.mask.to(device),
            labels=self.labels.to(device),
            teacher_ids=self.teacher_ids.to(device),
            teacher_mask=self.teacher_mask.to(device),
            teacher=self.teacher.to(device),
        )


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    """Right-pad examples to one length: a pad sees only itself (no row of the mask is empty, which would
    make softmax undefined), no real token sees a pad, and pads have label IGNORE and position 0."""
    if not examples:
        raise ValueError("no examples to collate")
    size = max(len(e) for e in examples)
    b = len(examples)
    input_ids = torch.full((b, size), pad_id, dtype=torch.long)
    position_ids = torch.zeros((b, size), dtype=torch.long)
    labels = torch.full((b, size), IGNORE, dtype=torch.long)
    teacher = torch.full((b, size), -1, dtype=torch.long)
    mask = torch.eye(size, dtype=torch.bool).repeat(b, 1, 1)
    plain = max(e.teacher_ids.numel() for e in examples)
    teacher_ids = torch.full((b, plain), pad_id, dtype=torch.long)
    teacher_mask = torch.zeros((b, plain), dtype=torch.long)
    for row, example in enumerate(examples):
        n, m = len(example), example.teacher_ids.numel()
        input_ids[row, :n] = example.input_ids
        position_ids[row, :n] = example.position_ids
        labels[row, :n] = example.labels
        teacher[row, :n] = example.teacher
        mask[row, :n, :n] = example.mask
        teacher_ids[row, :m] = example.teacher_ids
        teacher_mask[row, :m] = 1
    return Batch(
        input_ids, position_ids, mask, labels, teacher_ids, teacher_mask, teacher, tokens=sum(len(e) for e in examples)
    )
