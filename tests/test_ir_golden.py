"""Golden IR dumps and plans for every valid conformance case.

For each specs/conformance/**/NAME.pasta whose name does not start with an error code (E###), the
file specs/ir/**/NAME.ir (same folders) holds, compared byte for byte:

1. the IR dump of the document lowered with the ``words`` length function;
2. the same dump annotated with the positions pass (policy ``predicted``, unit 10);
3. a plan summary: tokens, critical path, and per width cap (none, then 2; order fifo) the steps,
   the theoretical speedup and the threads that decode at each step.

``pytest --update-goldens`` rewrites them; review the diff by hand before keeping it.  The passes run
under the pass manager with ``verify_each``, so every case's IR is verified too (with the case's
``--max-depth``, if it has a NAME.args).  A ``--template`` case is lowered as ``plan --template`` lowers it:
each promise a child of its predicted length, tokens= x the unit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pastac.grammar import DEFAULT_MAX_DEPTH, parse
from pastac.ir.lengths import words
from pastac.ir.lower import lower
from pastac.ir.printer import dump
from pastac.passes import (
    CriticalPath,
    PassManager,
    PositionOptions,
    PositionsPass,
    ResolutionOrderPass,
    Schedule,
    ScheduleOptions,
    VisibilityPass,
    critical_path,
    schedule,
)

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "specs" / "conformance"
GOLDENS = ROOT / "specs" / "ir"
CASES = sorted(p for p in SUITE.rglob("*.pasta") if not re.match(r"E\d{3}", p.name))
POSITIONS = PositionOptions("predicted", unit=10)
CAPS = (None, 2)


def case_id(path: Path) -> str:
    return path.relative_to(SUITE).with_suffix("").as_posix()


def golden_path(case: Path) -> Path:
    return (GOLDENS / case.relative_to(SUITE)).with_suffix(".ir")


def read(path: Path) -> str:
    return path.read_bytes().decode("utf-8")  # bytes: no newline translation


def options(case: Path) -> tuple[int, bool]:
    """The case's depth limit, and whether it is a template."""
    args = case.with_suffix(".args")
    match read(args).split() if args.exists() else []:
        case []:
            return DEFAULT_MAX_DEPTH, False
        case ["--max-depth", n] if n.isdecimal():
            return int(n), False
        case ["--template"]:
            return DEFAULT_MAX_DEPTH, True
        case words_:
            raise ValueError(f"{args}: unsupported options {words_}")


def plan_line(cap: int | None, plan: Schedule, figures: CriticalPath) -> str:
    decoding = " | ".join(",".join(f"t{t}" for t in step) for step in plan.decoding)
    return (
        f"max_width={'none' if cap is None else cap}: steps={plan.steps} "
        f"theoretical_speedup={figures.theoretical_speedup:.4f} decoding: {decoding}"
    )


def golden(case: Path) -> str:
    depth, template = options(case)
    document = parse(read(case), mode="template" if template else "strict", max_depth=depth)
    graph = lower(document, words, promised=(lambda p: (p.tokens or 0) * POSITIONS.unit) if template else None)
    manager = PassManager(
        [PositionsPass(POSITIONS), VisibilityPass(), ResolutionOrderPass()],
        verify_each=True,
        max_depth=depth,
        dump_after=("positions",),
    )
    results = manager.run(graph)
    lines = [
        f"# {case.relative_to(ROOT).as_posix()}",
        "# IR (length: words)",
        dump(graph).rstrip("\n"),
        f"# positions (policy: {POSITIONS.policy}, unit: {POSITIONS.unit})",
        results.dumps["positions"].rstrip("\n"),
        "# plan (order: fifo)",
    ]
    uncapped = results["resolution-order"]
    figures = critical_path(graph, uncapped)
    lines.append(f"tokens={figures.tokens} critical_path={figures.critical_path} max_speedup={figures.max_speedup:.4f}")
    for cap in CAPS:
        plan = uncapped if cap is None else schedule(graph, ScheduleOptions(cap))
        lines.append(plan_line(cap, plan, critical_path(graph, plan)))
    return "\n".join(lines) + "\n"


def test_there_are_cases() -> None:
    assert len(CASES) >= 30
    assert all(not c.name.startswith("E") for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_ir_golden(case: Path, update_goldens: bool) -> None:
    actual = golden(case)
    path = golden_path(case)
    if update_goldens:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(actual.encode("utf-8"))
        return
    assert path.exists(), f"{path} is missing (pytest --update-goldens writes it)"
    assert read(path) == actual, f"{path} differs (pytest --update-goldens rewrites it)"


def test_no_stray_goldens() -> None:
    expected = {golden_path(c) for c in CASES}
    for path in GOLDENS.rglob("*"):
        if path.is_file():
            assert path in expected, f"{path} has no valid conformance case"
