"""``pastac bench``: the strategies side by side on the replay suite, with the calibrated bound.

Prints tables (or ``--json``); ``--plot DIR`` draws the pictures; ``--out DIR``
writes report.json, report.txt and the pictures there, each file atomically.
``--out`` must be new, empty or a report folder of pastac bench (``--force``
for another), checked before anything runs.  ``--strategies ...,llamacpp``
loads llama.cpp before pastac's model, so that a missing llama-cpp-python or
a model without a GGUF file is refused before anything runs.  Exit status: 0
done, 2 usage error, unreadable suite, an output that may not or cannot be
written, or a model that cannot be used (llamacpp's included).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, TextIO

from pastac.cli.common import EXIT_OK, UsageError, positive
from pastac.cli.options import (
    force_option,
    kernel_options,
    load_engine,
    model_options,
    named_model,
    ray_options,
    ray_settings,
    torch_threads_option,
    worker_args,
)
from pastac.serve.bench import add_parser as add_serve_bench


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the command line."""
    from pastac.bench import OPTIONAL_STRATEGIES, STRATEGIES

    p = sub.add_parser(
        "bench",
        help="measured vs theoretical speedup, against the strategies peers use",
        description="Replay annotated responses through every strategy (hf-generate, sequential, refork, "
        "batched-copy, pasta; llamacpp on request) with the same model in one process, interleaved; calibrate the "
        "step cost and compare pasta's measured speedup with the bound it gives. Figures are "
        "measured on this machine; nothing is asserted.",
    )
    p.add_argument(
        "--suite",
        metavar="FILE.jsonl",
        help='annotated responses, one JSON object per line with "prompt" and "text" (default: the shipped suite)',
    )
    p.add_argument("--ids", metavar="ID,...", help="only these responses of the suite")
    p.add_argument("--limit", type=positive, metavar="N", help="only the first N responses")
    p.add_argument("--sample", type=positive, metavar="N", help="N responses spread over the suite's shapes")
    p.add_argument(
        "--quick",
        action="store_true",
        help="the shortest response that forks, one run of each strategy, a small calibration "
        "(under 2 minutes on a 2-core CPU with the default model)",
    )
    model = p.add_argument_group("model")
    source = model.add_mutually_exclusive_group()
    model_options(model, source)
    kernel_options(model)
    source.add_argument(
        "--shape",
        metavar="NAME",
        help="random weights of this shape (tiny-llama, tiny-qwen2, tiny-gpt2, smollm2-135m, "
        "llama-7b) with the default model's tokenizer (timing needs no "
        "trained weights; llama-7b for a GPU)",
    )
    torch_threads_option(model)
    how = p.add_argument_group("runs")
    how.add_argument(
        "--strategies",
        metavar="S,...",
        default=",".join(STRATEGIES),
        help=f"which to run (default: all of {', '.join(STRATEGIES)}); also {', '.join(OPTIONAL_STRATEGIES)}: "
        "llama.cpp's greedy decode of the model's GGUF file, with the extra pastac[llamacpp]",
    )
    how.add_argument(
        "--repeats", type=positive, metavar="N", help="runs of each strategy per response (default 2; 1 with --quick)"
    )
    ray_options(
        p.add_argument_group(
            "Ray",
            "the responses spread over workers, each calibrated on its own machine (give each worker a machine, "
            "or a GPU, of its own: workers that share cores disturb each other's timings)",
        )
    )
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the report as one JSON object instead of tables")
    out.add_argument("--plot", metavar="DIR", help="write measured_vs_theoretical.png and step_cost.png here")
    out.add_argument(
        "--out",
        metavar="DIR",
        help="write report.json, report.txt and the pictures here: a new or empty folder, or one of an earlier "
        "report (replaced)",
    )
    force_option(out, outputs="into --out")
    out.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=bench_command)
    # `pastac bench serve ...`: the load benchmark of the HTTP API; `pastac bench [options]` is the replay bench
    modes = p.add_subparsers(dest="bench_mode", required=False, metavar="serve", title="other benchmarks")
    add_serve_bench(modes)


