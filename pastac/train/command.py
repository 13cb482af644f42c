"""``pastac train``: fine-tune a model with a LoRA adapter on annotated responses.

Prints a summary line on standard output; skipped records are listed on standard error.  Exit status:
0 done, 2 usage error (a missing or unusable dataset, a bad --out: a file, or a folder that holds files and is
not an adapter folder, without --force; a model that cannot be used; an output that cannot be written), 130
on Ctrl-C (rerun the same command to resume from the last checkpoint).

Started by ``torchrun`` or ``accelerate launch`` on several processes, the command trains with all of them
(``pastac.train.distributed``): the main process (rank 0) loads the model first (converting a GGUF file once),
then the others; it alone shows progress and prints the summary. An error that stops every process is printed by
the main process, and by each other one that met it itself (prefixed ``process N:``); a process group that cannot
be joined is a usage error too.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from pastac.cli.common import EXIT_OK, EXIT_USAGE, UsageError, count, integer, number, positive
from pastac.cli.options import (
    chat_option,
    depth_option,
    force_option,
    model_options,
    position_options,
    repetition_penalty_option,
)
from pastac.passes.positions import PositionOptions

if TYPE_CHECKING:
    from pastac.models import LoadedModel
    from pastac.train.distributed import World
    from pastac.train.options import TrainOptions

_probability = number(lambda v: 0 <= v < 1, "in [0, 1)")
_rate = number(lambda v: v > 0, "> 0")
_top_p = number(lambda v: 0 < v <= 1, "in (0, 1]")
#: The preference stage's default learning rate (the first stage's is ``TrainOptions.lr``).
PREFERENCE_LR = 1e-4
_at_least_two = integer(2)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``train`` to the command line."""
    from pastac.train.options import STAGES, TrainOptions

    d = TrainOptions()
    p = sub.add_parser(
        "train",
        help="fine-tune a model with a LoRA adapter on annotated responses",
        description="Supervised fine-tuning with a PEFT LoRA adapter on a JSONL dataset of prompts and "
        "Pasta-Lang annotated responses, laid out with the mask and position ids the runtime decodes "
        "with. Invalid records are skipped and counted. Writes the adapter, pastac.json (the "
        "settings the runtime reads), loss.csv, loss.png and train_log.json to --out; checkpoints "
        "go to --out/checkpoint, and running again into the same --out resumes.",
    )
    p.add_argument(
        "data", metavar="DATA.jsonl", help='one JSON object per line with "prompt" and the annotated response (--field)'
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="the output folder: new, empty, or an adapter folder of pastac train (resumed if it holds a "
        "checkpoint; its files are replaced at the end)",
    )
    force_option(p, outputs="into --out")
    p.add_argument(
        "--field", default=d.field, metavar="NAME", help=f"the field of the annotated response (default: {d.field})"
    )
    p.add_argument(
        "--prompt-field",
        default=d.prompt_field,
        metavar="NAME",
        help=f"the field of the prompt (default: {d.prompt_field})",
    )
    model = p.add_argument_group("model")
    model_options(model)
    lora = p.add_argument_group("adapter")
    lora.add_argument("--rank", type=positive, default=d.rank, metavar="N", help=f"LoRA rank (default {d.rank})")
    lora.add_argument("--alpha", type=positive, default=d.alpha, metavar="N", help=f"LoRA alpha (default {d.alpha})")
    lora.add_argument(
        "--dropout", type=_probability, default=d.dropout, metavar="P", help=f"LoRA dropout (default {d.dropout})"
    )
    lora.add_argument(
        "--target-modules",
        metavar="NAME,...",
        help="the layers to adapt (default: the attention and MLP projections, found by name)",
    )
    how = p.add_argument_group("optimisation")
    how.add_argument("--epochs", type=positive, default=d.epochs, metavar="N", help=f"default {d.epochs}")
    how.add_argument(
        "--repeat-forking",
        type=positive,
        default=d.repeat_forking,
        metavar="N",
        help="show each example that forks N times per epoch (default 1): in a dataset where most "
        "answers do not fork, the few tags would otherwise be seen rarely",
    )
    how.add_argument(
        "--kl-weight",
        type=number(lambda v: v >= 0, ">= 0"),
        default=d.kl_weight,
        metavar="W",
        help="add W x KL(base || adapted) of the next-token distributions at plain-text positions to "
        "the loss, the base model's being the same forward with the adapter off (default 0: "
        "off): the adapter learns the tags while its text stays close to the base model's",
    )
    how.add_argument(
        "--max-steps",
        type=positive,
        default=None,
        metavar="N",
        help="stop after N optimizer steps (the learning-rate schedule still spans the epochs)",
    )
    how.add_argument(
        "--lr",
        type=_rate,
        default=None,
        metavar="X",
        help=f"peak learning rate (default {d.lr:g}; {PREFERENCE_LR:g} for --stage preference, whose contrastive "
        "term sums log-probability ratios over whole answers and overshoots its target at the first stage's rate)",
    )
    how.add_argument(
        "--schedule",
        choices=("linear", "constant"),
        default=d.schedule,
        help="linear (default): decay to 0 over the epochs; constant",
    )
    how.add_argument("--warmup-steps", type=count, default=d.warmup_steps, metavar="N")
    how.add_argument(
        "--batch-size",
        type=positive,
        default=d.batch_size,
        metavar="N",
        help=f"examples per micro-batch, padded (default {d.batch_size})",
    )
    how.add_argument(
        "--grad-accum",
        type=positive,
        default=d.grad_accum,
        metavar="N",
        help=f"micro-batches per optimizer step (default {d.grad_accum})",
    )
    how.add_argument(
        "--max-length",
        type=positive,
        default=d.max_length,
        metavar="N",
        help=f"skip examples longer than N tokens, prompt included (default {d.max_length})",
    )
    how.add_argument("--seed", type=int, default=d.seed, metavar="N", help=f"default {d.seed}")
    layout = p.add_argument_group("layout (recorded in pastac.json for the runtime)")
    chat_option(layout)
    position_options(layout, default=PositionOptions(policy=d.policy, unit=d.unit))
    depth_option(
        layout,
        default=d.max_depth,
        help=f"deepest <async> nesting accepted (default {d.max_depth}); deeper records are invalid",
    )
    repetition_penalty_option(
        layout,
        default=None,
        help="a repetition penalty for the runtime to decode with by default (default: none recorded)",
    )
    stage = p.add_argument_group(
        "preference stage (--stage preference: DATA.jsonl holds prompts; see docs/train.md)",
    )
    from pastac.train.preference import SPEEDUP_TERMS, PreferenceOptions

    q = PreferenceOptions()
    stage.add_argument(
        "--stage",
        choices=STAGES,
        default=d.stage,
        help="sft (default): fine-tune on annotated responses; preference: sample the adapter's own annotated "
        "answers to DATA.jsonl's prompts, score them (speedup + --quality-weight x quality), and train it further "
        "on the best and the worst of each prompt (BoNBoN)",
    )
    from pastac.adapters import DEFAULT_ADAPTER

    stage.add_argument(
        "--adapter",
        metavar="DIR",
        default=DEFAULT_ADAPTER,
        help="the adapter the preference stage samples from and trains further (default: the one shipped with "
        "pastac, for the default model)",
    )
    stage.add_argument(
        "--samples",
        type=_at_least_two,
        default=q.samples,
        metavar="N",
        help=f"answers per prompt (default {q.samples})",
    )
    stage.add_argument(
        "--temperature",
        type=_rate,
        default=q.temperature,
        metavar="T",
        help=f"the samples' temperature (default {q.temperature})",
    )
    stage.add_argument(
        "--top-p", type=_top_p, default=q.top_p, metavar="P", help=f"the samples' nucleus (default {q.top_p})"
    )
    stage.add_argument(
        "--quality-weight",
        type=number(lambda v: v >= 0, ">= 0"),
        default=q.quality_weight,
        metavar="LAMBDA",
        help="score = theoretical speedup + LAMBDA x quality, quality being the base model's log-likelihood per "
        f"token of the answer relative to that of its own greedy answer (default {q.quality_weight:g})",
    )
    stage.add_argument(
        "--speedup-term",
        choices=SPEEDUP_TERMS,
        default=q.speedup,
        help="the score's speedup: theoretical (default, PASTA's: the answer's tokens over its critical path) or "
        "reference (the base model's greedy answer's tokens over the answer's critical path, which a longer "
        "answer does not raise)",
    )
    stage.add_argument("--rounds", type=positive, default=q.rounds, metavar="N", help="sample, pair, train N times")
    stage.add_argument(
        "--limit", type=positive, default=None, metavar="N", help="the first N prompts of a seeded order (a trial)"
    )
    stage.add_argument(
        "--max-new-tokens",
        type=positive,
        default=q.max_new_tokens,
        metavar="N",
        help=f"each sample's budget (default {q.max_new_tokens}); a sample it cuts is not paired",
    )
    stage.add_argument(
        "--sft-weight",
        type=number(lambda v: 0 <= v <= 1, "in [0, 1]"),
        default=d.sft_weight,
        metavar="W",
        help="the loss: W x the chosen answers' cross-entropy + (1 - W) x the contrastive term "
        f"(default {d.sft_weight})",
    )
    stage.add_argument(
        "--concurrent",
        type=positive,
        default=q.concurrent,
        metavar="N",
        help=f"samples decoded together (default {q.concurrent})",
    )
    stage.add_argument(
        "--reuse-samples",
        metavar="FILE",
        help="start round 1 from this samples.jsonl of another run with the same sampling settings (a run with "
        "another --quality-weight): only its missing prompts are sampled",
    )
    output = p.add_argument_group("output")
    output.add_argument(
        "--log-every", type=positive, default=d.log_every, metavar="N", help="a loss.csv row every N steps"
    )
    output.add_argument(
        "--save-every",
        type=positive,
        default=d.save_every,
        metavar="N",
        help=f"a checkpoint every N steps, and at the end (default {d.save_every})",
    )
    output.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=train_command)


