"""Supervised fine-tuning with a PEFT LoRA adapter on the PASTA training layout.

``train`` reads a JSONL dataset of prompts and annotated responses, encodes each as one sequence with the
mask, positions and labels of ``pastac.train.data`` (the forward the runtime computes), wraps the model with a
LoRA adapter and trains it with AdamW; the loss (``pastac.train.loss``) is the mean cross-entropy over the
labelled positions of a step (all its micro-batches together). Which examples each step takes and its
learning rate are ``pastac.train.schedule``'s; saving and resuming are ``pastac.train.checkpoint``'s.

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
  in place of PEFT's blank template (``pastac.train.report``).

The folder must be new, empty or an adapter folder of a run before (``is_adapter_folder``: it holds
``pastac.json`` or a checkpoint), unless forced: no other folder's files are replaced. Each final file is
written atomically (``pastac.output``); a file that cannot be written stops the run with ``TrainError``, the
checkpoint kept.

Several processes (``torchrun``, ``accelerate launch``; ``pastac.train.distributed``) train data-parallel: process
r of N takes micro-batches r, r + N, ... of each step, normalises by the labelled positions of the whole step
(which every process knows from the plan) and the gradients and loss sums are summed over the processes before
clipping, so each step makes the one-process update. Every process checks the folder and reads the data and the
checkpoint (they must agree); the main process alone writes, the others waiting for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pastac.adapters.settings import SETTINGS_FILE
from pastac.files import shown_path
from pastac.models import DTYPES
from pastac.output import OutputError, check_folder, reason, write_text
from pastac.progress import progress_bar
from pastac.train.checkpoint import (
    CHECKPOINT,
    State,
    checkpoint_folder,
    load_checkpoint,
    rng_state,
    save_checkpoint,
)
from pastac.train.data import Dataset, Pairs, collate, load_examples, load_pairs
from pastac.train.distributed import DistributedError, World, joined, rank_seed
from pastac.train.loss import micro_batch_losses, pair_losses
from pastac.train.options import TrainError, TrainOptions
from pastac.train.report import hardware, model_card, write_loss
from pastac.train.schedule import Plan

__all__ = [
    "KNOWN_TARGETS",
    "TrainError",
    "TrainOptions",
    "TrainResult",
    "check_output_folder",
    "find_target_modules",
    "is_adapter_folder",
    "train",
]

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


@dataclass
class TrainResult:
    """What ``train`` did: the adapted model, where it was written, the steps and their losses, the data."""

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
        """The examples trained on."""
        return len(self.data)

    @property
    def invalid(self) -> int:
        """The records skipped as invalid."""
        return self.data.invalid

    @property
    def too_long(self) -> int:
        """The records skipped as too long (or placed past the model's positions)."""
        return self.data.too_long


def is_adapter_folder(folder: Path) -> bool:
    """Whether ``folder`` is the output of a training run: it holds the runtime's settings (``pastac.json``),
    a checkpoint (one being written included) or the preference stage's record."""
    return (
        (folder / SETTINGS_FILE).is_file()
        or (folder / "preference.json").is_file()  # the preference stage's (pastac.train.preference)
        or checkpoint_folder(folder) is not None
        or (folder / f"{CHECKPOINT}.tmp").is_dir()
    )


def check_output_folder(out: str | os.PathLike[str], *, force: bool = False) -> None:
    """Refuse an output folder that holds files and is not an adapter folder (``is_adapter_folder``), unless
    ``force``; refuse a file, and a folder that cannot be created (``OutputError``)."""
    check_folder(out, ours=is_adapter_folder, what="an adapter folder of pastac train", force=force, name="--out")


def find_target_modules(model: torch.nn.Module) -> tuple[str, ...]:
    """The names in ``KNOWN_TARGETS`` of the linear layers (``nn.Linear`` or GPT-2's ``Conv1D``) the model has."""
    from transformers.pytorch_utils import Conv1D

    found = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear | Conv1D)
    }
    return tuple(name for name in KNOWN_TARGETS if name in found)


def end_of_sequence(model: torch.nn.Module, tokenizer: Any) -> int:
    eos = tokenizer.eos_token_id
    if eos is None:
        config = getattr(model, "generation_config", None)
        eos = getattr(config, "eos_token_id", None)
        eos = eos[0] if isinstance(eos, list | tuple) and eos else eos
    if eos is None:
        raise TrainError("neither the tokenizer nor the model names an end-of-sequence token")
    return int(eos)


