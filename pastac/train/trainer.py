"""Supervised fine-tuning with a PEFT LoRA adapter on the PASTA training layout.

``train`` reads a JSONL dataset of prompts and annotated responses, encodes each as one sequence with the
mask, positions and labels of ``pastac.train.data`` (the forward the runtime computes), wraps the model with a
LoRA adapter and trains it with AdamW; the loss is the mean cross-entropy over the labelled positions of a
step (all its micro-batches together).

Data order: each epoch is a permutation of the examples drawn from the seed and the epoch number; batches do
not straddle epochs. The learning rate warms up linearly over ``warmup_steps``, then stays constant or (the
default) decays linearly towards 0 over the *planned* steps (epochs x batches per epoch / accumulation).
``max_steps`` stops earlier without changing that course, so a run stopped by ``max_steps`` and resumed with
a larger one takes the same steps as one run.

Output folder:

- ``checkpoint/``: the adapter, the optimizer state, the random state and ``state.json`` (step, data
  position, losses, options, the dataset's digest), written every ``save_every`` steps and at the end,
  replaced atomically. Training again into the same folder resumes from it (with the same data and
  options; ``max_steps``, ``save_every``, ``log_every`` and ``device`` may change).
- ``adapter_config.json``, ``adapter_model.safetensors``: the trained adapter (PEFT ``save_pretrained``),
  which ``pastac.models.load_model(..., adapter=DIR)`` merges into the base model;
- ``pastac.json``: the settings the runtime must decode with (position policy and unit, depth, chat);
- ``loss.csv`` (step, loss, lr, tokens, seconds), ``loss.png``, ``train_log.json`` (options, counts,
  times, hardware);
- ``README.md``: a model card drawn from ``train_log.json`` (base model, data, recipe, hardware, time, loss),
  in place of PEFT's blank template.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pastac.machine import cpu_name
from pastac.models import ADAPTER_SETTINGS, DTYPES
from pastac.progress import progress_bar
from pastac.train.data import IGNORE, Batch, Dataset, collate, load_examples
from pastac.train.options import TrainError, TrainOptions

__all__ = ["KNOWN_TARGETS", "TrainError", "TrainOptions", "TrainResult", "find_target_modules", "train"]

#: Linear layers given an adapter by default, by their attribute name: the attention and MLP projections of
#: Llama-like models (Llama, Qwen2, Mistral, SmolLM, ...) and of GPT-2.
KNOWN_TARGETS = (
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "c_attn",
    "c_proj",
    "c_fc",
)

CHECKPOINT = "checkpoint"
#: Options that may differ between a run and the run it resumes.
_FREE_OPTIONS = frozenset({"max_steps", "save_every", "log_every", "device"})


@dataclass
class TrainResult:
    model: Any = field(repr=False)  # the PEFT model (the base model with the adapter injected)
    out_dir: Path
    steps: int  # optimizer steps done, those of resumed runs included
    planned_steps: int
    losses: list[float]  # the loss of every step, from the first (resumed runs included)
    data: Dataset = field(repr=False)
    resumed_from: int  # the step the run resumed from (0: a fresh run)
    seconds: float  # wall time of this call

    @property
    def examples(self) -> int:
        return len(self.data)

    @property
    def invalid(self) -> int:
        return self.data.invalid

    @property
    def too_long(self) -> int:
        return self.data.too_long


def find_target_modules(model: torch.nn.Module) -> tuple[str, ...]:
    """The names in ``KNOWN_TARGETS`` of the linear layers (``nn.Linear`` or GPT-2's ``Conv1D``) the model has."""
    from transformers.pytorch_utils import Conv1D

    found = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D)
    }
    return tuple(name for name in KNOWN_TARGETS if name in found)


def _eos_id(model: torch.nn.Module, tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list | tuple) and eos else eos
    if eos is None:
        raise TrainError("neither the tokenizer nor the model names an end-of-sequence token")
    return int(eos)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _options_record(options: TrainOptions) -> dict[str, Any]:
    record = asdict(options)
    record["target_modules"] = None if options.target_modules is None else list(options.target_modules)
    return record