def _llamacpp(args: argparse.Namespace) -> Any:
    """The llama.cpp model of the ``llamacpp`` strategy: the GGUF file pastac's model is loaded from (the
    default model's, or ``--model FILE.gguf``), with torch's thread count; a usage error when llama-cpp-python
    is missing or the model has no GGUF file."""
    import torch

    from pastac.bench.llamacpp import LlamaCppError, import_llama_cpp, load
    from pastac.models import ModelError, default_gguf
    from pastac.models.gguf import is_gguf

    try:
        import_llama_cpp()  # first: the one thing that cannot be fixed with another option
        if args.shape is not None:
            raise UsageError("llamacpp decodes a GGUF file, and --shape's random weights have none; leave out one")
        path = default_gguf() if args.model is None else Path(args.model).expanduser()
        if not is_gguf(path):
            raise UsageError(f"llamacpp decodes a GGUF file, and --model {args.model} is not one; name a .gguf file")
        return load(path, threads=torch.get_num_threads())
    except (LlamaCppError, ModelError) as error:
        raise UsageError(str(error)) from None


def _engine(args: argparse.Namespace) -> Any:
    from pastac.backend.attention import BackendError
    from pastac.models import ModelError, load_model, random_model
    from pastac.runtime.engine import Engine

    try:
        if args.shape is None:
            return load_engine(args, adapter=None)
        tokenizer = load_model(None, progress=not args.quiet).tokenizer
        model = random_model(
            args.shape,
            vocab_size=len(tokenizer),
            dtype=args.dtype,
            device=args.device,
            eos_token_id=tokenizer.eos_token_id,
        )
        return Engine(
            model,
            tokenizer,
            name=f"{args.shape} (random weights)",
            kernels=args.kernels,
            attention=args.attention,
            decode_step=args.decode_step,
            forward=args.forward,
            quant=args.quant,
            progress=not args.quiet,
        )
    except (ModelError, BackendError) as error:
        raise UsageError(str(error)) from None


def _here(args: argparse.Namespace, responses: list[Any], options: Any) -> dict[str, Any]:
    """The report of the bench run in this process."""
    import torch
    from rich.console import Console

    from pastac.bench.llamacpp import LlamaCppError
    from pastac.bench.run import run_bench

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    llamacpp = _llamacpp(args) if "llamacpp" in options.strategies else None
    engine = _engine(args)
    err = Console(file=sys.stderr)
    try:  # llama.cpp's model refused (not the engine's, before the calibration) or a response past its context
        if args.quiet:
            report = run_bench(engine, responses, options, llamacpp=llamacpp)
        else:
            from rich.progress import Progress

            with Progress(console=err, transient=True) as bar:
                task = bar.add_task("pastac bench", total=len(responses))

                def tell(what: str, done: int, total: int) -> None:
                    bar.update(task, description=f"pastac bench: {what}", completed=done)

                report = run_bench(engine, responses, options, progress=tell, llamacpp=llamacpp)
    except LlamaCppError as error:
        raise UsageError(str(error)) from None
    return report


def _worker(args: argparse.Namespace, options: Any) -> tuple[Any, Any, dict[str, Any], Any]:
    """A Ray worker's bench: its engine (and llama.cpp's model), calibrated and warmed up on its machine."""
    from pastac.bench.llamacpp import LlamaCppError
    from pastac.bench.run import measured_on, prepare

    llamacpp = _llamacpp(args) if "llamacpp" in options.strategies else None
    engine = _engine(args)
    try:
        bench, cal = prepare(engine, options, llamacpp)
    except LlamaCppError as error:
        raise UsageError(str(error)) from None
    worker = {"node": platform.node(), "pid": os.getpid()}  # which of the workers measured a row
    return bench, cal, measured_on(bench) | worker, options


def _measure(state: tuple[Any, Any, dict[str, Any], Any], response: Any) -> tuple[dict[str, Any], Any, dict]:
    from pastac.bench.run import measure

    bench, cal, machine, options = state
    return measure(bench, cal, response, options), cal, machine


