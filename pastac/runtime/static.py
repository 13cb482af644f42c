"""The static decode step: the same forward at a few fixed widths, over buffers that never move.

A decode step of a small model on a GPU costs more in kernel launches and
Python than in arithmetic.  The static step makes every decode step look the
same to the device, so that each width can be recorded once as a CUDA graph
and replayed:

- the step's queries are padded to the next *bucket* width (1, 2, 4, ..., 64);
  a padding query writes its key and value into the cache's last slot, the
  *scratch* slot, and reads only that slot (through a bitset row of its own),
  so it changes nothing any thread sees;
- tokens, positions, slots and threads go into persistent device buffers
  (copies without waiting for the device), and so does the visibility bitset
  (``pastac.backend.visibility``), copied in whole words each step;
- attention reads the whole cache (every slot up to its capacity): the
  branched kernels skip the blocks no query sees, so slots not written yet
  cost a few bitset words, and the shapes stay the same from step to step;
- the logits of every query of the bucket come out; the runner picks the
  sampled ones, and the sampled tokens are the only copy back to the host.

On CUDA each bucket's forward is captured once (after two warm-up runs that
compute the step's real values, so capturing loses no step) and replayed from
then on; the graphs are dropped when the cache or the bitset's buffer has to
grow.  On the CPU the same padded forward runs eagerly: it is how the tests
check that padding changes no logit.  Steps wider than the widest bucket (a
prompt) go through the eager step, and so does a step that reaches the scratch slot.  Requests packed
together by the batch engine take the static step like one run: their bitset has a row per query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pastac.backend import DECODE_STEPS
from pastac.backend.attention import BackendError, BranchedStep, branched_step
from pastac.backend.cache import SlotCache
from pastac.backend.linear import kernels_active

BUCKETS = (1, 2, 4, 8, 16, 32, 64)  # the widths a static step is padded to
ROUND = 1024  # a static runner's capacity is a multiple of this, so that later runs can reuse it (and its graphs)


def resolve_decode_step(name: str, attention: str, device: torch.device | str) -> str:
    """The decode step that runs for ``name`` (one of ``DECODE_STEPS``) with the resolved ``attention`` on
    ``device``: ``auto`` is ``static`` on CUDA with a branched attention, else ``eager``.  Raises
    ``BackendError`` for an unknown name or a static step under sdpa."""
    if name not in DECODE_STEPS:
        raise BackendError(f"decode step must be one of {', '.join(DECODE_STEPS)}, not {name!r}")
    if name == "auto":
        return "static" if torch.device(device).type == "cuda" and attention != "sdpa" else "eager"
    if name == "static" and attention == "sdpa":
        raise BackendError("--decode-step static reads the visibility bitset: use --attention triton or flex")
    return name


def bucket(width: int) -> int | None:
    """The narrowest bucket that holds ``width`` queries; None when none does."""
    return next((b for b in BUCKETS if b >= width), None)


@dataclass
class _Graph:
    """One bucket's captured forward and the output tensor its replays refill."""

    graph: Any  # torch.cuda.CUDAGraph
    logits: torch.Tensor


