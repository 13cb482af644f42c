"""Running the benchmark: calibration, the strategies interleaved on every response, the report.

Each response runs every strategy ``repeats`` times, the order reversed on every other repeat, so that the
runs compared are neighbours in time.  A strategy's figure is the median of its runs; a ratio between two
strategies is the median of the ratios of the runs made in the same repeat, with their spread (the largest
minus the smallest).  A ratio whose spread is larger than its effect (its distance from 1) is flagged
``noisy``: another run may well give the other answer.  An efficiency above ``PLAUSIBLE_EFFICIENCY`` (pasta
faster than the step cost allows) is flagged as noise too: what it measures is the machine's drift, not
pastac.

With ``llamacpp`` among the strategies, the report records its llama.cpp model (``machine.llamacpp``) and
every strategy's throughput over llama.cpp's (``summary.tokens_per_s_vs_llamacpp``): all of them place the
same number of tokens on a response, so that ratio and the paired speedups ``<strategy>_vs_llamacpp`` tell
the same story, the one aggregated over all tokens, the other per response and repeat.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pastac.backend.linear import LinearKernels
from pastac.bench import KNOWN_STRATEGIES, STRATEGIES
from pastac.bench.calibrate import Calibration, calibrate
from pastac.bench.llamacpp import LlamaCpp
from pastac.bench.strategies import Bench, Measurement
from pastac.bench.suite import Response
from pastac.machine import cpu_name
from pastac.passes import critical_path, schedule
from pastac.runtime.engine import Engine


@dataclass(frozen=True)
class BenchOptions:
    """Which strategies run (any of ``KNOWN_STRATEGIES``; by default ``STRATEGIES``), how often, and the
    calibration grid; raises ``ValueError`` for an unknown strategy, none at all, or fewer than one repeat."""

    strategies: tuple[str, ...] = STRATEGIES
    repeats: int = 2  # runs of each strategy on each response
    threads: tuple[int, ...] = (1, 2, 4, 8, 12, 16)  # calibration grid
    contexts: tuple[int, ...] = (128, 512, 1024)
    calibration_repeats: int = 5
    warmup: bool = True  # run each strategy once on a small document first

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in KNOWN_STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(
                f"unknown strategy {', '.join(unknown) or '(none)'}; choose from {', '.join(KNOWN_STRATEGIES)}"
            )
        if self.repeats < 1 or self.calibration_repeats < 1:
            raise ValueError("repeats must be >= 1")


# The calibration has warmed the model up; the strategies' own first calls are a small part of a quick run.
# Three interleaved repeats: a median, and a spread to judge it by.
QUICK = BenchOptions(repeats=3, threads=(1, 2, 4, 8), contexts=(64, 512), calibration_repeats=3, warmup=False)
PLAUSIBLE_EFFICIENCY = 1.1  # above it, an efficiency says more of the machine's noise than of pastac

WARMUP = Response(
    "warm-up",
    "list",
    "Two tips, please.",
    'Sure: <promise topic="first" tokens="10"/><async>1. Rest well.\n</async>'
    '<promise topic="second" tokens="10"/><async>2. Eat well.\n</async><sync/> Done.',
)


def machine(engine: Engine) -> dict[str, Any]:
    """What the figures were measured on."""
    param = next(engine.model.parameters())
    out: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": str(param.device),
        "dtype": str(param.dtype).removeprefix("torch."),
        "model": engine.name,
        "parameters": sum(p.numel() for p in engine.model.parameters()),
        "kernels": engine.kernels,
        "attention": engine.attention,
        "decode_step": engine.decode_step,
        "forward": engine.forward,
        "quant": engine.quant,
    }
    if isinstance(linears := getattr(engine.model, "pastac_linears", None), LinearKernels):
        out["linear_kernels"] = linears.summary()
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover - a dependency
        pass
    if param.device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(param.device)
    return out


def geomean(values: Sequence[float]) -> float:
    """The geometric mean of positive ``values``; NaN if there are none."""
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def _spread(values: Sequence[float]) -> dict[str, float]:
    logs = [math.log(v) for v in values]
    return {
        "geomean": geomean(values),
        "min": min(values),
        "max": max(values),
        "geo_std": math.exp(statistics.pstdev(logs)) if len(logs) > 1 else 1.0,
    }


def _pairs(strategies: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for a in strategies for b in strategies if a != b]


Progress = Callable[[str, int, int], None]  # (what, done, total)


def prepare(
    engine: Engine, options: BenchOptions, llamacpp: LlamaCpp | None = None, progress: Progress | None = None
) -> tuple[Bench, Calibration]:
    """The bench of ``engine`` (and ``llamacpp``'s model, which the ``llamacpp`` strategy needs: ``ValueError``
    without it), its step cost calibrated and every strategy warmed up: what ``measure`` needs."""
    if "llamacpp" in options.strategies and llamacpp is None:
        raise ValueError("the llamacpp strategy needs its model: run_bench(..., llamacpp=load(gguf, threads=...))")
    bench = Bench(engine, llamacpp if "llamacpp" in options.strategies else None)  # checks llamacpp's vocabulary
    tell = progress or (lambda what, done, total: None)
    tell("calibrating the step cost", 0, 1)
    cal = calibrate(
        engine.model,
        threads=options.threads,
        contexts=options.contexts,
        repeats=options.calibration_repeats,
        label=f"{engine.name}, calibrated",
        attention=engine.attention,
        decode_step=engine.decode_step,
        decoder=engine.decoder,
    )
    tell("calibrating the step cost", 1, 1)
    for strategy in options.strategies if options.warmup else ():  # first-call costs stay out of the figures
        bench.run(strategy, WARMUP.prompt, WARMUP.text)
    return bench, cal


def measure(bench: Bench, cal: Calibration, response: Response, options: BenchOptions) -> dict[str, Any]:
    """Every strategy's runs on ``response``, interleaved (the order reversed on every other repeat): its row."""
    runs: dict[str, list[Measurement]] = {s: [] for s in options.strategies}
    for r in range(options.repeats):
        order = options.strategies if r % 2 == 0 else tuple(reversed(options.strategies))
        for strategy in order:
            runs[strategy].append(bench.run(strategy, response.prompt, response.text))
    return _result(response, runs, cal)


