"""``pastac run``: decode a model's answer with its promised parts in parallel.

Prints the stitched answer on standard output and a stats line on standard
error.  Exit status: 0 done, 1 a template or replayed document has errors,
2 usage error, unreadable input, a --trace file that may not or cannot be
written (an input of the command; checked before decoding), or a model that
cannot be used.  On Ctrl-C what was decoded so far is printed (as JSON with
``--json``) before exiting (130).  The trace replaces its file atomically.

The prompt is never guessed from the file system: the positional PROMPT is its
text (a lone ``-`` reads standard input), ``-f FILE`` / ``--prompt-file FILE``
reads a file; exactly one of the two is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, TextIO

from pastac.cli.common import EXIT_ERRORS, EXIT_INTERRUPTED, EXIT_OK, UsageError, escaped, read_input
from pastac.cli.options import (
    adapter_options,
    budget_options,
    chat_option,
    depth_option,
    guard_options,
    kernel_options,
    load_engine,
    model_options,
    penalty_options,
    position_options,
    sampling_options,
    stop_option,
    width_options,
)
from pastac.grammar.parser import DEFAULT_MAX_DEPTH
from pastac.passes.positions import PositionOptions
from pastac.runtime.options import Mode

if TYPE_CHECKING:
    from pastac.runtime.engine import Engine
    from pastac.runtime.results import Generation


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``run`` to the command line."""
    p = sub.add_parser(
        "run",
        help="decode a model's answer, its promised parts in parallel",
        description="Decode the answer to a prompt with a causal LM. Whenever the answer (or --template) "
        "makes a promise, a new thread writes that part while the main thread goes on; all threads "
        "advance in the same forward passes over one KV cache. Prints the stitched answer; a stats "
        "line goes to stderr.",
    )
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument(
        "prompt",
        metavar="PROMPT",
        nargs="?",
        help="the prompt's text, as it is ('-' alone: read it from standard input)",
    )
    prompt.add_argument(
        "-f",
        "--prompt-file",
        metavar="FILE",
        help="read the prompt from FILE, a UTF-8 text file ('-': standard input)",
    )
    model = p.add_argument_group("model")
    model_options(model)
    adapter_options(model)
    kernel_options(model)
    chat_option(model)
    how = p.add_argument_group("decoding")
    how.add_argument(
        "--mode",
        choices=[str(m) for m in Mode],
        default=str(Mode.ASYNC),
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
        help="teacher-force this annotated response through the model and the scheduler (measures the runtime, "
        "not the model)",
    )
    how.add_argument(
        "--template-tags",
        action="store_true",
        help="keep the template's tags in the model's context (for a model trained on Pasta-Lang)",
    )
    how.add_argument(
        "--child-stop",
        metavar="TEXT",
        type=escaped,
        default=None,
        help="a child's part ends where it writes TEXT (default with --template: a line break; '' for none)",
    )
    budget_options(how)
    width_options(how)
    depth_option(
        how,
        default=None,
        help=f"promises nested deeper than N are decoded inline (default: the adapter's, else {DEFAULT_MAX_DEPTH})",
    )
    position_options(how)
    sampling_options(how)
    stop_option(how)
    penalty_options(how)
    guard_options(how)
    out = p.add_argument_group("output")
    out.add_argument(
        "--json",
        action="store_true",
        help='one JSON object: {"text", "annotated", "token_ids", "finish_reason", "threads", "stats", ...}',
    )
    out.add_argument("--show-annotated", action="store_true", help="also print the answer with its tags")
    out.add_argument("--live", action="store_true", help="show the threads filling in side by side (terminal)")
    out.add_argument("--trace", metavar="FILE", help="write a Chrome/Perfetto trace of the threads over the steps")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress or stats on stderr")
    p.set_defaults(run=run_command)


def _prompt(args: argparse.Namespace) -> str:
    """The prompt the command line gives: PROMPT's text, or the file --prompt-file names ('-': stdin)."""
    if args.prompt_file is not None:
        return read_input(args.prompt_file)
    return read_input("-") if args.prompt == "-" else args.prompt


