"""``pastac data``: build the annotated training set, step by step or in one go.

Steps: ``prompts`` (the built-in prompt set), ``responses`` (the base model's answers, batched) or
``import`` (pairs of one's own), ``annotate`` (Pasta-Lang tags), ``filter`` (valid, finished, non-empty
records; splits), ``card`` (a Markdown data card); ``build`` runs them all into one folder.  The generating
steps resume where they stopped (records are keyed by id).  A line per step goes to standard output,
progress bars to standard error (not with -q).  Exit status: 0 done, 2 usage error, an unreadable input, a
model that cannot be used or an annotator that fails (what was written is kept), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from pastac.data.annotate import Annotator
    from pastac.runtime.models import LoadedModel

Handler = Callable[[argparse.Namespace, TextIO], int]


def _temperature(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return number


def _penalty(value: str) -> float:
    number = _temperature(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return number


def _generation_arguments(p: argparse.ArgumentParser, positive: Callable[[str], int]) -> None:
    from pastac.runtime.command import model_arguments

    model = p.add_argument_group("model")
    model_arguments(model)
    how = p.add_argument_group("generation")
    how.add_argument("--batch-size", type=positive, default=16, metavar="N", help="prompts per batch (default 16)")
    how.add_argument(
        "--max-new-tokens",
        type=positive,
        default=384,
        metavar="N",
        help="per response (default 384); a response cut there is dropped by filter",
    )
    how.add_argument(
        "--limit",
        type=positive,
        metavar="N",
        help="only the first N prompts, taken in turn from each category (a later run with a "
        "larger N answers the rest)",
    )
    how.add_argument("--temperature", type=_temperature, default=0.0, metavar="T", help="0 (default) is greedy")
    how.add_argument("--sample-seed", type=int, default=0, metavar="N", help="torch's seed when sampling")
    how.add_argument(
        "--repetition-penalty",
        type=_penalty,
        default=1.0,
        metavar="X",
        help="divide the scores of tokens already in the answer by X (Hugging Face's "
        "repetition_penalty; 1.0, the default, is none): a small model decoded greedily "
        "tends to loop until the token limit, and such answers are dropped",
    )


def _annotator_arguments(p: argparse.ArgumentParser, positive: Callable[[str], int], *, tokenizer: bool) -> None:
    how = p.add_argument_group("annotator")
    how.add_argument(
        "--annotator",
        choices=("structural", "llm"),
        default="structural",
        help="structural (default): fork what the response's layout marks as independent; llm: ask "
        "a language model (--url and --llm-model, or --llm-local)",
    )
    how.add_argument(
        "--url",
        metavar="URL",
        help="an OpenAI-compatible server (http://host:port/v1); the key, if any, is read from $OPENAI_API_KEY",
    )
    how.add_argument("--llm-model", metavar="NAME", help="the model the server should use")
    how.add_argument(
        "--llm-local", metavar="PATH", help="a local model folder or .gguf file, greedy, instead of a server"
    )
    how.add_argument(
        "--llm-max-new-tokens",
        type=positive,
        default=1024,
        metavar="N",
        help="with --llm-local, the longest annotation (default 1024 tokens)",
    )
    if tokenizer:
        how.add_argument(
            "--tokenizer-model",
            metavar="PATH",
            help="structural: count promised tokens with this model's tokenizer (default: the "
            "embedded SmolLM2-135M-Instruct)",
        )


def add_parser(sub: argparse._SubParsersAction, positive: Callable[[str], int]) -> None:
    """Add ``data`` and its steps to the CLI; ``positive`` parses integers >= 1 (the CLI's own)."""
    from pastac.data.pipeline import BUILD_FILES

    p = sub.add_parser(
        "data",
        help="build the annotated training set (prompts, responses, annotate, filter, card)",
        description="Build Pasta-Lang training data: a prompt set, the base model's responses, their annotation "
        "with promise/async/sync tags, a filter that keeps valid, finished responses, and a data "
        "card. Each step writes JSONL and resumes where it stopped. 'pastac data build --out DIR' "
        f"runs them all into DIR ({', '.join(BUILD_FILES.values())}, data.filter.json, train.jsonl, "
        "validation.jsonl, test.jsonl).",
    )
    steps = p.add_subparsers(dest="data_command", required=True, metavar="STEP")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")

    s = steps.add_parser(
        "prompts",
        parents=[quiet],
        help="write the built-in prompt set",
        description="Write the built-in prompt set (2,400 prompts in 9 categories, a fixed "
        "train/validation/test split): the same records on every run for a seed.",
    )
    s.add_argument("--out", required=True, metavar="FILE.jsonl")
    s.add_argument("--seed", type=int, default=None, metavar="N", help="another prompt set (default: the fixed one)")
    s.set_defaults(run=_handled(_cmd_prompts))

    s = steps.add_parser(
        "responses",
        parents=[quiet],
        help="the base model's answers to the prompts (batched)",
        description="Generate the model's answer to each prompt with Hugging Face generate, "
        "several prompts per batch (left padding, attention mask), through the "
        "chat template. Appends each batch; re-running skips the prompts done.",
    )
    s.add_argument("--prompts", required=True, metavar="FILE.jsonl", help="records with 'id' and 'prompt'")
    s.add_argument("--out", required=True, metavar="FILE.jsonl")
    _generation_arguments(s, positive)
    s.set_defaults(run=_handled(_cmd_responses))

    s = steps.add_parser(
        "import",
        parents=[quiet],
        help="prompt/response pairs of your own",
        description="Import prompt/response pairs as response records (ids import-00001, ...; "
        "category 'imported'): Alpaca-style records (instruction, input, output) or "
        "ShareGPT/SlimOrca-style ones (conversations: from human/gpt/system, value), "
        "detected record by record.",
    )
    s.add_argument("file", metavar="FILE.jsonl")
    s.add_argument("--out", required=True, metavar="FILE.jsonl")
    s.add_argument(
        "--prompt-field",
        metavar="NAME",
        help="Alpaca-style: the instruction's field (default instruction); naming a field turns detection off",
    )
    s.add_argument("--input-field", metavar="NAME", help="Alpaca-style: the optional input's field (default input)")
    s.add_argument("--response-field", metavar="NAME", help="Alpaca-style: the response's field (default output)")
    s.set_defaults(run=_handled(_cmd_import))

    s = steps.add_parser(
        "annotate",
        parents=[quiet],
        help="rewrite the responses in Pasta-Lang",
        description="Annotate each response with promise/async/sync tags; an annotation that "
        "does not render back to the response is replaced by the response (no "
        "fork) or null. Appends each record; re-running skips the records done.",
    )
    s.add_argument("--responses", required=True, metavar="FILE.jsonl")
    s.add_argument("--out", required=True, metavar="FILE.jsonl")
    _annotator_arguments(s, positive, tokenizer=True)
    s.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="for --llm-local")
    s.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="for --llm-local")
    s.set_defaults(run=_handled(_cmd_annotate))

    s = steps.add_parser(
        "filter",
        parents=[quiet],
        help="keep the records that make good training data",
        description="Keep the records whose annotation is valid (strict Pasta-Lang that renders "
        "to the response) and whose response is finished and not empty; print the "
        "counts per reason and write them to OUT's .filter.json.",
    )
    s.add_argument("--annotated", required=True, metavar="FILE.jsonl")
    s.add_argument("--out", required=True, metavar="FILE.jsonl")
    s.add_argument("--split-dir", metavar="DIR", help="also write train.jsonl, validation.jsonl and test.jsonl here")
    s.set_defaults(run=_handled(_cmd_filter))

    s = steps.add_parser(
        "card",
        parents=[quiet],
        help="a Markdown data card of a filtered dataset",
        description="Write a data card: sources, method, sizes per split and category, fork "
        "rate, filter counts (from DATA's .filter.json) and the figures of "
        "'pastac stats'.",
    )
    s.add_argument("--data", required=True, metavar="FILE.jsonl")
    s.add_argument("--out", metavar="CARD.md", help="write here (default: standard output)")
    s.add_argument("--filter-log", metavar="FILE.json", help="default: DATA's .filter.json, when there is one")
    s.set_defaults(run=_handled(_cmd_card))

    s = steps.add_parser(
        "build",
        parents=[quiet],
        help="all steps into one folder (resumable)",
        description="Run prompts, responses, annotate, filter (with the splits) and card into "
        "DIR. Re-running the same command resumes where it stopped.",
    )
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--seed", type=int, default=None, metavar="N", help="another prompt set (default: the fixed one)")
    _generation_arguments(s, positive)
    _annotator_arguments(s, positive, tokenizer=False)
    s.set_defaults(run=_handled(_cmd_build))


