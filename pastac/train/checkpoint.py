"""Checkpoints of a training run: saving them atomically, finding them, and resuming from one.

``checkpoint/`` holds the adapter, the optimizer state, the random state and ``state.json`` (step, data
position, losses, options, the dataset's digest). Invariants:

- A checkpoint is written to ``checkpoint.tmp`` and renamed into place, the previous one kept as
  ``checkpoint.old`` until then: a run killed at any moment leaves one complete checkpoint.
- A run resumes only with the same data (by digest) and options; ``max_steps``, ``save_every``,
  ``log_every`` and ``device`` may change (``_FREE_OPTIONS``).
- Resuming restores the random state too, so a resumed run takes the steps one uninterrupted run would.
- With several processes (``pastac.train.distributed``) the main one writes the checkpoint, holding every
  process's random state (``rng.pt``'s ``ranks``), and every process reads it to resume. A run may resume on
  another number of processes: the weights, the optimizer and the data position are the same whatever the
  number; only the processes' random streams (the adapter's dropout masks) then start afresh.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pastac.output import reason
from pastac.train.distributed import rank_seed
from pastac.train.options import TrainError
from pastac.train.schedule import Plan

CHECKPOINT = "checkpoint"
#: Options that may differ between a run and the run it resumes.
_FREE_OPTIONS = frozenset({"max_steps", "save_every", "log_every", "device"})


@dataclass
class State:
    """Where a run stands: what a checkpoint saves besides the weights, the optimizer and the random state."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # the loss.csv rows
    pending: list[float] = field(default_factory=list)  # step losses since the last row
    pending_kl: list[float] = field(default_factory=list)  # and their KL (or contrastive) terms
    pending_sft: list[float] = field(default_factory=list)  # and their supervised terms (preference stage)
    tokens: int = 0  # real tokens seen
    targets: int = 0  # labelled positions trained on
    seconds: float = 0.0  # training time, over all runs


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's random state (the CPU's, and ``device``'s on CUDA), as ``rng.pt`` holds it."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def save_checkpoint(
    out: Path,
    peft_model: Any,
    optimizer: torch.optim.Optimizer,
    state: State,
    plan: Plan,
    record: dict[str, Any],
    device: torch.device,
    ranks: list[dict[str, Any]] | None = None,
) -> None:
    """Save the run's state into ``out/checkpoint``, replacing the previous checkpoint atomically; a file that
    cannot be written is a ``TrainError``. ``ranks``: the random state of every process (``rng_state``), by
    rank, when several train together (this one is the main process)."""
    try:
        final = out / CHECKPOINT
        temporary = out / f"{CHECKPOINT}.tmp"
        old = out / f"{CHECKPOINT}.old"
        shutil.rmtree(temporary, ignore_errors=True)
        peft_model.save_pretrained(temporary)
        torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
        rng = rng_state(device)
        if ranks is not None:
            rng["ranks"] = ranks
        torch.save(rng, temporary / "rng.pt")
        payload = {
            "step": state.step,
            "micro_batch": state.step * plan.options.grad_accum,  # the data position: micro-batches done
            "epoch": min(state.step * plan.options.grad_accum, plan.micro_batches) // plan.per_epoch,
            "planned_steps": plan.planned,
            "losses": state.losses,
            "history": state.history,
            "pending": state.pending,
            "pending_kl": state.pending_kl,
            "pending_sft": state.pending_sft,
            "tokens": state.tokens,
            "targets": state.targets,
            "seconds": state.seconds,
            "processes": 1 if ranks is None else len(ranks),
            **record,
        }
        (temporary / "state.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        temporary.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        raise TrainError(f"cannot write the checkpoint into '{out}': {reason(error)}") from None


def checkpoint_folder(out: Path) -> Path | None:
    """The checkpoint to resume from in ``out``, if any."""
    for name in (CHECKPOINT, f"{CHECKPOINT}.old"):  # .old: a run killed between the two renames
        folder = out / name
        if (folder / "state.json").is_file():
            return folder
    return None


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        if key not in _FREE_OPTIONS and saved.get(key) != now.get(key):
            out.append(f"{key} {saved.get(key)!r} then, {now.get(key)!r} now")
    return out


def load_checkpoint(
    folder: Path,
    peft_model: Any,
    optimizer: torch.optim.Optimizer,
    record: dict[str, Any],
    device: torch.device,
    *,
    rank: int = 0,
    processes: int = 1,
) -> State:
    """Restore the adapter's weights, the optimizer and the random state from ``folder``; the run's state.

    Process ``rank`` of ``processes`` restores its own random state when the checkpoint was made by as many
    processes; otherwise process 0 restores the main process's and the others seed theirs afresh
    (``pastac.train.distributed.rank_seed``). Raises ``TrainError`` when the checkpoint was made on other data or
    with other options.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    try:
        saved = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise TrainError(f"cannot read the checkpoint {folder}: {error}") from error
    if saved.get("data_sha256") != record["data_sha256"]:
        raise TrainError(
            f"the checkpoint in {folder} was made on other data (a different file or contents); "
            "train into another --out folder or remove the checkpoint"
        )
    differences = _differences(saved.get("options", {}), record["options"])
    if differences:
        raise TrainError(
            f"the checkpoint in {folder} was made with other options ({'; '.join(differences)}); "
            "train into another --out folder or remove the checkpoint"
        )
    weights = load_file(str(folder / "adapter_model.safetensors"), device=str(device))
    result = set_peft_model_state_dict(peft_model, weights)
    if getattr(result, "unexpected_keys", None):
        raise TrainError(f"the checkpoint's adapter does not fit this model: {result.unexpected_keys[:3]}")
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location=device, weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    ranks = rng.get("ranks")
    own = processes > 1 and isinstance(ranks, list) and len(ranks) == processes
    if own:
        rng = ranks[rank]
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    if rank > 0 and not own:
        torch.manual_seed(rank_seed(int(record["options"]["seed"]), rank, int(saved["step"])))
    return State(
        step=int(saved["step"]),
        losses=[float(x) for x in saved["losses"]],
        history=list(saved["history"]),
        pending=[float(x) for x in saved.get("pending", [])],
        pending_kl=[float(x) for x in saved.get("pending_kl", [])],
        pending_sft=[float(x) for x in saved.get("pending_sft", [])],
        tokens=int(saved["tokens"]),
        targets=int(saved["targets"]),
        seconds=float(saved["seconds"]),
    )
