"""What a training run leaves beside its adapter for people to read: the loss log and plot, the hardware
record and the model card.

``loss.csv`` has a row every ``log_every`` steps (step, loss, lr, tokens, seconds, and kl when the KL term
is on); ``loss.png`` plots it; ``README.md`` is a model card drawn from ``train_log.json`` and ``pastac.json``
alone, in place of PEFT's blank template. The plot is drawn without pyplot (no global state, no display), and
a missing matplotlib skips it: a plot is not worth failing a finished run for.
"""

from __future__ import annotations

import csv
import io
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pastac.machine import cpu_name
from pastac.output import atomic, write_text

if TYPE_CHECKING:
    from pastac.adapters.settings import AdapterSettings


def write_loss(out: Path, history: Sequence[dict[str, float]]) -> None:
    """Write the loss rows to ``out/loss.csv`` and plot them in ``out/loss.png``, each file atomically
    (``pastac.output``; its ``OutputError`` when one cannot be written)."""
    table = io.StringIO()
    # the first stage's KL term, or the preference stage's two terms (its loss being their weighted sum)
    extra = [name for name in ("kl", "sft", "ipo") if any(name in r for r in history)]
    fields = ["step", "loss", "lr", "tokens", "seconds", *extra]
    writer = csv.DictWriter(table, fieldnames=fields)
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    write_text(out / "loss.csv", table.getvalue())
    try:
        from matplotlib.figure import Figure  # the Agg canvas, no pyplot: no global state, no display
    except ImportError:  # matplotlib is a dependency, but a plot is not worth failing a finished run for
        return
    fig = Figure(figsize=(7, 4), layout="constrained")
    axes = fig.subplots()
    axes.plot([r["step"] for r in history], [r["loss"] for r in history], color="#1f77b4", linewidth=1.2)
    axes.set_xlabel("step")
    preference = "ipo" in extra
    axes.set_ylabel("BoNBoN loss" if preference else "loss (mean cross-entropy per labelled token)")
    axes.set_title("pastac train")
    axes.grid(alpha=0.3)
    with atomic(out / "loss.png", binary=True) as file:
        fig.savefig(file, format="png", dpi=120)


def hardware(device: torch.device, *, processes: int = 1, backend: str | None = None) -> dict[str, Any]:
    """The machine and the library versions a run trained with, for ``train_log.json``: ``processes`` trained
    together (data-parallel, through a ``torch.distributed`` group of ``backend``), each on a ``device`` like
    this one (the main process's)."""
    import peft
    import transformers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "device": str(device),
        "world_size": processes,  # processes training together (torch.distributed), 1 without a launcher
    }
    if backend is not None:
        info["backend"] = backend
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def model_card(log: dict[str, Any], settings: AdapterSettings, *, name: str = "adapter") -> str:
    """A Markdown model card for an adapter, from its ``train_log.json`` record and ``pastac.json`` settings."""
    o, data, hw = log["options"], log["data"], log["hardware"]
    minutes = log["train_seconds"] / 60
    device = hw.get("device_name") or f"{hw['cpu']} CPU, {hw['cpu_count']} cores, {hw['torch_threads']} torch threads"
    processes = hw.get("world_size", 1)
    if processes > 1:
        device = f"{processes} processes, data-parallel (torch.distributed, {hw.get('backend')}), each on: {device}"
    lora = log.get("lora") or {"rank": o["rank"], "alpha": o["alpha"], "dropout": o["dropout"]}
    preference = o.get("stage") == "preference"
    what = "pairs" if preference else "examples"
    lines = [
        f"# {name}",
        "",
        "A LoRA adapter that teaches its base model to write Pasta-Lang: to mark the independent parts of its "
        "answers with `<promise/>`, `<async>` and `<sync/>`, so that pastac decodes them in parallel.",
        "",
        f"- Base model: {settings.base_model or 'not recorded'}",
        "- Use: `pastac run PROMPT --adapter DIR`, DIR being this folder; `pastac.json` gives the runtime the "
        f"settings it was trained with (policy {settings.policy}, unit {settings.unit}, depth up to "
        f"{settings.max_depth}, chat template {'on' if settings.chat else 'off'})"
        + (
            f" and the repetition penalty it decodes with by default ({settings.repetition_penalty})"
            if settings.repetition_penalty is not None
            else ""
        )
        + ".",
        "",
        "## Data",
        "",
        f"- `{data['path']}` (sha256 `{data['sha256'][:16]}…`): {data['records']} records, {data['examples']} "
        f"{what} used ({data['invalid']} invalid and {data['too_long']} too long skipped), "
        f"{data['tokens']:,} tokens, {data['targets']:,} labelled" + (" (the chosen answers')." if preference else "."),
        "- Layout: the prompt (chat template: " + ("yes" if settings.chat else "no") + ") then the "
        "annotated response, with the attention mask and position ids of the runtime; one label per position "
        "(a child's opening `<async>` is force-fed at run time and is not a target).",
        "",
        "## Recipe",
        "",
        f"- LoRA rank {lora['rank']}, alpha {lora['alpha']}, dropout {lora['dropout']} on "
        f"{', '.join(log['target_modules'])}: {log['trainable_parameters']:,} trainable parameters.",
        f"- AdamW, learning rate {o['lr']} ({o['schedule']}, {o['warmup_steps']} warm-up steps), weight decay "
        f"{o['weight_decay']}, gradient clipping {o['max_grad_norm']}; batch {o['batch_size']} x "
        f"{o['grad_accum']} accumulation; {o['epochs']} epoch(s), each example with a promise "
        f"{o.get('repeat_forking', 1)} time(s) per epoch; {log['steps']} of {log['planned_steps']} "
        f"planned steps; seed {o['seed']}; {o['dtype']} on {o['device']}."
        + (
            f" Loss: cross-entropy + {o['kl_weight']:g} x KL(base || adapted) at plain-text positions."
            if o.get("kl_weight")
            else ""
        )
        + (
            f" Each step's micro-batches were shared among {processes} processes, their gradients summed: the "
            "same update as one process's."
            if processes > 1
            else ""
        ),
        (
            f"- Preference stage (BoNBoN), trained further from the adapter `{o['init_adapter']}`: the loss is "
            f"{o['sft_weight']:g} x the chosen answers' cross-entropy per labelled token + {1 - o['sft_weight']:g} x "
            f"((h - m) / m)^2, h being how much more than that adapter the model favours the chosen answer over the "
            f"rejected one (log-probability ratios summed over each answer's labelled positions), m = "
            f"{o['margin']:.3g} the best-of-n target; its first step {_loss(log['first_loss'])}, its last "
            f"{_loss(log['final_loss'])} (the terms in `loss.csv`'s columns sft and ipo), `loss.png`."
            if preference
            else f"- Loss (mean cross-entropy per labelled token): {_loss(log['first_loss'])} at the first step, "
            f"{_loss(log['final_loss'])} at the last; `loss.csv`, `loss.png`."
        ),
        "",
        "## Hardware and time",
        "",
        f"- {device}; torch {hw['torch']}, transformers {hw['transformers']}, peft {hw['peft']}, "
        f"Python {hw['python']}.",
        f"- {minutes:.1f} minutes of training ({log['tokens']:,} tokens).",
        "",
        "## Evaluation",
        "",
        "Measure it with `pastac eval --prompts PROMPTS.jsonl --adapter DIR --sampled-reference 0.3 "
        "--sequential-answer`: valid annotations, fork rates, speedups and the quality gaps (Q_ref: below the "
        "base model's own sampled answer; Q_async: below the adapted model's own sequential answer).",
        "",
    ]
    return "\n".join(lines)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
