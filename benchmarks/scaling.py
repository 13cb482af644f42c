"""How the language commands scale: wall time and peak memory against document size.

Generates documents of several shapes and sizes, runs each language command on each in a subprocess of its
own, and records the wall time, the peak resident memory of that subprocess and the bytes it printed; writes
``scaling.json`` and ``scaling.md`` (a table per shape) into ``--out``.

    python benchmarks/scaling.py                       # every shape and size (about 30 minutes on 2 cores)
    python benchmarks/scaling.py --quick               # the smaller sizes only
    python benchmarks/scaling.py --shape flat --max-size 10000 --commands plan
    python benchmarks/scaling.py --pastac-root ../old  # measure another checkout of pastac (its code, this script)
    python benchmarks/scaling.py --sizes flat=1000,10000 --sizes text=1,10  # chosen sizes

Shapes (the size is promises, nested blocks, diagnostics or megabytes of text):

- ``flat``: promises forked by the main thread, a ``<sync/>`` after every eight (strict, valid);
- ``wide``: promises forked by the main thread and joined by one ``<sync/>`` at the end (strict, valid);
- ``nested``: a promise whose block forks three more, joined, per group of four (depth 2; strict, valid);
- ``deep``: blocks nested inside each other, on one line (lenient: one ``E305`` warning per level past 2);
- ``diagnostics``: lines of malformed tags, several diagnostics per line (lenient);
- ``text``: megabytes of prose in lines, a promise every 20 lines (strict, valid).

Each run is killed past ``--timeout`` seconds or ``--memory`` GiB of address space; a command that fails so
at one size is not run at the larger ones.  Peak memory is ``ru_maxrss`` of the finished child (``os.wait4``:
the per-child form of ``getrusage(RUSAGE_CHILDREN)``); the interpreter and pastac's imports take ~45 MB of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# -- documents ------------------------------------------------------------------------------------------------


def flat(n: int) -> str:
    """``n`` promises of the main thread, joined eight at a time."""
    out = ["Here are the parts of the answer.\n"]
    for i in range(n):
        out.append(f'{i}. <promise topic="part {i}" tokens="2"/><async>Part {i} says a few words here.</async>\n')
        if i % 8 == 7:
            out.append("<sync/>Those were eight parts.\n")
    out.append("<sync/>In short, that is all.\n" if n % 8 else "In short, that is all.\n")
    return "".join(out)


def wide(n: int) -> str:
    """``n`` promises of the main thread, all joined by one ``<sync/>`` at the end."""
    out = ["Here are the parts of the answer.\n"]
    out.extend(
        f'{i}. <promise topic="part {i}" tokens="2"/><async>Part {i} says a few words.</async>\n' for i in range(n)
    )
    out.append("<sync/>In short, that is all.\n")
    return "".join(out)


def nested(n: int) -> str:
    """Groups of four promises: one of the main thread whose block forks three, joined by a ``<sync/>``."""
    out = ["Here are the sections.\n"]
    for g in range(max(1, n // 4)):
        out.append(f'<promise topic="section {g}" tokens="8"/><async>Section {g}:\n')
        for j in range(3):
            out.append(f'- <promise topic="item {g}.{j}" tokens="1"/><async>item {j} of {g}</async>\n')
        out.append("<sync/>That is the section.</async>\n")
        if g % 4 == 3:
            out.append("<sync/>\n")
    out.append("<sync/>The end.\n" if max(1, n // 4) % 4 else "The end.\n")
    return "".join(out)


def deep(n: int) -> str:
    """``n`` blocks nested inside each other, on one line."""
    opening = "".join(f'<promise topic="level {i}" tokens="1"/><async>level {i} ' for i in range(n))
    return opening + "</async>" * n + "\n"


_BAD_LINES = (
    '<promise topic=unquoted{i} tokens="1"/><async>a{i}</async> stray </async> end<sync>\n',
    '<promise topic="a{i}" tokens="many"/><async topic="b{i}">b</async><promise topic="c{i}" colour="red"/>\n',
    '<async>orphan {i}</async><sync/><promise topic="" tokens="1" tokens="2"/> text <promise topic="x\n',
    '"/><async/><sync note="n"/>\n',
)


def diagnostics(n: int) -> str:
    """Lines of malformed tags: about ``n`` diagnostics in all."""
    lines = []
    for i in range(max(1, n // 12)):
        lines.extend(line.format(i=i) for line in _BAD_LINES)
    return "".join(lines)


_PROSE = (
    "The quick brown fox jumps over the lazy dog, and then it runs across the field to the river bank.\n",
    "A second line of plain text, with some punctuation: commas, colons; and a < sign that is not a tag.\n",
    "Numbers 1, 2, 3 and a formula x < y > z appear here too, to exercise the text rule of the lexer.\n",
)


def text(megabytes: int) -> str:
    """About ``megabytes`` MB of prose, a promise every 20 lines, valid in strict mode."""
    out: list[str] = []
    size, target, line = 0, megabytes * 1_000_000, 0
    while size < target:
        if line % 20 == 19:
            part = f'<promise topic="aside {line}" tokens="2"/><async>An aside written in a thread.</async>\n'
        else:
            part = _PROSE[line % len(_PROSE)]
        out.append(part)
        size += len(part)
        line += 1
    out.append("<sync/>\n")
    return "".join(out)


@dataclass(frozen=True)
class Shape:
    """A family of documents: how to make one of a size, the sizes, the unit, and the mode to read it in."""

    name: str
    make: Callable[[int], str]
    sizes: tuple[int, ...]
    quick: tuple[int, ...]
    unit: str
    lenient: bool


PROMISES = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000)
QUICK = (1_000, 2_000, 5_000, 10_000)
SHAPES = {
    s.name: s
    for s in (
        Shape("flat", flat, PROMISES, QUICK, "promises", lenient=False),
        Shape("wide", wide, PROMISES, QUICK, "promises", lenient=False),
        Shape("nested", nested, PROMISES, QUICK, "promises", lenient=False),
        Shape("deep", deep, (1_000, 2_000, 5_000, 10_000, 20_000, 50_000), (1_000, 2_000, 5_000), "levels", True),
        Shape("diagnostics", diagnostics, PROMISES, QUICK, "diagnostics", lenient=True),
        Shape("text", text, (1, 2, 5, 10, 20, 50), (1, 2, 5), "MB", lenient=False),
    )
}

# The commands run on each document; {lenient} is --lenient for the lenient shapes.
COMMANDS: dict[str, list[str]] = {
    "check": ["check", "{lenient}", "{file}"],
    "render": ["render", "{lenient}", "{file}"],
    "fmt": ["fmt", "{file}"],
    "plan": ["plan", "{lenient}", "{file}"],
    "plan-w4": ["plan", "{lenient}", "--max-width", "4", "{file}"],
    "plan-dump": ["plan", "{lenient}", "--dump-after", "visibility", "{file}"],
    "graph": ["graph", "{lenient}", "{file}"],
    "graph-dot": ["graph", "{lenient}", "--format", "dot", "{file}"],
    "stats": ["stats", "{lenient}", "{file}"],
}
# fmt has no lenient mode: on a lenient shape it prints the strict diagnostics and exits 1, which is measured too.

# -- running --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One command on one document: its time, peak memory, output and how it ended."""

    shape: str
    size: int
    unit: str
    input_bytes: int
    command: str
    seconds: float
    peak_mb: float
    output_bytes: int
    status: str  # "ok", "exit N", "timeout", "killed (signal N)"


