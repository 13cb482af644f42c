"""scripts/gpu-check and the attention kernels' benchmark, checked where there is no GPU.

The script's GPU stages need a GPU; here: it is an executable bash script that parses, and without CUDA it
writes the machine card and stops with a message that says so (exit 2).  The kernel benchmark runs on the
CPU at a tiny size (the Triton kernel under its interpreter) and writes its JSON with finite timings.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check"
BENCHMARK = ROOT / "benchmarks" / "attention_kernels.py"


def environment(**changes: str) -> dict[str, str]:
    """This environment with pastac from the source tree and the script's own switches cleared."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_") and k not in ("OUT", "PYTHON")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env | changes


def test_the_script_is_executable_bash_that_parses() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True, timeout=10)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the script would run its GPU stages")
def test_without_cuda_the_script_writes_the_card_and_says_so(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [str(SCRIPT), str(out)],
        env=environment(PYTHON=sys.executable, GPU_CHECK_BUDGET_S="60"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert "CUDA is not available" in done.stderr
    assert "GPU_CHECK_ALLOW_CPU=1" in done.stderr
    card = json.loads((out / "card.json").read_text())
    assert card["cuda_available"] is False
    assert card["python"] == sys.executable or Path(card["python"]).resolve() == Path(sys.executable).resolve()
    assert card["modules"]["torch"] == torch.__version__
    text = (out / "card.md").read_text()
    assert "torch.cuda.is_available(): False" in text
    assert "## nvidia-smi" in text
    stages = (out / "stages.tsv").read_text().splitlines()
    assert [line.split("\t")[:2] for line in stages[1:]] == [["card", "no CUDA"]]
    assert "Nothing ran past the card" in (out / "summary.md").read_text()


def test_the_kernel_benchmark_runs_on_the_cpu_at_a_tiny_size(tmp_path: Path) -> None:
    triton = importlib.util.find_spec("triton") is not None
    branched = (ROOT / "pastac" / "backend" / "branched.py").exists()
    impls = ["causal-row", "sdpa-dense-mask"] + (["triton"] if triton and branched else [])
    command = [sys.executable, str(BENCHMARK), "--device", "cpu", "--dtype", "float32", "--T", "1,4", "--N", "64,128"]
    command += ["--heads", "2/1,2/2", "--head-dim", "16", "--repeats", "1", "--warmup", "0", "--burst", "1"]
    command += ["--impls", ",".join(impls), "--torch-threads", "1", "--out", str(tmp_path)]
    done = subprocess.run(
        command, env=environment(TRITON_INTERPRET="1"), capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    assert "| T | N | causal-row | triton |" in done.stdout
    report = json.loads((tmp_path / "attention-kernels.json").read_text())
    assert {"machine", "settings", "results", "mask_build", "ratios", "target", "elapsed_s", "complete"} <= set(report)
    assert report["complete"] is True
    assert report["machine"]["device"] == "cpu"
    assert (tmp_path / "attention-kernels.md").read_text().startswith("# Branched decode attention")
    results = report["results"]
    assert len(results) == len(impls) * 2 * 2 * 2  # implementations x head shapes x T x N
    for row in results:
        assert row["error"] is None, row
        assert math.isfinite(row["ms"]) and row["ms"] > 0, row
        if (row["T"], row["N"]) == (1, 64) and branched:  # checked against the reference on the first (T, N)
            assert row["max_abs_err"] is not None and row["max_abs_err"] < 1e-4, row
    assert all(math.isfinite(b["ms"]) for b in report["mask_build"])
    assert len(report["mask_build"]) == 2 * 2 * 2
    for ratio in report["ratios"]:
        assert math.isfinite(ratio["vs_causal_row"])
    assert [t["met"] for t in report["target"]] == [None, None]  # T=16, N=8192 is not in this grid
