"""Evaluating a Pasta-equipped model on a prompt set (see the package's docstring)."""

from __future__ import annotations

import random
import re
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import LogitsProcessorList

from pastac.bench.run import geomean
from pastac.data.annotate import StructuralAnnotator
from pastac.data.prompts import FORKABLE
from pastac.evaluation.metrics import log_likelihood, mean_redundancy, redundancy, sibling_groups
from pastac.grammar import check, parse, render
from pastac.grammar.ast import Async, Document, Node
from pastac.runtime.engine import Engine
from pastac.runtime.options import RunOptions, SamplingOptions
from pastac.runtime.repeats import DEFAULT_SIBLING_NGRAM
from pastac.runtime.sampling import RepetitionPenalty
from pastac.runtime.templates import InputError
from pastac.runtime.threads import FinishReason, Limits

#: categories of the prompt set whose answers should fork, and the short ones that should not
LIST_LIKE = tuple(sorted(category for category, forks in FORKABLE.items() if forks))
SHORT = ("factual", "sentence", "arithmetic")

Judge = Callable[[str], str]


class JudgeError(RuntimeError):
    """The judge could not be asked (its server failed); the message says why."""


@dataclass(frozen=True)
class EvalOptions:
    """How ``evaluate`` decodes and scores: the budget, the adapted model's decoding settings, the judge."""

    # the answer's budget, the same for both: the base model's generate writes at most this many new tokens,
    # and the adapted model's threads at most this many together (tags included)
    max_new_tokens: int = 512
    judge: Judge | None = None
    seed: int = 0
    # None: the adapted model's own (its pastac.json); the base model's HF generate decodes with the same
    repetition_penalty: float | None = None
    sibling_ngram: int = DEFAULT_SIBLING_NGRAM  # SamplingOptions.sibling_ngram, for the adapted model's run
    penalty_scope: str = "thread"  # what the adapted model's penalty counts (SamplingOptions.penalty_scope)
    tag_guard: bool = True  # constrain the adapted model's tags to well-formed ones (pastac.runtime.guard)
    jump_forward: bool = True  # feed the text a tag forces in one step (in the run and in its sequential replay)
    # a temperature: also score an answer of the base model sampled at it, the proxy's scale (sampled_answer)
    sampled_reference: float | None = None
    # also decode the adapted model's own answer by one thread (the run's settings, mode sequential) and score
    # it: the reference of the Q_async gap, what asynchrony itself costs (one more decode per prompt)
    sequential_answer: bool = False


# the decoding settings a report's summary records (the reports --merge joins must agree on them)
RUN_SETTINGS = (
    "tag_guard",
    "jump_forward",
    "penalty_scope",
    "sibling_ngram",
    "sampled_reference",
    "sequential_answer",
)


def _async_texts(body: Sequence[Node]) -> list[str]:
    """The rendered texts of a document's top-level async blocks."""
    return [render(Document(node.body)) for node in body if isinstance(node, Async)]


def item_redundancy(answer: str) -> float | None:
    """Overlap between the items of a sequential answer: the parts the structural annotator would fork."""
    annotated = StructuralAnnotator().annotate("", answer).text
    if not annotated:
        return None
    return redundancy(_async_texts(parse(annotated).body))


_VERDICT = re.compile(r"\b(A|B|[Tt]ie|TIE)\b")


def judge_pair(judge: Judge, prompt: str, ours: str, theirs: str, rng: random.Random) -> str:
    """Ask ``judge`` which of two answers is better, in a random order; "win", "loss" or "tie" for ours."""
    first = rng.random() < 0.5
    a, b = (ours, theirs) if first else (theirs, ours)
    try:
        reply = judge(
            f"Which answer to the request is better? Reply with A, B or tie, then one sentence.\n\n"
            f"Request:\n{prompt}\n\nAnswer A:\n{a}\n\nAnswer B:\n{b}\n"
        )
    except RuntimeError as error:
        raise JudgeError(str(error)) from None
    found = _VERDICT.search(reply)
    verdict = found.group(1).lower() if found else "tie"
    if verdict == "tie":
        return "tie"
    return "win" if (verdict == "a") == first else "loss"


