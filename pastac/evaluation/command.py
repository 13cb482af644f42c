"""``pastac eval``: evaluate a Pasta-equipped model on a prompt set; a table, or ``--json``.

Exit status: 0 done, 2 usage error (an unreadable prompt file, a model or adapter that cannot be used).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pastac.cli.common import EXIT_OK, UsageError, number, positive
from pastac.cli.options import (
    adapter_options,
    budget_options,
    guard_options,
    kernel_options,
    load_engine,
    model_options,
    named_model,
    penalty_options,
    ray_options,
    ray_settings,
    worker_args,
)
from pastac.jsonl import Kind

if TYPE_CHECKING:
    from pastac.evaluation.run import EvalOptions
    from pastac.runtime.engine import Engine


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``eval`` to the command line."""
    p = sub.add_parser(
        "eval",
        help="evaluate a Pasta-equipped model: valid annotations, forks, speedups, quality proxies",
        description="For each prompt, decode with the adapted model and record whether the annotation is valid "
        "as written, the threads, the theoretical and measured speedups (vs the same text by one "
        "thread, and vs Hugging Face generate of the base model), the base model's log-likelihood "
        "of the stitched answer vs of its own answer, and the overlap between sibling threads vs "
        "between the items of the base answer.",
    )
    p.add_argument(
        "--prompts", metavar="FILE.jsonl", help='one JSON object per line with "prompt" (and "category", "id", "split")'
    )
    p.add_argument("--split", metavar="NAME", help="only the records of this split (e.g. test)")
    p.add_argument(
        "--limit",
        type=positive,
        metavar="N",
        help="only N prompts, taken in turn from each category (file order within one)",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="only the K-th of every N of those prompts (K from 1), to spread an evaluation over N "
        "processes that share no Ray cluster (--ray spreads it over one); --merge joins their --json reports",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="REPORT.json",
        help="evaluate nothing: join the --json reports of the shards of one evaluation (their results "
        "in the order given) and summarise them",
    )
    model = p.add_argument_group("model")
    model_options(model)
    adapter_options(model)
    kernel_options(model)
    budget_options(
        p,
        per_thread=False,
        help="the answer's budget, the same for both models: the base model's generate writes at most N new "
        "tokens, the adapted model's threads at most N together, tags included",
    )
    penalty_options(p)
    guard_options(p)
    p.add_argument(
        "--sampled-reference",
        type=number(lambda v: v > 0, "> 0"),
        metavar="T",
        help="also score an answer of the base model sampled at temperature T (the penalty and budget "
        "of its greedy answer, seeded per prompt): how far below its greedy answer the base "
        "model's likelihood of a text it writes itself falls, the scale of the log-likelihood "
        "proxy (one more generate per prompt)",
    )
    p.add_argument(
        "--sequential-answer",
        action="store_true",
        help="decode the adapted model's own sequential answer too, for the Q_async gap; costs one more decode "
        "per prompt",
    )
    scale = p.add_argument_group("where it runs")
    scale.add_argument(
        "--results",
        metavar="FILE.jsonl",
        help="append each prompt's result row here as it is done, and skip the prompts it already holds (a rerun "
        "resumes); the prompts need ids",
    )
    ray_options(scale)
    judge = p.add_argument_group("judge (optional)")
    judge.add_argument("--judge-url", metavar="URL", help="an OpenAI-compatible server that judges pairs of answers")
    judge.add_argument("--judge-model", metavar="NAME", help="the judge's model name on that server")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help='print {"results": [...], "summary": {...}}')
    out.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=eval_command)


def _shard(text: str) -> tuple[int, int]:
    k, slash, n = text.partition("/")
    if not (slash and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"not K/N with 1 <= K <= N: {text!r}")
    return int(k), int(n)


