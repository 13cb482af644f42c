"""The engine: a model, its tokenizer, and the decode loop that joins scheduler and runner.

    engine = Engine.from_pretrained()                 # the embedded default model
    result = engine.generate("Give me three tips for sleeping better.")
    result.text, result.annotated, result.graph, result.stats

Modes: ``async`` (threads fork at promises), ``sequential`` (the same engine with
every promise decoded inline: one thread, the baseline), ``replay`` (the tokens
of an annotated response teacher-forced through model and scheduler), and
templates (the main thread's text is given, the model fulfils its promises).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import torch

from pastac.adapters import DEFAULT_ADAPTER
from pastac.backend.linear import tune_linears
from pastac.grammar import check
from pastac.grammar.ast import Async, Document, Promise, Sync, Text
from pastac.grammar.diagnostics import format_text
from pastac.grammar.parser import DEFAULT_MAX_DEPTH
from pastac.grammar.prefix import writes_markup
from pastac.grammar.printer import to_source
from pastac.ir.graph import ThreadGraph
from pastac.passes import PositionOptions, critical_path, schedule
from pastac.runtime.guard import TagGuard
from pastac.runtime.models import ADAPTER_SETTINGS, ModelError, cache_dir, check_architecture, load_model, prompt_ids
from pastac.runtime.repeats import UnseenNgrams
from pastac.runtime.replay import Replay
from pastac.runtime.rows import RowRunner
from pastac.runtime.runner import Runner
from pastac.runtime.sampling import Sampler, SamplingOptions, penalty_exempt_ids
from pastac.runtime.scheduler import Limits, Scheduler

RunnerFactory = Callable[[torch.nn.Module, int], Any]
KERNEL_MODES = ("tuned", "stock")  # pastac.backend.linear.KERNELS are the kernels themselves


class Mode(StrEnum):
    ASYNC = "async"
    SEQUENTIAL = "sequential"


class InputError(ValueError):
    """A template or replayed document that cannot be used (the message says where and why)."""


@dataclass(frozen=True)
class RunOptions:
    mode: Mode = Mode.ASYNC
    limits: Limits = Limits()
    positions: PositionOptions | None = None  # None: the engine's (its adapter's settings, else the defaults)
    sampling: SamplingOptions = SamplingOptions()
    chat: bool = True  # format the prompt with the tokenizer's chat template
    # Templates: keep the tags in the model's context (for a model trained on Pasta-Lang), or leave them
    # out (default: a model that never saw a tag reads plain text, and each child starts where its promise was).
    template_tags: bool = False
    child_stop: str | None = None  # a child's body ends where it writes this (templates default to a newline)
    # Constrain what the model writes so that its tags are well formed and allowed where they stand
    # (pastac.runtime.guard); off, a malformed tag is recovered from and reported in the warnings.
    tag_guard: bool = True
    # Feed the text a canonical tag forces (`="` after `<promise topic`, ...) in the step of the token before
    # it (pastac.runtime.scheduler); in a sampled run only under the tag guard, which keeps tags canonical.
    jump_forward: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", Mode(self.mode))


@dataclass(frozen=True)
class Stats:
    threads: int  # threads that decoded, the main one included
    steps: int  # forward passes after the prompt's
    tokens: int  # tokens the threads put in the cache (forced text and tags included)
    generated: int  # tokens the model chose
    jumped: int  # tokens fed without a step of their own: the text a tag forced (jump-forward)
    prompt_tokens: int
    max_width: int  # most threads in one step
    wall_s: float
    prefill_s: float
    decode_s: float
    tokens_per_s: float  # tokens / decode_s
    parallelism: float  # tokens / steps: the speedup over one token per step that the run achieved
    theoretical_speedup: float  # the annotated answer's tokens / its critical path
    kv_bytes: int  # keys and values of the slots used
    kv_peak_bytes: int  # the most keys and values held at once
    kv_capacity_bytes: int  # the preallocated cache
    cache_growths: int
    warnings: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def line(self) -> str:
        return (
            f"{self.tokens} tokens in {self.steps} steps by {self.threads} thread"
            f"{'s' if self.threads != 1 else ''} (max {self.max_width} at once); {self.tokens_per_s:.1f} tokens/s, "
            f"{self.wall_s:.2f} s wall; parallelism {self.parallelism:.2f}, theoretical speedup "
            f"{self.theoretical_speedup:.2f}"
        )


@dataclass(frozen=True)
class Generation:
    text: str  # the stitched answer
    annotated: str  # the answer with its Pasta-Lang tags, each async block after its promise
    graph: ThreadGraph
    stats: Stats
    warnings: tuple[str, ...] = ()
    thread_steps: dict[int, tuple[int, int]] = field(default_factory=dict)  # thread -> (first, last step)
    activity: tuple[tuple[int, int, int], ...] = ()  # (step, thread, tokens placed); step 0 is the prompt's
    step_times: tuple[tuple[float, float], ...] = ()  # per step: start and end, seconds from the run's start
    topics: dict[int, str | None] = field(default_factory=dict)  # per thread
    parents: dict[int, int | None] = field(default_factory=dict)  # per thread (None for the main one)
    thread_text: dict[int, str] = field(default_factory=dict)  # per thread: its own text, without its children's


@dataclass(frozen=True)
class StepEvent:
    step: int
    new_text: dict[int, str]  # per thread, the text it wrote in this step
    status: dict[int, str]  # per live thread
    parents: dict[int, int | None]
    topics: dict[int, str | None]


@dataclass(frozen=True)
class DoneEvent:
    result: Generation


def template_chunks(
    source: str, tokenizer: Any, *, tags: bool = True, filename: str = "<template>"
) -> list[tuple[list[int], str]]:
    """A template's main-thread text as (tokens, text) chunks, each ending at a promise or a sync.

    A template is Pasta-Lang whose promises have no ``<async>`` block: the model
    writes them.  Any other error is an ``InputError`` with the diagnostics.
    Without ``tags`` the tags are scanned (so threads fork and join) but put no
    tokens in the context; a chunk left without tokens joins the one before."""
    result = check(source, mode="strict", filename=filename)
    errors = [d for d in result.errors if d.code != "E304"]
    if errors or result.document is None:
        raise InputError("the template has errors:\n" + format_text(errors, source, filename))
    chunks: list[tuple[list[int], str]] = []
    tokens: list[int] = []
    text: list[str] = []
    for node in result.document.body:
        match node:
            case Async():
                raise InputError(
                    f"{filename}:{node.span.start}: a template's promises are fulfilled by the model; "
                    "remove the <async> block"
                )
            case Text(value=value):
                piece = value
            case Promise() | Sync():
                piece = to_source(Document((node,)))
        if tags or isinstance(node, Text):
            tokens.extend(tokenizer.encode(piece, add_special_tokens=False))
        text.append(piece)
        if isinstance(node, Promise | Sync):
            if tokens or not chunks:
                chunks.append((tokens, "".join(text)))
            else:
                chunks[-1] = (chunks[-1][0], chunks[-1][1] + "".join(text))
            tokens, text = [], []
    if tokens or text:
        chunks.append((tokens, "".join(text)))
    return chunks


@dataclass
class Run:
    """A run's live state: its scheduler (threads, graph), its runner (cache; logits when kept)."""

    sched: Scheduler
    runner: Runner | RowRunner
    prompt_tokens: int
    started: float
    times: list[tuple[float, float]] = field(default_factory=list)
    max_width: int = 0