def _handled(step: Handler) -> Handler:
    """``step`` with the pipeline's errors turned into usage errors, and Ctrl-C into exit status 130."""

    def handler(args: argparse.Namespace, out: TextIO) -> int:
        from pastac.cli import UsageError
        from pastac.data.pipeline import PipelineError

        try:
            return step(args, out)
        except PipelineError as error:
            raise UsageError(str(error)) from None
        except KeyboardInterrupt:
            print("pastac: interrupted; what was written is kept: run the same command to resume", file=sys.stderr)
            return 130

    return handler


def _load(path: str | None, args: argparse.Namespace) -> LoadedModel:
    from pastac.cli import UsageError
    from pastac.runtime.models import ModelError, load_model

    try:
        return load_model(
            path,
            device=getattr(args, "device", "cpu"),
            dtype=getattr(args, "dtype", "float32"),
            progress=not args.quiet,
        )
    except ModelError as error:
        raise UsageError(str(error)) from None


def _check_annotator_options(args: argparse.Namespace) -> None:
    from pastac.cli import UsageError

    if args.annotator == "llm":
        if args.url and args.llm_local:
            raise UsageError("give --url or --llm-local, not both")
        if not args.url and not args.llm_local:
            raise UsageError("--annotator llm needs --url URL --llm-model NAME (a server) or --llm-local PATH")
        if args.url and not args.llm_model:
            raise UsageError("--url needs --llm-model NAME, the model the server should use")
        if args.url and not args.url.startswith(("http://", "https://")):
            raise UsageError(f"--url must start with http:// or https://, not {args.url!r}")
    else:
        given = [
            name
            for name, value in (("--url", args.url), ("--llm-model", args.llm_model), ("--llm-local", args.llm_local))
            if value
        ]
        if given:
            raise UsageError(f"{', '.join(given)} applies to --annotator llm")