def train_command(args: argparse.Namespace, out: TextIO) -> int:
    """``pastac train``: load and check the model, train the adapter, and print one line of what was done;
    bad options and unusable inputs are usage errors, and Ctrl-C leaves the last checkpoint to resume from."""
    from pastac.output import OutputError
    from pastac.train.checkpoint import CHECKPOINT
    from pastac.train.options import TrainError, TrainOptions
    from pastac.train.trainer import check_output_folder

    data = Path(args.data)
    if not data.exists():
        raise UsageError(f"cannot read '{data}': no such file")
    if not data.is_file():
        raise UsageError(f"cannot read '{data}': not a file")
    folder = Path(args.out)
    try:  # before the model loads
        check_output_folder(folder, force=args.force)
    except OutputError as error:
        raise UsageError(str(error)) from None
    targets = None
    if args.target_modules:
        targets = tuple(t.strip() for t in args.target_modules.split(",") if t.strip())
    try:
        options = TrainOptions(
            rank=args.rank,
            alpha=args.alpha,
            dropout=args.dropout,
            target_modules=targets,
            lr=args.lr if args.lr is not None else PREFERENCE_LR if args.stage == "preference" else TrainOptions.lr,
            schedule=args.schedule,
            warmup_steps=args.warmup_steps,
            epochs=args.epochs,
            repeat_forking=args.repeat_forking,
            kl_weight=args.kl_weight,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            grad_accum=args.grad_accum,
            max_length=args.max_length,
            seed=args.seed,
            dtype=args.dtype,
            device=args.device,
            log_every=args.log_every,
            save_every=args.save_every,
            policy=args.policy,
            unit=args.unit,
            max_depth=args.max_depth,
            field=args.field,
            prompt_field=args.prompt_field,
            chat=args.chat is not False,
            base_model=args.model,
            repetition_penalty=args.repetition_penalty,
            stage=args.stage,
            sft_weight=args.sft_weight,
        )
    except TrainError as error:
        raise UsageError(str(error)) from None
    if args.stage == "preference":
        return _prefer(args, out, data, folder, options)
    from pastac.train.distributed import DistributedError, PeerFailure, joined

    try:
        with joined(args.device) as world:
            try:
                return _train(args, out, data, folder, options, world)
            except UsageError as error:
                if world.is_main:
                    raise
                if isinstance(error.__cause__ or error.__context__, PeerFailure):
                    return EXIT_USAGE  # the process that failed says why
                raise UsageError(f"process {world.rank}: {error}") from None
            except _Interrupted:  # in training: the checkpoint is where a rerun resumes
                if world.is_main:
                    print(
                        f"pastac: interrupted; run the same command again to resume from {folder / CHECKPOINT}",
                        file=sys.stderr,
                    )
                return 130
            except KeyboardInterrupt:  # before training (the model loading): the command line's own message
                if world.is_main:
                    raise
                return 130
    except DistributedError as error:
        raise UsageError(str(error)) from None


