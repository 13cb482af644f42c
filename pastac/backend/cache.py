"""The interleaved KV cache: one preallocated buffer per layer, written by slot index.

Every token of every thread takes the next free *slot*; a thread's tokens are
therefore interleaved with the other threads' in slot order, and a thread reads
the slots it may see through the attention mask, never through a copy.  The
shared prefix is written once.  Each step the runner sets ``write_slots`` (where
the step's new keys and values go) and ``used`` (how many slots attention reads:
the high-water mark after the step); every layer's ``update`` writes with
``index_copy_`` and returns views of the first ``used`` slots, so a step
allocates nothing and copies nothing but its own new keys and values.

The buffers are allocated on the first write, at full capacity, when the
layer's head count, head size, dtype and device are known.  ``reserve`` grows
them (one copy) if a run needs more slots than planned; ``growths`` counts
those copies.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class PreallocatedLayer(CacheLayerMixin):
    """A layer of a cache that preallocates ``capacity`` entries and attends over its first ``used``."""

    def __init__(self, cache: Any) -> None:  # a cache with ``used`` and ``capacity``
        super().__init__()
        self._cache = cache

    def get_mask_sizes(self, query_length: int, *args: object) -> tuple[int, int]:
        """Return ``(used, 0)``: the mask spans the first ``used`` slots, this step's included."""
        return self._cache.used, 0

    def get_seq_length(self) -> int:
        """Return the cache's ``used``: the slots attention reads, not one thread's length."""
        return self._cache.used

    def get_max_length(self) -> int:
        """Return the cache's current ``capacity`` in slots."""
        return self._cache.capacity

    def nbytes(self) -> int:
        """Bytes held by this layer's key and value buffers; 0 before the first write."""
        if not self.is_initialized:
            return 0
        assert self.keys is not None and self.values is not None
        return self.keys.nbytes + self.values.nbytes


