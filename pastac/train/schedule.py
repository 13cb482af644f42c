"""Which examples each optimizer step trains on, and at which learning rate.

Data order: each epoch is a permutation of the examples drawn from the seed and the epoch number (examples
that fork drawn ``repeat_forking`` times); batches do not straddle epochs. The learning rate warms up
linearly over ``warmup_steps``, then stays constant or (the default) decays linearly towards 0 over the
*planned* steps (epochs x batches per epoch / accumulation). ``max_steps`` stops earlier without changing
that course, so a run stopped by ``max_steps`` and resumed with a larger one takes the same steps as one run.
A plan is a pure function of the options and the examples: resuming recomputes it rather than storing it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pastac.train.options import TrainOptions


class Plan:
    """Which examples each micro-batch holds, and the learning rate of each step."""

    def __init__(self, forking: Sequence[bool], options: TrainOptions) -> None:
        self.options = options
        # Each epoch draws from this pool: every example once, those that fork (``forking[i]``)
        # ``repeat_forking`` times.
        self.pool = [i for i, forks in enumerate(forking) for _ in range(options.repeat_forking if forks else 1)]
        self.per_epoch = math.ceil(len(self.pool) / options.batch_size)
        self.micro_batches = options.epochs * self.per_epoch
        self.planned = math.ceil(self.micro_batches / options.grad_accum)
        self.total = self.planned if options.max_steps is None else min(self.planned, options.max_steps)
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        """The pool in the order of epoch ``epoch``: a permutation drawn from the seed and the epoch, or as it is."""
        if epoch not in self._orders:
            if self.options.shuffle:
                generator = torch.Generator().manual_seed(self.options.seed * 1_000_003 + epoch)
                self._orders[epoch] = [self.pool[i] for i in torch.randperm(len(self.pool), generator=generator)]
            else:
                self._orders[epoch] = list(self.pool)
        return self._orders[epoch]

    def step(self, step: int) -> list[list[int]]:
        """The example indices of each micro-batch of optimizer step ``step`` (0-based)."""
        size = self.options.batch_size
        out = []
        for micro in range(
            step * self.options.grad_accum, min((step + 1) * self.options.grad_accum, self.micro_batches)
        ):
            epoch, k = divmod(micro, self.per_epoch)
            out.append(self.order(epoch)[k * size : (k + 1) * size])
        return out

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): warm-up, then constant or linear decay."""
        o = self.options
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return o.lr
        return o.lr * (self.planned - step) / max(1, self.planned - o.warmup_steps)
