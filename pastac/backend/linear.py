"""Tuned linear layers for decode steps: per weight shape and row count, the fastest kernel on this machine.

A decode step multiplies a handful of rows (one query per thread) by every
weight matrix of the model, so its cost is the library's small-``M`` matrix
product, and which call is fastest for that depends on the BLAS, the CPU, the
dtype and the shapes.  With MKL on an AMD EPYC, for example, ``F.linear`` on 2 to
8 rows can take twice as long as on one, while ``torch.mm(W, x.T)`` (the same
product with the weight as the left operand) does not, and MKL's packed weights
read a one-row product's vocabulary projection in half the time.  On an Intel
Xeon with MKL, 4 to 8 rows by a weight stored transposed (``x @ W.T`` with
``W.T`` contiguous) take a quarter less time than ``F.linear`` does.

``tune_linears(model)`` first probes every candidate kernel in the model's dtype
on this CPU (``probe``: it packs and multiplies a small weight and must agree
with ``F.linear``; a kernel the CPU cannot run, such as oneDNN's bfloat16 path
without AVX-512 or AVX-NE-CONVERT, raises there and is left out), then races the
ones that run on the model's own weights (a turn multiplies by a chunk of the
layers of one shape, the turns cycling over a few chunks so that the weights come
from memory as in a forward pass, not from where the previous turn left them in
the cache; a kernel clearly slower than the fastest is dropped after a round, and
one far slower and costly is not raced at the shape's larger row counts),
keeps the fastest per (shape, row count), and installs a dispatching ``forward`` on each ``nn.Linear`` that applies
the choice only while ``kernels_active(model)`` is entered (the runners enter it
for their forward passes); outside it, and for more rows than were tuned, a
layer is plain ``F.linear``.  The choices are cached on disk per CPU (model name,
instruction-set flags, torch's dispatch level), torch version, dtype and shapes,
so tuning runs once.

``dtype_refusal`` says before a model is loaded whether a dtype is unusable here:
no kernel multiplies it on this CPU.  How much slower than float32 it is, tuning
measures and says (``slowdown``), without refusing it.

The kernels compute the same product in another summation order: results match
``F.linear`` to rounding (``check_kernels`` measures it).

Invariants: no kernel is offered that failed its probe on this CPU and dtype, and
none that raised while it was timed; what was probed is remembered for the
process (``probe`` and ``slowdown`` are cached), what was chosen on disk.

Longer than most modules (about 600 lines), on purpose: the kernels, their probe, the race, the cache and the
dispatching ``forward`` together own one invariant, which kernel a layer runs for a row count, and split
apart they would share private state.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pastac.machine import cpu_capability, cpu_flags, cpu_name
from pastac.output import OutputError, make_folder, write_text

ROWS = (1, 2, 4, 8, 16)  # row counts timed; a count in between takes the choice of the one below
ROUNDS = 3  # timed rounds per (shape, row count) after a warm-up; the fastest of them counts

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

_PROBE_SHAPE = (24, 40)  # a weight no vector width divides: the probe meets the kernels' remainder paths too
_SPEED_SHAPE = (1024, 1024)  # the weight ``slowdown`` times each dtype's products on


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


@functools.cache
def probe(name: str, dtype: torch.dtype) -> str | None:
    """None when kernel ``name`` multiplies ``dtype`` matrices on this CPU: it packs a small weight (where it
    reads a packed copy), runs with and without bias, and agrees with ``F.linear`` in float32.  Otherwise why
    not, as the library said it (oneDNN's bfloat16 path raises on an AVX2-only CPU, MKL's packing on anything
    but float32, a build without MKL has no such operator).  Remembered for the process."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(_PROBE_SHAPE, generator=g).to(dtype)
    b = torch.randn(_PROBE_SHAPE[0], generator=g).to(dtype)
    tolerance = 1e-4 if dtype == torch.float32 else 4e-2
    try:
        with torch.inference_mode():
            packed = PACKERS[name](w) if name in PACKERS else None
            for rows in (1,) if name in ONE_ROW_ONLY else (1, 3):
                x = torch.randn((1, rows, _PROBE_SHAPE[1]), generator=g).to(dtype)
                for bias in (None, b):
                    got = KERNELS[name](x, w, bias, packed).float()
                    want = F.linear(x.float(), w.float(), None if bias is None else bias.float())
                    if got.shape != want.shape or (got - want).abs().max() > tolerance * (1 + want.abs().max()):
                        return f"{name} does not compute the linear product in {_dtype_name(dtype)} here"
    except (RuntimeError, AttributeError) as error:  # AttributeError: an operator this torch build lacks
        return _first_line(error)
    return None