def _base_generate(
    base: Engine, prompt_ids: Sequence[int], processors: LogitsProcessorList, max_new_tokens: int, **decoding: Any
) -> list[int]:
    """The new ids of Hugging Face ``generate`` of the base model after ``prompt_ids`` (``decoding``: its
    sampling arguments), end tokens included."""
    device = next(base.model.parameters()).device
    tensor = torch.tensor([list(prompt_ids)], device=device)
    with torch.inference_mode():
        generated = base.model.generate(
            tensor,
            attention_mask=torch.ones_like(tensor),
            max_new_tokens=max_new_tokens,
            pad_token_id=base.eos[0] if base.eos else 0,
            logits_processor=processors,
            **decoding,
        )
    return generated[0, len(prompt_ids) :].tolist()


def sampled_answer(
    base: Engine,
    prompt_ids: Sequence[int],
    processors: LogitsProcessorList,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> list[int]:
    """An answer of the base model sampled at ``temperature`` (no top-k or top-p cut), with the processors and
    budget of its greedy answer, end tokens dropped (the budget cut it if it holds ``max_new_tokens``).  The
    base model's likelihood of its own sampled answers, set against that of its greedy answer, says how far
    below the greedy answer a text the base model itself writes falls: the scale of the log-likelihood proxy.
    ``seed`` fixes the draw; the caller's random state is left as it was."""
    device = next(base.model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        new_ids = _base_generate(
            base, prompt_ids, processors, max_new_tokens, do_sample=True, temperature=temperature, top_k=0, top_p=1.0
        )
    return [t for t in new_ids if t not in base.eos]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def evaluate_one(record: dict[str, Any], adapted: Engine, base: Engine, options: EvalOptions) -> dict[str, Any]:
    """Decode ``record``'s prompt with the adapted model, replay its answer with one thread, and let the base
    model answer with ``generate``; the result row: validity, threads, speedups, log-likelihoods, redundancy
    and (with a judge) the verdict, and with ``options.sequential_answer`` the adapted model's own answer by
    one thread, scored.  Every draw is seeded by ``options.seed`` and the prompt, so that a row does
    not depend on the rows evaluated before it (in this process or another).  Raises ``JudgeError`` if the
    judge cannot be asked."""
    prompt = str(record["prompt"])
    limits = Limits(max_new_tokens=options.max_new_tokens)
    penalty = options.repetition_penalty if options.repetition_penalty is not None else adapted.repetition_penalty
    sampling = SamplingOptions(
        repetition_penalty=penalty or 1.0, penalty_scope=options.penalty_scope, sibling_ngram=options.sibling_ngram
    )
    run = RunOptions(limits=limits, sampling=sampling, tag_guard=options.tag_guard, jump_forward=options.jump_forward)
    pasta = adapted.generate(prompt, run)
    lenient = check(pasta.annotated, mode="lenient")
    valid = not lenient.diagnostics and not pasta.warnings
    out: dict[str, Any] = {
        "id": record.get("id"),
        "category": record.get("category"),
        "prompt": prompt,
        "threads": pasta.stats.threads,
        "valid": valid,
        # why not valid: the lenient check's diagnostics, then what the runtime had to recover from
        "problems": [f"{d.code} {d.message}" for d in lenient.diagnostics] + list(pasta.warnings),
        "tokens": pasta.stats.tokens,  # placed in the cache: what the threads wrote, and the <async> fed to each
        "written": pasta.stats.generated + pasta.stats.jumped,  # what the threads wrote: the budget's count
        "theoretical_speedup": pasta.stats.theoretical_speedup,
        "wall_s": pasta.stats.wall_s,
        "text": pasta.text,
        "annotated": pasta.annotated,
    }
    try:  # the same text decoded by one thread: what forking bought
        # (the penalty computed as in the run, though a replay discards what it would choose: the same work)
        sequential = adapted.generate(
            prompt,
            RunOptions(mode="sequential", sampling=sampling, jump_forward=options.jump_forward),
            replay=pasta.annotated,
        )
        out["sequential_wall_s"] = sequential.stats.wall_s
        out["speedup_vs_sequential"] = sequential.stats.wall_s / pasta.stats.wall_s
    except InputError:  # an annotation that needed recovery cannot be replayed as it is
        out["speedup_vs_sequential"] = None
    ids = base.prompt_ids(prompt)
    # the same penalty for the base model; with none, its generate is Hugging Face's, untouched
    penalties = [RepetitionPenalty(sampling.penalty, base.exempt_tokens)] if sampling.penalty != 1 else []
    processors = LogitsProcessorList(penalties)
    new_ids, hf_wall = _timed(lambda: _base_generate(base, ids, processors, options.max_new_tokens, do_sample=False))
    answer_ids = [t for t in new_ids if t not in base.eos]
    baseline = base.tokenizer.decode(answer_ids, skip_special_tokens=True)
    out.update(
        baseline=baseline,
        baseline_tokens=len(answer_ids),
        baseline_cut=len(new_ids) >= options.max_new_tokens and not set(new_ids) & set(base.eos),
        hf_generate_wall_s=hf_wall,
        speedup_vs_hf_generate=hf_wall / pasta.stats.wall_s,
    )
    stitched_ids = base.tokenizer.encode(pasta.text, add_special_tokens=False)
    out["loglik_pasta"] = log_likelihood(base.model, ids, stitched_ids)
    out["loglik_sequential"] = log_likelihood(base.model, ids, answer_ids)
    if options.sequential_answer:
        # the adapted model's own answer by one thread, decoded afresh (the replay above decodes the async
        # answer's text): the Q_async gap's reference, scored as the async answer is
        own = adapted.generate(prompt, replace(run, mode="sequential"))
        own_ids = base.tokenizer.encode(own.text, add_special_tokens=False)
        out.update(
            loglik_adapted_sequential=log_likelihood(base.model, ids, own_ids),
            adapted_sequential_tokens=own.stats.generated + own.stats.jumped,  # what it wrote, as "written"
            # cut by the answer's budget, the only one the run has (no max_thread_tokens)
            adapted_sequential_cut=own.finish_reason is FinishReason.LENGTH,
        )
    if options.sampled_reference is not None:  # seeded by the prompt: the same draw in any shard or order
        sampled = sampled_answer(
            base,
            ids,
            processors,
            options.max_new_tokens,
            options.sampled_reference,
            zlib.crc32(f"{options.seed} {prompt}".encode()),
        )
        out.update(
            loglik_sampled=log_likelihood(base.model, ids, sampled), sampled_cut=len(sampled) >= options.max_new_tokens
        )
    out["redundancy_threads"] = mean_redundancy(
        sibling_groups({t: r.parent for t, r in pasta.threads.items()}, {t: r.text for t, r in pasta.threads.items()})
    )
    out["redundancy_sequential"] = item_redundancy(baseline)
    if options.judge is not None:  # which answer the judge reads first: seeded by the prompt, as the draw above
        rng = random.Random(zlib.crc32(f"{options.seed} judge {prompt}".encode()))
        out["judge"] = judge_pair(options.judge, prompt, pasta.text, baseline, rng)
    return out


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def _geomean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and v > 0]
    return geomean(kept) if kept else None


def _relative(value: float | None, reference: float | None) -> float | None:
    """How far ``value`` lies above ``reference``, as a share of its size (None without both)."""
    return None if value is None or not reference else (value - reference) / abs(reference)


def _length_vs_base(result: dict[str, Any]) -> float | None:
    written, base = result.get("written"), result.get("baseline_tokens")
    return written / base if written and base else None


def _rate_vs_hf(result: dict[str, Any]) -> float | None:
    length = _length_vs_base(result)
    return None if length is None else result["speedup_vs_hf_generate"] * length


# The fields of a result row that ``summarize`` reads, and what each must hold: a flag, a number, or a number
# or None (a figure that could not be measured); the optional ones may be left out.
_FLAG, _NUMBER, _FIGURE = "true or false", "a number", "a number or null"
RESULT_FIELDS: dict[str, str] = {
    "valid": _FLAG,
    "threads": _NUMBER,
    "baseline_cut": _FLAG,
    "speedup_vs_sequential": _FIGURE,
    "speedup_vs_hf_generate": _FIGURE,
    "theoretical_speedup": _FIGURE,
    "loglik_pasta": _FIGURE,
    "loglik_sequential": _FIGURE,
    "redundancy_threads": _FIGURE,
    "redundancy_sequential": _FIGURE,
}
OPTIONAL_FIELDS: dict[str, str] = {
    "written": _FIGURE,
    "baseline_tokens": _FIGURE,
    "loglik_sampled": _FIGURE,
    "loglik_adapted_sequential": _FIGURE,
}
# the optional log-likelihoods of a reference answer, and the flag a row that measured one needs: whether the
# budget cut that answer
REFERENCE_CUTS = {"loglik_sampled": "sampled_cut", "loglik_adapted_sequential": "adapted_sequential_cut"}


def _holds(value: object, kind: str) -> bool:
    if kind == _FLAG:
        return isinstance(value, bool)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number or (kind == _FIGURE and value is None)


def result_problem(row: object) -> str | None:
    """Why ``row`` is not a result ``summarize`` can read (not an object, a field missing or of the wrong
    kind), or None: what ``pastac eval --merge`` checks of the reports it joins."""
    if not isinstance(row, dict):
        return f"not an object but {type(row).__name__}"
    needed = RESULT_FIELDS | {cut: _FLAG for loglik, cut in REFERENCE_CUTS.items() if row.get(loglik) is not None}
    for name, kind in needed.items():
        if name not in row:
            return f'no "{name}" field'
        if not _holds(row[name], kind):
            return f'"{name}" is {row[name]!r}, not {kind}'
    for name, kind in OPTIONAL_FIELDS.items():
        if name in row and not _holds(row[name], kind):
            return f'"{name}" is {row[name]!r}, not {kind}'
    return None


#: the quality gaps of a summary, by name: the row field of their reference answer's log-likelihood
QUALITY_GAPS = {"q_ref": "loglik_sampled", "q_async": "loglik_adapted_sequential"}


def quality_gap(rows: Sequence[dict[str, Any]], reference: str) -> tuple[float | None, int]:
    """How far below a reference answer (``reference``: the row field of its log-likelihood) the base model
    puts the stitched answer, in points: the difference of their mean log-likelihoods, each relative to the
    mean of the greedy answer's, times 100 (None where no row has them all); and the rows it stands on.  Every
    term is taken over the same rows, those where the greedy answer and the reference both ended: an answer
    the budget cut is most often a loop, which the base model finds very likely."""
    cut = REFERENCE_CUTS[reference]
    kept = [
        r
        for r in rows
        if not r["baseline_cut"]
        and r.get(reference) is not None
        and not r[cut]
        and r["loglik_pasta"] is not None
        and r["loglik_sequential"] is not None
    ]
    greedy = _mean([r["loglik_sequential"] for r in kept])
    ours = _relative(_mean([r["loglik_pasta"] for r in kept]), greedy)
    theirs = _relative(_mean([r[reference] for r in kept]), greedy)
    return (None if ours is None or theirs is None else 100 * (theirs - ours)), len(kept)


def summarize(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary of ``evaluate_one``'s rows: valid and fork rates, geometric-mean speedups, mean
    log-likelihoods, the quality gaps (with the rows each stands on) and redundancies, overall and for the
    list-like and short categories, and the judge's verdict shares; a figure with no rows to count is None."""

    def of(categories: Sequence[str]) -> list[dict[str, Any]]:
        return [r for r in results if r.get("category") in categories]

    def loglik(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
        pasta, base = _mean([r["loglik_pasta"] for r in rows]), _mean([r["loglik_sequential"] for r in rows])
        out = {"pasta": pasta, "sequential": base, "relative_change": _relative(pasta, base)}
        # the base model's own sampled answers against its greedy ones, where the sampled answer ended (one
        # the budget cut is most often a loop, as above)
        drawn = [r for r in rows if r.get("loglik_sampled") is not None and not r["sampled_cut"]]
        sampled, greedy = _mean([r["loglik_sampled"] for r in drawn]), _mean([r["loglik_sequential"] for r in drawn])
        if sampled is not None:
            out |= {"sampled": sampled, "sampled_relative_change": _relative(sampled, greedy)}
        return out

    listy, short = of(LIST_LIKE), of(SHORT)
    every = loglik(results)
    # a base answer the budget cut is most often a loop, which the base model finds very likely: no reference
    finished = loglik([r for r in results if not r["baseline_cut"]])
    # Q_ref: below the base model's own sampled answer; Q_async: below the adapted model's own sequential answer
    gaps: dict[str, Any] = {}
    for name, reference in QUALITY_GAPS.items():
        for suffix, rows in (("", results), ("_list_like", listy)):
            gaps[f"{name}_gap{suffix}"], gaps[f"{name}_rows{suffix}"] = quality_gap(rows, reference)
    summary: dict[str, Any] = {
        "prompts": len(results),
        "valid_rate": _rate([r["valid"] for r in results]),
        "fork_rate": _rate([r["threads"] > 1 for r in results]),
        "fork_rate_list_like": _rate([r["threads"] > 1 for r in listy]),
        "fork_rate_short": _rate([r["threads"] > 1 for r in short]),
        "fork_rate_by_category": {
            c: _rate([r["threads"] > 1 for r in of((c,))]) for c in sorted({str(r.get("category")) for r in results})
        },
        "speedup_vs_sequential": _geomean([r["speedup_vs_sequential"] for r in results]),
        "speedup_vs_hf_generate": _geomean([r["speedup_vs_hf_generate"] for r in results]),
        "speedup_vs_sequential_list_like": _geomean([r["speedup_vs_sequential"] for r in listy]),
        "speedup_vs_hf_generate_list_like": _geomean([r["speedup_vs_hf_generate"] for r in listy]),
        # that speedup is this rate (tokens written per second, tags included, over generate's) divided
        # by this length (tokens written over the base answer's): what parallel decoding bought, and
        # how much longer the answer it decoded was
        "rate_vs_hf_generate_list_like": _geomean([_rate_vs_hf(r) for r in listy]),
        "length_vs_base_list_like": _geomean([_length_vs_base(r) for r in listy]),
        "theoretical_speedup": _geomean([r["theoretical_speedup"] for r in results]),
        **{f"loglik_{k}": v for k, v in every.items()},
        **{f"loglik_{k}_finished": v for k, v in finished.items()},
        **gaps,
        "redundancy_threads": _mean([r["redundancy_threads"] for r in results]),
        "redundancy_sequential": _mean([r["redundancy_sequential"] for r in results]),
        "baseline_cut_rate": _rate([r["baseline_cut"] for r in results]),
    }
    verdicts = [r["judge"] for r in results if "judge" in r]
    if verdicts:
        summary["judge"] = {v: verdicts.count(v) / len(verdicts) for v in ("win", "tie", "loss")}
    return summary


def report(results: Sequence[dict[str, Any]], options: EvalOptions) -> dict[str, Any]:
    """``{"results": [...], "summary": {...}}``: the rows and their summary, with the decoding settings."""
    return {
        "results": list(results),
        "summary": summarize(results) | {key: getattr(options, key) for key in RUN_SETTINGS},
    }


def evaluate(
    records: Sequence[dict[str, Any]],
    adapted: Engine,
    base: Engine,
    options: EvalOptions = EvalOptions(),
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate every record (``{"prompt", "category", "id"}``); ``{"results": [...], "summary": {...}}``."""
    results = []
    for record in records:
        results.append(evaluate_one(record, adapted, base, options))
        if progress is not None:
            progress(1)
    return report(results, options)