def _annotator(args: argparse.Namespace, tokenizer: Callable[[], Any]) -> Annotator:
    """The annotator the options name; ``tokenizer`` gives the structural annotator's tokenizer."""
    from pastac.data.annotate import LLMAnnotator, StructuralAnnotator, openai_generate
    from pastac.ir.lengths import tokenizer_length

    if args.annotator == "structural":
        return StructuralAnnotator(count_tokens=tokenizer_length(tokenizer()))
    if args.url:
        return LLMAnnotator(openai_generate(args.url, args.llm_model, api_key=os.environ.get("OPENAI_API_KEY")))
    from pastac.data.pipeline import local_generate

    loaded = _load(args.llm_local, args)
    return LLMAnnotator(local_generate(loaded.model, loaded.tokenizer, max_new_tokens=args.llm_max_new_tokens))


def _responder(args: argparse.Namespace) -> tuple[Any, LoadedModel]:
    import torch

    from pastac.data.pipeline import HFResponder

    loaded = _load(args.model, args)
    if args.temperature > 0:
        torch.manual_seed(args.sample_seed)
    responder = HFResponder(
        loaded.model,
        loaded.tokenizer,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        repetition_penalty=args.repetition_penalty,
    )
    return responder, loaded


def _cmd_prompts(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.data.pipeline import DEFAULT_SEED, write_prompts

    out.write(write_prompts(args.out, DEFAULT_SEED if args.seed is None else args.seed).line() + "\n")
    return 0


def _cmd_responses(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.data.pipeline import read_records, write_responses

    prompts = read_records(args.prompts, required=("id", "prompt"))
    responder, loaded = _responder(args)
    result = write_responses(
        prompts,
        args.out,
        responder,
        model_name=loaded.name,
        batch_size=args.batch_size,
        limit=args.limit,
        progress=not args.quiet,
        source=args.prompts,
    )
    out.write(result.line() + "\n")
    return 0


def _cmd_import(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.data.pipeline import import_pairs

    result = import_pairs(
        args.file,
        args.out,
        prompt_field=args.prompt_field,
        input_field=args.input_field,
        response_field=args.response_field,
    )
    out.write(result.line() + "\n")
    return 0


def _cmd_annotate(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.data.pipeline import annotate_records, read_records

    _check_annotator_options(args)
    records = read_records(args.responses, required=("id", "prompt", "response"))
    annotator = _annotator(args, lambda: _load(args.tokenizer_model, args).tokenizer)
    result = annotate_records(records, args.out, annotator, progress=not args.quiet, source=args.responses)
    out.write(result.line() + "\n")
    return 0


def _cmd_filter(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.data.pipeline import filter_file, filter_log_path, filter_summary

    result = filter_file(args.annotated, args.out, split_dir=args.split_dir)
    for line in filter_summary(result.log):
        out.write(line + "\n")
    written = [args.out, str(filter_log_path(args.out))]
    if args.split_dir:
        written.append(f"{args.split_dir}/{{train,validation,test}}.jsonl")
    out.write(f"wrote {', '.join(written)}\n")
    return 0


def _cmd_card(args: argparse.Namespace, out: TextIO) -> int:
    from pastac.data.pipeline import card_file

    card = card_file(args.data, args.out, filter_log=args.filter_log)
    out.write(f"wrote {args.out}\n" if args.out else card)
    return 0


def _build_command(args: argparse.Namespace) -> str:
    """The command line that rebuilds the dataset, with the options that differ from the defaults."""
    parts = ["pastac data build", "--out", args.out]
    for option, value, default in (
        ("--seed", args.seed, None),
        ("--model", args.model, None),
        ("--device", args.device, "cpu"),
        ("--dtype", args.dtype, "float32"),
        ("--batch-size", args.batch_size, 16),
        ("--max-new-tokens", args.max_new_tokens, 384),
        ("--limit", args.limit, None),
        ("--temperature", args.temperature, 0.0),
        ("--repetition-penalty", args.repetition_penalty, 1.0),
        ("--annotator", args.annotator, "structural"),
        ("--url", args.url, None),
        ("--llm-model", args.llm_model, None),
        ("--llm-local", args.llm_local, None),
    ):
        if value != default:
            parts += [option, str(value)]
    return " ".join(parts)


def _cmd_build(args: argparse.Namespace, out: TextIO) -> int:
    from pastac import __version__
    from pastac.data.pipeline import DEFAULT_SEED, build_dataset

    _check_annotator_options(args)
    responder, loaded = _responder(args)
    annotator = _annotator(args, lambda: loaded.tokenizer)
    settings = {
        "command": _build_command(args),
        "pastac": __version__,
        "model": loaded.name,
        "model_source": loaded.source,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "repetition_penalty": args.repetition_penalty,
        "annotator": annotator.name,
        "llm": args.llm_model or args.llm_local,
    }

    def report(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    build_dataset(
        args.out,
        responder=responder,
        model_name=loaded.name,
        annotator=annotator,
        seed=DEFAULT_SEED if args.seed is None else args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        progress=not args.quiet,
        settings=settings,
        report=report,
    )
    return 0
