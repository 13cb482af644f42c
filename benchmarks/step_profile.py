"""Where a decode step's time goes on this machine: linear layers, attention, the rest of the forward,
sampling and the tag guard, and Python scheduling, at W threads per step, for each way of running the model.

    .venv/bin/python benchmarks/step_profile.py --widths 1,4,16 --torch-threads 1 --out OUT \\
        --choices float32:tuned:hf,float32:tuned:fused,float32:tuned:fused:fp16,float32:tuned:fused:int8

For each choice (``DTYPE:KERNELS[:FORWARD[:QUANT]]``: ``--dtype``, ``--kernels``, ``--forward`` and ``--quant``;
forward ``hf`` and quant ``none`` unless given) the default model (base weights) decodes a template with W promises
after a prompt of about ``--context`` tokens: the W children decode side by side, one query each per step, up
to ``--thread-tokens`` tokens each (a child's body does not end at a newline here, so that most children run
their whole budget).  Only the steps of width exactly W count.  Each such step's wall time is split:

- ``linears``: every ``nn.Linear`` of the model (its forward wrapped in a timer; the tuned kernels run inside)
  and every packed product of the fused decoder (``--quant``);
- ``attention``: the attention function of every layer;
- ``forward, other``: the rest of the model's forward (embeddings, norms, rotary, activations, the hooks);
- ``sampling and guard``: choosing the tokens from the logits (``Runner._choose``: penalty, the tag guard's
  masks, the sampler);
- ``runner, other``: the rest of ``Runner.step`` (the plan's tensors, the mask);
- ``scheduling``: the rest of the step (the scheduler's plan and advance, the tag interpreter): Python.

On the CPU every operation finishes before the next starts, so the wall times add up.  The timers add about
a microsecond per linear layer (counted in ``forward, other``).  Prints a table; ``--out`` writes
step-profile.json and step-profile.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from pastac.backend import decoder
from pastac.backend.decoder import FusedDecoder
from pastac.backend.quant import Packed
from pastac.machine import cpu_name
from pastac.runtime import Engine
from pastac.runtime.runner import Runner

PARTS = ("linears", "attention", "forward, other", "sampling and guard", "runner, other", "scheduling")


class Clock:
    """Seconds spent in each timed part during the current step, and the threads of its runner's plan."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = {}
        self.width = 0

    def add(self, part: str, seconds: float) -> None:
        """Count ``seconds`` more in ``part``."""
        self.spent[part] = self.spent.get(part, 0.0) + seconds

    def timed(self, part: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, its time added to ``part``."""

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.add(part, time.perf_counter() - began)

        return wrapper


@contextlib.contextmanager
def instrumented(model: torch.nn.Module, clock: Clock) -> Iterator[None]:
    """Within: the model's linear layers (and the fused decoder's packed ones), the attention function (the
    model's and the fused decoder's), the forward (the model's or the fused decoder's), the runner's step and
    its sampling timed."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    own = [m.__dict__.get("forward") for m in linears]  # a tuned kernel's forward, or None: the class's
    for module in linears:
        module.forward = clock.timed("linears", module.forward)  # type: ignore[method-assign]
    attention = ALL_ATTENTION_FUNCTIONS["sdpa"]
    step, choose, forward = Runner.step, Runner._choose, model.forward
    ALL_ATTENTION_FUNCTIONS["sdpa"] = clock.timed("attention", attention)
    timed_step = clock.timed("runner", step)

    def stepped(runner: Runner, plan: Any, *rest: Any) -> Any:
        clock.width = len(set(plan.threads))
        return timed_step(runner, plan, *rest)

    Runner.step = stepped  # type: ignore[method-assign]
    Runner._choose = clock.timed("sampling and guard", choose)  # type: ignore[method-assign]
    model.forward = clock.timed("forward", forward)  # type: ignore[method-assign]
    fused_call, fused_attention, packed_call = FusedDecoder.__call__, decoder.grouped_sdpa, Packed.__call__
    FusedDecoder.__call__ = clock.timed("forward", fused_call)  # type: ignore[method-assign]
    decoder.grouped_sdpa = clock.timed("attention", fused_attention)
    Packed.__call__ = clock.timed("linears", packed_call)  # type: ignore[method-assign]
    try:
        yield
    finally:
        FusedDecoder.__call__, decoder.grouped_sdpa, Packed.__call__ = fused_call, fused_attention, packed_call
        for module, forward in zip(linears, own, strict=True):
            if forward is None:
                del module.forward
            else:
                module.forward = forward  # type: ignore[method-assign]
        ALL_ATTENTION_FUNCTIONS["sdpa"] = attention
        Runner.step, Runner._choose = step, choose  # type: ignore[method-assign]
        del model.forward