class Engine:
    last_run: Run | None = None  # the current or last run, for tests, benchmarks and partial results

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        name: str = "model",
        positions: PositionOptions | None = None,
        kernels: str = "stock",
        progress: bool = False,
        repetition_penalty: float | None = None,
    ) -> None:
        """``repetition_penalty`` is the model's own (its adapter's ``pastac.json``): runs whose sampling
        options leave it unset use it.  ``kernels="tuned"`` times the linear layers' kernels on this machine
        and decodes with the fastest per shape and row count (``pastac.backend.linear``; cached on disk);
        ``"stock"`` keeps ``F.linear``."""
        check_architecture(model)
        if kernels not in KERNEL_MODES:
            raise ValueError(f"kernels must be one of {', '.join(KERNEL_MODES)}, not {kernels!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.positions = positions or PositionOptions()  # what the model was trained with (its adapter says)
        if repetition_penalty is not None and not repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, not {repetition_penalty}")
        self.repetition_penalty = repetition_penalty
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos: tuple[int, ...] = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (eos,))
        self.exempt_tokens = penalty_exempt_ids(tokenizer, self.eos)  # never penalised for repeating
        self.guard = TagGuard(tokenizer, self.eos)  # its masks are made as the states are met, then kept
        self.kernels = kernels
        if kernels == "tuned":
            say = (lambda message: print(f"pastac: {message}", file=sys.stderr)) if progress else None
            tune_linears(model, cache=cache_dir() / "kernels", progress=say)

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        device: str = "cpu",
        dtype: str = "float32",
        adapter: str | None = DEFAULT_ADAPTER,
        kernels: str = "tuned",
        progress: bool = True,
    ) -> Engine:
        """An engine over ``load_model(model, ...)``.  By default the default model comes with the Pasta-Lang
        adapter shipped in pastac (``adapter=None`` for the base model alone); another model has no adapter
        unless ``adapter`` names one.  The linear layers' kernels are tuned (``kernels="stock"``: not)."""
        loaded = load_model(model, device=device, dtype=dtype, adapter=adapter, progress=progress)
        settings = loaded.settings
        positions = None
        if "policy" in settings or "unit" in settings:
            defaults = PositionOptions()
            try:
                positions = PositionOptions(
                    policy=settings.get("policy", defaults.policy), unit=int(settings.get("unit", defaults.unit))
                )
            except (TypeError, ValueError) as error:
                raise ModelError(f"the adapter's {ADAPTER_SETTINGS} has bad position settings: {error}") from None
        generation = settings.get("generation")
        penalty = generation.get("repetition_penalty") if isinstance(generation, dict) else None
        if penalty is not None and (not isinstance(penalty, int | float) or isinstance(penalty, bool) or penalty <= 0):
            raise ModelError(
                f"the adapter's {ADAPTER_SETTINGS} has a bad generation.repetition_penalty: {penalty!r} (a number > 0)"
            )
        return cls(
            loaded.model,
            loaded.tokenizer,
            name=loaded.name,
            positions=positions,
            kernels=kernels,
            progress=progress,
            repetition_penalty=None if penalty is None else float(penalty),
        )

    def prompt_ids(self, prompt: str, *, chat: bool = True) -> list[int]:
        return prompt_ids(self.tokenizer, prompt, chat=chat)

    def generate(
        self,
        prompt: str,
        options: RunOptions = RunOptions(),
        *,
        template: str | None = None,
        replay: str | None = None,
        keep_logits: bool = False,
        runner: RunnerFactory | None = None,
    ) -> Generation:
        result = None
        for event in self.stream(
            prompt, options, template=template, replay=replay, keep_logits=keep_logits, runner=runner
        ):
            if isinstance(event, DoneEvent):
                result = event.result
        assert result is not None
        return result

    def stream(
        self,
        prompt: str,
        options: RunOptions = RunOptions(),
        *,
        template: str | None = None,
        replay: str | None = None,
        keep_logits: bool = False,
        runner: RunnerFactory | None = None,
    ) -> Iterator[StepEvent | DoneEvent]:
        """Decode, yielding a ``StepEvent`` after every step and a ``DoneEvent`` at the end.

        ``runner`` makes the runner from the model and a cache capacity (default: the packed ``Runner``;
        the benchmark passes the row runners of the strategies pastac is compared with)."""
        limits = options.limits
        nesting = max(DEFAULT_MAX_DEPTH, limits.max_depth)  # the nesting the answer may have, forked or inline
        if options.mode is Mode.SEQUENTIAL:
            limits = replace(limits, max_depth=0)
        replayed = None
        if replay is not None:
            parsed = check(replay, mode="strict", max_depth=max(limits.max_depth, 64))
            if parsed.errors or parsed.document is None:
                errors = format_text(parsed.errors, replay, "<replay>")
                raise InputError("the replayed document has errors:\n" + errors)
            replayed = Replay(parsed.document, self.tokenizer, max_depth=limits.max_depth)
            big = replayed.tokens() + 1
            limits = replace(
                limits,
                max_new_tokens=max(limits.max_new_tokens, big),
                max_total_tokens=max(limits.max_total_tokens, big),
            )
        chunks = None
        if template is not None:
            chunks = template_chunks(template, self.tokenizer, tags=options.template_tags)

        started = time.perf_counter()
        ids = self.prompt_ids(prompt, chat=options.chat)
        if not ids:
            raise InputError("the prompt is empty")
        tags = template is None or options.template_tags
        stop = options.child_stop if options.child_stop is not None or template is None else "\n"
        positions = options.positions or self.positions
        guard = self.guard if options.tag_guard and replayed is None else None
        jump = options.jump_forward and (guard is not None or replayed is not None)
        n = options.sampling.sibling_ngram
        repeats = UnseenNgrams(n, self.exempt_tokens) if n and replayed is None else None
        sched = Scheduler(
            self.tokenizer,
            limits=limits,
            positions=positions,
            eos=self.eos,
            prompt_length=0,
            replay=replayed,
            tags=tags,
            child_stop=stop or None,
            guard=guard,
            max_nesting=nesting,
            jump=jump,
            repeats=repeats,
        )
        main = sched.threads[0]
        main.inputs = list(ids)
        main.markup = writes_markup(prompt)  # an answer may close the markup its prompt opened
        if chunks:
            sched.force(chunks)
        forced = sum(len(t) for t, _ in chunks or ())
        capacity = len(ids) + limits.max_total_tokens + forced + 64
        runner = (runner or Runner)(self.model, capacity)
        runner.keep_logits = keep_logits
        sampler = Sampler(
            options.sampling.resolved(self.repetition_penalty), device=runner.device, exempt=self.exempt_tokens
        )
        self.last_run = run = Run(sched, runner, len(ids), started)
        seen: dict[int, int] = {}
        while not sched.done:
            plan = sched.plan()
            if not plan.tokens:
                break
            runner.reserve(max(plan.slots) + 1, max(sched.threads) + 1)
            begun = time.perf_counter() - started
            tokens = runner.step(plan, sampler)
            sched.advance(tokens)
            run.times.append((begun, time.perf_counter() - started))
            if len(run.times) > 1:
                run.max_width = max(run.max_width, len(set(plan.threads)))
            yield self._event(sched, seen)
        yield DoneEvent(self._result(run))

    def partial(self) -> Generation | None:
        """The current (or last) run as it stands: what was decoded so far, e.g. after an interrupt."""
        return None if self.last_run is None else self._result(self.last_run)

    def _event(self, sched: Scheduler, seen: dict[int, int]) -> StepEvent:
        new: dict[int, str] = {}
        for tid, thread in sched.threads.items():
            pieces = thread.pieces
            start = seen.get(tid, 0)
            text = "".join(v for k, v in pieces[start:] if k == "text")
            seen[tid] = len(pieces)
            if text:
                new[tid] = text
        return StepEvent(
            sched.step_no,
            new,
            {t: str(th.status) for t, th in sched.threads.items()},
            {t: th.parent for t, th in sched.threads.items()},
            {t: th.topic for t, th in sched.threads.items()},
        )

    def _result(self, run: Run) -> Generation:
        sched, runner, prompt_tokens = run.sched, run.runner, run.prompt_tokens
        wall = time.perf_counter() - run.started
        prefill_s = run.times[0][1] if run.times else 0.0
        steps, max_width = max(len(run.times) - 1, 0), run.max_width
        placed = sum(n for _, _, n in sched.activity) - prompt_tokens
        decode_s = max(wall - prefill_s, 1e-9)
        graph = sched.graph
        theoretical = critical_path(graph, schedule(graph)).theoretical_speedup  # a cut-short run's graph too
        threads = sum(1 for t in sched.threads.values() if t.fed)
        stats = Stats(
            threads=threads,
            steps=steps,
            tokens=placed,
            generated=sched.chosen - sched.jumped,
            jumped=sched.jumped,
            prompt_tokens=prompt_tokens,
            max_width=max_width,
            wall_s=wall,
            prefill_s=prefill_s,
            decode_s=decode_s,
            tokens_per_s=placed / decode_s,
            parallelism=placed / steps if steps else 1.0,
            theoretical_speedup=theoretical,
            kv_bytes=runner.cache.used_bytes(),
            kv_peak_bytes=runner.cache.peak_bytes(),
            kv_capacity_bytes=runner.cache.nbytes(),
            cache_growths=runner.cache.growths,
            warnings=len(sched.warnings),
        )
        warnings = tuple(f"t{w.thread}: {w.message}" for w in sched.warnings)
        spans = {t: (th.first_step or 0, th.last_step or 0) for t, th in sched.threads.items()}
        own = {t: "".join(v for k, v in th.pieces if k == "text") for t, th in sched.threads.items()}
        return Generation(
            sched.stitched(),
            sched.annotated(),
            graph,
            stats,
            warnings,
            spans,
            tuple(sched.activity),
            tuple(run.times),
            {t: th.topic for t, th in sched.threads.items()},
            {t: th.parent for t, th in sched.threads.items()},
            own,
        )
