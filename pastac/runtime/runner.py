"""The runner: one forward pass per step over the new tokens of every thread, packed into one row.

It knows tensors only: the step plan says which token goes to which cache slot
at which position for which thread, and which query's logits to sample from;
the run's ``Views`` (``pastac.backend.visibility``, driven by the scheduler)
say which slots each thread's queries may attend to, and within its own step a
query sees only the slots up to its own.  Keys and values go into the
preallocated ``SlotCache`` by slot index.

Host synchronisation: pastac's own code waits for the device once per step,
when the sampled tokens come back as one list.  The plan's integer lists go to
the device as non-blocking copies; on a GPU the repetition penalty and the
guard's masks take dense tensor forms that wait for nothing (on the CPU the
sparse forms, which are faster there and have no device to wait for).  What the
model's own forward does inside ``transformers`` is not pastac's to promise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from pastac.backend.attention import packed_attention
from pastac.backend.cache import SlotCache
from pastac.backend.linear import kernels_active
from pastac.backend.visibility import Views
from pastac.runtime.guard import Allowed, allowed_rows
from pastac.runtime.sampling import Sampler, seen_tokens


def device_ints(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """A long tensor of ``values`` on ``device``, copied without waiting for the device's queue."""
    host = torch.tensor(values, dtype=torch.long)
    return host if device.type == "cpu" else host.to(device, non_blocking=True)


@dataclass
class StepPlan:
    """One step's work, as plain lists (the runner makes the tensors)."""

    tokens: list[int] = field(default_factory=list)  # per query
    positions: list[int] = field(default_factory=list)  # per query
    slots: list[int] = field(default_factory=list)  # per query: where its keys and values go
    threads: list[int] = field(default_factory=list)  # per query: whose row of the views it reads
    sample: list[int] = field(default_factory=list)  # query indices whose logits are sampled
    # what the views gained this step, for runners that keep a row per thread (the views have it all)
    forks: list[tuple[int, int]] = field(default_factory=list)  # (parent, child)
    joins: list[tuple[int, int]] = field(default_factory=list)  # (parent, child)
    allowed: list[Allowed | None] = field(default_factory=list)  # per sampled query: what it may write (None: any)
    banned: list[list[int]] = field(default_factory=list)  # per sampled query: tokens it may not write besides

    def __len__(self) -> int:
        return len(self.tokens)


class Runner:
    """Runs ``StepPlan``s over one packed row and a slot-indexed cache (see the module's docstring)."""

    def __init__(self, model: torch.nn.Module, capacity: int) -> None:
        self.model = model
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        layers = model.config.get_text_config().num_hidden_layers
        self.cache = SlotCache(layers, capacity)
        self.tokens = torch.zeros(capacity, dtype=torch.long, device=self.device)  # the token in each slot
        self.keep_logits = False
        # when keep_logits: per step, the sampled queries' logits and (slots, threads, sample) of the plan
        self.logits: list[torch.Tensor] = []
        self.plans: list[tuple[list[int], list[int], list[int]]] = []

    def reserve(self, slots: int) -> None:
        """Room for ``slots`` cache slots (grows rarely, by copying once)."""
        if slots > self.cache.capacity:
            self.cache.reserve(slots)
            tokens = torch.zeros(self.cache.capacity, dtype=torch.long, device=self.device)
            tokens[: self.tokens.shape[0]] = self.tokens
            self.tokens = tokens

    @torch.inference_mode()
    def step(self, plan: StepPlan, views: Views, sampler: Sampler) -> list[int]:
        """Run the plan's forward; return the sampled token of each ``plan.sample`` query."""
        if not plan.tokens:
            return []
        dev = self.device
        slots = device_ints(plan.slots, dev)
        threads = device_ints(plan.threads, dev)
        ids = device_ints(plan.tokens, dev)
        self.tokens[slots] = ids
        used = max(plan.slots) + 1
        self.cache.used = max(self.cache.used, used)
        used = self.cache.used
        allowed = views.mask(threads, slots, used)  # [Q, used]
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=dev)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        self.cache.write_slots = slots
        sample = device_ints(plan.sample, dev)
        with kernels_active(self.model), packed_attention():
            out = self.model(
                input_ids=ids[None],
                position_ids=device_ints(plan.positions, dev)[None],
                attention_mask=mask[None, None],
                cache=self.cache,
                use_cache=True,
                logits_to_keep=sample,
            )
        self.cache.write_slots = None
        if not plan.sample:
            return []
        logits = out.logits[0]  # [S, vocab]
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
