"""What two processes on this machine get of its cores and of its memory bandwidth, against one alone.

Each process runs torch on one thread for ``--seconds``: ``compute``, a product of two small matrices that stay
in the cache, or ``memory``, a vector times a 256 MB matrix, streamed from memory as a batch-1 decode step
streams a model's weights.  Prints the rate of one process alone and of each of two at once, and their ratio:
near 1 when the two have a core each, lower when they share what they run on (for ``memory``: the bandwidth).

    .venv/bin/python benchmarks/memory_contention.py --seconds 6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import sys, time, torch
torch.set_num_threads(1)
if sys.argv[1] == "compute":
    a, b = torch.randn(128, 128), torch.randn(128, 128)
    op = lambda: a @ b
else:
    w, x = torch.randn(4096, 16384), torch.randn(1, 4096)
    op = lambda: x @ w
for _ in range(3):
    op()
start, n = time.perf_counter(), 0
while time.perf_counter() - start < float(sys.argv[2]):
    op()
    n += 1
print(n / (time.perf_counter() - start))
"""


def _rates(kind: str, seconds: float, processes: int) -> list[float]:
    started = [
        subprocess.Popen([sys.executable, "-c", CHILD, kind, str(seconds)], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    return [float(p.communicate()[0]) for p in started]


def main() -> int:
    """Measure and print the rates."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = {}
    for kind in ("compute", "memory"):
        alone = _rates(kind, args.seconds, 1)[0]
        pair = _rates(kind, args.seconds, 2)
        figures[kind] = {"alone": alone, "two_at_once": pair, "each_vs_alone": min(pair) / alone}
        print(
            f"{kind}: alone {alone:.1f}/s; two at once {pair[0]:.1f}/s and {pair[1]:.1f}/s: each at "
            f"{min(pair) / alone:.2f} of alone, together {sum(pair) / alone:.2f}x"
        )
    if args.json:
        print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
