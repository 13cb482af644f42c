"""The engine: a model, its tokenizer, and the decode loop that joins scheduler and runner.

    engine = Engine.from_pretrained()                 # the embedded default model and its adapter
    result = engine.generate("Give me three tips for sleeping better.", max_new_tokens=120, temperature=0.7, seed=1)
    result.text, result.annotated, result.token_ids, result.finish_reason, result.threads, result.stats

A prompt is text, or chat messages (``[{"role": "user", "content": ...}]``); a
list of prompts gives a list of answers.  Options come as a ``RunOptions`` or as
keywords by their flat names (``pastac.runtime.options``).  Modes: ``async``
(threads fork at promises), ``sequential`` (the same engine with every promise
decoded inline: one thread, the baseline), ``replay`` (the tokens of an
annotated response teacher-forced through model and scheduler), and templates
(the main thread's text is given, the model fulfils its promises).

An adapter's settings (``pastac.adapters.settings``) are the engine's defaults:
a run decodes with every one of them unless its options say otherwise, and then
its warnings say so.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from pastac.adapters import DEFAULT_ADAPTER
from pastac.adapters.settings import AdapterSettings
from pastac.backend.attention import BackendError, resolve_attention
from pastac.backend.decoder import FusedDecoder, resolve_forward
from pastac.backend.linear import tune_linears
from pastac.backend.quant import resolve_quant
from pastac.backend.visibility import Views
from pastac.grammar import check
from pastac.grammar.diagnostics import format_text
from pastac.grammar.prefix import writes_markup
from pastac.ir.graph import MAIN
from pastac.models import PromptError, cache_dir, check_architecture, check_budget, load_model, messages_ids, prompt_ids
from pastac.passes import critical_path, schedule
from pastac.runtime.guard import TagGuard
from pastac.runtime.options import RunOptions, with_options
from pastac.runtime.repeats import UnseenNgrams
from pastac.runtime.replay import Replay
from pastac.runtime.results import DoneEvent, Generation, Stats, StepEvent, ThreadResult
from pastac.runtime.rows import RowRunner
from pastac.runtime.runner import Runner, StepPlan
from pastac.runtime.sampling import Sampler, penalty_exempt_ids
from pastac.runtime.scheduler import Scheduler
from pastac.runtime.static import ROUND, resolve_decode_step
from pastac.runtime.templates import InputError, template_chunks
from pastac.runtime.threads import FinishReason, Status, Thread

RunnerFactory = Callable[[torch.nn.Module, int], Any]
KERNEL_MODES = ("tuned", "stock")  # pastac.backend.linear.KERNELS are the kernels themselves

Message = Mapping[str, str]
Prompt = str | Sequence[Message]


@dataclass
class Run:
    """A run's live state: its scheduler (threads, graph), runner (cache; logits when kept) and views."""

    sched: Scheduler
    runner: Runner | RowRunner
    views: Views
    sampler: Sampler
    prompt_tokens: int
    started: float
    notes: list[str] = field(default_factory=list)  # warnings about the run as a whole (settings overridden)
    times: list[tuple[float, float]] = field(default_factory=list)
    max_width: int = 0
    prefill_steps: int = 1  # the steps that placed the prompt (more than one when it went in chunks)


def is_messages(prompt: object) -> bool:
    """Whether ``prompt`` is one conversation: a sequence of chat messages (mappings), not of prompts."""
    return (
        isinstance(prompt, Sequence)
        and not isinstance(prompt, str)
        and len(prompt) > 0
        and all(isinstance(m, Mapping) for m in prompt)
    )


