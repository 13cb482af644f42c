"""The language commands: ``check``, ``render``, ``fmt``, ``plan``, ``graph`` and ``stats``.

Argument parsing only; the work is in the library (``pastac.grammar``, ``pastac.report`` for figures,
``pastac.viz`` for pictures and tables).  ``stats`` counts invalid records instead of failing on them.  Files
are written through ``pastac.output``: ``fmt --write`` and ``graph -o`` replace their file atomically, and
``graph -o`` refuses to write over the document it reads.
``check``, ``render``, ``plan`` and ``graph`` read their input in one of the grammar's modes: strict (the
default), ``--lenient`` or ``--template`` (spec §7); ``fmt`` in strict or template mode.

Longer than most modules (about 550 lines), on purpose: the six commands share the readers of documents and
JSONL records, the mode options and the parser's option groups, and each handler is short.
"""

from __future__ import annotations

import argparse
import functools
import gc
import io
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TextIO

from pastac import jsonl, output
from pastac.cli.common import EXIT_ERRORS, EXIT_OK, EXIT_USAGE, UsageError, read_input
from pastac.cli.options import depth_option, position_options, width_options
from pastac.grammar import DEFAULT_MAX_DEPTH, Mode, ParseResult, Promise, Severity, check, render, to_source
from pastac.grammar.diagnostics import format_github, format_text, to_json
from pastac.ir.graph import ThreadGraph
from pastac.ir.lengths import LENGTHS, by_name
from pastac.ir.lower import lower
from pastac.passes import Policy, PositionOptions


@dataclass(frozen=True)
class Source:
    """One document to check: a whole file, or one record of a JSONL file."""

    label: str  # how diagnostics name it
    text: str
    path: str
    record_line: int | None = None  # the JSONL line, for annotations
    field: str | None = None


@dataclass(frozen=True)
class RecordError:
    """A JSONL line that holds no document (bad JSON, no such field)."""

    path: str
    line: int
    message: str


def _sources(path: str, field: str) -> Iterator[Source | RecordError]:
    text = read_input(path)
    if not path.endswith(".jsonl"):
        yield Source(path if path != "-" else "<stdin>", text, path)
        return
    for number, record in jsonl.parse(text):
        if isinstance(record, str):
            yield RecordError(path, number, record)
        elif field not in record:
            yield RecordError(path, number, f"record has no field '{field}' (fields: {', '.join(record) or 'none'})")
        elif not isinstance(record[field], str):
            yield RecordError(path, number, f"field '{field}' is not a string")
        else:
            yield Source(f"{path}[{number}].{field}", record[field], path, number, field)


CHECK_SCHEMA = 1  # the version of ``check --format json``'s output; raised when a field changes meaning


def _mode(args: argparse.Namespace) -> Mode:
    """The grammar's mode the options name: lenient, template, else strict."""
    if getattr(args, "lenient", False):
        return "lenient"
    return "template" if getattr(args, "template", False) else "strict"


def _cmd_check(args: argparse.Namespace, out: TextIO) -> int:
    mode = _mode(args)
    documents = errors = warnings = 0
    failed_records = unreadable = 0
    records: list[dict[str, object]] = []
    for path in args.files:
        try:
            items = list(_sources(path, args.field))
        except UsageError as error:  # counted as a problem of the check, in every format
            print(f"pastac: error: {error}", file=sys.stderr)
            unreadable += 1
            if args.format == "github":
                out.write(f"::error file={path},title=unreadable::{error}\n")
            elif args.format == "json":
                records.append({"file": path, "severity": "error", "code": None, "message": str(error)})
            continue
        for item in items:
            if isinstance(item, RecordError):
                failed_records += 1
                if args.format == "text":
                    out.write(f"{item.path}:{item.line}:1: error: {item.message}\n")
                elif args.format == "github":
                    out.write(f"::error file={item.path},line={item.line},title=record::{item.message}\n")
                else:
                    records.append(
                        {
                            "file": item.path,
                            "record": item.line,
                            "severity": "error",
                            "code": None,
                            "message": item.message,
                        }
                    )
                continue
            documents += 1
            result = check(item.text, mode=mode, max_depth=args.max_depth, filename=item.label)
            errors += len(result.errors)
            warnings += sum(d.severity is Severity.WARNING for d in result.diagnostics)
            _emit(result, item, args.format, out, records)
    if args.format == "json":
        summary = {
            "documents": documents,
            "errors": errors,
            "warnings": warnings,
            "bad_records": failed_records,
            "unreadable": unreadable,
            "mode": mode,
            "valid": errors == 0 and failed_records == 0 and unreadable == 0,
        }
        report = {"schema": CHECK_SCHEMA, "diagnostics": records, "summary": summary}
        out.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    elif args.format == "text":
        what = f"{documents} document{'s' if documents != 1 else ''}"
        problems = [
            f"{n} {name}{'s' if n != 1 else ''}"
            for n, name in (
                (unreadable, "unreadable file"),
                (errors, "error"),
                (warnings, "warning"),
                (failed_records, "bad record"),
            )
            if n
        ]
        out.write(f"checked {what} ({mode}): {', '.join(problems) if problems else 'no problems'}\n")
    if unreadable:
        return EXIT_USAGE
    return EXIT_ERRORS if errors or failed_records else EXIT_OK


