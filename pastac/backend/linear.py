"""Tuned linear layers for decode steps: per weight shape and row count, the fastest kernel on this machine.

A decode step multiplies a handful of rows (one query per thread) by every
weight matrix of the model, so its cost is the library's small-``M`` matrix
product, and which call is fastest for that depends on the BLAS, the CPU and
the shapes.  With MKL on an AMD EPYC, for example, ``F.linear`` on 2 to 8 rows
can take twice as long as on one, while ``torch.mm(W, x.T)`` (the same product
with the weight as the left operand) does not, and MKL's packed weights read a
one-row product's vocabulary projection in half the time.  On an Intel Xeon with
MKL, 4 to 8 rows by a weight stored transposed (``x @ W.T`` with ``W.T``
contiguous) take a quarter less time than ``F.linear`` does.

``tune_linears(model)`` times the candidate kernels on the model's own weights
(all the layers of one shape in a row, so the weights stream from memory as in
a forward pass), keeps the fastest per (shape, row count), and installs a
dispatching ``forward`` on each ``nn.Linear`` that applies the choice only
while ``kernels_active(model)`` is entered (the runners enter it for their
forward passes); outside it, and for more rows than were tuned, a layer is
plain ``F.linear``.  The choices are cached on disk per machine, torch version,
thread count, dtype and shapes, so tuning runs once.

The kernels compute the same product in another summation order: results match
``F.linear`` to rounding (``check_kernels`` measures it).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pastac.machine import cpu_name

ROWS = (1, 2, 3, 4, 6, 8, 12, 16)  # row counts timed; a count in between takes the choice of the one below
ROUNDS = 7  # timed rounds per (shape, row count); the fastest of them counts

Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, w, b)


def _weight_left(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
    # Row-major rows in, transposed as a view: BLAS sees the tall-skinny product it was timed on (an input
    # left column-major by an earlier weight-left product would take another, several times slower path);
    # the result goes back to row-major so the layers after it see the layout F.linear gives.
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.mm(w, rows.T).T.contiguous()
    if b is not None:
        y = y + b
    return y.reshape(*x.shape[:-1], w.shape[0])


def _transposed(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
    # ``packed`` is the weight stored transposed, [in, out] row-major: the rows multiply it as the left operand
    assert packed is not None
    rows = x.reshape(-1, x.shape[-1])
    y = torch.mm(rows, packed) if b is None else torch.addmm(b, rows, packed)
    return y.reshape(*x.shape[:-1], packed.shape[1])


def _mkl_packed(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None) -> torch.Tensor:
    assert packed is not None
    return torch.ops.mkl._mkl_linear(x, packed, w, b, 1)


def _onednn_packed(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, packed: torch.Tensor | None
) -> torch.Tensor:
    assert packed is not None
    return torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")


KERNELS: dict[str, Kernel] = {
    "linear": _linear,
    "weight-left": _weight_left,
    "transposed": _transposed,
    "mkl-packed": _mkl_packed,
    "onednn-packed": _onednn_packed,
}
# The kernels that read a copy of the weight, made once: how to make it, and the row counts it serves
# (MKL's copy is packed for one row; oneDNN's and the transposed one take any).
PACKERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "transposed": lambda w: w.t().contiguous(),
    "mkl-packed": lambda w: torch.ops.mkl._mkl_reorder_linear_weight(w, 1),
    "onednn-packed": lambda w: torch.ops.mkldnn._reorder_linear_weight(w, 1),
}
ONE_ROW_ONLY = frozenset({"mkl-packed"})


def _packing(name: str, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether kernel ``name`` can pack weights of ``dtype`` on ``device`` here: this torch build has the
    library, and this CPU runs it (oneDNN's bfloat16 path needs AVX-512 or AVX-NE-CONVERT, which an AVX2-only
    CPU lacks: the library raises, and the kernel is left out rather than crash a run)."""
    if device.type != "cpu":
        return False
    if name == "transposed":
        return True
    if name == "mkl-packed":
        built = dtype == torch.float32 and torch.backends.mkl.is_available()
    elif name == "onednn-packed":
        built = dtype in (torch.float32, torch.bfloat16) and torch.backends.mkldnn.is_available()
    else:
        return False
    return built and _runs(name, dtype)