def run_one(argv: list[str], env: dict[str, str], timeout: float, memory_gib: float) -> tuple[float, float, int, str]:
    """Run ``argv``: wall seconds, peak RSS in MB, bytes written to stdout and stderr, status."""
    limit = int(memory_gib * 2**30)

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=limits)
        deadline = start + timeout
        status = None
        while True:
            pid, wait_status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                child.kill()
                pid, wait_status, usage = os.wait4(child.pid, 0)
                status = "timeout"
                break
            time.sleep(0.01)
        seconds = time.perf_counter() - start
        child.returncode = 0  # reaped here, not by Popen
        written = out.seek(0, os.SEEK_END)
    if status is None:
        if os.WIFSIGNALED(wait_status):
            status = f"killed (signal {os.WTERMSIG(wait_status)})"
        else:
            code = os.WEXITSTATUS(wait_status)
            status = "ok" if code == 0 else f"exit {code}"
    return seconds, usage.ru_maxrss / 1024, written, status


def host() -> dict[str, object]:
    """The machine: CPU model, cores, vector extensions, memory, Python."""
    model, flags = platform.processor() or "unknown", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    vector = [f for f in ("avx2", "avx512f", "avx512_bf16") if f in flags.split()]
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "vector": vector,
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "system": f"{platform.system()} {platform.release()}",
    }


def commit(root: Path) -> str:
    """The checked-out commit of ``root`` (with ``+dirty`` when it has changes), or ``unknown``."""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"


