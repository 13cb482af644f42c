"""Row runners: the threads of a run as separate batch rows, the way peers run parallel parts.

pastac's own runner (``runner.py``) packs every thread into one row over one
shared cache.  The strategies it is compared with keep one row of keys and
values per thread instead:

- ``copy`` (*batched-copy*, APAR's Hugging Face path): a child's row starts as
  a copy of the keys and values of its parent's row up to the promise; a join
  copies the child's own entries into the parent's row;
- ``reencode`` (*refork*, separate requests as in Skeleton-of-Thought or APR):
  a child's row is filled by a prefill forward over its whole visible context,
  and a join re-encodes the child's text into the parent's row.

Both take the same ``StepPlan`` as the packed runner, so the scheduler, the
threads and the tokens are the same; only where keys and values live and what
each step computes differ.  Every step runs one batched forward over all rows
in use, each row padded to the step's longest run of queries; a row with
nothing to do that step gets a padding query (a batch does not shrink while
its rows are alive).  A child can only start from its parent's keys once they
exist, so a step whose plan forks a child from a token of the same step runs
the children's queries in a second forward.

Each row's slot 0 is a sink that padding queries write and read; real entries
start at 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from transformers.cache_utils import Cache

from pastac.backend.attention import packed_attention
from pastac.backend.cache import PreallocatedLayer
from pastac.backend.linear import kernels_active
from pastac.backend.visibility import Views
from pastac.runtime.guard import allowed_rows
from pastac.runtime.runner import StepPlan
from pastac.runtime.sampling import Sampler

Fork = Literal["copy", "reencode"]


class RowLayer(PreallocatedLayer):
    """One layer's keys and values, ``[rows, kv_heads, capacity, head_dim]``."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate zeroed buffers of the cache's ``rows`` and ``capacity``, taking heads, head size, dtype and
        device from the states."""
        c = self._cache
        self.keys = key_states.new_zeros((c.rows, key_states.shape[1], c.capacity, key_states.shape[-1]))
        self.values = value_states.new_zeros((c.rows, value_states.shape[1], c.capacity, value_states.shape[-1]))
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write each batch row's keys and values at the entries the cache's ``write`` names, in rows ``first``
        onward, and return views of the first ``used`` entries of those rows; allocates on the first call."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        c = self._cache
        assert c.write is not None and self.keys is not None and self.values is not None
        rows = slice(c.first, c.first + key_states.shape[0])
        batch = torch.arange(key_states.shape[0], device=key_states.device)[:, None]
        for store, new in ((self.keys, key_states), (self.values, value_states)):
            store[rows].transpose(1, 2)[batch, c.write] = new.transpose(1, 2)
        return self.keys[rows, :, : c.used], self.values[rows, :, : c.used]

    def move(self, src: int, dst: int, src_index: torch.Tensor, dst_index: torch.Tensor) -> None:
        """Copy entries ``src_index`` of row ``src`` to entries ``dst_index`` of row ``dst``."""
        if not self.is_initialized:
            return
        assert self.keys is not None and self.values is not None
        for store in (self.keys, self.values):
            store[dst].index_copy_(1, dst_index, store[src].index_select(1, src_index))

    def grow(self, rows: int, capacity: int) -> None:
        """Copy the buffers into new ones of ``rows`` rows and ``capacity`` entries; a no-op before the first
        write."""
        if not self.is_initialized:
            return
        assert self.keys is not None and self.values is not None
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((rows, old.shape[1], capacity, old.shape[-1]))
            new[: old.shape[0], :, : old.shape[2]] = old
            setattr(self, name, new)


class RowCache(Cache):
    """A ``transformers`` cache of one row per thread; a forward covers rows ``first`` to ``first + batch``."""

    def __init__(self, num_layers: int, rows: int, capacity: int) -> None:
        self.rows = rows
        self.capacity = capacity
        self.first = 0
        self.write: torch.Tensor | None = None  # [batch, queries]: the entry each query's keys go to
        self.used = 0  # entries attention reads in every row of the forward
        self.growths = 0
        self.entries = 0  # live entries in all rows (sinks excluded)
        self.peak_entries = 0
        super().__init__(layers=[RowLayer(self) for _ in range(num_layers)])

    def reserve(self, rows: int, capacity: int) -> None:
        """Make room for ``rows`` rows of ``capacity`` entries (each dimension that grows grows by at least
        half; one copy)."""
        if rows <= self.rows and capacity <= self.capacity:
            return
        self.rows = max(rows, self.rows + (self.rows + 1) // 2) if rows > self.rows else self.rows
        if capacity > self.capacity:
            self.capacity = max(capacity, self.capacity + self.capacity // 2)
        for layer in self.layers:
            assert isinstance(layer, RowLayer)
            layer.grow(self.rows, self.capacity)
        self.growths += 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Return ``used``, the same for every layer and every row of the forward."""
        return self.used

    def nbytes(self) -> int:
        """Bytes held by the keys and values of all layers (every row at full capacity)."""
        return sum(layer.nbytes() for layer in self.layers if isinstance(layer, RowLayer))

    def _entry_bytes(self) -> int:
        slots = self.rows * self.capacity
        return self.nbytes() // slots if slots else 0

    def used_bytes(self) -> int:
        """Bytes of the entries the rows hold now."""
        return self.entries * self._entry_bytes()

    def peak_bytes(self) -> int:
        """Bytes of the most entries the rows held at once."""
        return self.peak_entries * self._entry_bytes()


