"""``pastac eval``: evaluate a Pasta-equipped model on a prompt set; a table, or ``--json``.

Exit status: 0 done, 2 usage error (an unreadable prompt file, a model or adapter that cannot be used).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TextIO


def add_parser(sub: argparse._SubParsersAction, positive: Callable[[str], int]) -> None:
    from pastac.runtime.command import (
        adapter_arguments,
        guard_arguments,
        kernel_arguments,
        model_arguments,
        penalty_arguments,
    )

    p = sub.add_parser(
        "eval", help="evaluate a Pasta-equipped model: valid annotations, forks, speedups, quality proxies",
        description="For each prompt, decode with the adapted model and record whether the annotation is valid "
                    "as written, the threads, the theoretical and measured speedups (vs the same text by one "
                    "thread, and vs Hugging Face generate of the base model), the base model's log-likelihood "
                    "of the stitched answer vs of its own answer, and the overlap between sibling threads vs "
                    "between the items of the base answer.")
    p.add_argument("--prompts", required=True, metavar="FILE.jsonl",
                   help="one JSON object per line with \"prompt\" (and \"category\", \"id\", \"split\")")
    p.add_argument("--split", metavar="NAME", help="only the records of this split (e.g. test)")
    p.add_argument("--limit", type=positive, metavar="N",
                   help="only N prompts, taken in turn from each category (file order within one)")
    model = p.add_argument_group("model")
    model_arguments(model)
    adapter_arguments(model)
    kernel_arguments(model)
    p.add_argument("--max-new-tokens", type=positive, default=512, metavar="N",
                   help="the answer's budget, the same for both models: the base model's generate writes at most "
                        "N new tokens, the adapted model's threads at most N together, tags included (default 512)")
    penalty_arguments(p)
    guard_arguments(p)
    judge = p.add_argument_group("judge (optional)")
    judge.add_argument("--judge-url", metavar="URL", help="an OpenAI-compatible server that judges pairs of answers")
    judge.add_argument("--judge-model", metavar="NAME", help="the judge's model name on that server")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help='print {"results": [...], "summary": {...}}')
    out.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=eval_command)


def _records(args: argparse.Namespace) -> list[dict[str, Any]]:
    from pastac.cli import UsageError
    from pastac.data.pipeline import PipelineError, read_records, round_robin

    try:
        records = read_records(args.prompts, required=("prompt",))
    except PipelineError as error:
        raise UsageError(str(error)) from None
    if args.split:
        records = [r for r in records if r.get("split") == args.split]
    records = round_robin(records)[: args.limit] if args.limit else records
    if not records:
        raise UsageError(f"no prompts to evaluate in {args.prompts}" + (f" (split {args.split})" if args.split else ""))
    return records


def _table(report: dict[str, Any], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"pastac eval: {report['summary']['prompts']} prompts", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in report["summary"].items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.3f}"
        table.add_row(key, str(value))
    Console(file=out, width=160).print(table)


def eval_command(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.cli import EXIT_OK, UsageError
    from pastac.evaluation.run import EvalOptions, JudgeError, evaluate
    from pastac.progress import progress_bar
    from pastac.runtime.engine import Engine
    from pastac.runtime.models import ModelError, resolve_adapter

    records = _records(args)
    if bool(args.judge_url) != bool(args.judge_model):
        raise UsageError("--judge-url and --judge-model go together")
    if args.repetition_penalty is not None and not args.repetition_penalty > 0:
        raise UsageError(f"--repetition-penalty must be > 0, not {args.repetition_penalty}")
    judge = None
    if args.judge_url:
        from pastac.data.annotate import openai_generate

        try:
            judge = openai_generate(args.judge_url, args.judge_model)
        except ValueError as error:
            raise UsageError(str(error)) from None
    try:
        base = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype, adapter=None,
                                      kernels=args.kernels, progress=not args.quiet)
        adapted = base if resolve_adapter(args.adapter, args.model) is None else Engine.from_pretrained(
            args.model, device=args.device, dtype=args.dtype, adapter=args.adapter, kernels=args.kernels,
            progress=not args.quiet)
    except ModelError as error:
        raise UsageError(str(error)) from None
    with progress_bar("pastac eval", len(records), enabled=not args.quiet) as bar:
        try:
            report = evaluate(records, adapted, base, EvalOptions(max_new_tokens=args.max_new_tokens, judge=judge,
                                                                 repetition_penalty=args.repetition_penalty,
                                                                 tag_guard=args.tag_guard,
                                                                 jump_forward=args.jump_forward),
                              progress=lambda n: bar(advance=n))
        except JudgeError as error:
            raise UsageError(str(error)) from None
    if args.json:
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        _table(report, out)
    if not args.quiet:
        print(f"pastac: evaluated {len(records)} prompts", file=sys.stderr)
    return EXIT_OK