def _stop_prefix(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that begins one of ``stops`` without completing it."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if stop.startswith(text[len(text) - n :]):
                longest = n
                break
    return longest


class Engine:
    """Decodes answers with a causal LM, each promised part in a thread of its own (see the module's docstring)."""

    last_run: Run | None = None  # the current or last run, for tests, benchmarks and partial results

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        name: str = "model",
        settings: AdapterSettings | None = None,
        kernels: str = "stock",
        attention: str = "auto",
        decode_step: str = "auto",
        forward: str = "auto",
        quant: str = "none",
        progress: bool = False,
    ) -> None:
        """``settings``: how the model's adapter was trained (its ``pastac.json``); runs decode with them
        unless their options say otherwise.  ``kernels="tuned"`` times the linear layers' kernels on this
        machine and decodes with the fastest per shape and row count (``pastac.backend.linear``; cached on
        disk); ``"stock"`` keeps ``F.linear``.  ``attention``: ``sdpa`` (a dense mask per step), ``triton``
        or ``flex`` (kernels that read the visibility bitset), ``auto`` (Triton on CUDA, sdpa on the CPU).
        ``decode_step``: ``eager``, ``static`` (padded to fixed widths over persistent buffers, each width's
        forward captured once as a CUDA graph on a GPU: ``pastac.runtime.static``), ``auto`` (static on CUDA
        with a branched attention).  ``forward``: ``hf`` (the model's own forward), ``fused``
        (``pastac.backend.decoder``: the same forward from the same weights in far fewer operations), ``auto``
        (fused on the CPU where the architecture is supported); ``quant``: ``none``, ``fp16`` or ``int8``, the
        fused decoder's packed weights, or ``auto`` (fp16 where it runs: ``pastac.backend.quant``).
        ``BackendError`` (a ``ValueError``) names a choice that cannot run on the model's device."""
        check_architecture(model)
        if kernels not in KERNEL_MODES:
            raise ValueError(f"kernels must be one of {', '.join(KERNEL_MODES)}, not {kernels!r}")
        device = next(model.parameters()).device
        self.attention = resolve_attention(attention, device)
        self.decode_step = resolve_decode_step(decode_step, self.attention, device)
        self.forward = resolve_forward(forward, model, quant)
        if quant not in ("none", "auto") and self.decode_step == "static":
            raise BackendError(f"--quant {quant} runs in the fused decoder; the static step runs the model's own")
        self.quant = resolve_quant(quant, model, self.forward) if self.decode_step != "static" else "none"
        # the eager steps' forward (the static step runs the model's own, for its CUDA graphs)
        self.decoder = FusedDecoder(model, quant=self.quant) if self.forward == "fused" else None
        self._idle: Runner | None = None  # a static runner no run holds now, kept for its captured graphs
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.settings = settings  # the adapter's, as recorded; None: no adapter settings
        self.defaults = settings or AdapterSettings()  # what a run decodes with where its options say nothing
        eos = model.generation_config.eos_token_id if model.generation_config is not None else None
        eos = eos if eos is not None else tokenizer.eos_token_id
        self.eos: tuple[int, ...] = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (eos,))
        self.exempt_tokens = penalty_exempt_ids(tokenizer, self.eos)  # never penalised for repeating
        self.guard = TagGuard(tokenizer, self.eos)  # its masks are made as the states are met, then kept
        self.kernels = kernels
        if kernels == "tuned":
            say = (lambda message: print(f"pastac: {message}", file=sys.stderr)) if progress else None
            tune_linears(model, cache=cache_dir() / "kernels", progress=say)

    @property
    def positions(self) -> Any:
        """The position options runs decode with unless theirs say otherwise (the adapter's)."""
        return self.defaults.positions

    @property
    def repetition_penalty(self) -> float | None:
        """The repetition penalty runs decode with when theirs leave it unset (the adapter's)."""
        return self.defaults.repetition_penalty

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype = "float32",
        adapter: str | None = DEFAULT_ADAPTER,
        kernels: str = "tuned",
        attention: str = "auto",
        decode_step: str = "auto",
        forward: str = "auto",
        quant: str = "auto",
        progress: bool = True,
    ) -> Engine:
        """An engine over ``load_model(model, ...)``: a model folder, a GGUF file, or (None) the embedded default
        model, SmolLM2-135M-Instruct, which comes with the Pasta-Lang adapter shipped in pastac (``adapter=None``
        for the base model alone); another model has no adapter unless ``adapter`` names one.  ``dtype`` is a
        ``torch.dtype`` or its name.  The linear layers' kernels are tuned on the CPU (``kernels="stock"``: not);
        ``attention``, ``decode_step``, ``forward`` and ``quant`` are as for the constructor.
        Raises ``ModelError`` for a model or adapter that cannot be used."""
        loaded = load_model(model, device=device, dtype=dtype, adapter=adapter, progress=progress)
        return cls(
            loaded.model,
            loaded.tokenizer,
            name=loaded.name,
            settings=loaded.settings,
            kernels=kernels,
            attention=attention,
            decode_step=decode_step,
            forward=forward,
            quant=quant,
            progress=progress,
        )

    def prompt_ids(self, prompt: Prompt, *, chat: bool | None = None) -> list[int]:
        """The token ids the model is prefilled with for ``prompt`` (text, or chat messages), laid out by the
        chat template unless ``chat`` is False (None: the adapter's setting, else the template)."""
        chat = self.defaults.chat if chat is None else chat
        if isinstance(prompt, str):
            return prompt_ids(self.tokenizer, prompt, chat=chat)
        if not chat:
            raise InputError("chat messages are laid out by the chat template; chat=False takes a text prompt")
        try:
            return messages_ids(self.tokenizer, prompt)
        except PromptError as error:
            raise InputError(f"{self.name}: {error}") from None

    # -- decoding --------------------------------------------------------------------------------------------

    def generate(
        self,
        prompt: Prompt | Sequence[Prompt],
        options: RunOptions | None = None,
        *,
        template: str | None = None,
        replay: str | None = None,
        keep_logits: bool = False,
        runner: RunnerFactory | None = None,
        **changes: Any,
    ) -> Generation | list[Generation]:
        """Decode the answer to ``prompt``: text, chat messages, or a list of either (then a list of answers,
        decoded one after the other).  ``options`` (default ``RunOptions()``) and ``changes`` by their flat
        names (``max_new_tokens=120, temperature=0.7, seed=1, stop=["\\n\\n"]``...; see
        ``pastac.runtime.options``) say how.  ``template``: Pasta-Lang whose main-thread text is given, the
        model writes what its promises promise.  ``replay``: an annotated response teacher-forced through the
        model and the scheduler.  ``runner`` makes the runner from the model and a cache capacity (default:
        the packed ``Runner``; the benchmark passes the row runners of the strategies pastac is compared
        with).  Raises ``InputError`` for an unusable prompt, template or replay, ``TypeError`` or
        ``ValueError`` for bad options."""
        if not isinstance(prompt, str) and not is_messages(prompt):
            if not isinstance(prompt, Sequence) or not prompt:
                raise InputError(f"a prompt is text, chat messages, or a non-empty list of them, not {prompt!r}")
            return [
                self._generate_one(p, options, changes, template, replay, keep_logits, runner)  # type: ignore[arg-type]
                for p in prompt
            ]
        return self._generate_one(prompt, options, changes, template, replay, keep_logits, runner)

    def _generate_one(
        self,
        prompt: Prompt,
        options: RunOptions | None,
        changes: dict[str, Any],
        template: str | None,
        replay: str | None,
        keep_logits: bool,
        runner: RunnerFactory | None,
    ) -> Generation:
        run = self.start_run(prompt, options, changes, template, replay, keep_logits, runner)
        for _ in self._steps(run):
            pass
        return self.generation(run)

    def stream(
        self,
        prompt: Prompt,
        options: RunOptions | None = None,
        *,
        template: str | None = None,
        replay: str | None = None,
        keep_logits: bool = False,
        runner: RunnerFactory | None = None,
        **changes: Any,
    ) -> Iterator[StepEvent | DoneEvent]:
        """Decode as ``generate`` does (one prompt), yielding a ``StepEvent`` after every step (the stitched
        answer so far and each thread's new text) and a ``DoneEvent`` with the answer at the end."""
        if not isinstance(prompt, str) and not is_messages(prompt):
            raise InputError("stream() decodes one prompt (text or chat messages); use generate() for a list")
        run = self.start_run(prompt, options, changes, template, replay, keep_logits, runner)
        seen: dict[int, int] = {}
        for _ in self._steps(run):
            yield self._event(run, seen)
        yield DoneEvent(self.generation(run))

    def partial(self) -> Generation | None:
        """The current (or last) run as it stands: what was decoded so far, e.g. after an interrupt (its
        unfinished threads and the answer then end with ``interrupted``)."""
        return None if self.last_run is None else self.generation(self.last_run, interrupted=True)

    def start_run(
        self,
        prompt: Prompt,
        options: RunOptions | None,
        changes: dict[str, Any],
        template: str | None,
        replay: str | None,
        keep_logits: bool,
        make_runner: RunnerFactory | None,
    ) -> Run:
        """A run's live state, ready for its first step (what ``generate`` and ``stream`` decode, and
        ``pastac.runtime.batch`` decodes beside other requests); the arguments are ``generate``'s, the runner
        made by ``make_runner(model, capacity)``.  Raises as ``generate`` does."""
        options = with_options(options or RunOptions(), self.defaults.positions, **changes)
        notes = self._overrides(options)
        limits = options.limits
        max_depth = self.defaults.max_depth if limits.max_depth is None else limits.max_depth
        nesting = max(self.defaults.max_depth, max_depth)  # the nesting the answer may have, forked or inline
        if options.mode == "sequential":
            max_depth = 0
        replayed = None
        if replay is not None:
            parsed = check(replay, mode="strict", max_depth=max(nesting, 64))
            if parsed.errors or parsed.document is None:
                errors = format_text(parsed.errors, replay, "<replay>")
                raise InputError("the replayed document has errors:\n" + errors)
            replayed = Replay(parsed.document, self.tokenizer, max_depth=max_depth)
            big = replayed.tokens() + 1
            limits = replace(
                limits,
                max_new_tokens=max(limits.max_new_tokens, big),
                max_thread_tokens=None if limits.max_thread_tokens is None else max(limits.max_thread_tokens, big),
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
        guard = self.guard if options.tag_guard and replayed is None else None
        jump = options.jump_forward and (guard is not None or replayed is not None)
        n = options.sampling.sibling_ngram
        repeats = UnseenNgrams(n, self.exempt_tokens) if n and replayed is None else None
        forced = sum(len(t) for t, _ in chunks or ())
        capacity = len(ids) + limits.max_new_tokens + forced + 64
        check_budget(self.model, prompt=len(ids), budget=limits.max_new_tokens, forced=forced, slots=capacity)
        runner = make_runner(self.model, capacity) if make_runner is not None else self._runner(capacity)
        runner.keep_logits = keep_logits
        views = Views(capacity, device=runner.device)
        sched = Scheduler(
            self.tokenizer,
            limits=limits,
            positions=options.positions or self.defaults.positions,
            eos=self.eos,
            views=views,
            max_depth=max_depth,
            max_nesting=nesting,
            replay=replayed,
            tags=tags,
            child_stop=stop or None,
            stop=options.stop,
            guard=guard,
            jump=jump,
            repeats=repeats,
        )
        main = sched.threads[0]
        main.inputs = list(ids)
        main.markup = writes_markup(prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt))
        if chunks:
            sched.force(chunks)
        sampler = Sampler(
            options.sampling.resolved(self.defaults.repetition_penalty), device=runner.device, exempt=self.exempt_tokens
        )
        self.last_run = run = Run(sched, runner, views, sampler, len(ids), started, notes)
        return run

    def _runner(self, capacity: int) -> Runner:
        """A packed runner of at least ``capacity`` slots: with the static step, the idle one when it is big
        enough (its graphs are captured already), else a new one rounded up for the runs after."""
        if self.decode_step != "static":
            return Runner(self.model, capacity, attention=self.attention, decoder=self.decoder)
        idle, self._idle = self._idle, None
        if idle is not None and idle.cache.capacity >= capacity:
            idle.reset()
            return idle
        capacity = -(-capacity // ROUND) * ROUND
        return Runner(self.model, capacity, attention=self.attention, decode_step="static", decoder=self.decoder)

    def _overrides(self, options: RunOptions) -> list[str]:
        """A warning for each setting of the adapter that ``options`` decode with another value."""
        s = self.settings
        if s is None:
            return []
        given: list[tuple[str, object, object]] = [
            ("max_depth", options.limits.max_depth, s.max_depth),
            ("chat", options.chat, s.chat),
        ]
        if options.positions is not None:
            given += [
                ("policy", str(options.positions.policy), str(s.policy)),
                ("unit", options.positions.unit, s.unit),
            ]
        if s.repetition_penalty is not None:
            given.append(("repetition_penalty", options.sampling.repetition_penalty, s.repetition_penalty))
        return [
            f"decoding with {name}={value!r}, though the adapter was trained with {name}={trained!r}"
            for name, value, trained in given
            if value is not None and value != trained
        ]

    def _steps(self, run: Run) -> Iterator[None]:
        """Run the decode loop, yielding after each step (the prompt's forward is the first)."""
        sched, runner = run.sched, run.runner
        while not sched.done:
            plan = sched.plan()
            if not plan.tokens:
                break
            runner.reserve(max(plan.slots) + 1)
            begun = time.perf_counter() - run.started
            tokens = runner.step(plan, run.views, run.sampler)
            self.advance(run, plan, tokens, begun)
            yield
        if isinstance(runner, Runner) and runner.static is not None:  # done with it: the next run may take it
            self._idle = runner

    @staticmethod
    def advance(run: Run, plan: StepPlan, tokens: list[int], begun: float) -> None:
        """After a step's forward (begun ``begun`` seconds into the run): hand the sampled ``tokens`` to the run's
        scheduler and record the step."""
        run.sched.advance(tokens)
        run.times.append((begun, time.perf_counter() - run.started))
        if run.sched.threads[MAIN].fed < run.prompt_tokens:  # a chunk of the prompt: the prefill goes on
            run.prefill_steps += 1
        elif len(run.times) > run.prefill_steps:
            run.max_width = max(run.max_width, len(set(plan.threads)))

    @staticmethod
    def settled(run: Run) -> str:
        """The start of the run's stitched answer that nothing decoded later can change
        (``Interpreter.settled``): a live thread's text that may begin a stop string is held back."""
        interp = run.sched.interp

        def holds(thread: Thread) -> int:
            ends = (*interp.stop, interp.child_stop) if thread.id and interp.child_stop else interp.stop
            return _stop_prefix(thread.text, ends)

        return interp.settled(holds)

    def _event(self, run: Run, seen: dict[int, int]) -> StepEvent:
        """The step's event; ``seen`` counts the characters of each thread's text already given as deltas.  A
        live thread's text that may be the start of a stop string is held back until it is known not to be."""
        sched = run.sched
        stops = sched.interp.stop
        deltas: dict[int, str] = {}
        for tid, thread in sched.threads.items():
            text = thread.text
            if thread.live:
                ends = (*stops, sched.interp.child_stop) if tid and sched.interp.child_stop else stops
                text = text[: len(text) - _stop_prefix(text, ends)]
            start = seen.get(tid, 0)
            if len(text) > start:
                deltas[tid] = text[start:]
                seen[tid] = len(text)
        return StepEvent(
            sched.step_no,
            sched.interp.stitched(),
            deltas,
            {t: str(th.status) for t, th in sched.threads.items()},
            {t: th.parent for t, th in sched.threads.items()},
            {t: th.topic for t, th in sched.threads.items()},
        )

    def generation(self, run: Run, *, interrupted: bool = False) -> Generation:
        """The run's answer as it stands: when ``interrupted``, its unfinished threads and the answer end so."""
        sched, runner, prompt_tokens = run.sched, run.runner, run.prompt_tokens
        wall = time.perf_counter() - run.started
        prefill_s = run.times[min(run.prefill_steps, len(run.times)) - 1][1] if run.times else 0.0
        steps, max_width = max(len(run.times) - run.prefill_steps, 0), run.max_width
        placed = sum(n for _, _, n in sched.activity) - prompt_tokens
        decode_s = max(wall - prefill_s, 1e-9)
        graph = sched.graph
        theoretical = critical_path(graph, schedule(graph)).theoretical_speedup  # a cut-short run's graph too
        threads = sum(1 for t in sched.threads.values() if t.fed)
        interp = sched.interp
        stats = Stats(
            threads=threads,
            steps=steps,
            tokens=placed,
            generated=interp.chosen - interp.jumped,
            jumped=interp.jumped,
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
            warnings=len(sched.warnings) + len(run.notes),
        )
        stopped = interrupted and not sched.done
        results: dict[int, ThreadResult] = {}
        for tid, th in sched.threads.items():
            finish = th.finish
            if stopped and th.live and th.status is not Status.QUEUED:
                finish = FinishReason.INTERRUPTED
            tokens = th.tokens[prompt_tokens:] if tid == 0 else th.tokens
            results[tid] = ThreadResult(
                tid, th.parent, th.topic, th.text, tuple(tokens), finish, (th.first_step or 0, th.last_step or 0)
            )
        if stopped:
            answer = FinishReason.INTERRUPTED
        elif any(t.finish_reason is FinishReason.LENGTH for t in results.values()):
            answer = FinishReason.LENGTH
        else:
            answer = FinishReason.STOP
        warnings = (*run.notes, *(f"t{w.thread}: {w.message}" for w in sched.warnings))
        return Generation(
            text=interp.stitched(),
            annotated=interp.annotated(),
            token_ids=tuple(interp.token_ids()[prompt_tokens:]),
            finish_reason=answer,
            threads=results,
            graph=graph,
            stats=stats,
            warnings=warnings,
            activity=tuple(sched.activity),
            step_times=tuple(run.times),
        )
