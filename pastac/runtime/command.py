"""``pastac run``: decode a model's answer with its promised parts in parallel.

Prints the stitched answer on standard output and a stats line on standard
error.  Exit status: 0 done, 1 a template or replayed document has errors,
2 usage error, unreadable input, or a model that cannot be used.  On Ctrl-C
what was decoded so far is printed before exiting (130).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pastac.runtime.repeats import DEFAULT_SIBLING_NGRAM

if TYPE_CHECKING:
    from pastac.runtime.engine import Generation

PROMPT_SUFFIXES = (".txt", ".md", ".prompt", ".pasta", ".json")


def model_arguments(group: argparse._ArgumentGroup, source: argparse._MutuallyExclusiveGroup | None = None) -> None:
    """--model (in ``source`` when given), --device and --dtype: the options of every command that loads a model."""
    (source or group).add_argument(
        "--model",
        metavar="PATH",
        help="a Hugging Face model folder or a .gguf file (default: the embedded SmolLM2-135M-Instruct)",
    )
    group.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    group.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")


def kernel_arguments(group: argparse._ArgumentGroup) -> None:
    """--kernels: the engine's linear-layer kernels, tuned on this machine or stock ``F.linear``."""
    group.add_argument(
        "--kernels",
        choices=("tuned", "stock"),
        default="tuned",
        help="tuned (default): decode steps use the fastest of several matrix-product calls per "
        "weight shape and row count, timed once on this machine and cached; stock: F.linear",
    )


def penalty_arguments(group: argparse._ActionsContainer) -> None:
    """--repetition-penalty X: Hugging Face's, over what each thread sees; default the model's own."""
    group.add_argument(
        "--repetition-penalty",
        type=float,
        default=None,
        metavar="X",
        help="divide the logit of every token already in a thread's context by X (Hugging Face's "
        "repetition_penalty; the tags' own tokens are exempt). Default: the adapter's setting "
        "(pastac.json), else 1, which is none",
    )
    group.add_argument(
        "--penalty-scope",
        choices=("thread", "answer"),
        default="thread",
        help="what the repetition penalty counts as already written: thread (default) what the "
        "thread sees; answer: the prompt and every token any thread has written so far, as "
        "when one thread writes the whole answer",
    )
    group.add_argument(
        "--sibling-ngram",
        type=int,
        default=DEFAULT_SIBLING_NGRAM,
        metavar="N",
        help="a thread may not write a token that repeats an N-gram of tokens written by a thread "
        "it cannot see (a sibling, say); N-grams through a tag's tokens do not count. 0 turns it "
        f"off. Default: {DEFAULT_SIBLING_NGRAM}",
    )


def guard_arguments(group: argparse._ActionsContainer) -> None:
    """--no-tag-guard: let the model write malformed tags (the runtime then recovers and warns)."""
    group.add_argument(
        "--no-tag-guard",
        dest="tag_guard",
        action="store_false",
        help="do not constrain the model's tags to well-formed ones allowed where it writes them "
        "(a <sync/> needs a promise to wait for, a </async> a block to close); malformed tags "
        "are then recovered from, with a warning",
    )
    group.add_argument(
        "--no-jump-forward",
        dest="jump_forward",
        action="store_false",
        help='sample every token of a tag, even the text its canonical form forces (topic=", '
        'tokens=", />), which by default is fed in one step with the token before it',
    )


def adapter_arguments(group: argparse._ArgumentGroup) -> None:
    """--adapter DIR or --no-adapter; neither: pastac's Pasta-Lang adapter with the default model."""
    from pastac.adapters import DEFAULT_ADAPTER

    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--adapter",
        metavar="DIR",
        default=DEFAULT_ADAPTER,
        help="a PEFT adapter folder, merged into the model (default: the Pasta-Lang adapter shipped "
        "with pastac for the default model; none for a --model of your own)",
    )
    choice.add_argument("--no-adapter", dest="adapter", action="store_const", const=None, help="the base model alone")