def measured_on(bench: Bench) -> dict[str, Any]:
    """The machine of ``bench``'s figures (with llama.cpp's model, when it runs)."""
    out = machine(bench.engine)
    if bench.llamacpp is not None:
        out["llamacpp"] = bench.llamacpp.describe()
    return out


def assemble(
    machine_: dict[str, Any], cal: Calibration, results: list[dict[str, Any]], options: BenchOptions
) -> dict[str, Any]:
    """The report (a JSON-able dict) of the rows ``measure`` made on ``machine_`` with ``cal``."""
    return {
        "machine": machine_,
        "options": {"strategies": list(options.strategies), "repeats": options.repeats, "responses": len(results)},
        "calibration": cal.to_json(),
        "results": results,
        "summary": _summary(results, options.strategies),
    }


def run_bench(
    engine: Engine,
    responses: Sequence[Response],
    options: BenchOptions = BenchOptions(),
    progress: Progress | None = None,
    llamacpp: LlamaCpp | None = None,
) -> dict[str, Any]:
    """Calibrate, run every strategy on every response, and return the report (a JSON-able dict).
    ``llamacpp``: the model of the ``llamacpp`` strategy (``pastac.bench.llamacpp.load``), which it needs;
    ``ValueError`` when the strategies name it and it is None."""
    bench, cal = prepare(engine, options, llamacpp, progress)
    tell = progress or (lambda what, done, total: None)
    results = []
    for n, response in enumerate(responses):
        tell(response.id, n, len(responses))
        results.append(measure(bench, cal, response, options))
    tell("done", len(responses), len(responses))
    return assemble(measured_on(bench), cal, results, options)


def ratio_figure(ratios: Sequence[float]) -> dict[str, Any]:
    """A ratio measured once per repeat: its median, its spread (largest minus smallest), and whether the
    spread is larger than the effect (the median's distance from 1)."""
    median = statistics.median(ratios)
    spread = max(ratios) - min(ratios)
    return {
        "median": median,
        "min": min(ratios),
        "max": max(ratios),
        "spread": spread,
        "noisy": len(ratios) > 1 and spread > abs(median - 1),
    }


