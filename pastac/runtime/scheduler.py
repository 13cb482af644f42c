"""The scheduler: which tokens go into the cache each step, where, and whose logits are sampled.

Each step ``plan()`` joins the threads whose children have all ended, starts
queued threads as the width cap allows, and places every thread's pending
inputs in the next free cache slots at the thread's next positions, driving the
run's ``Views`` (``pastac.backend.visibility``) as it goes: a thread's new
slots, then the forks its new tokens complete, after the joins of the step.  It
emits a ``StepPlan`` of plain lists; after the runner's forward, ``advance()``
hands each sampled token to the interpreter (``interpreter.py``), which reads
the tags and forks, blocks or closes threads.  The run is done when the main
thread has ended and no thread is left.

Positions follow ``pastac.passes.positions.PositionRule``: a child's tokens take
the positions after its promise; the parent skips the positions the policy
reserves; after a join it goes on where the policy says.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pastac.backend.visibility import Views
from pastac.grammar.prefix import TagContext
from pastac.ir.graph import MAIN, ThreadGraph
from pastac.passes.positions import Policy, PositionOptions, PositionRule
from pastac.passes.resolution_order import Order
from pastac.runtime.interpreter import Interpreter
from pastac.runtime.repeats import UnseenNgrams
from pastac.runtime.runner import StepPlan
from pastac.runtime.threads import FinishReason, Limits, RunWarning, Status, Thread

if TYPE_CHECKING:
    from pastac.runtime.guard import TagGuard
    from pastac.runtime.replay import Replay


class Scheduler:
    """Plans each step of a run and interprets what it wrote (see the module's docstring)."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        limits: Limits,
        positions: PositionOptions,
        eos: Sequence[int],
        views: Views,
        max_depth: int,
        max_nesting: int,
        prompt_length: int = 0,
        replay: Replay | None = None,
        tags: bool = True,
        child_stop: str | None = None,
        stop: Sequence[str] = (),
        guard: TagGuard | None = None,
        jump: bool = False,
        repeats: UnseenNgrams | None = None,
    ) -> None:
        """``max_depth``: promises nested deeper are decoded inline.  ``guard``: constrain what the threads
        sample so that the tags they write are well formed and allowed where they stand
        (``pastac.runtime.guard``); a promise is allowed where its block would nest at most ``max_nesting``
        deep (whether the block is forked or decoded inline).  ``jump``: feed the text a canonical tag forces
        at once (``interpreter.py``); with tags only.  ``repeats``: ban each sampled thread from repeating the
        n-grams of the threads it cannot see (``pastac.runtime.repeats``; the plan's ``banned``).  The other
        options are the interpreter's."""
        if positions.policy in (Policy.SEQUENTIAL, Policy.ORACLE):
            raise ValueError(
                f"the runtime cannot use the {positions.policy} position policy: it needs the "
                "children's lengths before they are written; use predicted, restart or lockstep"
            )
        self.limits = limits
        self.rule = PositionRule(positions)
        self.views = views
        self.interp = Interpreter(
            tokenizer,
            limits=limits,
            max_depth=max_depth,
            eos=eos,
            on_fork=self._forked,
            replay=replay,
            tags=tags,
            child_stop=child_stop,
            stop=stop,
            jump=jump,
        )
        self.guard = guard if tags else None
        self.max_nesting = max_nesting
        self.repeats = repeats
        self.next_slot = prompt_length
        self.step_no = 0
        self._pending_forks: dict[int, list[int]] = {}
        self._sampling: list[Thread] = []
        self.activity: list[tuple[int, int, int]] = []  # (step, thread, tokens placed)
        main = Thread(MAIN, None, 0, None, None, Status.RUNNING, tokenizer, pos=prompt_length)
        if replay is not None:
            main.ir_thread = MAIN
            main.script = replay.script(MAIN)
        self.threads[MAIN] = main

    @property
    def threads(self) -> dict[int, Thread]:
        """Every thread of the run by id, the main one (0) first."""
        return self.interp.threads

    @property
    def graph(self) -> ThreadGraph:
        """The run's IR graph, as written so far."""
        return self.interp.graph

    @property
    def warnings(self) -> list[RunWarning]:
        """What the run recovered from, in order."""
        return self.interp.warnings

    @property
    def done(self) -> bool:
        """Whether the main thread has ended (and so every thread has)."""
        return self.threads[MAIN].status is Status.DONE

    def force(self, chunks: Sequence[tuple[list[int], str]]) -> None:
        """Template mode: the main thread's text is these (tokens, text) chunks, fed without sampling
        (each ends at a promise or a sync, so a child forks right after its promise); the main thread
        ends where they do."""
        main = self.threads[MAIN]
        main.forced.extend(chunks)
        main.template = True
        if main.forced:
            self.interp.feed_forced(main)

    # -- the step plan -------------------------------------------------------------------------------------

    def plan(self, budget: int | None = None) -> StepPlan:
        """The next step's work: joins, then every thread's pending inputs, their forks, and the queries to
        sample (with what each may write).  ``budget``: place at most this many tokens (None: all); a thread
        whose inputs do not fit places what does (a long prompt in chunks) and samples once all are in."""
        plan = StepPlan()
        self._resolve(plan)
        self._start_queued()
        self._sampling = []
        left = budget
        for thread in self.threads.values():
            if thread.status is Status.QUEUED or not thread.inputs:
                continue
            placed = thread.inputs if left is None or left >= len(thread.inputs) else thread.inputs[: max(left, 0)]
            n = len(placed)
            if not n:
                continue
            if left is not None:
                left -= n
            last = len(plan.tokens) + n - 1
            plan.tokens.extend(placed)
            plan.positions.extend(range(thread.pos, thread.pos + n))
            plan.slots.extend(range(self.next_slot, self.next_slot + n))
            plan.threads.extend([thread.id] * n)
            self.views.place(thread.id, self.next_slot, n)
            if self.repeats is not None:
                self.repeats.add(thread.id, placed)
            thread.tokens.extend(placed)
            self.next_slot += n
            thread.fed += n
            if thread.first_step is None:
                thread.first_step = self.step_no
            thread.last_step = self.step_no
            self.activity.append((self.step_no, thread.id, n))
            if n < len(thread.inputs):  # the rest goes in later steps; its forks and its sample wait for it
                thread.pos += n
                thread.inputs = thread.inputs[n:]
                continue
            thread.pos += n + thread.skip
            thread.skip = 0
            thread.inputs = []
            for child in self._pending_forks.pop(thread.id, ()):
                self.views.fork(thread.id, child, plan.slots[last] + 1)
                plan.forks.append((thread.id, child))
                thread.children_at.append((len(thread.tokens), child))
                if not self.threads[child].inputs:
                    self._sample(plan, last, self.threads[child])
            if self._wants_sample(thread):
                self._sample(plan, last, thread)
        if self.repeats is not None:  # once every thread's tokens of this step are in
            plan.banned = [self._banned(thread) for thread in self._sampling]
        if not plan.tokens and not self.done:
            stuck = ", ".join(f"t{t.id} {t.status}" for t in self.threads.values() if t.live)
            raise RuntimeError(f"no thread can run ({stuck})")
        return plan

    def _sample(self, plan: StepPlan, query: int, thread: Thread) -> None:
        plan.sample.append(query)
        self._sampling.append(thread)
        plan.allowed.append(
            None
            if self.guard is None or thread.script is not None
            else self.guard.allowed(thread.scanner.held, self.context(thread))
        )

    def _banned(self, thread: Thread) -> list[int]:
        assert self.repeats is not None
        if thread.script is not None:
            return []
        return sorted(self.repeats.banned(thread.id, self.views.unseen(thread.id, self.threads)))

    def context(self, thread: Thread) -> TagContext:
        """Which tags the thread may write now: ``<sync/>`` once it has promised something since its last
        sync, ``</async>`` in a child or inside a block it opened inline, ``<promise/>`` where the block it
        promises would not nest too deep; whether it has opened markup it may close."""
        return TagContext(
            sync=thread.promised[-1] > 0,
            close=thread.id != MAIN or thread.inline > 0,
            promise=thread.depth + thread.inline < self.max_nesting,
            markup=thread.markup,
        )

    def _wants_sample(self, thread: Thread) -> bool:
        if thread.forced or (thread.template and thread.status is Status.RUNNING):
            return False
        if thread.status is Status.RUNNING:
            return True
        return thread.status is Status.BLOCKED and thread.held is None and thread.script is None

    def _start_queued(self) -> None:
        queued = [t for t in self.threads.values() if t.status is Status.QUEUED]
        if not queued:
            return
        # threads that feed tokens this step: running ones, and blocked or closing ones with a last tag to feed
        running = sum(
            t.status is Status.RUNNING or (t.status is not Status.QUEUED and bool(t.inputs))
            for t in self.threads.values()
        )
        free = len(queued) if self.limits.max_width is None else self.limits.max_width - running
        order = self.limits.order
        if order is Order.LONGEST_FIRST:
            queued.sort(key=lambda t: -(t.predicted or 0))
        elif order is Order.SHORTEST_FIRST:
            queued.sort(key=lambda t: t.predicted or 0)
        for thread in queued[: max(free, 0)]:
            thread.status = Status.RUNNING

    def _resolve(self, plan: StepPlan) -> None:
        """Join what can be joined, end what can end (a child's end may let its parent go on)."""
        changed = True
        while changed:
            changed = False
            for thread in list(self.threads.values()):
                if thread.status not in (Status.BLOCKED, Status.CLOSING) or thread.inputs:
                    continue
                if any(self.threads[c].status is not Status.DONE for c in thread.unjoined):
                    continue
                ends = [self.threads[c].end_position for c in thread.unjoined]
                for child in thread.unjoined:
                    self.views.join(thread.id, child)
                    plan.joins.append((thread.id, child))
                if thread.status is Status.BLOCKED and ends:
                    thread.pos = self.rule.after_join(thread.pos, ends)
                self.interp.joined(thread)
                if thread.status is Status.DONE:
                    thread.end_position = thread.pos
                changed = True

    def _forked(self, parent: Thread, child: Thread) -> None:
        """A child was forked: it starts at the position after the promise, the parent skips its reservation."""
        child.pos = parent.pos + len(parent.inputs)
        tags = len(self.interp.open_ids) + len(self.interp.close_ids)
        # a child writes at most its budget: positions reserved past it would only leave a gap, and an estimate
        # off the scale (tokens="40000") would send the parent past the positions the model was trained on
        parent.skip += min(self.rule.reservation(child.predicted, tags), tags + self.limits.thread_budget)
        self._pending_forks.setdefault(parent.id, []).append(child.id)

    # -- after the forward ---------------------------------------------------------------------------------

    def advance(self, sampled: Sequence[int]) -> None:
        """Take the tokens the runner sampled (one per ``plan.sample`` query) and interpret them."""
        threads, self._sampling = self._sampling, []
        self.step_no += 1
        for thread, token in zip(threads, sampled, strict=True):
            if thread.status is Status.BLOCKED:
                thread.held = token
            elif thread.script is not None:
                self.interp.next_scripted(thread)
            else:
                self.interp.choose(thread, token)
        for thread in list(self.threads.values()):
            if thread.status is Status.RUNNING and not thread.inputs and thread.template:
                if thread.forced:
                    self.interp.feed_forced(thread)
                else:
                    self.interp.end_body(thread, None, FinishReason.STOP)