def add_parser(sub: argparse._SubParsersAction, positive: Callable[[str], int], count: Callable[[str], int]) -> None:
    """Add ``run`` to the CLI; ``positive`` and ``count`` parse integers >= 1 and >= 0 (the CLI's own)."""
    from pastac.passes import Order, Policy

    p = sub.add_parser(
        "run",
        help="decode a model's answer, its promised parts in parallel",
        description="Decode the answer to a prompt with a causal LM. Whenever the answer (or --template) "
        "makes a promise, a new thread writes that part while the main thread goes on; all threads "
        "advance in the same forward passes over one KV cache. Prints the stitched answer; a stats "
        "line goes to stderr.",
    )
    p.add_argument(
        "prompt",
        metavar="PROMPT",
        help="the prompt: a file (.txt, .md, ...; '-' for standard input) or the text itself",
    )
    model = p.add_argument_group("model")
    model_arguments(model)
    adapter_arguments(model)
    kernel_arguments(model)
    model.add_argument("--no-chat", action="store_true", help="feed the prompt as is, without the chat template")
    how = p.add_argument_group("decoding")
    how.add_argument(
        "--mode",
        choices=("async", "sequential"),
        default="async",
        help="async (default): fork at promises; sequential: one thread, promises decoded inline",
    )
    source = how.add_mutually_exclusive_group()
    source.add_argument(
        "--template",
        metavar="FILE",
        help="Pasta-Lang whose main-thread text is given; the model writes what its promises promise",
    )
    source.add_argument(
        "--replay",
        metavar="FILE",
        help="teacher-force this annotated response through the model "
        "and the scheduler (measures the runtime, not the model)",
    )
    how.add_argument(
        "--template-tags",
        action="store_true",
        help="keep the template's tags in the model's context (for a model trained on Pasta-Lang)",
    )
    how.add_argument(
        "--child-stop",
        metavar="TEXT",
        default=None,
        help="a child's part ends where it writes TEXT (default with --template: a line break; '' for none)",
    )
    how.add_argument("--max-new-tokens", type=positive, default=256, metavar="N", help="per thread (default 256)")
    how.add_argument(
        "--max-total-tokens", type=positive, default=2048, metavar="N", help="all threads together (default 2048)"
    )
    how.add_argument(
        "--max-width",
        type=positive,
        default=None,
        metavar="N",
        help="at most N threads decode at once, the main one included; later promises wait",
    )
    how.add_argument(
        "--max-depth", type=count, default=2, metavar="N", help="promises deeper than N are decoded inline (default 2)"
    )
    how.add_argument(
        "--order",
        choices=[str(o) for o in Order],
        default=str(Order.FIFO),
        help="which waiting promise starts first when a slot frees",
    )
    how.add_argument(
        "--policy",
        choices=("predicted", "restart", "lockstep"),
        default=None,
        help=f"position ids after a promise (default: the adapter's, else {Policy.PREDICTED}: skip tokens= x --unit)",
    )
    how.add_argument(
        "--unit",
        type=count,
        default=None,
        metavar="N",
        help='tokens="K" predicts K x N tokens (default: the adapter\'s, else 10)',
    )
    how.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy")
    how.add_argument("--top-p", type=float, default=1.0)
    how.add_argument("--seed", type=int, default=None)
    penalty_arguments(how)
    guard_arguments(how)
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help='one JSON object: {"text", "annotated", "stats", ...}')
    out.add_argument("--show-annotated", action="store_true", help="also print the answer with its tags")
    out.add_argument("--live", action="store_true", help="show the threads filling in side by side (terminal)")
    out.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace of the threads over the steps")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress or stats on stderr")
    p.set_defaults(run=run_command)