@functools.cache
def _runs(name: str, dtype: torch.dtype) -> bool:
    """Whether packing a small weight for kernel ``name`` and multiplying by it works on this CPU."""
    w = torch.ones((8, 8), dtype=dtype)
    try:
        with torch.inference_mode():
            KERNELS[name](torch.ones((1, 1, 8), dtype=dtype), w, None, PACKERS[name](w))
    except RuntimeError:
        return False
    return True


@dataclass
class _Group:
    """The linear layers of one weight shape, and the kernel chosen per tuned row count."""

    shape: tuple[int, int]
    bias: bool
    modules: list[torch.nn.Linear]
    choice: dict[int, str] = field(default_factory=dict)  # rows -> kernel name
    ms: dict[int, dict[str, float]] = field(default_factory=dict)  # rows -> kernel -> fastest ms over the group

    @property
    def key(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}{'+b' if self.bias else ''}x{len(self.modules)}"


class LinearKernels:
    """The tuned choices of one model; ``active()`` turns them on for the forward passes inside it."""

    def __init__(self, groups: list[_Group]) -> None:
        self.groups = groups
        self.tuned_s = 0.0  # seconds spent timing (0 when the choices came from the cache)
        self.cached = False
        self.on = False
        # (kernel, id(module)) -> that kernel's packed copy of the module's weight; id(module) -> the weight's
        # version when it was packed (a weight changed in place since is not read from a stale copy)
        self.packed: dict[tuple[str, int], torch.Tensor] = {}
        self.versions: dict[int, int] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Apply the tuned choices to the forward passes run inside; the previous state comes back on exit."""
        was, self.on = self.on, True
        try:
            yield
        finally:
            self.on = was

    def packed_bytes(self) -> int:
        """Bytes held by the packed copies of the weights."""
        return sum(t.nbytes for t in self.packed.values())

    def summary(self) -> dict[str, Any]:
        """The choices and timings per group and row count, packed MiB, tuning seconds, whether cached: the form
        the cache file holds."""
        return {
            "groups": {g.key: {str(r): g.choice[r] for r in sorted(g.choice)} for g in self.groups},
            "ms": {g.key: {str(r): g.ms[r] for r in sorted(g.ms)} for g in self.groups},
            "packed_mib": round(self.packed_bytes() / 2**20, 1),
            "tuned_s": round(self.tuned_s, 2),
            "cached": self.cached,
        }

    def _pack(self, group: _Group, name: str) -> None:
        for module in group.modules:
            if (name, id(module)) not in self.packed:
                self.packed[name, id(module)] = PACKERS[name](module.weight.detach())
                self.versions[id(module)] = module.weight._version

    def _unpack(self, group: _Group, name: str) -> None:
        for module in group.modules:
            self.packed.pop((name, id(module)), None)

    def _time(self, group: _Group, x: torch.Tensor, names: list[str], rounds: int) -> dict[str, float]:
        """Fastest ms of each kernel over all of ``group``'s layers in ``rounds`` rounds, the kernels taking
        turns; one warm-up round.  The minimum, not the median: what another process on the machine adds to a
        round is noise, never the kernel's own cost, and three medians of a busy machine chose badly."""
        times: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(rounds + 1):
            for name in names:
                kernel = KERNELS[name]
                start = time.perf_counter()
                for module in group.modules:
                    kernel(x, module.weight, module.bias, self.packed.get((name, id(module))))
                times[name].append((time.perf_counter() - start) * 1000)
        return {name: round(min(t[1:]), 3) for name, t in times.items()}

    def _install(self, group: _Group) -> None:
        table = [group.choice.get(max((r for r in ROWS if r <= n), default=1), "linear") for n in range(max(ROWS) + 1)]
        kernels = self
        for module in group.modules:

            def forward(x: torch.Tensor, module: torch.nn.Linear = module) -> torch.Tensor:
                rows = x.numel() // x.shape[-1] if x.dim() else 0
                if not kernels.on or rows >= len(table) or rows == 0:
                    return F.linear(x, module.weight, module.bias)
                name = table[rows]
                packed = None
                if name in PACKERS:
                    packed = kernels.packed.get((name, id(module)))
                    if (
                        packed is None
                        or (rows != 1 and name in ONE_ROW_ONLY)
                        or kernels.versions.get(id(module)) != module.weight._version
                    ):
                        name = "linear"  # not packed, or the weight changed since (the copy would be stale)
                return KERNELS[name](x, module.weight, module.bias, packed)

            module.forward = forward  # type: ignore[method-assign]