def _merge(paths: list[str]) -> dict[str, Any]:
    """One report from the reports of an evaluation's shards: their results, summarised again.  A report of
    another shape (results that are not rows ``summarize`` can read, a summary that is not an object) is a
    usage error that names the file and the row."""
    from pastac.evaluation.run import RUN_SETTINGS, result_problem, summarize
    from pastac.files import InputFileError, read_text

    results: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    for path in paths:
        try:
            report = json.loads(read_text(Path(path)))
        except InputFileError as error:
            raise UsageError(str(error)) from None
        except ValueError as error:
            raise UsageError(f"{path}: not a JSON report: {error}") from None
        if not isinstance(report, dict) or not isinstance(report.get("results"), list):
            raise UsageError(f'{path}: not a pastac eval --json report (no "results" list)')
        summary = report.get("summary", {})
        if not isinstance(summary, dict):
            raise UsageError(f'{path}: not a pastac eval --json report ("summary" is not an object)')
        for index, row in enumerate(report["results"], 1):
            if (problem := result_problem(row)) is not None:
                raise UsageError(f"{path}: result {index} is not a pastac eval result: {problem}")
        for key in RUN_SETTINGS:
            value = summary.get(key)
            if settings.setdefault(key, value) != value:
                raise UsageError(f"{path}: made with {key} {value}, the reports before it with {settings[key]}")
        results += report["results"]
    if not results:
        raise UsageError("the reports hold no results")
    return {"results": results, "summary": summarize(results) | settings}


def _records(args: argparse.Namespace) -> list[dict[str, Any]]:
    from pastac.data.responses import round_robin
    from pastac.data.step import PipelineError
    from pastac.jsonl import read_records

    try:
        records = read_records(args.prompts, required=("prompt",))
    except PipelineError as error:
        raise UsageError(str(error)) from None
    if args.split:
        records = [r for r in records if r.get("split") == args.split]
    records = round_robin(records)[: args.limit] if args.limit else records
    if args.shard:
        k, n = args.shard
        records = records[k - 1 :: n]
    if not records:
        raise UsageError(f"no prompts to evaluate in {args.prompts}" + (f" (split {args.split})" if args.split else ""))
    return records


