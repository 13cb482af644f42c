"""Quality proxies of an evaluation: n-gram redundancy between parts, log-likelihood of an answer."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import torch

_WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """The word n-grams of ``text``, lower-cased."""
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def overlap(a: str, b: str, n: int = 3) -> float:
    """Jaccard overlap of the word n-grams of two texts (0 when either has none)."""
    x, y = ngrams(a, n), ngrams(b, n)
    return len(x & y) / len(x | y) if x and y else 0.0


def redundancy(parts: Sequence[str], n: int = 3) -> float | None:
    """Mean pairwise n-gram overlap of parts written side by side (None with fewer than two parts)."""
    pairs = [overlap(a, b, n) for a, b in combinations([p for p in parts if p.strip()], 2)]
    return statistics.fmean(pairs) if pairs else None


def sibling_groups(parents: dict[int, int | None], texts: dict[int, str]) -> list[list[str]]:
    """The texts of the threads forked by the same parent, one list per parent with at least two children."""
    children: dict[int, list[str]] = {}
    for thread, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(texts.get(thread, ""))
    return [group for group in children.values() if len(group) > 1]


def mean_redundancy(groups: Sequence[Sequence[str]], n: int = 3) -> float | None:
    """Mean ``redundancy`` of the groups that have one (None if none has)."""
    values = [r for r in (redundancy(g, n) for g in groups) if r is not None]
    return statistics.fmean(values) if values else None


@torch.inference_mode()
def log_likelihood(model: Any, prompt_ids: Sequence[int], answer_ids: Sequence[int]) -> float | None:
    """Mean log-probability per token of ``answer_ids`` after ``prompt_ids`` under ``model`` (None if empty)."""
    if not answer_ids:
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=device)
    logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    targets = ids[0, len(prompt_ids) :]
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).mean().item()