class _Interrupted(Exception):
    """Ctrl-C while the model trained (not while it loaded)."""


def _train(args: argparse.Namespace, out: TextIO, data: Path, folder: Path, options: TrainOptions, world: World) -> int:
    """Load the model (the main process first), train, and print the summary (the main process)."""
    from pastac.models import ModelError, check_architecture, load_model
    from pastac.train.data import DataError
    from pastac.train.options import TrainError
    from pastac.train.trainer import train

    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if world.is_main and precision not in ("", "no"):
        print(
            f"pastac: accelerate's mixed precision ({precision}) is not applied: pastac train computes in --dtype "
            f"({args.dtype})",
            file=sys.stderr,
        )

    def load() -> LoadedModel:
        try:
            loaded = load_model(
                args.model,
                device=str(world.device(args.device)),
                dtype=args.dtype,
                progress=not args.quiet and world.is_main,
            )
            check_architecture(loaded.model)
        except ModelError as error:
            raise UsageError(str(error)) from None
        return loaded

    try:
        loaded = world.main_first(load)
    except (DataError, TrainError) as error:  # a process group's: another process could not load the model
        raise UsageError(str(error)) from error
    if args.model is None:
        from dataclasses import replace

        options = replace(options, base_model=loaded.name)  # not the path of the package's file
    try:
        result = train(
            loaded.model,
            loaded.tokenizer,
            data,
            folder,
            options,
            progress=not args.quiet and world.is_main,
            force=args.force,
        )
    except (DataError, TrainError) as error:
        raise UsageError(str(error)) from error
    except KeyboardInterrupt:
        raise _Interrupted from None
    if not world.is_main:
        return EXIT_OK
    if not args.quiet:
        for problem in result.data.problems:
            print(f"pastac: skipped {data}, {problem}", file=sys.stderr)
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from else ""
    last = f"; loss {result.losses[0]:.4f} -> {result.losses[-1]:.4f}" if result.losses else ""
    processes = f" with {world.size} processes" if world.distributed else ""
    out.write(
        f"pastac: trained {result.steps} of {result.planned_steps} planned steps{processes} on {result.examples} "
        f"examples ({result.invalid} invalid and {result.too_long} too long skipped){resumed}{last}; "
        f"adapter in {folder}\n"
    )
    return EXIT_OK