def markdown(report: dict[str, object]) -> str:
    """A table per shape: a row per size, a column per command with its seconds and peak MB."""
    runs = [Run(**r) for r in report["runs"]]  # type: ignore[arg-type]
    h = report["host"]
    assert isinstance(h, dict)
    lines = [
        "# Scaling of the language commands",
        "",
        f"pastac {report['commit']}; {h['cpu']}, {h['cores']} cores ({', '.join(h['vector']) or 'no AVX2'}), "
        f"{h['memory_gib']} GiB; Python {h['python']}, {h['system']}.",
        "",
        "Each cell: wall seconds / peak resident MB of the command's process (the interpreter and imports take"
        " about 45 MB). `timeout` and `killed` mark runs stopped at the limits"
        f" ({report['timeout_s']} s, {report['memory_gib']} GiB of address space).",
        "",
    ]
    commands = list(dict.fromkeys(r.command for r in runs))
    for shape in dict.fromkeys(r.shape for r in runs):
        rows = [r for r in runs if r.shape == shape]
        unit = rows[0].unit
        lines += [f"## {shape}", "", f"{SHAPES[shape].make.__doc__}", ""]
        present = [c for c in commands if any(r.command == c for r in rows)]
        lines.append(f"| {unit} | input MB | " + " | ".join(present) + " |")
        lines.append("| ---: | ---: | " + " | ".join("---:" for _ in present) + " |")
        for size in dict.fromkeys(r.size for r in rows):
            cells = []
            for c in present:
                got = [r for r in rows if r.size == size and r.command == c]
                if not got:
                    cells.append("")
                    continue
                r = got[0]
                cell = f"{r.seconds:.2f} s / {r.peak_mb:.0f} MB"
                if r.status not in ("ok", "exit 1"):
                    cell = f"{r.status} ({cell})"
                cells.append(cell)
            size_bytes = rows[[r.size for r in rows].index(size)].input_bytes
            lines.append(f"| {size:,} | {size_bytes / 1e6:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Generate, run, record; the exit status is 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling")
    parser.add_argument("--shape", action="append", choices=tuple(SHAPES), help="only these shapes (repeatable)")
    parser.add_argument("--commands", nargs="+", choices=tuple(COMMANDS), default=list(COMMANDS))
    parser.add_argument("--quick", action="store_true", help="the smaller sizes only")
    parser.add_argument("--max-size", type=int, default=None, help="skip sizes above this")
    parser.add_argument(
        "--sizes",
        action="append",
        default=[],
        metavar="SHAPE=N,N,...",
        help="the sizes of one shape, instead of its defaults (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is killed")
    parser.add_argument("--memory", type=float, default=6.0, help="GiB of address space a run may take")
    parser.add_argument("--pastac-root", type=Path, default=ROOT, help="the checkout of pastac to measure")
    parser.add_argument("--name", default="scaling", help="the report's file name, without extension")
    args = parser.parse_args(argv)
    sizes: dict[str, tuple[int, ...]] = {}
    for item in args.sizes:
        name, _, values = item.partition("=")
        try:
            sizes[name] = tuple(int(v) for v in values.split(","))
        except ValueError:
            parser.error(f"--sizes {item}: expected SHAPE=N,N,... with integers")
        if name not in SHAPES or not all(v > 0 for v in sizes[name]):
            parser.error(f"--sizes {item}: the shape must be one of {', '.join(SHAPES)}, the sizes positive")

    env = dict(os.environ, PYTHONPATH=str(args.pastac_root.resolve()), PYTHONHASHSEED="0")
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    report: dict[str, object] = {
        "format": "pastac-scaling",
        "version": 1,
        "commit": commit(args.pastac_root),
        "host": host(),
        "timeout_s": args.timeout,
        "memory_gib": args.memory,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as scratch:
        for shape in (SHAPES[s] for s in (args.shape or SHAPES)):
            failed: set[str] = set()
            for size in sizes.get(shape.name, shape.quick if args.quick else shape.sizes):
                if args.max_size is not None and size > args.max_size:
                    continue
                document = shape.make(size)
                path = Path(scratch) / f"{shape.name}-{size}.pasta"
                path.write_text(document, encoding="utf-8")
                input_bytes = path.stat().st_size
                for name in args.commands:
                    if name in failed:
                        continue
                    # -P: the working directory is not put first on the path, so that a pastac found there
                    # (this checkout, when the script runs from it) does not shadow --pastac-root's
                    argv = [sys.executable, "-P", "-m", "pastac"]
                    for word in COMMANDS[name]:
                        if word == "{lenient}":
                            argv += ["--lenient"] if shape.lenient else []
                        else:
                            argv.append(word.format(file=path))
                    seconds, peak, written, status = run_one(argv, env, args.timeout, args.memory)
                    run = Run(shape.name, size, shape.unit, input_bytes, name, seconds, peak, written, status)
                    runs.append(run)
                    print(
                        f"{shape.name:12} {size:>8,} {name:10} {seconds:8.2f} s {peak:8.0f} MB "
                        f"{written / 1e6:9.2f} MB out  {status}",
                        flush=True,
                    )
                    if status not in ("ok", "exit 1"):
                        failed.add(name)
                path.unlink()
                report["runs"] = [asdict(r) for r in runs]
                (args.out / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
                (args.out / f"{args.name}.md").write_text(markdown(report), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
