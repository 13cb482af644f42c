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
from typing import Protocol

import torch

from pastac.backend.attention import BranchedStep, branched_step, packed_attention
from pastac.backend.cache import SlotCache
from pastac.backend.decoder import FusedDecoder
from pastac.backend.linear import kernels_active
from pastac.backend.visibility import Views, pack_bits
from pastac.runtime.guard import Allowed, allowed_rows
from pastac.runtime.sampling import Sampler, seen_tokens
from pastac.runtime.static import StaticStep, resolve_decode_step


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


class SlotMap(Protocol):
    """Where a run's slots (0, 1, ... in the order it places tokens) lie in a cache it shares with other runs."""

    used: int  # the run's slots placed so far

    def cache_slots(self, slots: Sequence[int]) -> list[int]:
        """The cache slots of the run's ``slots``."""
        ...

    def index(self, used: int) -> torch.Tensor:
        """A long tensor of the cache slots of the run's slots ``0 .. used - 1``."""
        ...


@dataclass
class Part:
    """One run's share of a step: its plan, its views and sampler, and (None: the cache is its own) its map."""

    plan: StepPlan
    views: Views
    sampler: Sampler
    slots: SlotMap | None = None
    kept: list[torch.Tensor] | None = None  # where to keep its sampled queries' logits, step by step (None: not)


