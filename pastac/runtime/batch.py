"""Many requests decoded together: each step is one forward over the new tokens of every running request.

    batch = BatchEngine(engine, max_concurrent=8)
    answers = batch.decode(["Three tips for sleep.", "Name two rivers."], max_new_tokens=100)   # in order

A request is one run of the ``Engine`` (its own scheduler, views, sampler and
seed), so its answer does not depend on what else is decoded beside it: its
threads are more queries of the step's packed row, which see only its own
slots.  The requests share one ``SlotCache``, whose slots a ``SlotPool`` hands
out in pages: a request takes pages as it places tokens and gives them back
when it ends or is cancelled, so once the cache is allocated nothing grows or
is copied.

Admission.  ``submit`` checks a request at once (its prompt, options and
budget; ``InputError``, ``ValueError``, ``ContextError``) and queues it
(``QueueFull`` past ``max_waiting``).  Each step admits waiting requests in
order while fewer than ``max_concurrent`` run and the pool has the pages of
the next one's prompt.  A step runs at most ``max_rows`` queries: the running
requests' new tokens first, then the prompts going in, in chunks of what is
left (so that a long prompt does not hold up the others' next tokens).  A
request's step of its answer is planned whole, every thread in it, and run
whole, now or in the next step: its threads stay in step with each other as
when it is decoded alone (what a thread may write can depend on what its
siblings wrote so far, through the sibling n-gram ban).  A
running request whose step cannot get its pages waits for a later step with its
plan kept; it is never dropped.  When every running request waits for pages,
the one admitted last gives its pages back and starts again from its prompt
(with the same seed, so it decodes the same answer), first in the queue.

The loop runs on one thread (``start``) or by hand (``step``); ``submit`` and
``cancel`` may be called from any thread.  A request's listener hears each of
its steps and its end (``Update``), on the loop's thread.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import torch

from pastac.backend.cache import PagedSlots, SlotPool
from pastac.ir.graph import MAIN
from pastac.models.budget import available_memory, slot_bytes
from pastac.runtime.engine import Engine, Prompt, Run
from pastac.runtime.options import BatchLimits, RunOptions
from pastac.runtime.results import Generation
from pastac.runtime.runner import Part, Runner, StepPlan
from pastac.runtime.threads import Status

_log = logging.getLogger(__name__)

DEFAULT_SLOTS_PER_REQUEST = 2048  # the default pool: this many slots per concurrent request
PAGE_SIZE = 16


class QueueFull(Exception):
    """The queue of waiting requests is full: try again later."""


class Draining(Exception):
    """The engine is shutting down and takes no new request."""


class RequestTooLarge(ValueError):
    """A request could need more cache slots than the whole pool holds."""


class State(StrEnum):
    """Where a request is."""

    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


@dataclass(frozen=True)
class Update:
    """What a request's listener hears: after each of its steps, and once at its end (``final``)."""

    request: Request
    settled: str  # the start of the stitched answer that is final (``Engine.settled``)
    tokens: int  # tokens its threads placed so far, the prompt's aside
    steps: int  # its steps after the prompt's so far (as its Stats count them)
    final: bool = False
    result: Generation | None = None  # at a normal end
    error: BaseException | None = None  # when it failed


class Metrics(Protocol):
    """What the engine reports as it goes (``pastac.serve`` exports it for Prometheus)."""

    def step(self, rows: int, requests: int, seconds: float) -> None:
        """A step ran ``rows`` queries of ``requests`` requests in ``seconds``."""
        ...

    def first_token(self, seconds: float) -> None:
        """The step that sampled a request's first token ended ``seconds`` after it was submitted."""
        ...

    def inter_token(self, seconds: float) -> None:
        """A request's step ended ``seconds`` after its previous one."""
        ...


class _RequestRunner:
    """Stands for a request's runner in its ``Run``: its device, and its share of the cache (for its figures)."""

    def __init__(self, device: torch.device, slots: PagedSlots) -> None:
        self.device = device
        self.cache = slots
        self.keep_logits = False

    def reserve(self, slots: int) -> None:
        """Pages are taken step by step (``BatchEngine.step``)."""