def run_options(args: argparse.Namespace) -> dict[str, object]:
    """The decoding options the command line gives, by the library's names; unset ones are left out (the
    engine then takes the adapter's settings, else the defaults)."""
    given = {
        "mode": args.mode,
        "max_new_tokens": args.max_new_tokens,
        "max_thread_tokens": args.max_thread_tokens,
        "max_width": args.max_width,
        "max_depth": args.max_depth,
        "order": args.order,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "seed": args.seed,
        "stop": tuple(args.stop),
        "repetition_penalty": args.repetition_penalty,
        "penalty_scope": args.penalty_scope,
        "sibling_ngram": args.sibling_ngram,
        "chat": args.chat,
        "template_tags": args.template_tags,
        "tag_guard": args.tag_guard,
        "jump_forward": args.jump_forward,
        "child_stop": args.child_stop,
        "policy": args.policy,
        "unit": args.unit,
    }
    return {name: value for name, value in given.items() if value is not None}


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    """``pastac run``: decode, print the stitched answer (or ``--json``) and the stats line."""
    from pastac.models import BudgetError, ModelError
    from pastac.runtime.options import RunOptions, with_options
    from pastac.runtime.results import DoneEvent
    from pastac.runtime.templates import InputError

    if args.trace:
        _check_trace(args)
    readers = [
        name
        for name, value in (
            ("PROMPT", args.prompt),
            ("--prompt-file", args.prompt_file),
            ("--template", args.template),
            ("--replay", args.replay),
        )
        if value == "-"
    ]
    if len(readers) > 1:  # the second would read an empty standard input
        raise UsageError(f"only one input can be read from standard input ('-'), not {' and '.join(readers)}")
    prompt = _prompt(args)
    template = read_input(args.template) if args.template else None
    replay = read_input(args.replay) if args.replay else None
    changes = run_options(args)
    try:  # checked before the model loads
        with_options(RunOptions(), PositionOptions(), **changes)
    except ValueError as error:
        raise UsageError(str(error)) from None
    engine: Engine | None = None
    live = None
    result: Generation | None = None
    try:  # Ctrl-C from here on, while the model loads, its kernels are tuned or the answer is decoded
        try:
            engine = load_engine(args, adapter=args.adapter)
        except ModelError as error:
            raise UsageError(str(error)) from None
        if args.live:
            from pastac.viz.live import LiveView

            live = LiveView(sys.stderr)
        for event in engine.stream(prompt, template=template, replay=replay, **changes):
            if isinstance(event, DoneEvent):
                result = event.result
            elif live is not None:
                live.update(event)
    except InputError as error:
        print(f"pastac: error: {error}", file=sys.stderr)
        return EXIT_ERRORS
    except BudgetError as error:  # a budget the model or the machine cannot hold: a usage error
        raise UsageError(str(error)) from None
    except KeyboardInterrupt:
        if live is not None:
            live.stop()
        return _interrupted(args, engine, out)
    finally:
        if live is not None:
            live.stop()
    assert engine is not None and result is not None
    if args.json:
        _write_json(result, engine.name, args.mode, out)
    else:
        out.write(result.text.rstrip("\n") + "\n")
        if args.show_annotated:
            out.write("\n--- annotated ---\n" + result.annotated.rstrip("\n") + "\n")
    if not args.quiet:
        for warning in result.warnings:
            print(f"pastac: warning: {warning}", file=sys.stderr)
        print(f"pastac: {result.stats.line()} ({result.finish_reason})", file=sys.stderr)
    if args.trace:  # after the answer: an unwritable trace file loses nothing decoded
        _write_trace(args.trace, result, engine.name)
    return EXIT_OK


def _write_json(result: Generation, model: str, mode: str, out: TextIO) -> None:
    report = result.to_json() | {"model": model, "mode": mode}
    out.write(json.dumps(report, ensure_ascii=False, indent=2) + "\n")


def _interrupted(args: argparse.Namespace, engine: Engine | None, out: TextIO) -> int:
    """Ctrl-C: what was decoded so far, if anything (as JSON with --json: the partial result, its finish reason
    ``interrupted``), and one line on stderr."""
    if engine is None or (partial := engine.partial()) is None or not (args.json or partial.text):
        print("pastac: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        _write_json(partial, engine.name, args.mode, out)
    else:
        out.write(partial.text.rstrip("\n") + "\n")
    print("pastac: interrupted; the answer above is what was decoded so far", file=sys.stderr)
    return EXIT_INTERRUPTED


def trace_events(result: Generation, name: str) -> dict[str, object]:
    """A Chrome/Perfetto trace: one track per thread, one slice per step it decoded in (time in ms)."""
    times = result.step_times
    events: list[dict[str, object]] = [{"name": "process_name", "ph": "M", "pid": 1, "args": {"name": name}}]
    topics = {t: (th.topic or "main") for t, th in result.threads.items()}
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


def _check_trace(args: argparse.Namespace) -> None:
    """Refuse a --trace file that is one of the files the command reads."""
    from pastac.output import OutputError, refuse_input

    inputs = [("--prompt-file", args.prompt_file), ("--template", args.template), ("--replay", args.replay)]
    try:
        refuse_input(args.trace, inputs, what="--trace")
    except OutputError as error:
        raise UsageError(str(error)) from None


def _write_trace(path: str, result: Generation, name: str) -> None:
    from pastac.output import OutputError, write_text

    try:
        write_text(path, json.dumps(trace_events(result, name)))
    except OutputError as error:
        raise UsageError(str(error)) from None
