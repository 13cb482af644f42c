"""The preference stage (PASTA's second): the model's own annotated answers, sampled, scored and paired.

Each round:

1. **Sample** (``sample_prompts``): for every training prompt, ``samples`` annotated answers from the current
   adapter (asynchronous decoding, temperature > 0, each seeded by the stage's seed, the round, the prompt
   and its number), decoded together by ``pastac.runtime.batch.BatchEngine``.  Each is scored by the base model
   (the adapter off) and recorded in ``round-K/samples.jsonl``, one line per prompt, appended as each prompt
   is done: an interrupted round resumes where it stopped.
2. **Score** (``score``): the *speedup* term is the answer's theoretical speedup (its tokens over its
   critical path, ``Stats.theoretical_speedup``); the *quality* term is the base model's log-likelihood per
   token of the stitched answer relative to that of the base model's own greedy answer to the prompt,
   ``(ll - ll_ref) / |ll_ref|`` (the record's ``response`` when it has one, as the datasets of
   ``pastac data build`` do, else a greedy answer decoded here); ``score = speedup + quality_weight x
   quality``.  An answer can be trained on when the strict checker accepts it and it ended (no budget cut
   it): the others are recorded and counted, never paired.
3. **Pair** (``pairs``): the best and the worst usable answer of each prompt (none when fewer than two, or
   when they score the same), with each one's log-probability under the adapter that sampled them, in the
   training layout (the reference of the contrastive term), in ``round-K/pairs.jsonl``; ``round-K/CARD.md``
   says what was sampled and how it was scored.
4. **Train** (``pastac.train.trainer.train`` with ``stage="preference"``): the sampling adapter trained
   further on the pairs with the BoNBoN loss (``pastac.train.loss.pair_losses``), through the same layout,
   masks, positions and trainer as the first stage, into ``round-K/`` (checkpointed, resumable).

The next round samples from the adapter the round before trained.  The last round's adapter is copied into
the output folder itself, with a card (``README.md``) and ``preference.json`` (the stage's settings and each
round's figures), so that the folder is an adapter ``pastac run --adapter`` takes.

Samples do not depend on ``quality_weight``: a round-1 samples file may be given to runs with other weights
(``reuse_samples``), which then only pair and train.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pastac import jsonl
from pastac.adapters.settings import SETTINGS_FILE, AdapterSettings, SettingsError
from pastac.files import shown_path
from pastac.grammar import check
from pastac.output import OutputError, atomic, write_text
from pastac.train.options import TrainError, TrainOptions

__all__ = [
    "PREFERENCE_FILE",
    "PreferenceOptions",
    "Scored",
    "pair_of",
    "prompt_records",
    "score",
]

#: The stage's record in its output folder: settings, rounds, figures (it marks the folder as the stage's).
PREFERENCE_FILE = "preference.json"
_SAMPLES = jsonl.Kind("sample", required=("id", "prompt", "settings", "reference", "samples"))


@dataclass(frozen=True)
class PreferenceOptions:
    """How the stage samples, scores and pairs (the training itself is ``TrainOptions``'s)."""

    samples: int = 4  # answers sampled per prompt (BoNBoN's n)
    temperature: float = 0.5
    top_p: float = 1.0
    quality_weight: float = 1.0  # lambda: score = speedup + quality_weight x quality
    speedup: str = "theoretical"  # the speedup term (SPEEDUP_TERMS)
    rounds: int = 1
    max_new_tokens: int = 768  # a forked answer is longer than a plain one; a sample the budget cuts is unusable
    limit: int | None = None  # the first N prompts of the seeded order (a trial); None: all
    seed: int = 0
    concurrent: int = 8  # requests decoded together (each prompt's samples are requests of their own)
    reuse_samples: str | None = None  # a round-1 samples.jsonl of a run with the same sampling settings

    def __post_init__(self) -> None:
        if not isinstance(self.samples, int) or self.samples < 2:
            raise TrainError(f"samples must be at least 2 (a best and a worst), not {self.samples!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise TrainError(f"temperature must be > 0 (the samples must differ), not {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise TrainError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.speedup not in SPEEDUP_TERMS:
            raise TrainError(f"speedup must be one of {', '.join(SPEEDUP_TERMS)}, not {self.speedup!r}")
        if not (math.isfinite(self.quality_weight) and self.quality_weight >= 0):
            raise TrainError(f"quality_weight must be >= 0, not {self.quality_weight}")
        for name in ("rounds", "max_new_tokens", "concurrent"):
            if getattr(self, name) < 1:
                raise TrainError(f"{name} must be >= 1, not {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise TrainError(f"limit must be >= 1, not {self.limit}")

    def sampling(self, adapter: str) -> dict[str, Any]:
        """What a samples file records and a resumed or reused one must match: the samples depend on these."""
        return {
            "adapter": adapter,
            "samples": self.samples,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "seed": self.seed,
        }


# -- prompts ----------------------------------------------------------------------------------------------


def prompt_records(path: str | Path, *, prompt_field: str = "prompt", limit: int | None, seed: int) -> list[dict]:
    """The prompts of a JSONL file (objects with a string ``prompt_field``; ``id``, ``category`` and ``response``
    kept when present, an ``id`` given from the line number otherwise), in an order drawn from ``seed`` (so that
    a ``limit`` takes every kind of prompt, and a larger one the same prompts and more), the first ``limit``.
    ``TrainError`` for an unreadable file, a line that is not such an object, or repeated ids."""
    try:
        records = jsonl.read_records(path, required=(prompt_field,))
    except jsonl.RecordsError as error:
        raise TrainError(str(error)) from None
    out: list[dict] = []
    seen: set[str] = set()
    for number, record in enumerate(records, start=1):
        prompt = record[prompt_field]
        if not isinstance(prompt, str) or not prompt.strip():
            raise TrainError(f"{path}: record {number}'s {prompt_field!r} is not a non-empty string")
        key = str(record.get("id", f"line-{number}"))
        if key in seen:
            raise TrainError(f"{path}: the id {key!r} is used twice")
        seen.add(key)
        response = record.get("response")
        out.append(
            {
                "id": key,
                "prompt": prompt,
                "category": record.get("category"),
                "response": response if isinstance(response, str) and response.strip() else None,
            }
        )
    random.Random(seed).shuffle(out)
    return out if limit is None else out[:limit]


# -- scoring and pairing ------------------------------------------------------------------------------------


#: The speedup terms a score may use: ``theoretical`` (PASTA's: the answer's tokens over its critical path) or
#: ``reference`` (the base model's greedy answer's tokens over the answer's critical path: the speedup against
#: decoding the base answer one token per step, which a longer answer does not raise).
SPEEDUP_TERMS = ("theoretical", "reference")


def speedup(sample: dict[str, Any], term: str, reference_tokens: int | None) -> float | None:
    """A sample's speedup term (``SPEEDUP_TERMS``); None for ``reference`` without the reference's length."""
    theoretical = float(sample["theoretical_speedup"])
    if term == "theoretical":
        return theoretical
    if not reference_tokens or not sample.get("tokens"):
        return None
    return reference_tokens * theoretical / sample["tokens"]  # tokens / theoretical is the critical path


@dataclass(frozen=True)
class Scored:
    """One sample's figures as pairing reads them from its record."""

    index: int
    usable: bool
    speedup: float | None
    quality: float | None

    def score(self, quality_weight: float) -> float | None:
        """``speedup + quality_weight x quality`` (None without both figures)."""
        if self.quality is None or self.speedup is None:
            return None
        return self.speedup + quality_weight * self.quality


def score(sample: dict[str, Any], index: int, term: str = "theoretical", reference_tokens: int | None = None) -> Scored:
    """A sample record's figures (``sample_prompts`` writes them), its speedup by ``term``."""
    return Scored(index, bool(sample["usable"]), speedup(sample, term, reference_tokens), sample.get("quality"))


def pair_of(
    samples: Sequence[dict[str, Any]],
    quality_weight: float,
    term: str = "theoretical",
    reference_tokens: int | None = None,
) -> tuple[int, int] | None:
    """The indices of the best and the worst usable sample by score (the first of equals), or None when fewer
    than two are usable and scored or the best scores no higher than the worst (nothing to prefer)."""
    scored = [
        s
        for s in (score(x, i, term, reference_tokens) for i, x in enumerate(samples))
        if s.usable and s.score(quality_weight) is not None
    ]
    if len(scored) < 2:
        return None
    values = {s.index: s.score(quality_weight) for s in scored}
    best = max(scored, key=lambda s: (values[s.index], -s.index)).index
    worst = min(scored, key=lambda s: (values[s.index], s.index)).index
    if not values[best] > values[worst]:  # type: ignore[operator]
        return None
    return best, worst


# -- the model's side ---------------------------------------------------------------------------------------


def _seed(seed: int, round_: int, key: str, k: int) -> int:
    return zlib.crc32(f"{seed} {round_} {key} {k}".encode())


@torch.inference_mode()
def layout_logprob(model: Any, tokenizer: Any, prompt: str, annotated: str, settings: Any, eos: int) -> float:
    """The log-probability of an annotated answer under ``model`` in the training layout (its labelled
    positions, summed): what the contrastive term compares the trained adapter's with."""
    from pastac.train.data import encode_example
    from pastac.train.loss import sequence_logprobs

    example = encode_example(
        tokenizer, prompt, annotated, settings.positions, chat=settings.chat, eos_id=eos, max_depth=settings.max_depth
    )
    device = next(model.parameters()).device
    logits = model(
        input_ids=example.input_ids[None].to(device),
        position_ids=example.position_ids[None].to(device),
        attention_mask=example.additive_mask().to(device),
        use_cache=False,
    ).logits
    return float(sequence_logprobs(logits, example.labels[None].to(device))[0])


@dataclass
class Models:
    """What a round samples and scores with: the adapted engine (its batch engine) and the base engine."""

    adapted: Any  # pastac.runtime.Engine, the adapter merged
    base: Any  # pastac.runtime.Engine, no adapter
    eos: int


def _base_reference(models: Models, record: dict[str, Any], options: PreferenceOptions) -> dict[str, Any]:
    """The base model's greedy answer to the prompt and its log-likelihood per token: the record's ``response``
    (what ``pastac data build`` decoded greedily), else one decoded here with the adapter's repetition penalty."""
    from pastac.evaluation.metrics import log_likelihood
    from pastac.runtime.options import RunOptions, SamplingOptions
    from pastac.runtime.threads import Limits

    base = models.base
    ids = base.prompt_ids(record["prompt"])
    if record.get("response") is not None:
        text, source = record["response"], "response"
    else:
        penalty = models.adapted.repetition_penalty
        answer = base.generate(
            record["prompt"],
            RunOptions(
                limits=Limits(max_new_tokens=options.max_new_tokens),
                sampling=SamplingOptions(repetition_penalty=penalty or 1.0),
            ),
        )
        text, source = answer.text, "greedy"
    answer_ids = base.tokenizer.encode(text, add_special_tokens=False)
    return {"source": source, "tokens": len(answer_ids), "loglik": log_likelihood(base.model, ids, answer_ids)}


def _sample_record(
    models: Models, record: dict[str, Any], answers: Sequence[Any], seeds: Sequence[int], settings: dict[str, Any]
) -> dict[str, Any]:
    """One prompt's line of ``samples.jsonl``: its reference and every sample with its figures."""
    from pastac.evaluation.metrics import log_likelihood
    from pastac.runtime.threads import FinishReason

    base = models.base
    ids = base.prompt_ids(record["prompt"])
    reference = record["reference"]
    samples = []
    for k, (answer, seed) in enumerate(zip(answers, seeds, strict=True)):
        strict = check(answer.annotated, mode="strict", max_depth=models.adapted.defaults.max_depth)
        valid = not strict.errors and not answer.warnings
        ended = answer.finish_reason is FinishReason.STOP
        stitched = base.tokenizer.encode(answer.text, add_special_tokens=False)
        ll = log_likelihood(base.model, ids, stitched)
        quality = (
            None if ll is None or not reference["loglik"] else (ll - reference["loglik"]) / abs(reference["loglik"])
        )
        usable = valid and ended and bool(stitched)
        samples.append(
            {
                "k": k,
                "seed": seed,
                "annotated": answer.annotated,
                "text": answer.text,
                "usable": usable,
                "valid": valid,
                "ended": ended,
                "threads": answer.stats.threads,
                "tokens": answer.stats.tokens,
                "theoretical_speedup": answer.stats.theoretical_speedup,
                "loglik": ll,
                "quality": quality,
                # the sampling adapter's log-probability in the training layout: the contrastive term's reference
                "reference_logprob": (
                    layout_logprob(
                        models.adapted.model,
                        models.adapted.tokenizer,
                        record["prompt"],
                        answer.annotated,
                        models.adapted.defaults,
                        models.eos,
                    )
                    if usable
                    else None
                ),
            }
        )
    return {
        "id": record["id"],
        "prompt": record["prompt"],
        "category": record.get("category"),
        "settings": settings,
        "reference": reference,
        "samples": samples,
    }


def sample_prompts(
    models: Models,
    records: Sequence[dict[str, Any]],
    path: Path,
    options: PreferenceOptions,
    settings: dict[str, Any],
    round_: int,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Sample and score every prompt of ``records`` not in ``path`` yet, appending one line per prompt; the
    lines of all of them, in ``records``' order.  A line drawn with other settings is a ``TrainError``."""
    from pastac.runtime.batch import BatchEngine
    from pastac.runtime.options import RunOptions, SamplingOptions
    from pastac.runtime.threads import Limits

    try:
        done = jsonl.resume(path, _SAMPLES)
    except jsonl.RecordsError as error:
        raise TrainError(str(error)) from None
    for key, line in done.items():
        if line["settings"] != settings:
            raise TrainError(
                f"{path}: the samples of {key!r} were drawn with other settings ({line['settings']}, not {settings}); "
                "name another --out, or the same settings"
            )
    todo = [r for r in records if r["id"] not in done]
    if done:
        say(f"{len(done)} prompts sampled already in {path}, {len(todo)} to go")
    batch = BatchEngine(models.adapted, max_concurrent=options.concurrent, max_waiting=10_000)
    per_wave = max(1, options.concurrent // options.samples)
    started = time.perf_counter()
    with jsonl.appending(path) as write:
        for start in range(0, len(todo), per_wave):
            wave = todo[start : start + per_wave]
            requests = []
            for record in wave:
                seeds = [_seed(options.seed, round_, record["id"], k) for k in range(options.samples)]
                run = [
                    batch.submit(
                        record["prompt"],
                        RunOptions(
                            limits=Limits(max_new_tokens=options.max_new_tokens),
                            sampling=SamplingOptions(temperature=options.temperature, top_p=options.top_p, seed=s),
                        ),
                    )
                    for s in seeds
                ]
                requests.append((record, seeds, run))
            while batch.busy:
                batch.step()
            for record, seeds, run in requests:
                for request in run:
                    if request.error is not None:
                        raise TrainError(f"sampling {record['id']!r} failed: {request.error}") from request.error
                reference = _base_reference(models, record, options)
                line = _sample_record(
                    models, {**record, "reference": reference}, [r.result for r in run], seeds, settings
                )
                write(line)
                done[record["id"]] = line
            finished = start + len(wave)
            rate = (time.perf_counter() - started) / finished
            say(f"round {round_}: sampled {finished} of {len(todo)} prompts ({rate:.1f} s per prompt)")
    return [done[r["id"]] for r in records]


# -- pairs and their card -----------------------------------------------------------------------------------


def make_pairs(lines: Sequence[dict[str, Any]], quality_weight: float, term: str = "theoretical") -> list[dict]:
    """The pairs of the sampled prompts (``pair_of``), as ``pastac.train.data.load_pairs`` reads them."""
    out = []
    for line in lines:
        tokens = line["reference"].get("tokens")
        chosen = pair_of(line["samples"], quality_weight, term, tokens)
        if chosen is None:
            continue
        best, worst = (score(line["samples"][i], i, term, tokens) for i in chosen)
        first, second = (line["samples"][i] for i in chosen)
        out.append(
            {
                "id": line["id"],
                "category": line.get("category"),
                "prompt": line["prompt"],
                "chosen": first["annotated"],
                "rejected": second["annotated"],
                "chosen_reference": first["reference_logprob"],
                "rejected_reference": second["reference_logprob"],
                "chosen_k": first["k"],
                "rejected_k": second["k"],
                "chosen_score": best.score(quality_weight),
                "rejected_score": worst.score(quality_weight),
                "chosen_speedup": best.speedup,
                "rejected_speedup": worst.speedup,
                "chosen_quality": best.quality,
                "rejected_quality": worst.quality,
                "chosen_tokens": first["tokens"],
                "rejected_tokens": second["tokens"],
            }
        )
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def round_figures(lines: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a round's samples and pairs come to (the card's and ``preference.json``'s figures)."""
    samples = [s for line in lines for s in line["samples"]]
    return {
        "prompts": len(lines),
        "samples": len(samples),
        "valid": sum(s["valid"] for s in samples),
        "ended": sum(s["ended"] for s in samples),
        "usable": sum(s["usable"] for s in samples),
        "forking": sum(s["threads"] > 1 for s in samples),
        "pairs": len(pairs),
        "mean_speedup": _mean([s["theoretical_speedup"] for s in samples]),
        "mean_quality": _mean([s["quality"] for s in samples]),
        "chosen_speedup": _mean([p["chosen_speedup"] for p in pairs]),
        "rejected_speedup": _mean([p["rejected_speedup"] for p in pairs]),
        "chosen_quality": _mean([p["chosen_quality"] for p in pairs]),
        "rejected_quality": _mean([p["rejected_quality"] for p in pairs]),
        "chosen_tokens": _mean([p["chosen_tokens"] for p in pairs]),
        "rejected_tokens": _mean([p["rejected_tokens"] for p in pairs]),
    }


def _figure(value: float | None, form: str = ".3f") -> str:
    return "n/a" if value is None else format(value, form)


def samples_card(round_: int, figures: dict[str, Any], options: PreferenceOptions, settings: dict[str, Any]) -> str:
    """``round-K/CARD.md``: what was sampled, how it was scored and paired, and what that gave."""
    f = figures
    return "\n".join(
        [
            f"# Preference round {round_}: samples and pairs",
            "",
            "## Sampled",
            "",
            f"- {f['prompts']} prompts, {options.samples} answers each from the adapter `{settings['adapter']}`: "
            f"asynchronous decoding, temperature {options.temperature}, top-p {options.top_p}, at most "
            f"{options.max_new_tokens} new tokens, the adapter's repetition penalty; sample k of prompt P seeded "
            f'by crc32("{options.seed} {round_} P k").',
            f"- {f['samples']} samples: {f['valid']} valid (the strict checker, nothing recovered), {f['ended']} "
            f"ended within the budget, {f['usable']} both (usable), {f['forking']} forked.",
            "",
            "## Scored",
            "",
            "- score = speedup + λ × quality, λ = " + f"{options.quality_weight:g}.",
            (
                "- speedup: the answer's theoretical speedup (its tokens over its critical path)"
                if options.speedup == "theoretical"
                else "- speedup: the base model's greedy answer's tokens over the answer's critical path (a longer "
                "answer does not raise it)"
            )
            + f"; the samples' mean theoretical speedup {_figure(f['mean_speedup'])}.",
            "- quality: the base model's log-likelihood per token of the stitched answer relative to that of its "
            "own greedy answer, (ll − ll_ref) / |ll_ref| (the prompt's `response`, else a greedy answer decoded "
            f"for it); mean {_figure(f['mean_quality'])}.",
            "",
            "## Paired",
            "",
            f"- {f['pairs']} pairs: the best and the worst usable sample of each prompt that has two usable ones "
            "scoring differently, each with its log-probability under the sampling adapter in the training "
            "layout (the contrastive term's reference).",
            f"- chosen vs rejected: speedup {_figure(f['chosen_speedup'])} vs {_figure(f['rejected_speedup'])}, "
            f"quality {_figure(f['chosen_quality'])} vs {_figure(f['rejected_quality'])}, tokens "
            f"{_figure(f['chosen_tokens'], '.0f')} vs {_figure(f['rejected_tokens'], '.0f')}.",
            "- Files: `samples.jsonl` (one line per prompt: the reference, every sample with its figures), "
            "`pairs.jsonl`.",
            "",
        ]
    )


# -- the stage ----------------------------------------------------------------------------------------------


def _round_trained(folder: Path, pairs_path: Path) -> bool:
    """Whether ``folder`` holds the adapter trained on ``pairs_path`` as it is now."""
    from pastac.train.trainer import file_sha256

    log = folder / "train_log.json"
    if not (folder / SETTINGS_FILE).is_file() or not log.is_file():
        return False
    try:
        record = json.loads(log.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    planned = record.get("planned_steps")
    total = min(planned, record.get("options", {}).get("max_steps") or planned) if isinstance(planned, int) else None
    return record.get("data", {}).get("sha256") == file_sha256(pairs_path) and record.get("steps") == total


def _drop_stale_checkpoint(folder: Path, pairs_path: Path) -> None:
    """Remove the round's checkpoint when it was made on other pairs (the round's prompts grew with --limit):
    its training starts again on the pairs as they are now, which the trainer would otherwise refuse."""
    from pastac.train.checkpoint import CHECKPOINT, checkpoint_folder
    from pastac.train.trainer import file_sha256

    found = checkpoint_folder(folder)
    if found is None:
        return
    try:
        saved = json.loads((found / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # the trainer says what is wrong with it
    if saved.get("data_sha256") != file_sha256(pairs_path):
        for name in (CHECKPOINT, f"{CHECKPOINT}.old", f"{CHECKPOINT}.tmp"):
            shutil.rmtree(folder / name, ignore_errors=True)


def _write_state(out: Path, state: dict[str, Any]) -> None:
    try:
        write_text(out / PREFERENCE_FILE, json.dumps(state, indent=2) + "\n")
    except OutputError as error:
        raise TrainError(str(error)) from None


@dataclass
class StageResult:
    """What ``run_stage`` did: the rounds' figures and where the adapter is."""

    out: Path
    rounds: list[dict[str, Any]]


def run_stage(
    load: Callable[[str | None], Any],
    prompts: Path,
    out: Path,
    start_adapter: str,
    options: PreferenceOptions,
    train_options: TrainOptions,
    *,
    prompt_field: str = "prompt",
    progress: bool = True,
    force: bool = False,
) -> StageResult:
    """Run the stage's rounds into ``out`` (see the module docstring); a rerun of the same command resumes.

    ``load(adapter)`` loads the model with ``adapter`` merged (None: the base model), as a
    ``pastac.models.LoadedModel``; ``start_adapter`` is the adapter folder the first round samples from.
    ``TrainError`` for bad inputs, an output that cannot be written, or a folder of another run."""
    from pastac.output import check_folder
    from pastac.runtime.engine import Engine
    from pastac.train.loss import bonbon_margin
    from pastac.train.trainer import end_of_sequence, is_adapter_folder, train

    def say(message: str) -> None:
        if progress:
            print(f"pastac: {message}", file=sys.stderr, flush=True)

    try:
        check_folder(
            out,
            ours=is_adapter_folder,
            what="a folder of pastac train --stage preference",
            force=force,
            name="--out",
        )
    except OutputError as error:
        raise TrainError(str(error)) from None
    records = prompt_records(prompts, prompt_field=prompt_field, limit=options.limit, seed=options.seed)
    # the layout and decode settings are the start adapter's: the pairs were decoded with them, and the adapter
    # trained further must keep them (its pastac.json)
    try:
        start = AdapterSettings.read(start_adapter) or AdapterSettings()
    except SettingsError as error:
        raise TrainError(f"the adapter '{start_adapter}': {error}") from None
    train_options = replace(
        train_options,
        policy=str(start.policy),
        unit=start.unit,
        max_depth=start.max_depth,
        chat=start.chat,
        repetition_penalty=start.repetition_penalty,
        base_model=start.base_model or train_options.base_model,
    )
    state_path = out / PREFERENCE_FILE
    stage = {
        "prompts": shown_path(prompts),
        "start_adapter": shown_path(start_adapter),
        # a larger --limit goes on with the same prompts and more; reused samples are the first round's own
        "options": asdict(options) | {"limit": None, "reuse_samples": None},
        "train_options": asdict(train_options) | {"target_modules": None, "init_adapter": None},
    }
    if state_path.is_file():
        try:
            saved = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise TrainError(f"cannot read {state_path}: {error}") from None
        changed = [k for k in stage if saved.get(k) != stage[k]]
        if changed:
            raise TrainError(
                f"{out} holds a preference run with other {', '.join(changed)}; name another --out, or the same command"
            )
    out.mkdir(parents=True, exist_ok=True)
    rounds: list[dict[str, Any]] = []
    _write_state(out, stage | {"rounds": rounds, "done": False})
    adapter = start_adapter
    for round_ in range(1, options.rounds + 1):
        folder = out / f"round-{round_}"
        samples_path = folder / "samples.jsonl"
        settings = options.sampling(shown_path(adapter)) | {"round": round_}
        if round_ == 1 and options.reuse_samples and not samples_path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            try:
                shutil.copyfile(options.reuse_samples, samples_path)
            except OSError as error:
                raise TrainError(f"cannot reuse the samples '{options.reuse_samples}': {error}") from None
            say(f"round 1 starts from the samples of {options.reuse_samples}")
        pairs_path = folder / "pairs.jsonl"
        lines: list[dict[str, Any]] | None = None
        if not _complete(samples_path, records, settings):
            say(f"round {round_}: sampling {len(records)} prompts x {options.samples} from {adapter}")
            adapted, base = load(adapter), load(None)
            models = Models(
                Engine(adapted.model, adapted.tokenizer, name=adapted.name, settings=adapted.settings, progress=False),
                Engine(base.model, base.tokenizer, name=base.name, progress=False),
                end_of_sequence(adapted.model, adapted.tokenizer),
            )
            lines = sample_prompts(models, records, samples_path, options, settings, round_, say)
            del models, adapted, base
        if lines is None:
            lines = _read_samples(samples_path, records)
        pairs = make_pairs(lines, options.quality_weight, options.speedup)
        if not pairs:
            raise TrainError(f"round {round_}: no prompt has two usable samples that score differently: no pairs")
        try:
            jsonl.write_records(pairs_path, pairs)
        except jsonl.RecordsError as error:
            raise TrainError(str(error)) from None
        figures = round_figures(lines, pairs)
        try:
            write_text(folder / "CARD.md", samples_card(round_, figures, options, settings))
        except OutputError as error:
            raise TrainError(str(error)) from None
        if not _round_trained(folder, pairs_path):
            _drop_stale_checkpoint(folder, pairs_path)
            say(f"round {round_}: training on {len(pairs)} pairs")
            base = load(None)
            trained = replace(
                train_options,
                stage="preference",
                init_adapter=str(adapter),
                margin=bonbon_margin(options.samples),
            )
            train(base.model, base.tokenizer, pairs_path, folder, trained, progress=progress, force=True)
            del base
        rounds.append({"round": round_, "adapter_from": shown_path(adapter), **figures})
        _write_state(out, stage | {"rounds": rounds, "done": False})
        adapter = str(folder)
    try:
        last = (Path(adapter) / "README.md").read_text(encoding="utf-8")
    except OSError as error:
        raise TrainError(f"cannot read the last round's card: {error}") from None
    _publish(Path(adapter), out, stage_card(last, rounds, options, shown_path(start_adapter)))
    _write_state(out, stage | {"rounds": rounds, "done": True})
    return StageResult(out, rounds)


def _complete(path: Path, records: Sequence[dict[str, Any]], settings: dict[str, Any]) -> bool:
    """Whether ``path`` holds the samples of every prompt, drawn with ``settings``."""
    try:
        done = jsonl.resume(path, _SAMPLES)
    except jsonl.RecordsError:
        return False
    return all(r["id"] in done and done[r["id"]]["settings"] == settings for r in records)


def _read_samples(path: Path, records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    done = jsonl.resume(path, _SAMPLES)
    return [done[r["id"]] for r in records]


def stage_card(card: str, rounds: Sequence[dict[str, Any]], options: PreferenceOptions, start: str) -> str:
    """The stage's ``README.md``: the last round's adapter card, then the stage's rounds."""
    rows = [
        f"| {r['round']} | `{r['adapter_from']}` | {r['prompts']} | {r['usable']} of {r['samples']} | {r['forking']} "
        f"| {r['pairs']} | {_figure(r['chosen_speedup'], '.2f')} vs {_figure(r['rejected_speedup'], '.2f')} "
        f"| {_figure(r['chosen_quality'])} vs {_figure(r['rejected_quality'])} |"
        for r in rounds
    ]
    return "\n".join(
        [
            card.rstrip(),
            "",
            "## The preference stage",
            "",
            f"Trained from `{start}` by {len(rounds)} round(s) of `pastac train --stage preference`: "
            f"{options.samples} answers sampled per prompt (temperature {options.temperature}), scored "
            f"speedup ({options.speedup}) + {options.quality_weight:g} × quality, the best and the worst usable "
            "answer of each prompt paired; each round's `CARD.md`, `samples.jsonl` and `pairs.jsonl` are in its "
            "folder.",
            "",
            "| round | sampled from | prompts | usable answers | forked | pairs | speedup chosen vs rejected "
            "| quality chosen vs rejected |",
            "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
            *rows,
            "",
        ]
    )


def _publish(folder: Path, out: Path, card: str) -> None:
    """Copy the last round's adapter (weights, config, settings, logs) into the stage's folder, with ``card``."""
    names = ("adapter_config.json", "adapter_model.safetensors", SETTINGS_FILE, "train_log.json")
    names += ("loss.csv", "loss.png")
    try:
        for name in names:
            if (folder / name).is_file():
                with (folder / name).open("rb") as source, atomic(out / name, binary=True) as target:
                    shutil.copyfileobj(source, target)
        write_text(out / "README.md", card)
    except (OSError, OutputError) as error:
        raise TrainError(f"cannot write the adapter into '{out}': {error}") from None