class Runner:
    """Runs ``StepPlan``s over one packed row and a slot-indexed cache (see the module's docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        capacity: int,
        *,
        attention: str = "sdpa",
        decode_step: str = "eager",
        decoder: FusedDecoder | None = None,
    ) -> None:
        """``attention``: ``sdpa`` (a dense mask per step), or a branched backend that reads the views' bitset
        (``triton``, ``flex``, ``reference``; ``pastac.backend.attention.resolve_attention`` picks).
        ``decode_step``: ``eager``, or ``static`` (``pastac.runtime.static``: padded to fixed widths, captured
        as CUDA graphs on a GPU; it needs a branched backend).  ``decoder``: the fused decoder
        (``pastac.backend.decoder``) that computes the forward from the model's weights in place of the model's
        own (None: the model's own; the static step always runs the model's own)."""
        self.model = model
        self.decoder = decoder
        self.attention = attention
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        layers = model.config.get_text_config().num_hidden_layers
        self.cache = SlotCache(layers, capacity)
        self.tokens = torch.zeros(capacity, dtype=torch.long, device=self.device)  # the token in each slot
        self.keep_logits = False
        # when keep_logits: per step, the sampled queries' logits and (slots, threads, sample) of the plan
        self.logits: list[torch.Tensor] = []
        self.plans: list[tuple[list[int], list[int], list[int]]] = []
        static = resolve_decode_step(decode_step, attention, self.device) == "static"  # refuses static under sdpa
        self.static = StaticStep(model, self.cache, attention, capture=True) if static else None

    def reset(self) -> None:
        """Ready for another run: nothing placed (what the cache holds is left, unseen: a new run's views see
        only the slots it writes)."""
        self.cache.used = 0
        self.logits, self.plans = [], []

    def reserve(self, slots: int) -> None:
        """Room for ``slots`` cache slots (grows rarely, by copying once)."""
        if slots > self.cache.capacity:
            self.cache.reserve(slots)
            tokens = torch.zeros(self.cache.capacity, dtype=torch.long, device=self.device)
            tokens[: self.tokens.shape[0]] = self.tokens
            self.tokens = tokens

    def step(self, plan: StepPlan, views: Views, sampler: Sampler) -> list[int]:
        """Run the plan's forward; return the sampled token of each ``plan.sample`` query."""
        if self.keep_logits and plan.sample:
            self.plans.append((list(plan.slots), list(plan.threads), list(plan.sample)))
        return self.step_many([Part(plan, views, sampler, kept=self.logits if self.keep_logits else None)])[0]

    @torch.inference_mode()
    def step_many(self, parts: Sequence[Part]) -> list[list[int]]:
        """One forward over the plans of several runs (requests), packed one after the other into the row;
        each run's queries see only its own slots, through its own views.  Returns each part's sampled
        tokens, in the parts' order."""
        every = list(parts)
        parts = [p for p in every if p.plan.tokens]
        if not parts:
            return [[] for _ in every]
        dev = self.device
        whole: list[int] = []
        spans: list[tuple[int, int]] = []
        for part in parts:  # each part's queries, where its slots lie in the cache
            cache_slots = part.plan.slots if part.slots is None else part.slots.cache_slots(part.plan.slots)
            spans.append((len(whole), len(whole) + len(cache_slots)))
            whole.extend(cache_slots)
        slots = device_ints(whole, dev)
        ids = device_ints([t for part in parts for t in part.plan.tokens], dev)
        self.tokens[slots] = ids
        self.cache.used = used = max(self.cache.used, max(whole) + 1)
        # per part: its queries' threads and slots (in its own numbering), how many of its slots it has placed,
        # and where those lie in the cache (None: in place)
        own: list[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]] = []
        for part in parts:
            plan = part.plan
            local_slots = slots if len(parts) == 1 and part.slots is None else device_ints(plan.slots, dev)
            if part.slots is None:
                own.append((device_ints(plan.threads, dev), local_slots, max(plan.slots) + 1, None))
            else:
                mine = part.slots.used
                own.append((device_ints(plan.threads, dev), local_slots, mine, part.slots.index(mine)))
        self.cache.write_slots = slots
        sampled = [first + q for part, (first, _) in zip(parts, spans, strict=True) for q in part.plan.sample]
        sample = device_ints(sampled, dev)
        positions = device_ints([p for part in parts for p in part.plan.positions], dev)
        in_place = len(parts) == 1 and parts[0].slots is None
        if self.attention == "sdpa":
            allowed = self._allowed(parts, spans, own, len(whole), used)
            mask = torch.zeros(allowed.shape, dtype=self.dtype, device=dev).masked_fill_(
                ~allowed, torch.finfo(self.dtype).min
            )
            attention = packed_attention()
        else:
            if in_place:  # the run's own bitset, read in place
                bits, threads = parts[0].views.bits, own[0][0]
            else:  # runs packed together: one bitset row per query, in cache slots
                bits = pack_bits(self._allowed(parts, spans, own, len(whole), used))
                threads = torch.arange(len(whole), device=dev)
            if self.static is not None and self.static.fits(len(whole), max(whole)):
                logits = self.static.forward(ids, positions, slots, threads, bits)[sample]
                self.cache.write_slots = None
                return self._chosen(every, parts, own, logits)
            mask = torch.empty((len(whole), 0), dtype=self.dtype, device=dev)  # the model's mask code wants one
            attention = branched_step(BranchedStep(bits, threads, slots, self.attention))
        with kernels_active(self.model), attention:
            if self.decoder is not None:
                logits = self.decoder(ids, positions, mask[None, None], self.cache, sample)
            else:
                logits = self.model(
                    input_ids=ids[None],
                    position_ids=positions[None],
                    attention_mask=mask[None, None],
                    cache=self.cache,
                    use_cache=True,
                    logits_to_keep=sample,
                ).logits[0]
        self.cache.write_slots = None
        return self._chosen(every, parts, own, logits)

    def _chosen(
        self,
        every: Sequence[Part],
        parts: Sequence[Part],
        own: Sequence[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]],
        logits: torch.Tensor,
    ) -> list[list[int]]:
        """Each of ``every`` part's chosen tokens, from ``logits`` [S, vocab]: the sampled queries of ``parts``
        (those with work this step) in order."""
        chosen: dict[int, list[int]] = {}
        at = 0
        for part, mine in zip(parts, own, strict=True):
            n = len(part.plan.sample)
            chosen[id(part)] = self._choose(part, logits[at : at + n], *mine) if n else []
            at += n
        return [chosen.get(id(part), []) for part in every]

    def _allowed(
        self,
        parts: Sequence[Part],
        spans: Sequence[tuple[int, int]],
        own: Sequence[tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]],
        queries: int,
        used: int,
    ) -> torch.Tensor:
        """bool ``[queries, used]``: the cache slots each query of the step may attend to."""
        if len(parts) == 1 and parts[0].slots is None:  # the run's own slots are the cache's: no index
            threads, slots, _, _ = own[0]
            return parts[0].views.mask(threads, slots, used)
        allowed = torch.zeros((queries, used), dtype=torch.bool, device=self.device)
        for part, (first, last), (threads, slots, mine, index) in zip(parts, spans, own, strict=True):
            where = torch.arange(mine, device=self.device) if index is None else index
            allowed[first:last].index_copy_(1, where, part.views.mask(threads, slots, mine))
        return allowed

    def _choose(
        self,
        part: Part,
        logits: torch.Tensor,
        threads: torch.Tensor,
        slots: torch.Tensor,
        used: int,
        index: torch.Tensor | None,
    ) -> list[int]:
        """The tokens ``part``'s sampler chooses from its sampled queries' ``logits``; its queries are of
        ``threads`` at its own ``slots``, ``used`` of its slots placed, which lie in the cache at ``index``
        (None: in place)."""
        plan, sampler, dev = part.plan, part.sampler, self.device
        if part.kept is not None:
            part.kept.append(logits.float().cpu())
        seen = None
        vocab = logits.shape[-1]
        if sampler.penalizes:  # the tokens in each sampled query's context, for the repetition penalty
            tokens = self.tokens[:used] if index is None else self.tokens[index]
            if sampler.whole_answer:  # every slot the run wrote so far: the prompt and all the threads' text
                everything = torch.ones((1, used), dtype=torch.bool, device=dev)
                seen = seen_tokens(tokens, everything, vocab, sampler.exempt(vocab, dev))
                seen = seen.expand(len(plan.sample), -1)
            else:
                sample = device_ints(plan.sample, dev)
                allowed = part.views.mask(threads[sample], slots[sample], used)
                seen = seen_tokens(tokens, allowed, vocab, sampler.exempt(vocab, dev))
        return sampler(logits, seen, allowed_rows(plan.allowed, vocab, dev, plan.banned)).tolist()