def _on_ray(args: argparse.Namespace, responses: list[Any], options: Any, ray: Any) -> dict[str, Any]:
    """The report of the bench run on Ray workers: each response measured on one worker, against that worker's
    calibration; the report's machine and calibration are the first worker's, and ``machine.workers`` lists the
    machines that took part (each row's ``worker`` says which one measured it)."""
    import functools

    from pastac.bench.llamacpp import LlamaCppError
    from pastac.bench.run import assemble
    from pastac.progress import progress_bar
    from pastac.scale import RayError, ordered

    if args.shape is None:
        named_model(args.model)  # a path that does not exist: here, before the workers fail to load it
    rows, machines, calibrations = [], [], []
    try:
        with progress_bar("pastac bench", len(responses), enabled=not args.quiet) as bar:
            setup = functools.partial(_worker, worker_args(args), options)
            for _, (row, cal, machine) in ordered(responses, setup, _measure, ray):
                if machine not in machines:
                    machines.append(machine)
                    calibrations.append(cal)
                rows.append(row | {"worker": machines.index(machine)})
                bar(advance=1)
    except (RayError, LlamaCppError) as error:
        raise UsageError(str(error)) from None
    if not rows:
        raise UsageError("no responses to measure")
    report = assemble({**machines[0], "workers": machines}, calibrations[0], rows, options)
    return report


def bench_command(args: argparse.Namespace, out: TextIO) -> int:
    """``pastac bench``: run the selected responses through the strategies and print (and write) the report;
    an unknown id or strategy, an unreadable suite, an unusable model or an unwritable folder is a usage error."""
    from rich.console import Console

    from pastac.bench.report import PICTURES, REPORT_FILES, check_report_folder, plot, print_report, write_report
    from pastac.bench.run import QUICK, BenchOptions
    from pastac.bench.suite import SUITE, SuiteError, load_suite, quick_selection, spread_selection
    from pastac.output import OutputError, refuse_input

    try:  # before anything runs: a refused folder costs nothing
        for option, folder, names in (
            ("--out", args.out, REPORT_FILES),
            ("--plot", args.plot, PICTURES),
        ):
            for name in names if folder else ():
                refuse_input(Path(folder) / name, [("--suite", args.suite or SUITE)], what=f"{option}'s {name}")
        if args.out:
            check_report_folder(args.out, force=args.force)
    except OutputError as error:
        raise UsageError(str(error)) from None
    try:
        responses = load_suite(args.suite)
    except SuiteError as error:
        raise UsageError(str(error)) from None
    if args.ids:
        wanted = [i.strip() for i in args.ids.split(",") if i.strip()]
        known = {r.id for r in responses}
        missing = [i for i in wanted if i not in known]
        if missing:
            raise UsageError(f"no response with id {', '.join(missing)} in the suite")
        responses = [r for r in responses if r.id in wanted]
    elif args.sample:
        responses = spread_selection(responses, args.sample)
    elif args.quick:
        responses = quick_selection(responses)
    if args.limit:
        responses = responses[: args.limit]
    base = QUICK if args.quick else BenchOptions()
    try:
        options = BenchOptions(
            strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
            repeats=args.repeats or base.repeats,
            threads=base.threads,
            contexts=base.contexts,
            calibration_repeats=base.calibration_repeats,
            warmup=base.warmup,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    ray = ray_settings(args)
    if ray is not None:
        if args.torch_threads:
            raise UsageError("with --ray, --cpus-per-worker sets each worker's threads, not --torch-threads")
        report = _on_ray(args, responses, options, ray)
    else:
        report = _here(args, responses, options)
    if args.json:
        out.write(json.dumps(report, indent=2) + "\n")
    else:
        print_report(report, Console(file=out, width=200))
    try:
        written = write_report(report, args.out) if args.out else []
        if args.plot:
            written += plot(report, args.plot)
    except OutputError as error:
        raise UsageError(f"cannot write the report: {error}") from None
    if written and not args.quiet:
        print(f"pastac: wrote {', '.join(map(str, written))}", file=sys.stderr)
    return EXIT_OK