def _emit(result: ParseResult, item: Source, fmt: str, out: TextIO, records: list[dict[str, object]]) -> None:
    for d in result.diagnostics:
        if fmt == "text":
            out.write(format_text([d], result.source, item.label))
        elif fmt == "github":
            if item.record_line is None:
                out.write(format_github(d, item.path) + "\n")
            else:
                prefix = f"record {item.record_line}, field '{item.field}', {d.span.start}: "
                out.write(format_github(d, item.path, line=item.record_line, prefix=prefix) + "\n")
        else:
            entry = to_json(d, item.label)
            if item.record_line is not None:
                entry |= {"file": item.path, "record": item.record_line, "field": item.field}
            records.append(entry)


def _single(args: argparse.Namespace, *, mode: Mode) -> tuple[ParseResult, str] | int:
    try:
        text = read_input(args.file)
    except UsageError as error:
        print(f"pastac: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    label = args.file if args.file != "-" else "<stdin>"
    result = check(text, mode=mode, max_depth=args.max_depth, filename=label)
    sys.stderr.write(format_text(result.diagnostics, text, label))
    return result, text


def _usable(args: argparse.Namespace) -> ParseResult | int:
    """The file's parse result when it has no errors in its mode (under --lenient, recovered), else an exit
    status (the diagnostics are on stderr)."""
    got = _single(args, mode=_mode(args))
    if isinstance(got, int):
        return got
    result, _ = got
    return EXIT_ERRORS if result.errors else result


def _cmd_render(args: argparse.Namespace, out: TextIO) -> int:
    result = _usable(args)
    if isinstance(result, int):
        return result
    out.write(render(result.document, template=args.template))
    return EXIT_OK


def _cmd_fmt(args: argparse.Namespace, out: TextIO) -> int:
    status = EXIT_OK
    if len(args.files) > 1 and not (args.check or args.write):
        raise UsageError("formatting several files needs --check or --write")
    for path in args.files:
        args.file = path
        got = _single(args, mode=_mode(args))
        if isinstance(got, int):
            status = max(status, got)
            continue
        result, text = got
        if result.errors:
            status = max(status, EXIT_ERRORS)
            continue
        canonical = to_source(result.document)
        if args.check:
            if canonical != text:
                print(f"would reformat {path}", file=sys.stderr)
                status = max(status, EXIT_ERRORS)
        elif args.write:
            if path == "-":
                out.write(canonical)
            elif canonical != text:
                try:
                    output.write_bytes(path, canonical.encode("utf-8"))
                except output.OutputError as error:
                    print(f"pastac: error: {error}", file=sys.stderr)
                    status = max(status, EXIT_USAGE)
                    continue
                print(f"reformatted {path}", file=sys.stderr)
        else:
            out.write(canonical)
    return status


def _document(args: argparse.Namespace) -> tuple[ThreadGraph, str] | int:
    """The file's document lowered to the IR, or an exit status.  A template's promises stand for parts of
    their predicted lengths: ``tokens=`` x the unit (``--unit`` where the command has it)."""
    result = _usable(args)
    if isinstance(result, int):
        return result
    unit = getattr(args, "unit", None)
    unit = PositionOptions().unit if unit is None else unit

    def predicted(promise: Promise) -> int:  # a promise without tokens= stands for an empty part
        return (promise.tokens or 0) * unit

    graph = lower(result.document, by_name(args.length), promised=predicted if args.template else None)
    return graph, result.filename


def _cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.report import PlanOptions, plan, plan_json
    from pastac.viz.terminal import plan_view, show

    got = _document(args)
    if isinstance(got, int):
        return got
    graph, label = got
    options = PlanOptions(policy=args.policy, unit=args.unit, max_width=args.max_width, order=args.order)
    result = plan(graph, options, dump_after=args.dump_after or (), verified=True)  # lowered just now
    if args.json:
        out.write(
            json.dumps({"file": label} | plan_json(result, length=args.length), indent=2, ensure_ascii=False) + "\n"
        )
        return EXIT_OK
    for name, text in result.dumps.items():
        out.write(f"// IR after pass '{name}'\n{text}\n")
    show(out, plan_view(result, label=label, length=args.length))
    return EXIT_OK


GRAPH_FORMATS = ("tree", "dot", "mermaid", "json", "png", "svg")
PICTURES = ("png", "svg")


def _cmd_graph(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.viz import GraphvizMissing, render_dot, to_dot, to_mermaid

    picture = args.format in PICTURES
    if picture and not args.output:
        raise UsageError(f"--format {args.format} writes a picture: name the file with --output FILE")
    if args.view is not None and not picture:
        raise UsageError("--view applies to --format png and svg")
    if args.output:
        try:
            output.refuse_input(args.output, [("FILE", args.file)], what="--output")
        except output.OutputError as error:
            raise UsageError(str(error)) from None
    got = _document(args)
    if isinstance(got, int):
        return got
    graph, label = got
    if picture and args.view == "graph":
        try:
            render_dot(to_dot(graph, label), args.format, args.output)
        except (GraphvizMissing, RuntimeError, output.OutputError) as error:
            raise UsageError(str(error)) from None
        return EXIT_OK
    if picture:
        return _timeline(args, graph, label)
    if args.format == "tree":
        from pastac.viz.terminal import show, thread_tree

        if args.output:
            buffer = io.StringIO()
            show(buffer, thread_tree(graph))
            _write_output(args.output, buffer.getvalue())
        else:
            show(out, thread_tree(graph))
        return EXIT_OK
    match args.format:
        case "dot":
            text = to_dot(graph, label)
        case "mermaid":
            text = to_mermaid(graph)
        case "json":
            from pastac.ir.printer import dumps_json

            text = dumps_json(graph) + "\n"
        case _:
            raise AssertionError(args.format)
    if args.output:
        _write_output(args.output, text)
    else:
        out.write(text)
    return EXIT_OK


def _write_output(path: str, text: str) -> None:
    try:
        output.write_text(path, text)
    except output.OutputError as error:
        raise UsageError(str(error)) from None


def _timeline(args: argparse.Namespace, graph: ThreadGraph, label: str) -> int:
    from pastac.passes import ScheduleOptions, critical_path, schedule

    try:
        from pastac.viz.timeline import draw_timeline

        plan = schedule(graph, ScheduleOptions(args.max_width, args.order))
        draw_timeline(graph, plan, critical_path(graph, plan), args.output, label=label, fmt=args.format)
    except ModuleNotFoundError as error:
        if error.name != "matplotlib" and not (error.name or "").startswith("matplotlib."):
            raise
        raise UsageError("the timeline needs matplotlib: pip install matplotlib") from None
    except output.OutputError as error:
        raise UsageError(str(error)) from None
    return EXIT_OK


def _cmd_stats(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.report import InvalidRecord, document_figures, summarize
    from pastac.viz.terminal import show, stats_view

    mode = "lenient" if args.lenient else "strict"
    length = by_name(args.length)
    items: list[Source | RecordError] = []
    status = EXIT_OK
    for path in args.files:
        try:
            items.extend(_sources(path, args.field))
        except UsageError as error:
            print(f"pastac: error: {error}", file=sys.stderr)
            status = EXIT_USAGE
    if not items and status != EXIT_OK:
        return status
    documents, invalid = [], []
    for item in _progress(items, "analysing"):
        if isinstance(item, RecordError):
            invalid.append(InvalidRecord(f"{item.path}[{item.line}]", item.message, item.line))
            continue
        result = check(item.text, mode=mode, max_depth=args.max_depth, filename=item.label)  # type: ignore[arg-type]
        if result.errors:
            first = result.errors[0]
            more = f" (and {len(result.errors) - 1} more)" if len(result.errors) > 1 else ""
            invalid.append(
                InvalidRecord(
                    item.label, f"{first.span.start}: error[{first.code}]: {first.message}{more}", item.record_line
                )
            )
            continue
        documents.append(document_figures(lower(result.document, length)))
    stats = summarize(documents, invalid)
    label = ", ".join(args.files)
    if args.json:
        settings = {"files": args.files, "field": args.field, "mode": mode, "length": args.length}
        out.write(json.dumps(settings | stats.to_json(), indent=2, ensure_ascii=False) + "\n")
    else:
        show(out, stats_view(stats, label=label, length=args.length, mode=mode))
    return status


def _progress(items: list[Source | RecordError], what: str) -> Iterator[Source | RecordError]:
    """``items``, with a progress bar on stderr for long runs when stderr is a terminal."""
    if len(items) < 2000 or not sys.stderr.isatty():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track

    yield from track(items, description=what, console=Console(file=sys.stderr), transient=True)


Command = Callable[[argparse.Namespace, TextIO], int]


def _collector_paused(command: Command) -> Command:
    """``command`` with Python's cyclic garbage collector paused while it runs (and restored after, as it was).

    A language command builds a document, an IR graph and a plan, millions of small objects on a large file,
    that all live until it ends and hold no cycles to collect; the collector, run every few hundred
    allocations, scanned them over and over: a quarter of ``plan``'s time on 10,000 promises.  Nothing is
    lost by pausing it: what the command leaves behind is freed by reference counting, or collected once the
    collector runs again.
    """

    @functools.wraps(command)
    def run(args: argparse.Namespace, out: TextIO) -> int:
        if not gc.isenabled():
            return command(args, out)
        gc.disable()
        try:
            return command(args, out)
        finally:
            gc.enable()

    return run


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the language commands to the command line."""
    depth = argparse.ArgumentParser(add_help=False)
    depth_option(
        depth, default=DEFAULT_MAX_DEPTH, help=f"deepest allowed <async> nesting (default {DEFAULT_MAX_DEPTH})"
    )

    p = sub.add_parser(
        "check",
        parents=[depth],
        help="check Pasta-Lang documents or JSONL datasets",
        description="Check Pasta-Lang files ('-' reads standard input); a .jsonl file is "
        "checked record by record. Exit 0 when all are valid, 1 on errors, 2 on "
        "usage errors.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--strict", action="store_true", help="every deviation is an error (default)")
    modes.add_argument("--lenient", action="store_true", help="recover with warnings, as for a model's live output")
    _template_option(modes, "check templates")
    p.add_argument(
        "--format",
        choices=("text", "json", "github"),
        default="text",
        help="diagnostics as text, one JSON object, or GitHub Actions annotations",
    )
    p.add_argument(
        "--field",
        default="text",
        metavar="NAME",
        help="in .jsonl files, the field that holds the annotated text (default: text)",
    )
    p.set_defaults(run=_collector_paused(_cmd_check))

    p = sub.add_parser("render", parents=[depth], help="print the stitched text a reader sees")
    p.add_argument("file", metavar="FILE")
    modes = p.add_mutually_exclusive_group()
    modes.add_argument("--lenient", action="store_true", help="recover from errors (warnings on stderr)")
    _template_option(modes, "render a template, each promise's place marked [topic]")
    p.set_defaults(run=_collector_paused(_cmd_render))

    p = sub.add_parser("fmt", parents=[depth], help="print documents in canonical form")
    p.add_argument("files", nargs="+", metavar="FILE")
    _template_option(p, "format templates")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="exit 1 if a file is not in canonical form")
    action.add_argument("--write", action="store_true", help="rewrite files in place")
    p.set_defaults(run=_collector_paused(_cmd_fmt))

    analysis = argparse.ArgumentParser(add_help=False)
    analysis.add_argument(
        "--length",
        choices=tuple(LENGTHS),
        default="words",
        help="how text is counted in tokens: whitespace-separated words (default) or "
        "characters; a model's tokenizer comes with the runtime",
    )
    lenient_help = (
        "recover from errors (warnings on stderr) and use the recovered document; by default a document with "
        "errors prints them and exits 1"
    )
    modes = argparse.ArgumentParser(add_help=False)  # plan and graph: strict, lenient or template
    recovery = modes.add_mutually_exclusive_group()
    recovery.add_argument("--lenient", action="store_true", help=lenient_help)
    _template_option(recovery, "a template: each promise forks a part of its predicted length (tokens= x --unit)")
    width = argparse.ArgumentParser(add_help=False)
    width_options(width)

    from pastac.report import pass_names

    p = sub.add_parser(
        "plan",
        parents=[depth, analysis, modes, width],
        help="the decoding schedule and its figures",
        description="Schedule a document's threads over decode steps and print one row per "
        "thread and the figures: tokens, steps, critical path, theoretical speedup, "
        "width. Exit 0, 1 if the document has errors, 2 on usage errors.",
    )
    p.add_argument("file", metavar="FILE", help="a Pasta-Lang file ('-': standard input)")
    position_options(p, policies=tuple(Policy), default=PositionOptions())
    p.add_argument(
        "--json",
        action="store_true",
        help="one JSON object: the figures under their names, the settings, width per step, threads and nodes",
    )
    p.add_argument(
        "--dump-after",
        action="append",
        choices=pass_names(),
        metavar="PASS",
        help=f"also print the IR annotated after PASS ({', '.join(pass_names())}); repeatable",
    )
    p.set_defaults(run=_collector_paused(_cmd_plan))

    p = sub.add_parser(
        "graph",
        parents=[depth, analysis, modes, width],
        help="draw the dependency graph or the timeline",
        description="Print a document's dependency graph as a tree in the terminal, Graphviz "
        "DOT, a Mermaid flowchart or the IR's JSON; or draw the timeline of its "
        "threads over decode steps (png, svg; needs matplotlib).",
    )
    p.add_argument("file", metavar="FILE", help="a Pasta-Lang file ('-': standard input)")
    p.add_argument(
        "--format",
        choices=GRAPH_FORMATS,
        default="tree",
        help="tree (default), dot, mermaid, json; png and svg draw a picture into --output",
    )
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write here instead of standard output (required for png and svg)"
    )
    p.add_argument(
        "--view",
        choices=("timeline", "graph"),
        default=None,
        help="what png and svg show: the timeline (default), or the graph drawn by Graphviz's "
        "'dot' (which must be installed)",
    )
    p.set_defaults(run=_collector_paused(_cmd_graph))

    p = sub.add_parser(
        "stats",
        parents=[depth, analysis],
        help="distributions of the figures over a dataset",
        description="For each document of JSONL datasets (or Pasta-Lang files), compute the "
        "theoretical speedup (no width cap), the width, promises and the share of "
        "tokens in async blocks; print their distributions. Invalid records are "
        "counted and listed, not fatal.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help=".jsonl datasets or Pasta-Lang files ('-': stdin)")
    p.add_argument("--lenient", action="store_true", help=lenient_help)
    p.add_argument(
        "--field",
        default="text",
        metavar="NAME",
        help="in .jsonl files, the field that holds the annotated text (default: text)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object: the distributions under their names")
    p.set_defaults(run=_collector_paused(_cmd_stats))


def _template_option(group: argparse._ActionsContainer, what: str) -> None:
    """--template: the file is a template (spec §7.4), whose promises the model fulfils."""
    group.add_argument(
        "--template",
        action="store_true",
        help=f"{what}: a promise has no <async> block (the model writes it), and one with a block is an error (E307)",
    )
