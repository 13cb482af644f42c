"""Facts about the machine that figures and caches are recorded against, and that runs are sized by.

Each is read from the operating system or from torch when asked; nothing here assumes what a CPU can do
from its name. A fact that cannot be read is given as empty (or None), never guessed.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch


def _cpuinfo() -> list[str]:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
    return []


def cpu_name() -> str:
    """The processor's model name from ``/proc/cpuinfo`` (e.g. "AMD EPYC"), else what ``platform`` says."""
    for line in _cpuinfo():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of the first processor in ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``):
    ``avx2``, ``avx512f``, ``avx512_bf16``, ``amx_tile``...; empty where the file is not there."""
    for line in _cpuinfo():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_capability() -> str:
    """The widest instruction set torch's CPU kernels dispatch to here (``AVX2``, ``AVX512``, ``DEFAULT``...)."""
    return str(torch.backends.cpu.get_cpu_capability())


def available_memory(device: torch.device) -> int | None:
    """Bytes a run may still allocate on ``device``: ``MemAvailable`` of ``/proc/meminfo`` for the CPU, the
    free memory of a CUDA device; None where it cannot be told."""
    if device.type == "cuda":
        with contextlib.suppress(RuntimeError):
            return int(torch.cuda.mem_get_info(device)[0])
        return None
    if device.type != "cpu":
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None
