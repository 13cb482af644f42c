"""Choosing each thread's next token from its logits: greedy, or temperature and top-p sampling, after an
optional repetition penalty over the tokens the thread sees."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch

from pastac.runtime.options import SamplingOptions

# Pasta-Lang in the contexts a model writes it in.  The tokens that fall inside its tags (the topic's text
# aside) are never penalised for repeating: a thread's second promise repeats its first one's syntax by
# design, and a token estimate's digits are no text.  Nor are special tokens (``penalty_exempt_ids``).
TAG_SAMPLES = (
    '1. <promise topic="a" tokens="1234567890"/><async>b\n</async>2. <promise topic="c" tokens="40"/>'
    "<async>d</async><sync/>\ne",
    'f <promise topic="g"/> h <promise topic="i" tokens="30"/>\n<sync/> j',
    '- <promise topic="k" tokens="20"/>\n<async>l.\n\n</async>\n<sync/>',
    "<async>m</async>",
)
_TAG = re.compile(r"<[^<>]*>")
_TOPIC = re.compile(r'topic="[^"]*"')


def tag_token_ids(tokenizer: Any) -> list[int]:
    """The ids of the tokens that lie inside Pasta-Lang tags (the topics' text aside) as ``tokenizer`` splits
    ``TAG_SAMPLES``: a token counts when every character of it that is not white space is a tag's."""
    ids: set[int] = set()
    for sample in TAG_SAMPLES:
        inside = [False] * len(sample)
        for tag in _TAG.finditer(sample):
            inside[tag.start() : tag.end()] = [True] * (tag.end() - tag.start())
            for topic in _TOPIC.finditer(tag.group()):  # the topic's own text is text
                first, last = tag.start() + topic.start() + len('topic="'), tag.start() + topic.end() - 1
                inside[first:last] = [False] * (last - first)
        tokens = tokenizer.encode(sample, add_special_tokens=False)
        end = 0
        for i, token in enumerate(tokens):
            start, end = end, len(tokenizer.decode(tokens[: i + 1]))
            chars = [k for k in range(start, min(end, len(sample))) if not sample[k].isspace()]
            if chars and all(inside[k] for k in chars):
                ids.add(token)
    return sorted(ids)


def penalty_exempt_ids(tokenizer: Any, eos: Iterable[int] = ()) -> list[int]:
    """The ids the repetition penalty leaves alone: the tags' tokens (``tag_token_ids``) and the special ones,
    the end of sequence ``eos`` among them.  A chat prompt holds the end-of-turn token (SmolLM2's
    ``<|im_end|>``, its end of sequence) once per turn: penalised for "repeating" it, an answer is pushed
    away from ending."""
    return sorted({*tag_token_ids(tokenizer), *getattr(tokenizer, "all_special_ids", ()), *eos})


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float, *, dense: bool | None = None) -> torch.Tensor:
    """``logits`` [N, vocab] with the penalty applied where ``seen`` [N, vocab] (bool) is set.  ``dense``
    (default: off the CPU) computes every entry instead of gathering the seen ones, which on a GPU would make
    the host wait for the device; on the CPU the sparse form is the faster."""
    if penalty == 1:
        return logits
    if logits.device.type != "cpu" if dense is None else dense:
        return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
    rows, ids = seen.nonzero(as_tuple=True)  # a few hundred ids a row: only they are touched
    out = logits.clone()
    hit = out[rows, ids]
    out[rows, ids] = torch.where(hit > 0, hit / penalty, hit * penalty)
    return out