def candidates(dtype: torch.dtype, device: torch.device) -> tuple[str, ...]:
    """The kernels that run ``dtype`` products on ``device`` here (probed); on a GPU only ``F.linear``."""
    if device.type != "cpu":
        return ("linear",)
    return tuple(name for name in KERNELS if probe(name, dtype) is None)


def _race(
    run: Callable[[str], None],
    names: list[str],
    tuning: Tuning,
    failed: dict[str, str],
    deadline: float | None = None,
) -> dict[str, float]:
    """The fastest ms of ``run(name)`` for each name over ``tuning.rounds`` rounds after a warm-up, the names
    taking turns.  After the warm-up a name slower than ``warm_drop`` times the fastest, and after each timed
    round one slower than ``drop`` times the fastest so far, races no more (its best so far is kept): the
    minimum, not the median, because what another process adds to a round is noise, never the kernel's own
    cost, so a kernel that is that much slower at its best is not the fastest.  A name whose run raises
    ``RuntimeError`` is left out and its error recorded in ``failed``.  Past ``deadline`` (a
    ``time.perf_counter()`` value) no further round starts: the times so far count (the warm-up's, if it is
    the only round run)."""
    warm: dict[str, float] = {}
    best: dict[str, float] = {}
    racing = [name for name in names if name not in failed]
    for round_no in range(tuning.rounds + 1):
        times: dict[str, float] = {}
        for name in racing:
            start = time.perf_counter()
            try:
                run(name)
            except RuntimeError as error:
                failed[name] = _first_line(error)
                continue
            times[name] = (time.perf_counter() - start) * 1000
        racing = [name for name in racing if name in times]
        if not times:
            break
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if round_no == 0:
            warm = times  # a name dropped now keeps its warm-up time: how far behind it was
            racing = [name for name in racing if times[name] <= tuning.warm_drop * min(times.values())]
            if out_of_time:
                break
            continue
        for name, ms in times.items():
            best[name] = min(best.get(name, ms), ms)
        fastest = min(best[name] for name in racing)
        racing = [name for name in racing if best[name] <= tuning.drop * fastest]
        if out_of_time:
            break
    return {name: round(ms, 3) for name, ms in (warm | best).items() if name not in failed}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@functools.cache
def slowdown(dtype: torch.dtype) -> float | None:
    """How many times longer a product takes in ``dtype`` than in float32 on this CPU, each with the fastest
    kernel that runs it (a 1024×1024 weight, one row and four; the larger ratio).  None when no kernel runs
    ``dtype`` here.  Remembered for the process."""
    if dtype == torch.float32:
        return 1.0
    tuning = Tuning(rounds=3)
    fastest: dict[tuple[torch.dtype, int], float] = {}
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for kind in (dtype, torch.float32):
            names = list(candidates(kind, torch.device("cpu")))
            if not names:
                return None
            w = torch.randn(_SPEED_SHAPE, generator=g).to(kind)
            packed = {name: PACKERS[name](w) for name in names if name in PACKERS}
            for rows in (1, 4):
                x = torch.randn((1, rows, _SPEED_SHAPE[1]), generator=g).to(kind)
                usable = [name for name in names if rows == 1 or name not in ONE_ROW_ONLY]

                def run(name: str, x: torch.Tensor = x, w: torch.Tensor = w, packed: dict = packed) -> None:
                    for _ in range(4):
                        KERNELS[name](x, w, None, packed.get(name))

                times = _race(run, usable, tuning, {})
                if not times:
                    return None
                fastest[kind, rows] = min(times.values())
    return max(fastest[dtype, rows] / fastest[torch.float32, rows] for rows in (1, 4))