def _init_config(folder: str | None) -> Any:
    """The LoRA config of the adapter to start from (None: none); ``TrainError`` if it is not one."""
    if folder is None:
        return None
    from peft import LoraConfig

    try:
        config = LoraConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise TrainError(f"cannot start from the adapter '{folder}': {error}") from None
    if not config.target_modules:
        raise TrainError(f"the adapter '{folder}' names no layers (target_modules)")
    return config


def _in_known_order(names: Any) -> tuple[str, ...]:
    """Layer names in ``KNOWN_TARGETS``' order, then the others sorted (PEFT keeps them as a set)."""
    known = {name: i for i, name in enumerate(KNOWN_TARGETS)}
    return tuple(sorted(names, key=lambda n: (known.get(n, len(known)), n)))


def _lora_record(peft_model: Any) -> dict[str, Any]:
    """The adapter's rank, alpha and dropout as trained (an adapter started from keeps its own)."""
    config = peft_model.peft_config["default"]
    return {"rank": config.r, "alpha": config.lora_alpha, "dropout": config.lora_dropout}


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, in hex: what a checkpoint and a log record their data by."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _options_record(options: TrainOptions) -> dict[str, Any]:
    record = asdict(options)
    record["target_modules"] = None if options.target_modules is None else list(options.target_modules)
    if options.init_adapter is not None:  # as the checkout or the package shows it, not this machine's path
        record["init_adapter"] = shown_path(options.init_adapter)
    return record


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
    force: bool = False,
) -> TrainResult:
    """Fine-tune ``model`` (a Hugging Face causal LM, changed in place: the adapter is injected into it) with a
    LoRA adapter on the annotated responses of ``examples_jsonl``; write the adapter and the logs to
    ``out_dir``, resuming from its checkpoint when it has one (see the module docstring).

    Records that are not JSON objects with the two string fields, responses that the strict checker rejects,
    and examples longer than ``max_length`` (or placed past the model's positions) are skipped and counted.
    Raises ``TrainError`` (and ``pastac.train.data.DataError`` for an unreadable file) before any training, for
    an ``out_dir`` that holds files and is not an adapter folder too (unless ``force``); ``TrainError`` when an
    output cannot be written.

    Started by ``torchrun`` or ``accelerate launch`` on several processes, it trains with all of them
    (``pastac.train.distributed``: each takes its share of every step's micro-batches); the main process alone
    writes, and every process returns the same steps and losses. ``DistributedError`` (a ``TrainError``) when the
    processes cannot train together; an error on one process raises on all.
    """
    with joined(options.device) as world:
        return _train(world, model, tokenizer, Path(examples_jsonl), Path(out_dir), options, progress, force)