class SlotLayer(PreallocatedLayer):
    """One layer's keys and values, ``[1, kv_heads, capacity, head_dim]``."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Allocate zeroed buffers at full capacity, taking heads, head size, dtype and device from the states.

        Raises ``ValueError`` unless the batch is one packed row.
        """
        batch, heads = key_states.shape[:2]
        if batch != 1:
            raise ValueError(f"the slot cache holds one packed row, not a batch of {batch}")
        capacity = self._cache.capacity
        self.keys = key_states.new_zeros((1, heads, capacity, key_states.shape[-1]))
        self.values = value_states.new_zeros((1, heads, capacity, value_states.shape[-1]))
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the step's keys and values at ``write_slots`` and return views of the first ``used`` slots.

        Allocates on the first call; raises ``RuntimeError`` if ``write_slots`` is unset.
        """
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        slots = self._cache.write_slots
        if slots is None:
            raise RuntimeError("SlotCache.write_slots must be set before a forward pass")
        assert self.keys is not None and self.values is not None
        self.keys.index_copy_(2, slots, key_states)
        self.values.index_copy_(2, slots, value_states)
        used = self._cache.used
        return self.keys[:, :, :used], self.values[:, :, :used]

    def grow(self, capacity: int) -> None:
        """Copy the buffers into new ones of ``capacity`` slots; a no-op before the first write."""
        if not self.is_initialized:
            return
        assert self.keys is not None and self.values is not None
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:2], capacity, old.shape[-1]))
            new[:, :, : old.shape[2]] = old
            setattr(self, name, new)


class SlotCache(Cache):
    """A ``transformers`` cache whose layers write at the slots the runner names."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        self.capacity = capacity
        self.write_slots: torch.Tensor | None = None
        self.used = 0
        self.growths = 0
        super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])

    def reserve(self, slots: int) -> None:
        """Make room for ``slots`` slots in all (growing by at least half, one copy)."""
        if slots <= self.capacity:
            return
        self.capacity = max(slots, self.capacity + self.capacity // 2)
        for layer in self.layers:
            assert isinstance(layer, SlotLayer)
            layer.grow(self.capacity)
        self.growths += 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Return ``used``, the same for every layer."""
        return self.used

    def nbytes(self) -> int:
        """Bytes held by the keys and values of all layers (the whole preallocation)."""
        return sum(layer.nbytes() for layer in self.layers if isinstance(layer, SlotLayer))

    def used_bytes(self) -> int:
        """Bytes of the slots written so far: what the run's keys and values need."""
        total = self.nbytes()
        return total * self.used // self.capacity if self.capacity else 0

    def peak_bytes(self) -> int:
        """The most bytes of keys and values held at once: the slots used (they are never freed)."""
        return self.used_bytes()


class SlotPool:
    """The slots of one ``SlotCache`` shared by many runs, handed out in pages of ``page_size`` slots.

    A run takes pages as it places tokens and gives them all back when it ends; the lowest free pages go
    first, so the slots attention reads (``high_water``) stay as few as the runs need.  Nothing is copied: a
    run's slots are wherever its pages are, and its ``PagedSlots`` maps them.
    """

    def __init__(self, capacity: int, page_size: int = 16) -> None:
        if page_size < 1 or capacity < page_size:
            raise ValueError(f"a pool of {capacity} slots cannot hold a page of {page_size}")
        self.page_size = page_size
        self.pages = capacity // page_size
        self.capacity = self.pages * page_size
        self._free = list(range(self.pages))  # a heap: the lowest page first
        self._taken: set[int] = set()

    @property
    def free_pages(self) -> int:
        """Pages no run holds."""
        return len(self._free)

    @property
    def used_slots(self) -> int:
        """Slots in the pages the runs hold."""
        return len(self._taken) * self.page_size

    @property
    def high_water(self) -> int:
        """One past the last slot of the highest page held: the slots a step's attention must span."""
        return (max(self._taken) + 1) * self.page_size if self._taken else 0

    def pages_for(self, slots: int) -> int:
        """Pages that hold ``slots`` slots."""
        return -(-slots // self.page_size)

    def take(self, count: int) -> list[int] | None:
        """``count`` free pages, lowest first; None (and nothing taken) when fewer are free."""
        if count > len(self._free):
            return None
        pages = [heapq.heappop(self._free) for _ in range(count)]
        self._taken.update(pages)
        return pages

    def give(self, pages: list[int]) -> None:
        """Return ``pages`` to the pool."""
        for page in pages:
            self._taken.discard(page)
            heapq.heappush(self._free, page)


class PagedSlots:
    """One run's slots in a ``SlotPool``: its slot ``s`` lies in cache slot ``page[s // size] * size + s % size``.

    It is the run's ``SlotMap`` for the runner, and stands for the run's cache in its figures."""

    def __init__(self, pool: SlotPool, cache: SlotCache, device: torch.device) -> None:
        self.pool = pool
        self.cache = cache
        self.pages: list[int] = []
        self.used = 0  # the run's slots placed so far
        self.growths = 0
        self._index = torch.zeros(0, dtype=torch.long, device=device)
        self._device = device

    def ensure(self, slots: int) -> bool:
        """Hold pages for the run's slots ``0 .. slots - 1``; False (nothing taken) when the pool lacks them."""
        size = self.pool.page_size
        more = self.pool.pages_for(slots) - len(self.pages)
        if more > 0:
            pages = self.pool.take(more)
            if pages is None:
                return False
            self.pages.extend(pages)
            fresh = torch.tensor(pages, dtype=torch.long)[:, None] * size + torch.arange(size)[None, :]
            self._index = torch.cat([self._index, fresh.flatten().to(self._device)])
        return True

    def place(self, slots: int) -> None:
        """The run has placed its slots ``0 .. slots - 1`` (pages held for them)."""
        self.used = max(self.used, slots)

    def release(self) -> None:
        """Give every page back (the run has ended or was cancelled)."""
        self.pool.give(self.pages)
        self.pages = []

    def cache_slots(self, slots: Sequence[int]) -> list[int]:
        """The cache slots of the run's ``slots`` (held pages only)."""
        size, pages = self.pool.page_size, self.pages
        return [pages[s // size] * size + s % size for s in slots]

    def index(self, used: int) -> torch.Tensor:
        """The cache slots of the run's slots ``0 .. used - 1``, as a long tensor."""
        return self._index[:used]

    # the run's share of the cache, for its figures (``Stats``)
    def _slot_bytes(self) -> int:
        return self.cache.nbytes() // self.cache.capacity if self.cache.capacity else 0

    def nbytes(self) -> int:
        """Bytes of keys and values in the pages the run holds."""
        return len(self.pages) * self.pool.page_size * self._slot_bytes()

    def used_bytes(self) -> int:
        """Bytes of keys and values of the slots the run placed."""
        return self.used * self._slot_bytes()

    def peak_bytes(self) -> int:
        """The run's slots are held until it ends: its peak is what it placed."""
        return self.used_bytes()
