"""The runner: one forward pass per step over the new tokens of every thread, packed into one row.

It knows tensors only: the step plan says which token goes to which cache slot
at which position for which thread, and which query's logits to sample from.
Visibility is kept here as one boolean row over the cache slots per thread
(``views``): a thread sees the slots set in its row, and within its own step
only the slots before its own.  The plan's forks copy a parent's row into a
child's (up to the promise), its joins OR a child's row into its parent's:
the incremental form of the visibility relation of ``pastac.passes.visibility``
(a token sees its node's ancestors), which ``training_layout`` turns into the
training mask; tests check that both give the same logits.

One host synchronisation per step: the sampled tokens come back as one list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pastac.backend.attention import packed_attention
from pastac.backend.cache import SlotCache
from pastac.backend.linear import kernels_active
from pastac.runtime.guard import Allowed, allowed_rows
from pastac.runtime.sampling import Sampler, seen_tokens


@dataclass
class StepPlan:
    """One step's work, as plain lists (the runner makes the tensors)."""

    tokens: list[int] = field(default_factory=list)  # per query
    positions: list[int] = field(default_factory=list)  # per query
    slots: list[int] = field(default_factory=list)  # per query: where its keys and values go
    threads: list[int] = field(default_factory=list)  # per query: whose row of ``views`` it reads
    sample: list[int] = field(default_factory=list)  # query indices whose logits are sampled
    forks: list[tuple[int, int, int]] = field(default_factory=list)  # (parent, child, first slot not seen)
    joins: list[tuple[int, int]] = field(default_factory=list)  # (parent, child)
    allowed: list[Allowed | None] = field(default_factory=list)  # per sampled query: what it may write (None: any)
    banned: list[list[int]] = field(default_factory=list)  # per sampled query: tokens it may not write besides

    def __len__(self) -> int:
        return len(self.tokens)


class Runner:
    def __init__(self, model: torch.nn.Module, capacity: int, threads: int = 8) -> None:
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        layers = model.config.get_text_config().num_hidden_layers
        self.cache = SlotCache(layers, capacity)
        self.views = torch.zeros((threads, capacity), dtype=torch.bool, device=self.device)
        self._arange = torch.arange(capacity, device=self.device)
        self.tokens = torch.zeros(capacity, dtype=torch.long, device=self.device)  # the token in each slot
        self.keep_logits = False
        # when keep_logits: per step, the sampled queries' logits and (slots, threads, sample) of the plan
        self.logits: list[torch.Tensor] = []
        self.plans: list[tuple[list[int], list[int], list[int]]] = []

    def reserve(self, slots: int, threads: int) -> None:
        """Room for ``slots`` cache slots and ``threads`` threads (grows rarely, by copying once)."""
        if slots > self.cache.capacity:
            self.cache.reserve(slots)
            grown = torch.zeros((self.views.shape[0], self.cache.capacity), dtype=torch.bool, device=self.device)
            grown[:, : self.views.shape[1]] = self.views
            self.views = grown
            self._arange = torch.arange(self.cache.capacity, device=self.device)
            tokens = torch.zeros(self.cache.capacity, dtype=torch.long, device=self.device)
            tokens[: self.tokens.shape[0]] = self.tokens
            self.tokens = tokens
        if threads > self.views.shape[0]:
            grown = torch.zeros(
                (max(threads, 2 * self.views.shape[0]), self.views.shape[1]), dtype=torch.bool, device=self.device
            )
            grown[: self.views.shape[0]] = self.views
            self.views = grown

    @torch.inference_mode()
    def step(self, plan: StepPlan, sampler: Sampler) -> list[int]:
        """Run the plan's forward; return the sampled token of each ``plan.sample`` query."""
        dev = self.device
        slots = torch.tensor(plan.slots, dtype=torch.long, device=dev)
        threads = torch.tensor(plan.threads, dtype=torch.long, device=dev)
        ids = torch.tensor(plan.tokens, dtype=torch.long, device=dev)
        self.tokens[slots] = ids
        self.views[threads, slots] = True  # first each thread's own new tokens, so a fork can pass on its parent's
        for parent, child, upto in plan.forks:
            self.views[child] |= self.views[parent] & (self._arange < upto)
        for parent, child in plan.joins:
            self.views[parent] |= self.views[child]
        if not plan.tokens:
            return []
        used = max(plan.slots) + 1
        self.cache.used = max(self.cache.used, used)
        used = self.cache.used
        allowed = self.views[threads, :used] & (self._arange[:used][None, :] <= slots[:, None])
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=dev)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        self.cache.write_slots = slots
        sample = torch.tensor(plan.sample, dtype=torch.long, device=dev)
        with kernels_active(self.model), packed_attention():
            out = self.model(
                input_ids=ids[None],
                position_ids=torch.tensor([plan.positions], dtype=torch.long, device=dev),
                attention_mask=mask[None, None],
                cache=self.cache,
                use_cache=True,
                logits_to_keep=sample,
            )
        self.cache.write_slots = None
        if not plan.sample:
            return []
        logits = out.logits[0]
        if self.keep_logits:
            self.logits.append(logits.float().cpu())
            self.plans.append((list(plan.slots), list(plan.threads), list(plan.sample)))
        seen = None
        vocab = logits.shape[-1]
        if sampler.penalizes:  # the tokens in each sampled query's context, for the repetition penalty
            if sampler.whole_answer:  # every slot written so far: the prompt and all the threads' text
                everything = torch.ones((1, used), dtype=torch.bool, device=dev)
                seen = seen_tokens(self.tokens[:used], everything, vocab, sampler.exempt(vocab, dev))
                seen = seen.expand(len(plan.sample), -1)
            else:
                seen = seen_tokens(self.tokens[:used], allowed[sample], vocab, sampler.exempt(vocab, dev))
        return sampler(logits, seen, allowed_rows(plan.allowed, vocab, dev, plan.banned)).tolist()