def dtype_refusal(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why a model in ``dtype`` cannot decode on ``device`` here, or None: no kernel multiplies ``dtype``
    matrices on this CPU (``probe``).  float32 and GPUs are never refused; the probes take milliseconds, once.

    Speed is not a reason: how much slower than float32 a dtype is depends on the load of the machine as much
    as on its instructions (on a busy AVX2-only EPYC, 5x with one thread and 50x with two), and a verdict
    must not change from one run to the next; tuning says how much slower it measured (``slowdown``)."""
    if device.type != "cpu" or dtype == torch.float32:
        return None
    if candidates(dtype, device):
        return None
    why = probe("linear", dtype) or "no kernel runs"
    machine = f"{cpu_name()}, {cpu_capability()}"
    name = _dtype_name(dtype)
    return f"this CPU ({machine}) cannot multiply {name} matrices with torch {torch.__version__} ({why}); use float32"


@dataclass(frozen=True)
class Tuning:
    """How the kernels are raced.

    ``rows``: the row counts timed.  ``rounds``: timed rounds after one warm-up, the kernels taking turns.
    ``drop``, ``warm_drop``: how much slower than the fastest a kernel may be and race on (after a timed
    round, after the warm-up).  ``chunk_bytes``, ``chunks``: a turn multiplies by one chunk of a shape's
    layers (as many as hold ``chunk_bytes`` of weights), the turns cycling over up to ``chunks`` chunks, so
    that a turn reads weights the turns before it did not, from memory as a forward pass does, rather than
    from the cache where the previous kernel left them; a shape with fewer layers is one chunk.
    ``far``, ``costly_ms``: a kernel whose turn took more than ``far`` times the fastest's and more than
    ``costly_ms`` at one row count is not raced at the shape's larger row counts, where it would only take
    longer (float16 by a transposed weight on an AVX2 CPU: a second a turn at one row, fifteen at sixteen).
    ``budget_s``: the time the races of a model share, evenly; a race past its share starts no more rounds
    (each still has its warm-up), so tuning takes about this long on a busy machine too, with fewer rounds."""

    rows: tuple[int, ...] = ROWS
    rounds: int = ROUNDS
    drop: float = 1.5
    warm_drop: float = 3.0
    chunk_bytes: int = 16 * 2**20
    chunks: int = 4
    far: float = 8.0
    costly_ms: float = 50.0
    budget_s: float = 20.0

    def key(self) -> list[object]:
        """What of the tuning the cache file depends on."""
        return [
            list(self.rows),
            self.rounds,
            self.drop,
            self.warm_drop,
            self.chunk_bytes,
            self.chunks,
            self.far,
            self.costly_ms,
            "min",
        ]


@dataclass
class _Group:
    """The linear layers of one weight shape, and the kernel chosen per tuned row count."""

    shape: tuple[int, int]
    bias: bool
    modules: list[torch.nn.Linear]
    choice: dict[int, str] = field(default_factory=dict)  # rows -> kernel name
    ms: dict[int, dict[str, float]] = field(default_factory=dict)  # rows -> kernel -> fastest ms of a turn (a chunk)

    @property
    def key(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]}{'+b' if self.bias else ''}x{len(self.modules)}"

    def chunks(self, tuning: Tuning) -> list[list[torch.nn.Linear]]:
        """The chunks of layers a race's turns cycle over (see ``Tuning``)."""
        each = max(1, -(-tuning.chunk_bytes // self.modules[0].weight.nbytes))
        if len(self.modules) < 2 * each:
            return [self.modules]
        return [self.modules[i : i + each] for i in range(0, len(self.modules) - each + 1, each)][: tuning.chunks]


class LinearKernels:
    """The tuned choices of one model; ``active()`` turns them on for the forward passes inside it."""

    def __init__(self, groups: list[_Group]) -> None:
        self.groups = groups
        self.tuned_s = 0.0  # seconds spent probing and timing (0 when the choices came from the cache)
        self.cached = False
        self.on = False
        self.skipped: dict[str, str] = {}  # kernel -> why it is not offered here (its probe or its race failed)
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
        """The choices and timings per group and row count, the kernels skipped and why, packed MiB, tuning
        seconds, whether cached: the form the cache file holds."""
        return {
            "groups": {g.key: {str(r): g.choice[r] for r in sorted(g.choice)} for g in self.groups},
            "ms": {g.key: {str(r): g.ms[r] for r in sorted(g.ms)} for g in self.groups},
            "skipped": dict(sorted(self.skipped.items())),
            "packed_mib": round(self.packed_bytes() / 2**20, 1),
            "tuned_s": round(self.tuned_s, 2),
            "cached": self.cached,
        }

    def _pack(self, group: _Group, name: str, modules: list[torch.nn.Linear] | None = None) -> None:
        for module in group.modules if modules is None else modules:
            if (name, id(module)) not in self.packed:
                self.packed[name, id(module)] = PACKERS[name](module.weight.detach())
                self.versions[id(module)] = module.weight._version

    def _unpack(self, group: _Group, name: str) -> None:
        for module in group.modules:
            self.packed.pop((name, id(module)), None)

    def _tune(
        self,
        group: _Group,
        names: list[str],
        tuning: Tuning,
        generator: torch.Generator,
        until: Callable[[int], float | None] = lambda races: None,
    ) -> None:
        """Race ``names`` on ``group``'s layers for each row count; keep the fastest, and the packed copies it
        reads.  ``until(n)`` is the deadline of the next race when ``n`` races of the model are left."""
        chunks = group.chunks(tuning)
        timed = [module for chunk in chunks for module in chunk]
        for name in [n for n in names if n in PACKERS]:
            try:
                self._pack(group, name, timed)
            except RuntimeError as error:  # packing this shape failed, though the probe's packed
                self.skipped[name] = _first_line(error)
                self._unpack(group, name)
        turns = itertools.count()
        far_behind: set[str] = set()  # too slow and too costly on this shape to race at more rows
        for rows in tuning.rows:
            x = torch.randn((1, rows, group.shape[1]), generator=generator).to(timed[0].weight.dtype)
            usable = [
                n
                for n in names
                if n not in self.skipped and n not in far_behind and (rows == 1 or n not in ONE_ROW_ONLY)
            ]

            def run(name: str, x: torch.Tensor = x) -> None:
                kernel = KERNELS[name]
                for module in chunks[next(turns) % len(chunks)]:
                    kernel(x, module.weight, module.bias, self.packed.get((name, id(module))))

            left = len(tuning.rows) - tuning.rows.index(rows)
            group.ms[rows] = _race(run, usable, tuning, self.skipped, until(left))
            group.choice[rows] = min(group.ms[rows], key=group.ms[rows].__getitem__, default="linear")
            if group.ms[rows]:
                fastest = min(group.ms[rows].values())
                far_behind |= {
                    n for n, ms in group.ms[rows].items() if ms > tuning.far * fastest and ms > tuning.costly_ms
                }
        for name in PACKERS:
            if name in group.choice.values():
                self._pack(group, name)  # all the layers now, not only the timed ones
            else:
                self._unpack(group, name)  # keep only the copies that a choice reads

    def _install(self, group: _Group) -> None:
        tuned = sorted(group.choice) or [1]
        table = [
            group.choice.get(max((r for r in tuned if r <= n), default=1), "linear") for n in range(max(tuned) + 1)
        ]
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


def cache_key(param: torch.Tensor, groups: list[_Group], tuning: Tuning) -> dict[str, Any]:
    """What the choices depend on: the CPU (its name, instruction-set flags and torch's dispatch level), the
    torch version, the dtype and device, the shapes, and how they were raced.  Not the thread count: on the
    machines measured it did not change the choices (docs/kernels.md)."""
    flags = hashlib.sha256(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:16]
    return {
        "cpu": cpu_name(),
        "cpu_flags": flags,
        "cpu_capability": cpu_capability(),
        "torch": torch.__version__,
        "dtype": _dtype_name(param.dtype),
        "device": str(param.device),
        "shapes": [g.key for g in groups],
        "kernels": sorted(KERNELS),
        "tuning": tuning.key(),
    }


def _cache_file(key: dict[str, Any], folder: Path | None) -> Path | None:
    if folder is None:
        return None
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"linears-{digest}.json"


def _read_cache(file: Path, groups: list[_Group]) -> bool:
    """Set each group's choices from the cache file; False (groups untouched) when it cannot be read."""
    try:
        saved = json.loads(file.read_text())
        choices = [{int(r): str(k) for r, k in saved["groups"][g.key].items()} for g in groups]
        ms = [{int(r): dict(v) for r, v in saved["ms"][g.key].items()} for g in groups]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False
    for group, choice, times in zip(groups, choices, ms, strict=True):
        group.choice = {r: k if k in KERNELS else "linear" for r, k in choice.items()}
        group.ms = times
    return True


def _write_cache(file: Path, kernels: LinearKernels, key: dict[str, Any]) -> None:
    with contextlib.suppress(OutputError):  # an unwritable cache costs a tuning next time, nothing else
        make_folder(file.parent)
        write_text(file, json.dumps(kernels.summary() | {"key": key}, indent=1))


def _rows_text(group: _Group) -> str:
    return " ".join(f"{r}:{group.choice[r]}" for r in sorted(group.choice))


def tune_linears(
    model: torch.nn.Module,
    *,
    tuning: Tuning | None = None,
    cache: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> LinearKernels:
    """Race the kernels that run here per weight shape and row count on ``model``'s weights; install the fastest.

    ``cache`` is a folder for the choices (read when present, written after tuning).  ``progress`` is told
    what is being done: the start, each shape as it is done with its choices and the time so far, the kernels
    skipped and why, the end.  On a GPU nothing is tuned: the layers stay plain ``F.linear`` (the kernels
    here are about CPU BLAS calls)."""
    existing = getattr(model, "pastac_linears", None)
    if isinstance(existing, LinearKernels):
        return existing
    tuning = tuning or Tuning()
    say = progress or (lambda message: None)
    groups = _groups(model)
    param = next(model.parameters())
    kernels = LinearKernels(groups)
    model.pastac_linears = kernels  # type: ignore[assignment]
    if param.device.type != "cpu":
        return kernels
    key = cache_key(param, groups, tuning)
    file = _cache_file(key, cache)
    kernels.cached = file is not None and file.is_file() and _read_cache(file, groups)
    started = time.perf_counter()
    names = list(candidates(param.dtype, param.device))
    kernels.skipped = {n: why for n in KERNELS if n not in names and (why := probe(n, param.dtype)) is not None}
    if kernels.cached:
        for group in groups:
            for name in PACKERS:
                if name in group.choice.values():
                    if name in names:
                        kernels._pack(group, name)
                    else:
                        group.choice = {r: "linear" if k == name else k for r, k in group.choice.items()}
    else:
        dtype = _dtype_name(param.dtype)
        say(
            f"tuning the linear layers' kernels for {dtype} on this CPU ({cpu_capability()}), once: "
            f"{len(groups)} weight shapes x {len(tuning.rows)} row counts, {len(names)} of {len(KERNELS)} kernels"
        )
        for name, why in kernels.skipped.items():
            say(f"  skipping {name}, which this CPU cannot run in {dtype}: {why}")
        ratio = slowdown(param.dtype) if param.dtype != torch.float32 else None
        if ratio is not None and ratio > 1.5:
            say(f"  {dtype} products take {ratio:.1f}x the time of float32 ones here: float32 decodes faster")
        generator = torch.Generator().manual_seed(0)
        budget_end = time.perf_counter() + tuning.budget_s
        with torch.inference_mode():
            for i, group in enumerate(groups, 1):
                later = (len(groups) - i) * len(tuning.rows)  # the races of the shapes after this one

                def until(left: int, later: int = later) -> float:
                    now = time.perf_counter()
                    return now + max(0.0, budget_end - now) / (left + later)

                group_names = list(names)  # a kernel that failed on an earlier shape is in kernels.skipped
                kernels._tune(group, group_names, tuning, generator, until)
                say(f"  [{i}/{len(groups)}] {group.key}: {_rows_text(group)} ({time.perf_counter() - started:.1f} s)")
        kernels.tuned_s = time.perf_counter() - started
        if file is not None:
            _write_cache(file, kernels, key)
        say(f"tuned in {kernels.tuned_s:.1f} s" + (f"; cached in {file}" if file is not None else ""))
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
