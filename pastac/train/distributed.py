"""Data-parallel training on several processes: the process group ``torchrun`` or ``accelerate launch`` sets up,
and the few collective operations ``pastac.train.trainer`` needs.

A process started by ``torchrun`` (``accelerate launch --multi_gpu`` runs torchrun too) finds its place in its
environment: ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (``World.from_environment``;
the names ``mpirun`` sets, as under ``accelerate launch --cpu --mpirun_hostfile``, are read too). ``joined``
initialises ``torch.distributed`` from them (gloo when training on the CPU, nccl on CUDA, each process on
``cuda:LOCAL_RANK``) and destroys the group at the end; a group that is already initialised is used as it is and
left alone. Without a launcher (``WORLD_SIZE`` unset or 1) there is one process and no group.

Invariants:

- Every process holds the whole model and the same adapter: the same seed initialises it, the main process's
  copy is broadcast once at the start, and every process applies the same update to it after each step.
- Each step's gradients are summed over the processes (``World.reduce_gradients``): the trainer normalises each
  process's share by the labelled positions of the whole step, so the sum is the one-process gradient.
- A check that can fail on one process runs inside ``World.together``: when it fails anywhere, it fails
  everywhere, rather than leaving the others waiting in the next collective.

Why the gradients are all-reduced here rather than through ``DistributedDataParallel``: a step's micro-batches
are shared unevenly (with M micro-batches and N processes some get one more, and a process may get none), while
DDP synchronises inside every backward and needs every process to run as many of them (or its ``Join`` context)
and ``no_sync`` for the micro-batches it accumulates; DDP averages the gradients, where the loss here is already
normalised by the whole step's labelled positions and they must be summed; and only the adapter's parameters
train, a few megabytes, for which DDP's buckets that overlap communication with the backward save little. So the
trainer accumulates a step's gradients locally and sums them with one ``torch.distributed.all_reduce`` of one flat
buffer after the last backward, the step's loss sums riding in the same buffer; clipping and the optimizer step
follow, the same on every process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from pastac.train.options import TrainError

__all__ = ["DistributedError", "PeerFailure", "World", "joined", "rank_seed"]

# Where each launcher puts a process's place: torchrun (and accelerate's launchers), Open MPI, MPICH / Intel MPI.
_SIZE = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
_RANK = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")
_LOCAL_RANK = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
_TRUE = ("1", "true", "yes")
T = TypeVar("T")


class DistributedError(TrainError):
    """The processes cannot train together: a launcher's environment that is incomplete, a process group that
    cannot be joined, or processes that disagree (other data, another checkpoint)."""


class PeerFailure(DistributedError):
    """Raised in the other processes when a check failed in one (``World.together``); that one reports why."""

    def __init__(self, rank: int, message: str) -> None:
        super().__init__(f"process {rank} failed: {message}")
        self.rank = rank


def _first(environ: Mapping[str, str], names: Sequence[str]) -> tuple[str, str] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _integer(found: tuple[str, str], low: int) -> int:
    name, value = found
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if number < low:
        raise DistributedError(f"{name}={value!r} in the environment is not an integer >= {low}")
    return number


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """The seed of process ``rank``'s random draws (the adapter's dropout) from step ``step`` on: the processes
    train on different examples and draw different masks. Process 0 keeps the run's own random stream."""
    return seed * 1_000_003 + step * 1_009 + rank