def template(width: int) -> str:
    """A template whose ``width`` promises fork ``width`` children that decode side by side."""
    return "Items:\n" + "".join(f'{i + 1}. <promise topic="item {i + 1}"/>\n' for i in range(width)) + "<sync/>Done."


def profile(engine: Engine, width: int, args: argparse.Namespace) -> dict[str, Any]:
    """Mean milliseconds per step of width ``width``, per part, and the number of such steps."""
    prompt = " ".join(["Write a few short notes on keeping a garden through a dry summer."] * (args.context // 14))
    rows: list[dict[str, float]] = []
    for attempt in range(2):  # the first run warms up
        clock = Clock()
        with instrumented(engine.model, clock):
            events = engine.stream(
                prompt, template=template(width), max_thread_tokens=args.thread_tokens, child_stop="\n\n\n\n"
            )
            began = time.perf_counter()
            for _event in events:
                total = time.perf_counter() - began
                run = engine.last_run
                assert run is not None
                spent, clock.spent = clock.spent, {}
                if attempt == 1 and clock.width == width and run.prefill_steps < len(run.times):
                    forward = spent.get("forward", 0.0)
                    runner = spent.get("runner", 0.0)
                    rows.append(
                        {
                            "total": total,
                            "linears": spent.get("linears", 0.0),
                            "attention": spent.get("attention", 0.0),
                            "forward, other": forward - spent.get("linears", 0.0) - spent.get("attention", 0.0),
                            "sampling and guard": spent.get("sampling and guard", 0.0),
                            "runner, other": runner - forward - spent.get("sampling and guard", 0.0),
                            "scheduling": total - runner,
                        }
                    )
                began = time.perf_counter()
    if not rows:
        return {"steps": 0}
    out = {part: 1000 * statistics.mean(r[part] for r in rows) for part in ("total", *PARTS)}
    return {"steps": len(rows), "ms": out}


def main() -> int:
    """Profile every choice at every width and print (and write) the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="1,4,16")
    parser.add_argument(
        "--choices",
        default="float32:tuned:hf,float32:tuned:fused,float32:tuned:fused:fp16,float32:tuned:fused:int8",
        help="DTYPE:KERNELS[:FORWARD[:QUANT]] (forward hf or fused, default hf; quant default none), comma-separated",
    )
    parser.add_argument("--context", type=int, default=300, help="prompt tokens, about")
    parser.add_argument("--thread-tokens", type=int, default=24, help="tokens per child")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--out", metavar="DIR")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    widths = [int(w) for w in args.widths.split(",")]
    results: dict[str, Any] = {
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "torch_threads": args.torch_threads,
        "context": args.context,
        "thread_tokens": args.thread_tokens,
        "choices": {},
    }
    for choice in args.choices.split(","):
        given = choice.split(":")
        dtype, kernels, forward, quant = given + ["hf", "none"][len(given) - 2 :]
        engine = Engine.from_pretrained(
            None, adapter=None, dtype=dtype, kernels=kernels, forward=forward, quant=quant, progress=False
        )
        results["choices"][choice] = {str(w): profile(engine, w, args) for w in widths}
        del engine
    lines = [
        f"# Decode step profile ({results['cpu']}, torch {results['torch']}, {args.torch_threads} thread(s))",
        "",
        f"Default model, base weights; a prompt of about {args.context} tokens, W children of up to "
        f"{args.thread_tokens} tokens each; mean ms per step of width W.",
        "",
        "| choice | W | steps | total | " + " | ".join(PARTS) + " |",
        "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in PARTS) + " |",
    ]
    for choice, by_width in results["choices"].items():
        for w, figures in by_width.items():
            if not figures["steps"]:
                lines.append(f"| {choice} | {w} | 0 | – | " + " | ".join("–" for _ in PARTS) + " |")
                continue
            ms = figures["ms"]
            cells = " | ".join(f"{ms[p]:.1f}" for p in PARTS)
            lines.append(f"| {choice} | {w} | {figures['steps']} | {ms['total']:.1f} | {cells} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "step-profile.json").write_text(json.dumps(results, indent=1) + "\n")
        (folder / "step-profile.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