def _prefer(args: argparse.Namespace, out: TextIO, data: Path, folder: Path, options: TrainOptions) -> int:
    """``pastac train --stage preference``: the rounds of ``pastac.train.preference``, on one process."""
    from pastac.models import ModelError, check_architecture, load_model
    from pastac.models.adapter import resolve_adapter
    from pastac.train.data import DataError
    from pastac.train.distributed import World
    from pastac.train.options import TrainError
    from pastac.train.preference import PreferenceOptions, run_stage

    if World.from_environment().distributed:
        raise UsageError("the preference stage runs on one process (it samples as it trains): not under a launcher")
    try:
        start = resolve_adapter(args.adapter, args.model)
    except ModelError as error:
        raise UsageError(str(error)) from None
    if start is None:
        raise UsageError("the preference stage trains an adapter further: name one with --adapter DIR")
    try:
        stage = PreferenceOptions(
            samples=args.samples,
            temperature=args.temperature,
            top_p=args.top_p,
            quality_weight=args.quality_weight,
            speedup=args.speedup_term,
            rounds=args.rounds,
            max_new_tokens=args.max_new_tokens,
            limit=args.limit,
            seed=args.seed,
            concurrent=args.concurrent,
            reuse_samples=args.reuse_samples,
        )
    except TrainError as error:
        raise UsageError(str(error)) from None
    if args.reuse_samples is not None and not Path(args.reuse_samples).is_file():
        raise UsageError(f"cannot read '{args.reuse_samples}': no such file")

    def load(adapter: str | None) -> LoadedModel:
        try:
            loaded = load_model(args.model, device=args.device, dtype=args.dtype, adapter=adapter, progress=False)
            check_architecture(loaded.model)
        except ModelError as error:
            raise UsageError(str(error)) from None
        return loaded

    try:
        result = run_stage(
            load,
            data,
            folder,
            str(start),
            stage,
            options,
            prompt_field=args.prompt_field,
            progress=not args.quiet,
            force=args.force,
        )
    except (DataError, TrainError) as error:
        raise UsageError(str(error)) from error
    except KeyboardInterrupt:
        print(f"pastac: interrupted; run the same command again to resume in {folder}", file=sys.stderr)
        return 130
    last = result.rounds[-1]
    out.write(
        f"pastac: {len(result.rounds)} preference round(s); the last sampled {last['prompts']} prompts, "
        f"{last['usable']} of {last['samples']} answers usable, trained on {last['pairs']} pairs; adapter in {folder}\n"
    )
    return EXIT_OK