@dataclass(frozen=True)
class World:
    """This process's place among those training together: its rank, their number, its rank on its machine (its
    GPU), and the backend of their process group (``None``: one process, no group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes the outputs and shows the progress (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether several processes train together."""
        return self.size > 1

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> World:
        """The place a launcher gave this process in ``environ`` (default ``os.environ``); no group is joined.

        Raises ``DistributedError`` for an environment that names several processes but not this one's place
        or the address to meet at, for a launcher's configuration that pastac does not apply (accelerate's FSDP
        or DeepSpeed), and for ``accelerate launch --cpu --num_processes N``, which starts one process only.
        """
        env = os.environ if environ is None else environ
        for flag, what in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
            if env.get(flag, "").strip().lower() in _TRUE:
                raise DistributedError(
                    f"accelerate launch asks for {what} ({flag}), which pastac train does not apply: every process "
                    "holds the whole model and trains the adapter data-parallel; launch without the "
                    f"{what} configuration (accelerate launch --multi_gpu --num_processes N ...), see docs/train.md"
                )
        size = _first(env, _SIZE)
        world_size = 1 if size is None else _integer(size, 1)
        if world_size == 1:
            if env.get("ACCELERATE_USE_CPU", "").strip().lower() in _TRUE and env.get("MASTER_ADDR"):
                raise DistributedError(
                    "accelerate launch --cpu started this process alone: accelerate starts several CPU processes "
                    "through mpirun only (--mpirun_hostfile); start them with accelerate launch --multi_gpu "
                    "--num_processes N (torchrun, with or without GPUs) or torchrun --nproc-per-node N"
                )
            return cls()
        rank = _first(env, _RANK)
        if rank is None:
            raise DistributedError(f"{size[0]}={world_size} in the environment, but no RANK: start with torchrun")
        number = _integer(rank, 0)
        if number >= world_size:
            raise DistributedError(f"{rank[0]}={number} in the environment, but {size[0]}={world_size}")
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not env.get(name, "").strip()]
        if missing:
            raise DistributedError(
                f"{size[0]}={world_size} in the environment, but no {' or '.join(missing)} to meet at: "
                "start with torchrun or accelerate launch"
            )
        local = _first(env, _LOCAL_RANK)
        return cls(rank=number, size=world_size, local_rank=number if local is None else _integer(local, 0))

    def device(self, device: str | torch.device) -> torch.device:
        """Where this process trains, given the device asked for: its own GPU (``cuda:LOCAL_RANK``) on CUDA."""
        resolved = torch.device(device)
        if self.distributed and resolved.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return resolved

    # Collectives: with one process, each is what it would be among one, without a process group.

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, by rank (any picklable object)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        """Wait until every process is here."""
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def same(self, value: Any, what: str) -> None:
        """Raise ``DistributedError`` on every process unless every process has the same ``value`` (``what``
        names it in the message)."""
        values = self.gather(value)
        if any(v != values[0] for v in values):
            shown = "; ".join(f"process {rank}: {v}" for rank, v in enumerate(values))
            raise DistributedError(f"the processes disagree on {what} ({shown})")

    @contextmanager
    def together(self) -> Iterator[None]:
        """Run the block on every process, then compare: when it raised on any process, it raises on all.

        The process it failed on raises its own exception; the others raise ``PeerFailure`` naming the first
        such process and its message. With one process the block runs as it is.
        """
        if not self.distributed:
            yield
            return
        failure: Exception | None = None
        try:
            yield
        except Exception as error:  # any: a process that stops alone leaves the others waiting for it
            failure = error
        messages = self.gather(None if failure is None else str(failure) or type(failure).__name__)
        if failure is not None:
            raise failure
        for rank, message in enumerate(messages):
            if message is not None:
                raise PeerFailure(rank, message)

    def main_first(self, work: Callable[[], T]) -> T:
        """``work()`` on the main process, then on the others at once: a model load that fills a cache (a GGUF
        file's conversion) the others then read. A failure anywhere raises on every process (``together``)."""
        result: Any = None
        with self.together():
            if self.is_main:
                result = work()
        with self.together():
            if not self.is_main:
                result = work()
        return result

    def broadcast(self, tensors: Sequence[torch.Tensor]) -> None:
        """Give every process the main process's values of ``tensors`` (in place)."""
        if not self.distributed:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    def reduce_gradients(self, parameters: Sequence[torch.nn.Parameter], scalars: Sequence[float]) -> list[float]:
        """Sum the gradients of ``parameters`` and the numbers ``scalars`` over the processes, in one all-reduce of
        one float32 buffer; every process then holds the sums (the gradients in place). A parameter that has a
        gradient on no process keeps none, as it would in one process (the optimizer skips it)."""
        if not self.distributed:
            return list(scalars)
        import torch.distributed as dist

        device = parameters[0].device
        parts = [
            torch.zeros(p.numel(), device=device) if p.grad is None else p.grad.detach().reshape(-1).float()
            for p in parameters
        ]
        has = torch.tensor([p.grad is not None for p in parameters], dtype=torch.float32, device=device)
        numbers = torch.tensor(list(scalars), dtype=torch.float32, device=device)
        buffer = torch.cat([*parts, has, numbers])
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        grads = buffer.split([p.numel() for p in parameters] + [len(parameters), len(scalars)])
        for p, grad, flag in zip(parameters, grads, grads[-2].tolist(), strict=False):
            p.grad = grad.view_as(p).to(p.dtype) if flag > 0 else None
        return grads[-1].tolist()


@contextmanager
def joined(device: str | torch.device = "cpu") -> Iterator[World]:
    """This process's ``World``, its process group joined for the block when a launcher started several.

    A group already initialised (by the caller, or by a ``joined`` around this one) is used and left as it is;
    otherwise one is initialised from the environment (``World.from_environment``) with the gloo backend, or nccl
    when ``device`` is CUDA (each process on ``cuda:LOCAL_RANK``), and destroyed when the block ends. Raises
    ``DistributedError`` when the environment is incomplete or the group cannot be joined.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        local = _first(os.environ, _LOCAL_RANK)
        yield World(
            rank=rank, size=size, local_rank=rank if local is None else _integer(local, 0), backend=dist.get_backend()
        )
        return
    world = World.from_environment()
    if not world.distributed:
        yield world
        return
    if not dist.is_available():
        raise DistributedError(
            f"this torch ({torch.__version__}) has no torch.distributed: it cannot train on several processes"
        )
    cuda = torch.device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        if not torch.cuda.is_available():
            raise DistributedError(
                f"device {device!r} asked for, but CUDA is not available to this torch ({torch.__version__})"
            )
        if world.local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"process {world.rank} has LOCAL_RANK {world.local_rank}, but {torch.cuda.device_count()} GPU(s) "
                "are visible: start at most one process per GPU"
            )
        torch.cuda.set_device(world.local_rank)
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    try:
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=world.rank,
            world_size=world.size,
            **({"device_id": torch.device("cuda", world.local_rank)} if cuda else {}),
        )
    except (RuntimeError, ValueError, OSError) as error:
        raise DistributedError(
            f"process {world.rank} of {world.size} cannot join the process group ({backend}) at {where}: {error}"
        ) from None
    try:
        yield replace(world, backend=backend)
    finally:
        dist.destroy_process_group()