@dataclass
class _State:
    step: int = 0
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)  # the loss.csv rows
    pending: list[float] = field(default_factory=list)  # step losses since the last row
    pending_kl: list[float] = field(default_factory=list)  # and their KL terms
    tokens: int = 0  # real tokens seen
    targets: int = 0  # labelled positions trained on
    seconds: float = 0.0  # training time, over all runs


class _Plan:
    """Which examples each micro-batch holds, and the learning rate of each step."""

    def __init__(self, forking: Sequence[bool], options: TrainOptions) -> None:
        self.options = options
        # Each epoch draws from this pool: every example once, those that fork (``forking[i]``)
        # ``repeat_forking`` times.
        self.pool = [i for i, forks in enumerate(forking) for _ in range(options.repeat_forking if forks else 1)]
        self.per_epoch = math.ceil(len(self.pool) / options.batch_size)
        self.micro_batches = options.epochs * self.per_epoch
        self.planned = math.ceil(self.micro_batches / options.grad_accum)
        self.total = self.planned if options.max_steps is None else min(self.planned, options.max_steps)
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            if self.options.shuffle:
                generator = torch.Generator().manual_seed(self.options.seed * 1_000_003 + epoch)
                self._orders[epoch] = [self.pool[i] for i in torch.randperm(len(self.pool), generator=generator)]
            else:
                self._orders[epoch] = list(self.pool)
        return self._orders[epoch]

    def step(self, step: int) -> list[list[int]]:
        """The example indices of each micro-batch of optimizer step ``step`` (0-based)."""
        size = self.options.batch_size
        out = []
        for micro in range(
            step * self.options.grad_accum, min((step + 1) * self.options.grad_accum, self.micro_batches)
        ):
            epoch, k = divmod(micro, self.per_epoch)
            out.append(self.order(epoch)[k * size : (k + 1) * size])
        return out

    def lr(self, step: int) -> float:
        o = self.options
        if step < o.warmup_steps:
            return o.lr * (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return o.lr
        return o.lr * (self.planned - step) / max(1, self.planned - o.warmup_steps)


# -- checkpoints ----------------------------------------------------------------------------------------------


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _save_checkpoint(
    out: Path,
    peft_model: Any,
    optimizer: torch.optim.Optimizer,
    state: _State,
    plan: _Plan,
    record: dict[str, Any],
    device: torch.device,
) -> None:
    final = out / CHECKPOINT
    temporary = out / f"{CHECKPOINT}.tmp"
    old = out / f"{CHECKPOINT}.old"
    shutil.rmtree(temporary, ignore_errors=True)
    peft_model.save_pretrained(temporary)
    torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
    torch.save(_rng_state(device), temporary / "rng.pt")
    payload = {
        "step": state.step,
        "micro_batch": state.step * plan.options.grad_accum,  # the data position: micro-batches done
        "epoch": min(state.step * plan.options.grad_accum, plan.micro_batches) // plan.per_epoch,
        "planned_steps": plan.planned,
        "losses": state.losses,
        "history": state.history,
        "pending": state.pending,
        "pending_kl": state.pending_kl,
        "tokens": state.tokens,
        "targets": state.targets,
        "seconds": state.seconds,
        **record,
    }
    (temporary / "state.json").write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    temporary.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_folder(out: Path) -> Path | None:
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


def _resume(
    folder: Path, peft_model: Any, optimizer: torch.optim.Optimizer, record: dict[str, Any], device: torch.device
) -> _State:
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
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    return _State(
        step=int(saved["step"]),
        losses=[float(x) for x in saved["losses"]],
        history=list(saved["history"]),
        pending=[float(x) for x in saved.get("pending", [])],
        pending_kl=[float(x) for x in saved.get("pending_kl", [])],
        tokens=int(saved["tokens"]),
        targets=int(saved["targets"]),
        seconds=float(saved["seconds"]),
    )


# -- outputs ----------------------------------------------------------------------------------------------------


def _write_loss(out: Path, history: Sequence[dict[str, float]]) -> None:
    with (out / "loss.csv").open("w", newline="", encoding="utf-8") as f:
        fields = ["step", "loss", "lr", "tokens", "seconds"] + (["kl"] if any("kl" in r for r in history) else [])
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for row in history:
            writer.writerow(row)
    try:
        from matplotlib.figure import Figure  # the Agg canvas, no pyplot: no global state, no display
    except ImportError:  # matplotlib is a dependency, but a plot is not worth failing a finished run for
        return
    fig = Figure(figsize=(7, 4), layout="constrained")
    axes = fig.subplots()
    axes.plot([r["step"] for r in history], [r["loss"] for r in history], color="#1f77b4", linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss (mean cross-entropy per labelled token)")
    axes.set_title("pastac train")
    axes.grid(alpha=0.3)
    fig.savefig(out / "loss.png", dpi=120)


def _hardware(device: torch.device) -> dict[str, Any]:
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
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def model_card(log: dict[str, Any], settings: dict[str, Any], *, name: str = "adapter") -> str:
    """A Markdown model card for an adapter, from its ``train_log.json`` record and ``pastac.json`` settings."""
    o, data, hw = log["options"], log["data"], log["hardware"]
    minutes = log["train_seconds"] / 60
    device = hw.get("device_name") or f"{hw['cpu']} CPU, {hw['cpu_count']} cores, {hw['torch_threads']} torch threads"
    lines = [
        f"# {name}",
        "",
        "A LoRA adapter that teaches its base model to write Pasta-Lang: to mark the independent parts of its "
        "answers with `<promise/>`, `<async>` and `<sync/>`, so that pastac decodes them in parallel.",
        "",
        f"- Base model: {settings.get('base_model') or 'not recorded'}",
        "- Use: `pastac run PROMPT --adapter DIR`, DIR being this folder; `pastac.json` gives the runtime the "
        f"position settings it was trained with (policy {settings['policy']}, unit {settings['unit']}, depth up to "
        f"{settings['max_depth']})"
        + (
            f" and the repetition penalty it decodes with by default ({settings['generation']['repetition_penalty']})"
            if settings.get("generation")
            else ""
        )
        + ".",
        "",
        "## Data",
        "",
        f"- `{data['path']}` (sha256 `{data['sha256'][:16]}…`): {data['records']} records, {data['examples']} "
        f"examples used ({data['invalid']} invalid and {data['too_long']} too long skipped), "
        f"{data['tokens']:,} tokens, {data['targets']:,} labelled.",
        "- Layout: the prompt (chat template: " + ("yes" if settings.get("chat") else "no") + ") then the "
        "annotated response, with the attention mask and position ids of the runtime; one label per position "
        "(a child's opening `<async>` is force-fed at run time and is not a target).",
        "",
        "## Recipe",
        "",
        f"- LoRA rank {o['rank']}, alpha {o['alpha']}, dropout {o['dropout']} on "
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
        ),
        f"- Loss (mean cross-entropy per labelled token): {_loss(log['first_loss'])} at the first step, "
        f"{_loss(log['final_loss'])} at the last; `loss.csv`, `loss.png`.",
        "",
        "## Hardware and time",
        "",
        f"- {device}; torch {hw['torch']}, transformers {hw['transformers']}, peft {hw['peft']}, "
        f"Python {hw['python']}.",
        f"- {minutes:.1f} minutes of training ({log['tokens']:,} tokens).",
        "",
        "## Evaluation",
        "",
        "Measure it with `pastac eval --prompts PROMPTS.jsonl --adapter DIR`: valid annotations, fork rate, "
        "speedups and the quality proxies.",
        "",
    ]
    return "\n".join(lines)


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


# -- training ---------------------------------------------------------------------------------------------------


def _losses(
    peft_model: Any, batch: Batch, dtype: torch.dtype, labelled: int, kl: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The micro-batch's share of the step's mean cross-entropy per labelled position, and (with ``kl``) of
    the mean KL(base || adapted) over those positions, summed over the plain-text ones (``Batch.text``).
    The base model's distribution there is the one it gives reading the answer as plain text (the adapter
    switched off, no tags, every part where its promise stands: ``Example.teacher_ids``): what it would
    write next, seeing what a reader sees, rather than what it makes of tags it never learnt."""
    logits = peft_model(
        input_ids=batch.input_ids,
        position_ids=batch.position_ids,
        attention_mask=batch.additive_mask(dtype).to(batch.input_ids.device),
        use_cache=False,
    ).logits  # [B, N, V]
    cross_entropy = (
        F.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE, reduction="sum")
        / labelled
    )
    if not kl or not bool(batch.text.any()):
        return cross_entropy, torch.zeros((), device=logits.device)
    rows, _ = batch.text.nonzero(as_tuple=True)
    with torch.no_grad(), peft_model.disable_adapter():
        plain = peft_model(input_ids=batch.teacher_ids, attention_mask=batch.teacher_mask, use_cache=False).logits
        reference = plain[rows, batch.teacher[batch.text]].float()  # [K, V]
    divergence = (
        F.kl_div(
            F.log_softmax(logits[batch.text].float(), dim=-1),
            F.log_softmax(reference, dim=-1),
            log_target=True,
            reduction="sum",
        )
        / labelled
    )
    return cross_entropy, divergence


@contextmanager
def _progress(enabled: bool, total: int, done: int) -> Iterator[Any]:
    with progress_bar(
        "pastac train", total, enabled=enabled, done=done, fields=("loss", "tok/s"), transient=True
    ) as bar:

        def update(step: int, loss: float, speed: float) -> None:
            bar(completed=step, loss=f"{loss:.4f}", **{"tok/s": f"{speed:,.0f}"})

        yield update if enabled else None


def train(
    model: Any,
    tokenizer: Any,
    examples_jsonl: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    options: TrainOptions = TrainOptions(),
    progress: bool = True,
) -> TrainResult:
    """Fine-tune ``model`` (a Hugging Face causal LM, changed in place: the adapter is injected into it) with a
    LoRA adapter on the annotated responses of ``examples_jsonl``; write the adapter and the logs to
    ``out_dir``, resuming from its checkpoint when it has one (see the module docstring).

    Records that are not JSON objects with the two string fields, responses that the strict checker rejects,
    and examples longer than ``max_length`` (or placed past the model's positions) are skipped and counted.
    Raises ``TrainError`` (and ``pastac.train.data.DataError`` for an unreadable file) before any training.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    started = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TrainError(f"the output folder '{out}' is a file")
    source = Path(examples_jsonl)
    device = torch.device(options.device)
    dtype = DTYPES[options.dtype]
    eos = _eos_id(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    max_position = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    data = load_examples(
        source,
        tokenizer,
        options.positions,
        field=options.field,
        prompt_field=options.prompt_field,
        chat=options.chat,
        eos_id=eos,
        max_depth=options.max_depth,
        max_length=options.max_length,
        max_position=max_position,
    )
    if not data.items:
        raise TrainError(
            f"no usable examples in '{source}': {data.records} records, {data.invalid} invalid, "
            f"{data.too_long} too long" + (f" (first: {data.problems[0]})" if data.problems else "")
        )
    targets = options.target_modules or find_target_modules(model)
    if not targets:
        raise TrainError(
            f"{type(model).__name__} has none of the known projection layers "
            f"({', '.join(KNOWN_TARGETS)}); name the layers to adapt (target_modules)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TrainError(f"cannot create the output folder '{out}': {error.strerror or error}") from None
    record = {
        "options": _options_record(options),
        "data": str(source.resolve()),
        "data_sha256": _digest(source),
        "examples": len(data),
    }
    plan = _Plan([data.forks(i) for i in range(len(data))], options)
    devices = [device] if device.type == "cuda" else []

    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(options.seed)
        model.to(device=device, dtype=dtype)
        conv1d = any(isinstance(m, Conv1D) for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in targets)
        config = LoraConfig(
            r=options.rank,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=list(targets),
            fan_in_fan_out=conv1d,
            task_type="CAUSAL_LM",
        )
        with warnings.catch_warnings():  # peft 0.21 reads an attribute that transformers 5 deprecates
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            peft_model = get_peft_model(model, config)
        peft_model.train()
        parameters = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
        checkpoint = _checkpoint_folder(out)
        state = _resume(checkpoint, peft_model, optimizer, record, device) if checkpoint else _State()
        resumed_from = state.step
        with _progress(progress, plan.total, state.step) as update:
            while state.step < plan.total:
                tick = time.perf_counter()
                lr = plan.lr(state.step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batches = [collate([data.example(i) for i in indices], pad) for indices in plan.step(state.step)]
                labelled = sum(int((b.labels != IGNORE).sum()) for b in batches)
                optimizer.zero_grad(set_to_none=True)
                loss_sum = kl_sum = 0.0
                for batch in batches:
                    cross_entropy, kl = _losses(peft_model, batch.to(device), dtype, labelled, options.kl_weight > 0)
                    (cross_entropy + options.kl_weight * kl).backward()
                    loss_sum += float(cross_entropy.detach())
                    kl_sum += float(kl.detach())
                if options.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, options.max_grad_norm)
                optimizer.step()
                tokens = sum(b.tokens for b in batches)
                elapsed = time.perf_counter() - tick
                state.step += 1
                state.losses.append(loss_sum)
                state.tokens += tokens
                state.targets += labelled
                state.seconds += elapsed
                state.pending.append(loss_sum)
                state.pending_kl.append(kl_sum)
                if state.step % options.log_every == 0 or state.step == plan.total:
                    row = {
                        "step": state.step,
                        "loss": sum(state.pending) / len(state.pending),
                        "lr": lr,
                        "tokens": state.tokens,
                        "seconds": round(state.seconds, 3),
                    }
                    if options.kl_weight > 0:
                        row["kl"] = sum(state.pending_kl) / len(state.pending_kl)
                    state.history.append(row)
                    state.pending, state.pending_kl = [], []
                if state.step % options.save_every == 0 or state.step == plan.total:
                    _save_checkpoint(out, peft_model, optimizer, state, plan, record, device)
                if update is not None:
                    update(state.step, loss_sum, tokens / max(elapsed, 1e-9))
        if resumed_from == plan.total and checkpoint is not None and checkpoint.name != CHECKPOINT:
            _save_checkpoint(out, peft_model, optimizer, state, plan, record, device)

    if options.base_model:  # not the path of a local cache folder: the model the adapter is meant for
        for config in peft_model.peft_config.values():
            config.base_model_name_or_path = options.base_model
    peft_model.save_pretrained(out, save_embedding_layers=False)  # embeddings are never adapted
    settings = {
        "policy": str(options.positions.policy),
        "unit": options.unit,
        "base_model": options.base_model or getattr(model, "name_or_path", None) or None,
        "max_depth": options.max_depth,
        "chat": options.chat,
        "eos_token_id": eos,
    }
    if options.repetition_penalty is not None:
        settings["generation"] = {"repetition_penalty": options.repetition_penalty}
    (out / ADAPTER_SETTINGS).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    _write_loss(out, state.history)
    seconds = time.perf_counter() - started
    log = {
        "options": _options_record(options),
        "target_modules": list(targets),
        "data": {
            "path": record["data"],
            "sha256": record["data_sha256"],
            "records": data.records,
            "examples": len(data),
            "invalid": data.invalid,
            "too_long": data.too_long,
            "tokens": data.tokens,
            "targets": data.targets,
            "problems": data.problems,
        },
        "steps": state.step,
        "planned_steps": plan.planned,
        "resumed_from": resumed_from,
        "tokens": state.tokens,
        "targets": state.targets,
        "first_loss": state.losses[0] if state.losses else None,
        "final_loss": state.losses[-1] if state.losses else None,
        "trainable_parameters": sum(p.numel() for p in parameters),
        "train_seconds": round(state.seconds, 3),
        "wall_seconds": round(seconds, 3),
        "hardware": _hardware(device),
    }
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(log, settings, name=out.name), encoding="utf-8")
    peft_model.eval()
    return TrainResult(
        model=peft_model,
        out_dir=out,
        steps=state.step,
        planned_steps=plan.planned,
        losses=list(state.losses),
        data=data,
        resumed_from=resumed_from,
        seconds=seconds,
    )