def _result(response: Response, runs: dict[str, list[Measurement]], cal: Calibration) -> dict[str, Any]:
    median = {s: statistics.median(m.wall_s for m in ms) for s, ms in runs.items()}
    out: dict[str, Any] = {"id": response.id, "shape": response.shape}
    strategies: dict[str, Any] = {}
    for s, ms in runs.items():
        last = ms[-1]
        strategies[s] = {
            **last.to_json(),
            "wall_s": median[s],
            "tokens_per_s": last.tokens / median[s],
            "runs_s": [m.wall_s for m in ms],
            "spread_s": max(m.wall_s for m in ms) - min(m.wall_s for m in ms),
        }
    reference = runs.get("pasta") or runs.get("sequential") or next(iter(runs.values()))
    generation = reference[-1].generation
    if generation is not None:
        graph = generation.graph
        figures = critical_path(graph, schedule(graph), cal.cost, context=generation.stats.prompt_tokens)
        out.update(
            prompt_tokens=generation.stats.prompt_tokens,
            tokens=generation.stats.tokens,
            threads=generation.stats.threads,
            theoretical_speedup=figures.theoretical_speedup,
            bound=figures.predicted_speedup,
            schedule_steps=figures.steps,
        )
    out["strategies"] = strategies
    # a ratio per repeat, of the two runs made in it (neighbours in time): its median is the figure
    paired = {
        f"{a}_vs_{b}": ratio_figure([rb.wall_s / ra.wall_s for ra, rb in zip(runs[a], runs[b], strict=True)])
        for a, b in _pairs(list(runs))
    }
    out["speedup"] = {key: figure["median"] for key, figure in paired.items()}
    out["speedup_runs"] = paired
    if "pasta" in runs and "sequential" in runs and "bound" in out:
        out["efficiency"] = out["speedup"]["pasta_vs_sequential"] / out["bound"]
        out["efficiency_noise"] = out["efficiency"] > PLAUSIBLE_EFFICIENCY
    return out


def _summary(results: list[dict[str, Any]], strategies: Sequence[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {"responses": len(results)}
    forked = [r for r in results if r.get("threads", 1) > 1]
    summary["forked_responses"] = len(forked)
    spreads = {key: _spread([r["speedup"][key] for r in results]) for key in results[0]["speedup"]} if results else {}
    summary["speedup"] = {key: s["geomean"] for key, s in spreads.items()}
    summary["speedup_spread"] = spreads
    # a summary ratio is noisy when a response's is, or when the responses disagree on which side of 1 it lies
    summary["speedup_noisy"] = {
        key: any(r["speedup_runs"][key]["noisy"] for r in results) or (s["min"] < 1 < s["max"])
        for key, s in spreads.items()
    }
    if forked and "efficiency" in forked[0]:
        summary["efficiency"] = geomean([r["efficiency"] for r in forked])
        summary["efficiency_spread"] = _spread([r["efficiency"] for r in forked])
        summary["efficiency_noise"] = summary["efficiency"] > PLAUSIBLE_EFFICIENCY or any(
            r["speedup_runs"]["pasta_vs_sequential"]["noisy"] for r in forked
        )
        summary["efficiency_all"] = geomean([r["efficiency"] for r in results])
        summary["pasta_vs_sequential_forked"] = geomean([r["speedup"]["pasta_vs_sequential"] for r in forked])
    if results and "bound" in results[0]:
        summary["theoretical_speedup"] = geomean([r["theoretical_speedup"] for r in results])
        summary["bound"] = geomean([r["bound"] for r in results])
        if forked:
            summary["bound_forked"] = geomean([r["bound"] for r in forked])
    summary["tokens_per_s"] = (
        {
            s: sum(r["strategies"][s]["tokens"] for r in results) / sum(r["strategies"][s]["wall_s"] for r in results)
            for s in strategies
        }
        if results
        else {}
    )
    if "llamacpp" in strategies and results:
        theirs = summary["tokens_per_s"]["llamacpp"]
        summary["tokens_per_s_vs_llamacpp"] = {s: summary["tokens_per_s"][s] / theirs for s in strategies}
    summary["kv_peak_bytes"] = (
        {s: max(r["strategies"][s]["kv_peak_bytes"] for r in results) for s in strategies} if results else {}
    )
    summary["kv_peak_ratio_vs_pasta"] = (
        {
            s: geomean(
                [r["strategies"][s]["kv_peak_bytes"] / r["strategies"]["pasta"]["kv_peak_bytes"] for r in results]
            )
            for s in strategies
        }
        if results and "pasta" in strategies
        else {}
    )
    return summary