@dataclass
class Row:
    """One row's entries in order, each its plan slot, token and position; entry 0 is the sink."""

    slots: list[int] = field(default_factory=lambda: [-1])  # the plan's slot of each entry (-1: the sink)
    tokens: list[int] = field(default_factory=lambda: [0])
    positions: list[int] = field(default_factory=lambda: [0])


class RowRunner:
    """Runs ``StepPlan``s with one cache row per thread (see the module's docstring)."""

    def __init__(self, model: torch.nn.Module, capacity: int, threads: int = 8, *, fork: Fork = "copy") -> None:
        if fork not in ("copy", "reencode"):
            raise ValueError(f"fork must be 'copy' or 'reencode', not {fork!r}")
        self.model = model
        self.fork = fork
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        layers = model.config.get_text_config().num_hidden_layers
        self.cache = RowCache(layers, max(threads, 1), min(capacity, 512))
        self.row_of: dict[int, int] = {}
        self.rows: dict[int, Row] = {}  # row index -> its entries
        self.keep_logits = False
        self.logits: list[torch.Tensor] = []
        self.plans: list[tuple[list[int], list[int], list[int]]] = []
        self.forwards = 0

    def reserve(self, slots: int) -> None:
        """Rows are sized as they fill (see ``_room``); nothing to do ahead."""

    # -- rows -------------------------------------------------------------------

    def _new_row(self, thread: int) -> Row:
        free = next(i for i in range(len(self.rows) + 1) if i not in self.rows)
        self.row_of[thread] = free
        self.rows[free] = row = Row()
        self._room(free, 0)
        return row

    def _room(self, index: int, extra: int) -> None:
        need = len(self.rows[index].slots) + extra
        self.cache.reserve(index + 1, need)

    def _count(self, delta: int) -> None:
        self.cache.entries += delta
        self.cache.peak_entries = max(self.cache.peak_entries, self.cache.entries)

    def _copy(self, src: int, dst: int, picks: list[int]) -> None:
        """Append entries ``picks`` of row ``src`` to row ``dst`` by copying their keys and values."""
        if not picks:
            return
        s, d = self.rows[src], self.rows[dst]
        self._room(dst, len(picks))
        start = len(d.slots)
        src_index = torch.tensor(picks, dtype=torch.long, device=self.device)
        dst_index = torch.arange(start, start + len(picks), device=self.device)
        for layer in self.cache.layers:
            assert isinstance(layer, RowLayer)
            layer.move(src, dst, src_index, dst_index)
        for i in picks:
            d.slots.append(s.slots[i])
            d.tokens.append(s.tokens[i])
            d.positions.append(s.positions[i])
        self._count(len(picks))

    def _free(self, thread: int) -> None:
        index = self.row_of.pop(thread)
        row = self.rows.pop(index)
        self._count(-(len(row.slots) - 1))

    # -- forwards ---------------------------------------------------------------

    def _forward(
        self, first: int, batch: list[list[tuple[int, int, int, int]]], keep: set[tuple[int, int]]
    ) -> dict[tuple[int, int], torch.Tensor]:
        """One forward over rows ``first .. first+len(batch)``; ``batch[b]`` lists the row's new queries as
        (plan query index or -1, slot, token, position). Returns the logits of the (row, column) in ``keep``."""
        width = max(1, max(len(queries) for queries in batch))
        rows = [self.rows.get(first + b) for b in range(len(batch))]
        for b, queries in enumerate(batch):
            if queries:
                self._room(first + b, len(queries))
        write = [[0] * width for _ in batch]
        tokens = [[0] * width for _ in batch]
        positions = [[0] * width for _ in batch]
        for b, queries in enumerate(batch):
            row = rows[b]
            for i, (_, slot, token, position) in enumerate(queries):
                assert row is not None
                write[b][i] = len(row.slots)
                row.slots.append(slot)
                row.tokens.append(token)
                row.positions.append(position)
                tokens[b][i], positions[b][i] = token, position
            self._count(len(queries))
        length = max(len(r.slots) if r is not None else 1 for r in rows)
        dev = self.device
        write_t = torch.tensor(write, dtype=torch.long, device=dev)
        pad = torch.tensor([[i >= len(q) for i in range(width)] for q in batch], device=dev)
        ar = torch.arange(length, device=dev)
        allowed = (ar <= write_t[..., None]) & ((ar >= 1) | pad[..., None])
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=dev)
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        columns = sorted({c for _, c in keep})
        self.cache.first, self.cache.write, self.cache.used = first, write_t, length
        with kernels_active(self.model), packed_attention():
            out = self.model(
                input_ids=torch.tensor(tokens, dtype=torch.long, device=dev),
                position_ids=torch.tensor(positions, dtype=torch.long, device=dev),
                attention_mask=mask[:, None],
                cache=self.cache,
                use_cache=True,
                logits_to_keep=torch.tensor(columns or [0], dtype=torch.long, device=dev),
            )
        self.cache.write = None
        self.forwards += 1
        return {(b, c): out.logits[b, columns.index(c)] for b, c in keep}

    def _run(self, groups: dict[int, list[tuple[int, int, int, int]]], wanted: set[int]) -> dict[int, torch.Tensor]:
        """One batched forward over all rows in use: ``groups`` maps a thread to its new queries."""
        if not groups:
            return {}
        span = max(self.rows) + 1
        batch: list[list[tuple[int, int, int, int]]] = [[] for _ in range(span)]
        keep: dict[int, tuple[int, int]] = {}
        for thread, queries in groups.items():
            b = self.row_of[thread]
            batch[b] = queries
            for i, (q, *_rest) in enumerate(queries):
                if q in wanted:
                    keep[q] = (b, i)
        logits = self._forward(0, batch, set(keep.values()))
        return {q: logits[at] for q, at in keep.items()}

    def _prefill(
        self, thread: int, queries: list[tuple[int, int, int, int]], wanted: set[int]
    ) -> dict[int, torch.Tensor]:
        """A forward over one row alone (a re-encoded context, perhaps with the row's own new queries)."""
        b = self.row_of[thread]
        keep = {q: (0, i) for i, (q, *_rest) in enumerate(queries) if q in wanted}
        logits = self._forward(b, [queries], set(keep.values()))
        return {q: logits[at] for q, at in keep.items()}

    def _reencode(
        self, src: int, dst: int, picks: list[int], own: list[tuple[int, int, int, int]], wanted: set[int]
    ) -> dict[int, torch.Tensor]:
        s = self.rows[src]
        context = [(-1, s.slots[i], s.tokens[i], s.positions[i]) for i in picks]
        dst_thread = next(t for t, r in self.row_of.items() if r == dst)
        return self._prefill(dst_thread, context + own, wanted)

    @torch.inference_mode()
    def step(self, plan: StepPlan, views: Views, sampler: Sampler) -> list[int]:
        """Run the plan; return the sampled token of each ``plan.sample`` query.  Which entries a fork or a
        join copies (or re-encodes) is what ``views`` says the receiving thread now sees and its row lacks."""
        wanted = set(plan.sample)
        logits: dict[int, torch.Tensor] = {}
        for parent, child in plan.joins:  # the parent's queries this step see the child's text
            src, dst = self.row_of[child], self.row_of[parent]
            seen, held = set(views.slots(parent)), set(self.rows[dst].slots)
            picks = [i for i, s in enumerate(self.rows[src].slots) if s in seen and s not in held]
            if self.fork == "copy":
                self._copy(src, dst, picks)
            else:
                logits.update(self._reencode(src, dst, picks, [], wanted))
            self._free(child)
        groups: dict[int, list[tuple[int, int, int, int]]] = {}
        for q, (thread, slot, token, position) in enumerate(
            zip(plan.threads, plan.slots, plan.tokens, plan.positions, strict=True)
        ):
            groups.setdefault(thread, []).append((q, slot, token, position))
        children = {child for _, child in plan.forks}
        for thread in groups:
            if thread not in self.row_of and thread not in children:
                self._new_row(thread)
        first = {t: g for t, g in groups.items() if t not in children}
        logits.update(self._run(first, wanted))
        for parent, child in plan.forks:
            src = self.rows[self.row_of[parent]]
            seen = set(views.slots(child))
            picks = [i for i, s in enumerate(src.slots) if s in seen]
            self._new_row(child)
            dst = self.row_of[child]
            if self.fork == "copy":
                self._copy(self.row_of[parent], dst, picks)
            else:
                logits.update(self._reencode(self.row_of[parent], dst, picks, groups.pop(child, []), wanted))
        rest = {t: g for t, g in groups.items() if t in children}
        logits.update(self._run(rest, wanted))
        if not plan.sample:
            return []
        chosen = torch.stack([logits[q] for q in plan.sample])
        if self.keep_logits:
            self.logits.append(chosen.float().cpu())
            self.plans.append((list(plan.slots), list(plan.threads), list(plan.sample)))
        return sampler(chosen, None, allowed_rows(plan.allowed, chosen.shape[-1], chosen.device, plan.banned)).tolist()