def _groups(model: torch.nn.Module) -> list[_Group]:
    found: dict[tuple[tuple[int, int], bool, torch.dtype, torch.device], _Group] = {}
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            w = module.weight
            key = ((w.shape[0], w.shape[1]), module.bias is not None, w.dtype, w.device)
            found.setdefault(key, _Group(key[0], key[1], [])).modules.append(module)
    return list(found.values())


def _cache_file(model: torch.nn.Module, groups: list[_Group], folder: Path | None) -> Path | None:
    if folder is None:
        return None
    param = next(model.parameters())
    key = json.dumps(
        [
            cpu_name(),
            torch.__version__,
            torch.get_num_threads(),
            str(param.dtype),
            str(param.device),
            [g.key for g in groups],
            list(ROWS),
            sorted(KERNELS),
            "min",
            ROUNDS,
        ]
    )
    return folder / f"linears-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def tune_linears(
    model: torch.nn.Module,
    *,
    rounds: int = ROUNDS,
    cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> LinearKernels:
    """Time each kernel per weight shape and row count on ``model``'s weights; install the fastest.

    ``cache`` is a folder for the choices (read when present, written after tuning).  On a GPU nothing is
    tuned: the layers stay plain ``F.linear`` (the kernels here are about CPU BLAS calls)."""
    existing = getattr(model, "pastac_linears", None)
    if isinstance(existing, LinearKernels):
        return existing
    groups = _groups(model)
    param = next(model.parameters())
    kernels = LinearKernels(groups)
    model.pastac_linears = kernels  # type: ignore[assignment]
    if param.device.type != "cpu":
        return kernels
    file = _cache_file(model, groups, cache)
    if file is not None and file.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(file.read_text())
            for group in groups:
                group.choice = {
                    int(r): str(k) if k in KERNELS else "linear" for r, k in saved["groups"][group.key].items()
                }
                group.ms = {int(r): v for r, v in saved["ms"][group.key].items()}
            kernels.cached = True
    if not kernels.cached:
        started = time.perf_counter()
        if progress:
            progress(f"tuning the linear layers' kernels for {len(ROWS)} row counts (once per machine)")
        generator = torch.Generator(device=param.device).manual_seed(0)
        with torch.inference_mode():
            packers = [name for name in PACKERS if _packing(name, param.dtype, param.device)]
            for group in groups:
                for name in packers:
                    kernels._pack(group, name)
                for rows in ROWS:
                    x = torch.randn(
                        (1, rows, group.shape[1]), generator=generator, dtype=param.dtype, device=param.device
                    )
                    names = ["linear", "weight-left"] + [n for n in packers if rows == 1 or n not in ONE_ROW_ONLY]
                    group.ms[rows] = kernels._time(group, x, names, rounds)
                    group.choice[rows] = min(group.ms[rows], key=group.ms[rows].__getitem__)
                for name in packers:
                    if name not in group.choice.values():
                        kernels._unpack(group, name)  # keep only the copies that a choice reads
        kernels.tuned_s = time.perf_counter() - started
        if file is not None:
            with contextlib.suppress(OSError):
                file.parent.mkdir(parents=True, exist_ok=True)
                tmp = file.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(kernels.summary(), indent=1))
                tmp.replace(file)
    else:
        for group in groups:
            for name in PACKERS:
                if name in group.choice.values():
                    if _packing(name, param.dtype, param.device):
                        kernels._pack(group, name)
                    else:
                        group.choice = {r: "linear" if k == name else k for r, k in group.choice.items()}
    for group in groups:
        kernels._install(group)
    return kernels


def kernels_active(model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
    """Enter to run ``model``'s forward passes with its tuned kernels (a no-op for an untuned model)."""
    kernels = getattr(model, "pastac_linears", None)
    return kernels.active() if isinstance(kernels, LinearKernels) else contextlib.nullcontext()


def check_kernels(model: torch.nn.Module, rows: int = 3, seed: int = 0) -> float:
    """The largest difference, over the model's linear layers, between the tuned kernel and ``F.linear``."""
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    with torch.inference_mode():
        for module in model.modules():
            if type(module) is torch.nn.Linear:
                w = module.weight
                x = torch.randn((1, rows, w.shape[1]), generator=generator).to(w.device, w.dtype)
                with kernels_active(model):
                    tuned = module(x)
                worst = max(worst, (tuned.float() - F.linear(x, w, module.bias).float()).abs().max().item())
    return worst
