"""Choosing each thread's next token from its logits: greedy, or temperature and top-p sampling."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingOptions:
    """``temperature`` 0 is greedy (argmax); otherwise softmax(logits / temperature) cut to the
    smallest set of tokens whose probability reaches ``top_p``.  ``seed`` makes sampling repeatable."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    def __init__(self, options: SamplingOptions, device: torch.device | str = "cpu") -> None:
        self.options = options
        self.generator: torch.Generator | None = None
        if not options.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(options.seed if options.seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` [N, vocab] -> token ids [N] (on the logits' device)."""
        if self.options.greedy:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / self.options.temperature, dim=-1)
        if self.options.top_p < 1:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above
            sorted_probs = sorted_probs.masked_fill(before >= self.options.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)
