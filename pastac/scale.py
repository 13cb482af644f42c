"""Batch work on a Ray cluster: records mapped over workers that each set up once, results back in order.

``ordered(items, setup, work, options)`` starts ``options.workers`` Ray actors; each runs ``setup()`` once
(loads the model) and then ``work(state, item)`` for the items it is handed.  Results come back to the calling
process, which yields them strictly in the items' order (a result that arrives early waits for those before
it): the caller appends them to its JSONL or report as it would in one process, so that a rerun that skips the
finished records resumes after the last one written.

Faults are Ray's to handle: a worker whose process dies is restarted (its ``setup`` runs again) and the item it
held is retried on it, up to ``max_retries`` times each (Ray's ``max_restarts`` and ``max_task_retries``).  Each
item's result is taken once, by its index, so a retried item is never counted twice.  An exception raised by
``work`` itself is not retried (it is the record's, not the worker's): the results before it that are still
running are collected and handed over first, then it is raised, so nothing finished is lost.

Ray is imported only here and only when asked for (``import pastac`` never loads it); it comes with the extra
``pastac[ray]``.  Why Ray's actors rather than a Ray Dataset: the results must reach one writer in order and
as soon as each is ready (a crash loses nothing finished), which the actor calls give directly, while the
Dataset's streaming executor reorders or buffers blocks and adds its own start-up cost to every run.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
State = TypeVar("State")

#: how many items a worker holds at once: one, so that the last items go to whichever worker is free first (an
#: item queued behind a long one on a busy worker while another worker idles would hold up the whole run)
IN_FLIGHT_PER_WORKER = 1


class RayError(RuntimeError):
    """Ray is missing, the cluster cannot be reached, or a worker died more often than allowed."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run: the cluster (``local``: a local one started for the run, ``auto``: the cluster
    this machine belongs to, ``ray://host:10001``: a remote one), the workers, each worker's share of the cluster
    and how often a dead worker is restarted."""

    address: str = "local"
    workers: int | None = None  # None: as many as the cluster's CPUs (GPUs, with gpus_per_worker) hold
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, not {self.workers}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("a worker needs more than 0 CPUs and at least 0 GPUs")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be at least 0, not {self.max_retries}")


def import_ray() -> Any:
    """The ``ray`` module, or ``RayError`` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RayError("--ray needs Ray: install the extra pastac[ray] (pip install 'pastac[ray]')") from None
    return ray


def unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at a cluster address of the form HOST:PORT or ray://HOST:PORT (Ray itself would try
    for minutes), or None (an answer, or another form: ``local``, ``auto``, which Ray resolves itself)."""
    host, colon, port = address.removeprefix("ray://").rpartition(":")
    if not colon or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as error:
        return f"no Ray cluster answers at {address} ({error})"
    return None


@contextlib.contextmanager
def cluster(options: RayOptions) -> Iterator[Any]:
    """Ray connected to the cluster ``options`` names (``local``: one started for the call), yielded; one this
    call started or connected to is shut down at the end, one already connected is left as it was."""
    ray = import_ray()
    if (why := unreachable(options.address)) is not None:
        raise RayError(why)
    # Ray's driver prints what its raylets report (a worker that died) on standard output, where it would mix
    # with a --json report: while Ray runs here, that goes to standard error, the progress bar's stream
    with contextlib.redirect_stdout(sys.stderr), _connected(ray, options):
        yield ray


@contextlib.contextmanager
def _connected(ray: Any, options: RayOptions) -> Iterator[None]:
    if ray.is_initialized():
        yield
        return
    # the workers' output stays in the session's log folder: on the driver it would mix with a --json report
    local = options.address == "local"
    settings: dict[str, Any] = {"address": options.address, "logging_level": "WARNING", "log_to_driver": False}
    if local:
        settings["include_dashboard"] = False
    try:
        ray.init(**settings)
    except (ConnectionError, RuntimeError, ValueError) as error:
        where = "a local cluster" if local else f"the Ray cluster at {options.address}"
        raise RayError(f"cannot start or reach {where}: {error}") from None
    try:
        yield
    finally:
        ray.shutdown()


class _Worker:
    """A Ray actor's body: ``setup()`` once, then ``work(state, item)`` per call."""

    def __init__(self, setup: Callable[[], Any], work: Callable[[Any, Any], Any], threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.state, self.work = setup(), work

    def run(self, item: Any) -> Any:
        """``work``'s result for the item."""
        return self.work(self.state, item)


def worker_count(ray: Any, options: RayOptions, items: int) -> int:
    """How many workers to start: ``options.workers``, else as many as the cluster's resources hold; never more
    than the items, never fewer than one."""
    if options.workers is not None:
        wanted = options.workers
    else:
        resources = ray.cluster_resources()
        wanted = int(resources.get("CPU", 1) // options.cpus_per_worker)
        if options.gpus_per_worker:
            wanted = min(wanted, int(resources.get("GPU", 0) // options.gpus_per_worker))
    return max(1, min(wanted, items))


def ordered(
    items: Sequence[Item], setup: Callable[[], State], work: Callable[[State, Item], Result], options: RayOptions
) -> Iterator[tuple[int, Result]]:
    """Run ``work`` on every item on Ray workers (each ``setup()`` once) and yield ``(index, result)`` in the
    items' order as the results come back.  ``setup`` and ``work`` must be picklable (module-level functions,
    or ``functools.partial`` of them).  Raises ``RayError`` when the cluster cannot be used or a worker died
    more than ``max_retries`` times, and ``work``'s own exception, after yielding every result before the
    failed item.  Closing the iterator early stops the workers."""
    if not items:
        return
    with cluster(options) as ray:
        actor = ray.remote(_Worker).options(
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker,
            max_restarts=options.max_retries,
            max_task_retries=options.max_retries,
        )
        count = worker_count(ray, options, len(items))
        threads = max(1, int(options.cpus_per_worker))
        workers = [actor.remote(setup, work, threads) for _ in range(count)]
        try:
            yield from _drive(ray, workers, items)
        finally:
            for worker in workers:
                ray.kill(worker, no_restart=True)


def _drive(ray: Any, workers: list[Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """Hand the items to the workers, a few at a time each, and yield the results in order."""
    from ray.exceptions import RayActorError, RayTaskError

    running: dict[Any, tuple[int, Any]] = {}  # the call's reference -> (item index, worker)
    ready: dict[int, Any] = {}
    upcoming = iter(range(len(items)))
    expected = 0
    failure: tuple[int, BaseException] | None = None

    def give(worker: Any) -> None:
        index = next(upcoming, None)
        if index is not None:
            running[worker.run.remote(items[index])] = (index, worker)

    for worker in workers:
        for _ in range(IN_FLIGHT_PER_WORKER):
            give(worker)
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        index, worker = running.pop(done[0])
        try:
            result = ray.get(done[0])
        except RayActorError as error:
            if failure is None or index < failure[0]:
                failure = (index, RayError(f"item {index + 1}: its worker died more often than allowed: {error}"))
            continue
        except RayTaskError as error:
            if failure is None or index < failure[0]:
                failure = (index, error.as_instanceof_cause())
            continue
        ready[index] = result
        if failure is None:
            give(worker)
        while expected in ready and (failure is None or expected < failure[0]):
            yield expected, ready.pop(expected)
            expected += 1
    if failure is not None:
        raise failure[1]