def _table(report: dict[str, Any], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    from pastac.evaluation.run import QUALITY_GAPS

    summary = report["summary"]
    # each quality gap in points with the rows it stands on, where it was measured
    gaps = {f"{name}_gap{suffix}": f"{name}_rows{suffix}" for name in QUALITY_GAPS for suffix in ("", "_list_like")}
    table = Table(title=f"pastac eval: {summary['prompts']} prompts", title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if key in gaps.values() or (key in gaps and value is None):
            continue
        if key in gaps:
            rows = summary[gaps[key]]
            value = f"{value:.1f} points ({rows} row{'s' if rows != 1 else ''})"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.3f}"
        table.add_row(key, str(value))
    Console(file=out, width=160).print(table)


def _print(report: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        _table(report, out)


#: what the rows of ``--results`` hold: a result row of ``evaluate_one`` and the settings it was made with
RESULT_ROWS = Kind("eval result", ("id", "prompt", "valid", "threads", "settings"))


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """What makes two result rows comparable: the model, the adapter and every decoding setting."""
    names = ("model", "adapter", "device", "dtype", "kernels", "forward", "quant", "max_new_tokens")
    names += ("repetition_penalty", "penalty_scope", "sibling_ngram", "tag_guard", "jump_forward")
    names += ("sampled_reference", "sequential_answer", "judge_model")
    return {name: getattr(args, name, None) for name in names}


def _finished(args: argparse.Namespace, records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The result rows ``--results`` already holds for these records, by id (without their settings); a file
    of rows made with other settings, or prompts without distinct ids, are usage errors."""
    if not args.results:
        return {}
    from pastac.data.step import distinct
    from pastac.jsonl import RecordsError, resume

    ids = [r.get("id") for r in records]
    if not all(isinstance(i, str) for i in ids) or len(set(ids)) != len(ids):
        raise UsageError(f"--results needs a distinct string id on every prompt of {args.prompts}")
    try:
        distinct(Path(args.prompts), Path(args.results), option="--results", input_option="--prompts")
        done = resume(args.results, RESULT_ROWS)
    except RecordsError as error:
        raise UsageError(str(error)) from None
    settings = _settings(args)
    for row in done.values():
        if row["settings"] != settings:
            theirs = row["settings"]  # over the names of both: rows made before a setting existed lack it
            other = {k: theirs.get(k) for k in settings | theirs if settings.get(k) != theirs.get(k)}
            raise UsageError(
                f"'{args.results}' holds results made with other settings ({other}); name another file, or "
                "give the same options"
            )
    return {key: {k: v for k, v in row.items() if k != "settings"} for key, row in done.items() if key in ids}


def _engines(args: argparse.Namespace, options: EvalOptions) -> tuple[Engine, Engine, EvalOptions]:
    """The adapted and the base model of the options (one engine when no adapter applies), with ``options``:
    what evaluating a record needs, in this process or on a Ray worker."""
    from pastac.models import ModelError, resolve_adapter

    try:
        alone = resolve_adapter(args.adapter, args.model) is None  # the base model is the one evaluated
        # with an adapter, the base model only runs Hugging Face generate and the log-likelihood, which keep
        # F.linear: tuning its kernels would pack copies of its weights that nothing reads
        base = load_engine(args, adapter=None, kernels=None if alone else "stock")
        adapted = base if alone else load_engine(args, adapter=args.adapter)
    except ModelError as error:
        raise UsageError(str(error)) from None
    return adapted, base, options


def _evaluate_record(state: tuple[Engine, Engine, EvalOptions], record: dict[str, Any]) -> dict[str, Any]:
    adapted, base, options = state
    from pastac.evaluation.run import evaluate_one

    return evaluate_one(record, adapted, base, options)


def eval_command(args: argparse.Namespace, out: TextIO) -> int:
    """``pastac eval``: evaluate the prompts (or ``--merge`` finished reports) and print the report; bad
    options, unreadable or disagreeing inputs, an unusable model and a judge that cannot be asked are usage
    errors.  With ``--results`` each row is appended as it is done and a rerun skips the prompts done; with
    ``--ray`` the prompts are spread over Ray workers and their rows come back in order."""
    from pastac.evaluation.run import EvalOptions, JudgeError, report
    from pastac.jsonl import RecordsError, appending
    from pastac.progress import progress_bar
    from pastac.scale import RayError, ordered

    if args.merge:
        if args.prompts:
            raise UsageError("--merge joins finished reports; it takes no --prompts")
        _print(_merge(args.merge), args.json, out)
        return EXIT_OK
    if not args.prompts:
        raise UsageError("give --prompts FILE.jsonl (or --merge REPORT.json ...)")
    records = _records(args)
    ray = ray_settings(args)
    if bool(args.judge_url) != bool(args.judge_model):
        raise UsageError("--judge-url and --judge-model go together")
    judge = None
    if args.judge_url:
        from pastac.data.annotate import openai_generate

        try:
            judge = openai_generate(args.judge_url, args.judge_model)
        except ValueError as error:
            raise UsageError(str(error)) from None
    options = EvalOptions(
        max_new_tokens=args.max_new_tokens,
        judge=judge,
        repetition_penalty=args.repetition_penalty,
        penalty_scope=args.penalty_scope,
        sibling_ngram=args.sibling_ngram,
        tag_guard=args.tag_guard,
        jump_forward=args.jump_forward,
        sampled_reference=args.sampled_reference,
        sequential_answer=args.sequential_answer,
    )
    done = _finished(args, records)
    pending = [r for r in records if r.get("id") not in done] if done else records
    new: list[dict[str, Any]] = []  # the rows of the pending records, in their order
    settings = _settings(args)
    try:
        with (
            progress_bar("pastac eval", len(records), enabled=not args.quiet, done=len(records) - len(pending)) as bar,
            appending(Path(args.results)) if args.results else contextlib.nullcontext() as write,
        ):
            if ray is not None:
                named_model(args.model, args.adapter)  # here, before the workers fail to load it one by one
                setup = functools.partial(_engines, worker_args(args), options)
                rows = (row for _, row in ordered(pending, setup, _evaluate_record, ray))
            else:
                state = _engines(args, options) if pending else None
                rows = (_evaluate_record(state, record) for record in pending)
            for row in rows:
                if write is not None:
                    write(row | {"settings": settings})
                new.append(row)
                bar(advance=1)
    except (JudgeError, RayError, RecordsError) as error:
        kept = f" ({len(new)} results written to '{args.results}' this run: run again to resume)"
        raise UsageError(str(error) + (kept if args.results else "")) from None
    fresh = iter(new)
    ordered = [done[r["id"]] if done and r["id"] in done else next(fresh) for r in records]
    _print(report(ordered, options), args.json, out)
    if not args.quiet:
        before = f" ({len(done)} of them done before)" if done else ""
        print(f"pastac: evaluated {len(records)} prompts{before}", file=sys.stderr)
    return EXIT_OK