@dataclass(eq=False)
class Request:
    """One request: what it asks, its run, and where it is (``state``)."""

    id: str
    prompt: Prompt
    options: RunOptions | None
    changes: dict[str, Any]
    template: str | None
    listener: Callable[[Update], None] | None
    run: Run
    slots: PagedSlots
    keep_logits: bool = False
    state: State = State.WAITING
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float | None = None
    first_token: float | None = None  # when the step that sampled its first token ended
    last_step: float | None = None
    pending: StepPlan | None = None  # its planned step, waiting for pages or room in a step
    restarts: int = 0  # times it gave its pages back and started again
    result: Generation | None = None
    error: BaseException | None = None
    logits: list[torch.Tensor] = field(default_factory=list)  # per step, its sampled logits (keep_logits)
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def prefilling(self) -> bool:
        """Whether some of its prompt is not in the cache yet."""
        return self.run.sched.threads[MAIN].fed < self.run.prompt_tokens

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request has ended (done, cancelled or failed); False on timeout."""
        return self._done.wait(timeout)


class BatchEngine:
    """Decodes many requests together over one shared cache (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_concurrent: int = BatchLimits.max_concurrent,
        max_waiting: int = BatchLimits.max_waiting,
        max_rows: int = BatchLimits.max_rows,
        kv_slots: int | None = None,
        page_size: int = PAGE_SIZE,
        metrics: Metrics | None = None,
    ) -> None:
        """``max_concurrent`` requests run at once, ``max_waiting`` more wait; a step runs at most ``max_rows``
        queries (prompts go in in chunks; ``pastac.runtime.options.BatchLimits`` has the defaults).
        ``kv_slots``: the cache's slots, shared by the running requests (default: 2,048 per concurrent request,
        within half the memory available)."""
        BatchLimits(max_concurrent, max_waiting, max_rows)  # checks them
        if not isinstance(page_size, int) or page_size < 1:
            raise ValueError(f"page_size must be an integer >= 1, not {page_size!r}")
        self.engine = engine
        self.max_concurrent, self.max_waiting, self.max_rows = max_concurrent, max_waiting, max_rows
        if kv_slots is None:
            kv_slots = max_concurrent * DEFAULT_SLOTS_PER_REQUEST
            free = available_memory(next(engine.model.parameters()).device)
            if free is not None:
                kv_slots = max(min(kv_slots, free // 2 // slot_bytes(engine.model)), page_size)
        self.pool = SlotPool(kv_slots, page_size)
        self.runner = Runner(
            engine.model,
            self.pool.capacity,
            attention=engine.attention,
            decode_step=engine.decode_step,
            decoder=engine.decoder,
        )
        self.metrics = metrics
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in the order they were admitted
        self.draining = False
        self.steps = 0
        self.tokens = 0  # tokens placed by every request's threads, prompts included
        self.finished = 0
        self.last_rows = 0
        self._window: deque[tuple[float, int]] = deque()  # (when, tokens) of the last steps, for tokens/s
        self._cancelled: set[Request] = set()
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stop = False
        self._starved = False  # a running request waited for pages in the last step

    # -- requests ----------------------------------------------------------------------------------------------

    def submit(
        self,
        prompt: Prompt,
        options: RunOptions | None = None,
        *,
        template: str | None = None,
        listener: Callable[[Update], None] | None = None,
        request_id: str | None = None,
        keep_logits: bool = False,
        **changes: Any,
    ) -> Request:
        """Queue a request (``Engine.generate``'s prompt, options and keywords; a template, not a replay).
        Checks it at once: raises ``InputError``/``ValueError`` for a bad one, ``ContextError`` for a prompt that
        fills the model's context, ``RequestTooLarge`` for one the whole pool could not hold, ``QueueFull`` or
        ``Draining`` when it cannot wait."""
        if self.draining:
            raise Draining("the engine is shutting down")
        run, slots = self._start(prompt, options, changes, template)
        need = run.views.capacity
        if self.pool.pages_for(need) > self.pool.pages:
            raise RequestTooLarge(
                f"this request may need {need:,} cache slots (its prompt, max_new_tokens and room for its tags); "
                f"the server's cache holds {self.pool.capacity:,}: lower max_new_tokens"
            )
        generator = run.sampler.generator
        if generator is not None and "seed" not in changes and (options is None or options.sampling.seed is None):
            changes = {**changes, "seed": generator.initial_seed()}  # a restart decodes the same answer
        request = Request(
            request_id or f"req-{next(self._ids)}",
            prompt,
            options,
            changes,
            template,
            listener,
            run,
            slots,
            keep_logits=keep_logits,
        )
        with self._cond:
            if self.draining:
                raise Draining("the engine is shutting down")
            if len(self.waiting) >= self.max_waiting and len(self.running) >= self.max_concurrent:
                raise QueueFull(f"{len(self.waiting)} requests are waiting already")
            self.waiting.append(request)
            self._cond.notify_all()
        return request

    def _start(
        self, prompt: Prompt, options: RunOptions | None, changes: dict[str, Any], template: str | None
    ) -> tuple[Run, PagedSlots]:
        slots = PagedSlots(self.pool, self.runner.cache, self.runner.device)
        run = self.engine.start_run(
            prompt,
            options,
            changes,
            template,
            None,
            False,
            lambda _model, _capacity: _RequestRunner(self.runner.device, slots),
        )
        return run, slots

    def cancel(self, request: Request) -> None:
        """Stop ``request``: at the next step its pages go back to the pool and its listener hears its end."""
        with self._cond:
            if request.state in (State.WAITING, State.RUNNING):
                self._cancelled.add(request)
                self._cond.notify_all()

    def decode(self, prompts: Sequence[Prompt], options: RunOptions | None = None, **changes: Any) -> list[Generation]:
        """Submit every prompt, step until all have ended (on this thread), and return their answers in order."""
        if self._thread is not None:
            raise RuntimeError("decode() steps the engine itself; this one runs on its own thread (start())")
        requests = [self.submit(p, options, **changes) for p in prompts]
        while any(r.state in (State.WAITING, State.RUNNING) for r in requests):
            self.step()
        for r in requests:
            if r.error is not None:
                raise r.error
        return [r.result for r in requests if r.result is not None]

    # -- the loop ----------------------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether a request is running or waiting."""
        return bool(self.running or self.waiting or self._cancelled)

    def step(self) -> int:
        """Apply cancellations, admit what fits, and run one forward over every request that can go on; the
        number of queries it ran (0 when nothing could run)."""
        with self._cond:
            for request in list(self._cancelled):
                self._end(request, State.CANCELLED)
            self._cancelled.clear()
            self._admit()
        parts: list[Part] = []
        stepping: list[Request] = []
        rows = 0
        starved = False
        # first a request whose planned step had to wait, then those decoding, then those whose prompt goes in,
        # each the one that stepped least lately first: a prompt takes the queries the others leave, in chunks,
        # so that their steps stay short, and a request left out of a full step goes first in the next
        order = sorted(self.running, key=lambda r: (r.pending is None, r.prefilling, r.last_step or 0.0))
        for request in order:
            run = request.run
            if request.pending is None:
                prefilling = request.prefilling
                feeding = sum(1 for t in run.sched.threads.values() if t.inputs and t.status is not Status.QUEUED)
                if rows and (rows >= self.max_rows or (not prefilling and rows + feeding > self.max_rows)):
                    continue
                try:  # only a prompt is cut to the room left: a step of the answer is planned whole, as alone
                    budget = self.max_rows - rows if prefilling else None
                    plan = run.sched.plan(budget) if not run.sched.done else StepPlan()
                except Exception as error:  # a run that cannot go on fails alone
                    self._fail(request, error)
                    continue
                if not plan.tokens:
                    self._finish(request)
                    continue
                request.pending = plan
            plan = request.pending
            if rows and rows + len(plan) > self.max_rows:
                continue  # kept whole for the next step, which it opens: its threads stay in step with each other
            if not request.slots.ensure(max(plan.slots) + 1):
                starved = True
                continue
            request.slots.place(max(plan.slots) + 1)
            kept = request.logits if request.keep_logits else None
            parts.append(Part(plan, run.views, run.sampler, request.slots, kept))
            stepping.append(request)
            rows += len(plan)
        self._starved = starved
        if not parts:
            self._unblock()
            return 0
        self.runner.cache.used = self.pool.high_water  # attention spans the pages held now, not all ever held
        began = time.perf_counter()
        try:
            chosen = self.runner.step_many(parts)
        except Exception as error:  # the forward itself failed: every request in it fails
            for request in stepping:
                self._fail(request, error)
            return 0
        now = time.perf_counter()
        for request, part, tokens in zip(stepping, parts, chosen, strict=True):
            request.pending = None
            run = request.run
            self.engine.advance(run, part.plan, tokens, began - run.started)
            if request.first_token is None:
                if not request.prefilling:  # this step sampled its first token
                    request.first_token = now
                    if self.metrics is not None:
                        self.metrics.first_token(now - request.submitted)
            elif self.metrics is not None:
                self.metrics.inter_token(now - request.last_step)
            request.last_step = now
            if request.listener is not None:
                self._tell(request, self._update(request))
            if run.sched.done:
                self._finish(request)
        self.steps += 1
        self.tokens += rows
        self.last_rows = rows
        self._window.append((now, rows))
        while self._window and now - self._window[0][0] > 10:
            self._window.popleft()
        if self.metrics is not None:
            self.metrics.step(rows, len(stepping), now - began)
        return rows

    def _admit(self) -> None:
        if self._starved:  # the pages that come free go to the running requests first
            return
        while self.waiting and len(self.running) < self.max_concurrent:
            request = self.waiting[0]
            first = len(request.run.sched.threads[0].inputs)  # the prompt (and a template's first text)
            if not request.slots.ensure(first):
                return
            self.waiting.popleft()
            request.state = State.RUNNING
            request.admitted = time.perf_counter()
            request.run.started = request.admitted
            self.running.append(request)

    def _unblock(self) -> None:
        """Nothing could run: when requests wait for pages only the others hold, the last admitted starts over."""
        waiting = [r for r in self.running if r.pending is not None]
        if not waiting:
            return
        if len(self.running) == 1:
            self._fail(waiting[0], RuntimeError("the request needs more cache slots than the server's cache holds"))
            return
        victim = self.running[-1]
        with self._cond:
            victim.slots.release()
            self.running.remove(victim)
            victim.run, victim.slots = self._start(victim.prompt, victim.options, victim.changes, victim.template)
            victim.pending, victim.state, victim.admitted = None, State.WAITING, None
            victim.first_token = victim.last_step = None
            victim.logits.clear()
            victim.restarts += 1
            self.waiting.appendleft(victim)

    def _update(self, request: Request, **end: Any) -> Update:
        run = request.run
        return Update(
            request,
            self.engine.settled(run),
            sum(t.fed for t in run.sched.threads.values()) - run.prompt_tokens,
            max(len(run.times) - run.prefill_steps, 0),
            **end,
        )

    def _finish(self, request: Request) -> None:
        request.result = self.engine.generation(request.run)
        with self._cond:
            self._end(request, State.DONE)

    def _fail(self, request: Request, error: BaseException) -> None:
        request.error = error
        with self._cond:
            self._end(request, State.FAILED)

    def _end(self, request: Request, state: State) -> None:
        """(Under the lock.)  The request's pages go back; it leaves the queue; its listener hears of it."""
        if request.state not in (State.WAITING, State.RUNNING):
            return
        request.slots.release()
        if request in self.running:
            self.running.remove(request)
        if request in self.waiting:
            self.waiting.remove(request)
        request.state = state
        request.pending = None
        self.finished += 1
        if request.listener is not None:
            update = Update(request, "", 0, 0, final=True, result=request.result, error=request.error)
            if request.result is not None:
                update = self._update(request, final=True, result=request.result)
            self._tell(request, update)
        request._done.set()

    # -- on a thread of its own ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop on a thread of its own until ``stop``."""
        if self._thread is not None:
            return
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="pastac-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self.busy:
                    self._cond.wait()
                if self._stop:
                    return
            try:
                ran = self.step()
            except Exception as error:  # a fault of the loop itself: its requests fail, the loop goes on
                _log.exception("the engine's step failed")
                for request in list(self.running):
                    self._fail(request, error)
                continue
            if not ran and self.running and all(r.pending is not None for r in self.running):
                time.sleep(0.001)  # every running request waits (for pages another will give back)

    @staticmethod
    def _tell(request: Request, update: Update) -> None:
        """Hand ``update`` to the request's listener; a listener that raises is logged, the loop goes on."""
        assert request.listener is not None
        try:
            request.listener(update)
        except Exception:
            _log.exception("the listener of request %s failed", request.id)

    def drain(self, timeout: float) -> bool:
        """Take no new request, wait up to ``timeout`` seconds for the queued and running ones to end, then
        cancel what is left; whether all ended by themselves."""
        with self._cond:
            self.draining = True
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        ended = not self.busy
        with self._cond:
            for request in [*self.running, *self.waiting]:
                self._cancelled.add(request)
            self._cond.notify_all()
        return ended

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel every request and end the loop's thread."""
        with self._cond:
            for request in [*self.running, *self.waiting]:
                self._cancelled.add(request)
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        while self._thread is not None and self.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- figures -----------------------------------------------------------------------------------------------

    def stats(self) -> dict[str, float]:
        """The engine's figures now: requests running and waiting, steps, tokens, tokens/s over the last ten
        seconds, the last step's queries, and the cache's slots and bytes."""
        with self._cond:
            window = list(self._window)
            running, waiting = len(self.running), len(self.waiting)
        span = window[-1][0] - window[0][0] if len(window) > 1 else 0.0
        per_s = sum(n for _, n in window[1:]) / span if span > 0 else 0.0
        slot = self.runner.cache.nbytes() // self.runner.cache.capacity if self.runner.cache.capacity else 0
        return {
            "requests_running": running,
            "requests_waiting": waiting,
            "requests_finished": self.finished,
            "steps": self.steps,
            "tokens": self.tokens,
            "tokens_per_s": per_s,
            "rows_last_step": self.last_rows,
            "kv_slots_total": self.pool.capacity,
            "kv_slots_used": self.pool.used_slots,
            "kv_bytes_allocated": self.runner.cache.nbytes(),
            "kv_bytes_used": self.pool.used_slots * slot,
        }