def seen_tokens(
    tokens: torch.Tensor,
    visible: torch.Tensor,
    vocab: int,
    exempt: torch.Tensor | None = None,
    *,
    dense: bool | None = None,
) -> torch.Tensor:
    """[N, vocab] bool: which ids occur among ``tokens`` [S] where ``visible`` [N, S] is set, less ``exempt``.
    ``dense`` (default: off the CPU) scatters counts per row instead of gathering the visible slots."""
    if visible.device.type != "cpu" if dense is None else dense:
        counts = torch.zeros((visible.shape[0], vocab), dtype=torch.int32, device=visible.device)
        counts.scatter_add_(1, tokens[None, :].expand(visible.shape[0], -1), visible.to(torch.int32))
        seen = counts > 0
        return seen & ~exempt if exempt is not None else seen
    rows, slots = visible.nonzero(as_tuple=True)
    ids = tokens[slots]
    if exempt is not None:
        keep = ~exempt[ids]
        rows, ids = rows[keep], ids[keep]
    seen = torch.zeros((visible.shape[0], vocab), dtype=torch.bool, device=visible.device)
    seen[rows, ids] = True
    return seen


class TokenSet:
    """Token ids, and their mask over a vocabulary (made once per vocabulary size and device)."""

    def __init__(self, ids: Iterable[int] = ()) -> None:
        self.ids = sorted(set(ids))
        self._masks: dict[tuple[int, str], torch.Tensor] = {}

    def mask(self, vocab: int, device: torch.device) -> torch.Tensor | None:
        """[vocab] bool, set at the ids; None for an empty set."""
        if not self.ids:
            return None
        key = (vocab, str(device))
        if key not in self._masks:
            mask = torch.zeros(vocab, dtype=torch.bool, device=device)
            mask[[i for i in self.ids if i < vocab]] = True
            self._masks[key] = mask
        return self._masks[key]


class RepetitionPenalty:
    """The same penalty as a ``transformers`` logits processor, for ``model.generate``: Hugging Face's own,
    but for the tokens in ``exempt``."""

    def __init__(self, penalty: float, exempt: Iterable[int] = ()) -> None:
        self.penalty = penalty
        self.exempt = TokenSet(exempt)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` [B, vocab] penalised at the ids ``input_ids`` [B, S] holds, the exempt ones aside."""
        if self.penalty == 1:
            return scores
        seen = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
        seen.scatter_(1, input_ids, True)
        exempt = self.exempt.mask(scores.shape[1], scores.device)
        if exempt is not None:
            seen &= ~exempt
        return penalize(scores, seen, self.penalty)


class Sampler:
    """Chooses each row's next token under ``SamplingOptions``, with its own seeded generator when it samples."""

    def __init__(
        self, options: SamplingOptions, device: torch.device | str = "cpu", exempt: Iterable[int] = ()
    ) -> None:
        """``exempt``: token ids the repetition penalty leaves alone (``penalty_exempt_ids``)."""
        self.options = options
        self.generator: torch.Generator | None = None
        self.exempt_tokens = TokenSet(exempt)
        if not options.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(options.seed if options.seed is not None else torch.seed())

    @property
    def penalizes(self) -> bool:
        """Whether the options set a repetition penalty (one other than 1)."""
        return self.options.penalty != 1

    @property
    def whole_answer(self) -> bool:
        """Whether the penalty counts every token written so far, not only those the thread sees."""
        return self.options.penalty_scope == "answer"

    def exempt(self, vocab: int, device: torch.device) -> torch.Tensor | None:
        """[vocab] bool: the ids the penalty leaves alone; None when there are none."""
        return self.exempt_tokens.mask(vocab, device)

    def __call__(
        self, logits: torch.Tensor, seen: torch.Tensor | None = None, allowed: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``logits`` [N, vocab] -> token ids [N] (on the logits' device).  ``seen`` [N, vocab]: the tokens
        each row's context holds (``seen_tokens``), needed when there is a repetition penalty.  ``allowed``
        [N, vocab] (bool): the only tokens each row may choose (``pastac.runtime.guard``)."""
        if self.penalizes:
            if seen is None:
                raise ValueError(
                    "this runner cannot apply a repetition penalty (it does not track the tokens "
                    "each thread sees); decode with repetition_penalty 1"
                )
            logits = penalize(logits, seen, self.options.penalty)
        if allowed is not None:
            logits = logits.masked_fill(~allowed, float("-inf"))
        if self.options.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / self.options.temperature, dim=-1)
        if self.options.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above
            sorted_probs = sorted_probs.masked_fill(before >= self.options.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