class StaticStep:
    """Persistent buffers of one runner's decode steps, and on CUDA a captured graph per bucket (see the module's
    docstring).  ``capture=False`` runs the padded forward eagerly (the CPU, or a GPU for comparison)."""

    def __init__(self, model: torch.nn.Module, cache: SlotCache, backend: str, *, capture: bool) -> None:
        param = next(model.parameters())
        self.model, self.cache, self.backend = model, cache, backend
        self.device, self.dtype = param.device, param.dtype
        self.capture = capture and self.device.type == "cuda"
        width = BUCKETS[-1]
        self.ids = torch.zeros(width, dtype=torch.long, device=self.device)
        self.positions = torch.zeros(width, dtype=torch.long, device=self.device)
        self.slots = torch.zeros(width, dtype=torch.long, device=self.device)
        self.threads = torch.zeros(width, dtype=torch.long, device=self.device)
        self.placeholder = torch.empty((1, 1, width, 0), dtype=self.dtype, device=self.device)
        self.bits = torch.zeros((0, 0), dtype=torch.int32, device=self.device)
        self.graphs: dict[int, _Graph] = {}
        self.captures = 0  # graphs recorded (each bucket once, again after the cache grows)
        self.replays = 0
        self._shape: tuple[int, int, int] | None = None  # (cache capacity, bits rows, bits words) the graphs saw

    @property
    def scratch(self) -> int:
        """The cache slot that padding queries write and read: the last one."""
        return self.cache.capacity - 1

    def fits(self, width: int, highest_slot: int) -> bool:
        """Whether a step of ``width`` queries whose highest slot is ``highest_slot`` can run here (else the
        eager step runs it)."""
        return bucket(width) is not None and highest_slot < self.scratch

    def _prepare(self, bits: torch.Tensor) -> None:
        """Size the bitset buffer for ``bits`` and the cache (its last row: the scratch slot's); drop the graphs
        when a buffer they read had to move."""
        words = (self.cache.capacity + 31) // 32
        rows = bits.shape[0] + 1
        if self.bits.shape[0] < rows or self.bits.shape[1] != words:
            self.bits = torch.zeros((max(rows, 2 * self.bits.shape[0]), words), dtype=torch.int32, device=self.device)
        shape = (self.cache.capacity, *self.bits.shape)
        if shape != self._shape:
            self.graphs.clear()
            self._shape = shape
        self.bits.zero_()
        self.bits[: bits.shape[0], : min(bits.shape[1], words)] = bits[:, :words]
        scratch, last = divmod(self.scratch, 32)
        self.bits[-1, scratch] = 1 << last if last < 31 else -(1 << 31)

    def forward(
        self, ids: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, threads: torch.Tensor, bits: torch.Tensor
    ) -> torch.Tensor:
        """The logits ``[T, vocab]`` of a step of ``T`` queries (``ids``, ``positions``, ``slots``, ``threads``,
        long tensors on the device) whose visibility is the bitset ``bits`` ``[rows, words]``."""
        width = ids.shape[0]
        size = bucket(width)
        assert size is not None  # the caller asked fits()
        self._prepare(bits)
        self.ids[:width], self.positions[:width] = ids, positions
        self.slots[:width], self.threads[:width] = slots, threads
        self.ids[width:size] = 0
        self.positions[width:size] = 0
        self.slots[width:size] = self.scratch
        self.threads[width:size] = self.bits.shape[0] - 1
        if not self.capture:
            return self._run(size)[:width]
        graph = self.graphs.get(size)
        if graph is None:
            graph = self._record(size)
        else:
            graph.graph.replay()
            self.replays += 1
        return graph.logits[:width]

    def _run(self, size: int) -> torch.Tensor:
        """One padded forward of bucket ``size`` over the buffers; its logits ``[size, vocab]``."""
        cache, used = self.cache, self.cache.used
        cache.write_slots = self.slots[:size]
        cache.used = cache.capacity  # attention reads the whole cache; the bitset says what each query sees
        step = BranchedStep(self.bits, self.threads[:size], self.slots[:size], self.backend)
        try:
            with kernels_active(self.model), branched_step(step):
                out = self.model(
                    input_ids=self.ids[None, :size],
                    position_ids=self.positions[None, :size],
                    attention_mask=self.placeholder[:, :, :size],
                    cache=cache,
                    use_cache=True,
                )
        finally:
            cache.write_slots, cache.used = None, used
        return out.logits[0]

    def _record(self, size: int) -> _Graph:
        """Warm bucket ``size`` up on a side stream, capture its forward, replay it once (this step's logits)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # the same writes as the step itself: warming up changes nothing
                self._run(size)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._run(size)
        graph.replay()
        self.captures += 1
        self.graphs[size] = _Graph(graph, logits)
        return self.graphs[size]