def _train(
    world: World,
    model: Any,
    tokenizer: Any,
    source: Path,
    out: Path,
    options: TrainOptions,
    progress: bool,
    force: bool,
) -> TrainResult:
    """``train`` in process ``world.rank`` of ``world.size``."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers.pytorch_utils import Conv1D

    started = time.perf_counter()
    device = world.device(options.device)
    if world.backend is not None and device.type == "cpu" and "gloo" not in world.backend:
        raise DistributedError(f"the process group's backend ({world.backend}) cannot train on the CPU: use gloo")
    dtype = DTYPES[options.dtype]
    with world.together():  # every process checks; any failure stops them all, before anything is written
        try:
            check_output_folder(out, force=force)
        except OutputError as error:
            raise TrainError(str(error)) from None
        eos = end_of_sequence(model, tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        max_position = getattr(model.config.get_text_config(), "max_position_embeddings", None)
        layout = {
            "chat": options.chat,
            "eos_id": eos,
            "max_depth": options.max_depth,
            "max_length": options.max_length,
            "max_position": max_position,
        }
        data: Dataset | Pairs
        if options.stage == "preference":
            data = load_pairs(source, tokenizer, options.positions, **layout)
        else:
            data = load_examples(
                source, tokenizer, options.positions, field=options.field, prompt_field=options.prompt_field, **layout
            )
        if not data.items:
            raise TrainError(
                f"no usable examples in '{source}': {data.records} records, {data.invalid} invalid, "
                f"{data.too_long} too long" + (f" (first: {data.problems[0]})" if data.problems else "")
            )
        init = _init_config(options.init_adapter)
        targets = (
            _in_known_order(init.target_modules)
            if init is not None
            else options.target_modules or find_target_modules(model)
        )
        if not targets:
            raise TrainError(
                f"{type(model).__name__} has none of the known projection layers "
                f"({', '.join(KNOWN_TARGETS)}); name the layers to adapt (target_modules)"
            )
        record = {
            "options": _options_record(options),
            "data": shown_path(source),
            "data_sha256": file_sha256(source),
            "examples": len(data),
        }
    world.same(
        (record["data_sha256"], len(data), data.tokens, data.targets),
        "the data (sha256, examples, tokens, labelled): every process must read the same file",
    )
    with world.together():
        if world.is_main:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise TrainError(f"cannot create the output folder '{out}': {error.strerror or error}") from None
    plan = Plan([data.forks(i) for i in range(len(data))], options)
    devices = [device] if device.type == "cuda" else []

    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(options.seed)
        model.to(device=device, dtype=dtype)
        with warnings.catch_warnings():  # peft 0.21 reads an attribute that transformers 5 deprecates
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            if options.init_adapter is not None:  # trained further: its own rank, alpha, dropout and layers
                peft_model = PeftModel.from_pretrained(model, options.init_adapter, is_trainable=True)
            else:
                conv1d = any(
                    isinstance(m, Conv1D) for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in targets
                )
                config = LoraConfig(
                    r=options.rank,
                    lora_alpha=options.alpha,
                    lora_dropout=options.dropout,
                    target_modules=list(targets),
                    fan_in_fan_out=conv1d,
                    task_type="CAUSAL_LM",
                )
                peft_model = get_peft_model(model, config)
        peft_model.train()
        parameters = [p for p in peft_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=options.lr, weight_decay=options.weight_decay)
        if world.rank > 0:  # the same adapter everywhere, but each process its own dropout masks
            torch.manual_seed(rank_seed(options.seed, world.rank))
        checkpoint = checkpoint_folder(out)
        with world.together():
            state = (
                load_checkpoint(
                    checkpoint, peft_model, optimizer, record, device, rank=world.rank, processes=world.size
                )
                if checkpoint
                else State()
            )
        world.same(
            state.step if checkpoint else None,
            f"the checkpoint to resume from in '{out}' (its step; None: none): every process must read the same "
            "--out folder (on several machines, a shared file system)",
        )
        world.broadcast(parameters)
        resumed_from = state.step
        with _progress(progress and world.is_main, plan.total, state.step) as update:
            while state.step < plan.total:
                tick = time.perf_counter()
                lr = plan.lr(state.step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                step = plan.step(state.step)
                # process r takes the micro-batches r, r + N, ...: perhaps none, but it joins the reduction
                mine = step[world.rank :: world.size]
                # the whole step's labelled positions (the chosen answers' for pairs) and tokens, which every
                # process knows from the plan
                labelled = sum(data.items[i].targets for indices in step for i in indices)
                tokens = sum(data.items[i].length for indices in step for i in indices)
                optimizer.zero_grad(set_to_none=True)
                loss_sum = kl_sum = 0.0
                for indices in mine:
                    if isinstance(data, Pairs):  # the second term is the contrastive one
                        batch = collate([e for i in indices for e in data.examples(i)], pad)
                        pairs = sum(len(group) for group in step)
                        first, second = pair_losses(
                            peft_model,
                            batch.to(device),
                            dtype,
                            data.references(indices),
                            labelled,
                            pairs,
                            options.margin,
                        )
                        (options.sft_weight * first + (1 - options.sft_weight) * second).backward()
                    else:  # the second term is the KL one
                        batch = collate([data.example(i) for i in indices], pad)
                        first, second = micro_batch_losses(
                            peft_model, batch.to(device), dtype, labelled, options.kl_weight > 0
                        )
                        (first + options.kl_weight * second).backward()
                    loss_sum += float(first.detach())
                    kl_sum += float(second.detach())
                loss_sum, kl_sum = world.reduce_gradients(parameters, (loss_sum, kl_sum))
                if isinstance(data, Pairs):  # the step's objective; its terms go to their own columns
                    sft_sum, loss_sum = loss_sum, options.sft_weight * loss_sum + (1 - options.sft_weight) * kl_sum
                if options.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, options.max_grad_norm)
                optimizer.step()
                elapsed = time.perf_counter() - tick
                state.step += 1
                state.losses.append(loss_sum)
                state.tokens += tokens
                state.targets += labelled
                state.seconds += elapsed
                state.pending.append(loss_sum)
                state.pending_kl.append(kl_sum)
                if isinstance(data, Pairs):
                    state.pending_sft.append(sft_sum)
                if state.step % options.log_every == 0 or state.step == plan.total:
                    row = {
                        "step": state.step,
                        "loss": sum(state.pending) / len(state.pending),
                        "lr": lr,
                        "tokens": state.tokens,
                        "seconds": round(state.seconds, 3),
                    }
                    if isinstance(data, Pairs):
                        row["ipo"] = sum(state.pending_kl) / len(state.pending_kl)
                        row["sft"] = sum(state.pending_sft) / len(state.pending_sft)
                    elif options.kl_weight > 0:
                        row["kl"] = sum(state.pending_kl) / len(state.pending_kl)
                    state.history.append(row)
                    state.pending, state.pending_kl, state.pending_sft = [], [], []
                if state.step % options.save_every == 0 or state.step == plan.total:
                    _checkpoint(world, out, peft_model, optimizer, state, plan, record, device)
                if update is not None:
                    update(state.step, loss_sum, tokens / max(elapsed, 1e-9))
        if resumed_from == plan.total and checkpoint is not None and checkpoint.name != CHECKPOINT:
            _checkpoint(world, out, peft_model, optimizer, state, plan, record, device)

    if options.base_model:  # not the path of a local cache folder: the model the adapter is meant for
        for config in peft_model.peft_config.values():
            config.base_model_name_or_path = options.base_model
    settings = options.settings(base_model=options.base_model or getattr(model, "name_or_path", None) or None, eos=eos)
    log = {
        "options": _options_record(options),
        "target_modules": list(targets),
        "lora": _lora_record(peft_model),
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
        "wall_seconds": None,  # when the files are written
        "hardware": hardware(device, processes=world.size, backend=world.backend),
    }
    with world.together():  # the main process writes; the others wait for it, and fail with it
        if world.is_main:
            try:
                _save_adapter(peft_model, out)
                settings.write(out)
                write_loss(out, state.history)
                log["wall_seconds"] = round(time.perf_counter() - started, 3)
                write_text(out / "train_log.json", json.dumps(log, indent=2) + "\n")
                write_text(out / "README.md", model_card(log, settings, name=out.name))
            except OutputError as error:
                raise TrainError(f"{error} (the checkpoint is kept: run again to write the adapter)") from None
    peft_model.eval()
    return TrainResult(
        model=peft_model,
        out_dir=out,
        steps=state.step,
        planned_steps=plan.planned,
        losses=list(state.losses),
        data=data,
        resumed_from=resumed_from,
        seconds=time.perf_counter() - started,
    )


def _checkpoint(
    world: World,
    out: Path,
    peft_model: Any,
    optimizer: torch.optim.Optimizer,
    state: State,
    plan: Plan,
    record: dict[str, Any],
    device: torch.device,
) -> None:
    """Save a checkpoint: the main process writes it, with every process's random state; all stop if it fails."""
    ranks = world.gather(rng_state(device)) if world.distributed else None
    with world.together():
        if world.is_main:
            save_checkpoint(out, peft_model, optimizer, state, plan, record, device, ranks)


def _save_adapter(peft_model: Any, out: Path) -> None:
    """The adapter's weights and config into ``out``, each file replaced atomically: PEFT writes them into a
    temporary folder beside them, whence they are renamed (its blank README.md is left: the card replaces it)."""
    try:
        temporary = Path(tempfile.mkdtemp(dir=out, prefix=".adapter.", suffix=".tmp"))
    except OSError as error:
        raise OutputError(f"cannot write the adapter into '{out}': {reason(error)}") from None
    try:
        peft_model.save_pretrained(temporary, save_embedding_layers=False)  # embeddings are never adapted
        for file in temporary.iterdir():
            if file.name != "README.md":
                os.replace(file, out / file.name)
    except OSError as error:
        raise OutputError(f"cannot write the adapter into '{out}': {reason(error)}") from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