def _prompt(arg: str) -> str:
    from pastac.cli import UsageError, _read

    if arg == "-" or Path(arg).is_file():
        return _read(arg)
    if Path(arg).is_dir():
        raise UsageError(f"cannot read '{arg}': it is a directory")
    if not any(c.isspace() for c in arg) and arg.lower().endswith(PROMPT_SUFFIXES):
        raise UsageError(f"cannot read '{arg}': no such file (pass the prompt's text itself, or an existing file)")
    return arg


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.cli import EXIT_ERRORS, EXIT_OK, UsageError, _read
    from pastac.passes import PositionOptions
    from pastac.runtime.engine import DoneEvent, Engine, InputError, RunOptions
    from pastac.runtime.models import ModelError
    from pastac.runtime.sampling import SamplingOptions
    from pastac.runtime.scheduler import Limits

    prompt = _prompt(args.prompt)
    template = _read(args.template) if args.template else None
    replay = _read(args.replay) if args.replay else None
    try:
        options = RunOptions(
            mode=args.mode,
            limits=Limits(
                max_new_tokens=args.max_new_tokens,
                max_total_tokens=args.max_total_tokens,
                max_width=args.max_width,
                max_depth=args.max_depth,
                order=args.order,
            ),
            sampling=SamplingOptions(
                temperature=args.temperature,
                top_p=args.top_p,
                seed=args.seed,
                repetition_penalty=args.repetition_penalty,
                penalty_scope=args.penalty_scope,
                sibling_ngram=args.sibling_ngram,
            ),
            chat=not args.no_chat,
            template_tags=args.template_tags,
            tag_guard=args.tag_guard,
            jump_forward=args.jump_forward,
            child_stop=None if args.child_stop is None else args.child_stop.encode().decode("unicode_escape"),
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    try:
        engine = Engine.from_pretrained(
            args.model,
            device=args.device,
            dtype=args.dtype,
            adapter=args.adapter,
            kernels=args.kernels,
            progress=not args.quiet,
        )
    except ModelError as error:
        raise UsageError(str(error)) from None
    trained = engine.positions  # the adapter's position settings, unless the command line says otherwise
    try:
        positions = PositionOptions(
            policy=args.policy or trained.policy, unit=trained.unit if args.unit is None else args.unit
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    options = replace(options, positions=positions)

    live = None
    if args.live:
        from pastac.viz.live import LiveView

        live = LiveView(sys.stderr)
    result: Generation | None = None
    try:
        for event in engine.stream(prompt, options, template=template, replay=replay):
            if isinstance(event, DoneEvent):
                result = event.result
            elif live is not None:
                live.update(event)
    except InputError as error:
        print(f"pastac: error: {error}", file=sys.stderr)
        return EXIT_ERRORS
    except KeyboardInterrupt:
        partial = engine.partial()
        if live is not None:
            live.stop()
        if partial is not None:
            out.write(partial.text + "\n")
            print("pastac: interrupted; the text above is what was decoded so far", file=sys.stderr)
        return 130
    finally:
        if live is not None:
            live.stop()
    assert result is not None
    if args.json:
        out.write(
            json.dumps(
                {
                    "text": result.text,
                    "annotated": result.annotated,
                    "stats": result.stats.to_json(),
                    "warnings": list(result.warnings),
                    "model": engine.name,
                    "mode": args.mode,
                },
                ensure_ascii=False,
                indent=2,
            )
            + "\n"
        )
    else:
        out.write(result.text.rstrip("\n") + "\n")
        if args.show_annotated:
            out.write("\n--- annotated ---\n" + result.annotated.rstrip("\n") + "\n")
    if not args.quiet:
        for warning in result.warnings:
            print(f"pastac: warning: {warning}", file=sys.stderr)
        print(f"pastac: {result.stats.line()}", file=sys.stderr)
    if args.trace:  # after the answer: an unwritable trace file loses nothing decoded
        _write_trace(args.trace, result, engine.name)
    return EXIT_OK


def trace_events(result: Generation, name: str) -> dict[str, object]:
    """A Chrome/Perfetto trace: one track per thread, one slice per step it decoded in (time in ms)."""
    times = result.step_times
    events: list[dict[str, object]] = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": name}}]
    topics = {t: (th_topic or "main") for t, th_topic in result.topics.items()}
    for thread, topic in topics.items():
        events.append(
            {"name": "thread_name", "ph": "M", "pid": 1, "tid": thread, "args": {"name": f"t{thread} {topic}"}}
        )
    for step, thread, tokens in result.activity:
        start, end = times[step]
        events.append(
            {
                "name": topics.get(thread, f"t{thread}"),
                "cat": "decode",
                "ph": "X",
                "pid": 1,
                "tid": thread,
                "ts": start * 1e6,
                "dur": max(end - start, 1e-6) * 1e6,
                "args": {"step": step, "tokens": tokens},
            }
        )
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def _write_trace(path: str, result: Generation, name: str) -> None:
    from pastac.cli import UsageError

    try:
        Path(path).write_text(json.dumps(trace_events(result, name)), encoding="utf-8")
    except OSError as error:
        raise UsageError(f"cannot write '{path}': {error.strerror}") from None
