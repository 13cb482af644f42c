"""``pastac bench``: measured against theoretical speedup, side by side with the strategies peers use.

    report = run_bench(engine, load_suite(), BenchOptions())
    report["summary"]["speedup"]["pasta_vs_sequential"], report["summary"]["efficiency"]

Every response is run by every strategy in one process, the strategies
interleaved (A B C, then C B A, ...) so that drift cancels; a strategy's time
on a response is the median of its runs.  Speedups are per response, then
aggregated by geometric mean.  The step-cost model is calibrated first, on the
same model, and ``critical_path`` turns it into each response's bound: the
speedup pasta would reach if every step cost what the calibration measured.
Efficiency is pasta's measured speedup over ``sequential`` divided by that bound.

``STRATEGIES`` are those run by default, on every machine alike; ``OPTIONAL_STRATEGIES`` run only when asked
for by name: ``llamacpp`` (llama.cpp's greedy decode of the same GGUF file, ``pastac.bench.llamacpp``) needs
the optional extra ``pastac[llamacpp]``, so a default report has the same columns wherever it is made.
"""

from __future__ import annotations

from typing import Any

STRATEGIES = ("sequential", "hf-generate", "refork", "batched-copy", "pasta")  # sequential first: it sizes hf-generate
OPTIONAL_STRATEGIES = ("llamacpp",)  # sized by sequential too
KNOWN_STRATEGIES = STRATEGIES + OPTIONAL_STRATEGIES
BASELINES = ("hf-generate", "sequential")

_LAZY = {  # torch is imported on first use, so that the CLI starts quickly
    "BenchOptions": "pastac.bench.run",
    "QUICK": "pastac.bench.run",
    "run_bench": "pastac.bench.run",
    "machine": "pastac.bench.run",
    "geomean": "pastac.bench.run",
    "Calibration": "pastac.bench.calibrate",
    "calibrate": "pastac.bench.calibrate",
    "Response": "pastac.bench.suite",
    "load_suite": "pastac.bench.suite",
    "quick_selection": "pastac.bench.suite",
}
__all__ = ["BASELINES", "KNOWN_STRATEGIES", "OPTIONAL_STRATEGIES", "STRATEGIES", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
