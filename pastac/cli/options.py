"""The option groups of the ``pastac`` command line, each declared once.

A command adds the groups it takes; a group's names, types, choices and defaults are defined here and
nowhere else, and its defaults are those of the library's option dataclasses (``Limits``,
``SamplingOptions``, ``PositionOptions``), so that the command line and the library decode alike.  Nothing
here imports torch: building the parser stays quick.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TYPE_CHECKING

from pastac.backend import ATTENTION, DECODE_STEPS, FORWARDS, QUANTS
from pastac.cli.common import UsageError, count, escaped, number, positive
from pastac.output import FORCE
from pastac.passes.positions import Policy, PositionOptions
from pastac.passes.resolution_order import Order
from pastac.runtime.options import PENALTY_SCOPES, SamplingOptions
from pastac.runtime.repeats import DEFAULT_SIBLING_NGRAM
from pastac.runtime.threads import Limits

if TYPE_CHECKING:
    from pastac.runtime.engine import Engine
    from pastac.scale import RayOptions

Group = argparse._ActionsContainer  # a parser, an argument group or a mutually exclusive group

DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16", "float16")
KERNELS = ("tuned", "stock")
DECODABLE_POLICIES = (Policy.PREDICTED, Policy.RESTART, Policy.LOCKSTEP)  # the runtime's (no lengths ahead)

temperature = number(lambda v: v >= 0, ">= 0")
probability_mass = number(lambda v: 0 < v <= 1, "in (0, 1]")
penalty_factor = number(lambda v: v > 0, "> 0")


def model_options(group: Group, source: Group | None = None) -> None:
    """--model (in ``source`` when given, e.g. a group exclusive with --shape), --device and --dtype."""
    (source or group).add_argument(
        "--model",
        metavar="PATH",
        help="a Hugging Face model folder or a .gguf file (default: the embedded SmolLM2-135M-Instruct)",
    )
    device_options(group)


def device_options(group: Group, *, what: str = "the model") -> None:
    """--device and --dtype: where ``what`` runs, and its weights' type."""
    group.add_argument("--device", choices=DEVICES, default="cpu", help=f"where {what} runs (default cpu)")
    group.add_argument("--dtype", choices=DTYPES, default="float32", help=f"{what}'s weights' type (default float32)")


def adapter_options(group: Group) -> None:
    """--adapter DIR or --no-adapter; neither: pastac's Pasta-Lang adapter with the default model."""
    from pastac.adapters import DEFAULT_ADAPTER

    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--adapter",
        metavar="DIR",
        default=DEFAULT_ADAPTER,
        help="a PEFT adapter folder, merged into the model (default: the Pasta-Lang adapter shipped with pastac "
        "for the default model; none for a --model of your own)",
    )
    choice.add_argument("--no-adapter", dest="adapter", action="store_const", const=None, help="the base model alone")


def kernel_options(group: Group) -> None:
    """--kernels: the linear layers' kernels, tuned on this machine or stock ``F.linear``; --attention: the
    attention backend (``pastac.backend.attention``); --decode-step: eager or static (``pastac.runtime.static``)."""
    group.add_argument(
        "--kernels",
        choices=KERNELS,
        default="tuned",
        help="tuned (default): decode steps use the fastest of several matrix-product calls per weight shape and "
        "row count, timed once on this machine and cached; stock: F.linear",
    )
    group.add_argument(
        "--attention",
        choices=ATTENTION,
        default="auto",
        help="auto (default): triton on CUDA, sdpa on the CPU; sdpa: PyTorch's attention under a dense mask built "
        "each step; triton: a kernel that reads the threads' visibility bitset (CUDA, or the CPU under "
        "TRITON_INTERPRET=1, slowly); flex: PyTorch's FlexAttention reading the same bitset",
    )
    group.add_argument(
        "--decode-step",
        choices=DECODE_STEPS,
        default="auto",
        help="auto (default): static on CUDA with triton or flex attention, else eager; static: decode steps "
        "padded to widths 1, 2, 4 ... 64 over persistent buffers, each width's forward captured once as a CUDA "
        "graph on a GPU; eager: each step as it comes",
    )
    group.add_argument(
        "--forward",
        choices=FORWARDS,
        default="auto",
        help="auto (default): fused on the CPU for Llama, Mistral and Qwen2 models, else hf; fused: pastac's "
        "forward pass from the model's weights in few operations per layer (same logits); hf: the model's own",
    )
    group.add_argument(
        "--quant",
        choices=QUANTS,
        default="auto",
        help="auto (default): fp16 where it runs, else none; none: float32 weights; fp16: the fused forward's "
        "weights stored in float16 (half the bytes, the same answers to rounding); int8: in int8, activations "
        "quantised per row (a quarter of the bytes; answers change). fp16 and int8: CPU, float32 models",
    )


def torch_threads_option(group: Group, default: int | None = None) -> None:
    """--torch-threads: torch's intra-op threads on the CPU (``args.torch_threads``; None: torch's own)."""
    group.add_argument(
        "--torch-threads",
        type=positive,
        default=default,
        metavar="N",
        help="torch's intra-op threads on the CPU" + (f" ({default})" if default is not None else ""),
    )


def chat_option(group: Group) -> None:
    """--no-chat: prompts as plain text, without the chat template (``args.chat`` is False, else None)."""
    group.add_argument(
        "--no-chat",
        dest="chat",
        action="store_const",
        const=False,
        default=None,
        help="feed prompts as they are, without the chat template (default: the template; a decode takes the "
        "adapter's setting)",
    )


def budget_options(
    group: Group, *, per_thread: bool = True, help: str | None = None, default: int = Limits().max_new_tokens
) -> None:
    """--max-new-tokens (an answer's budget, all threads together, tags included) and, ``per_thread``,
    --max-thread-tokens (each thread's); ``help`` and ``default`` where a command budgets something else
    (a base model's answer for a dataset, say)."""
    group.add_argument(
        "--max-new-tokens",
        type=positive,
        default=default,
        metavar="N",
        help=(help or "the answer's budget: tokens all threads write together, tags included")
        + f" (default {default})",
    )
    if not per_thread:
        return
    group.add_argument(
        "--max-thread-tokens",
        type=positive,
        default=Limits().max_thread_tokens,
        metavar="N",
        help="a cap on each thread's own tokens (default: none besides the answer's budget)",
    )


def force_option(group: Group, *, outputs: str) -> None:
    """--force (``pastac.output.FORCE``): write ``outputs`` (in the command's words: "into --out") even where a
    file or folder there is not pastac's own output of that kind, which is refused by default."""
    group.add_argument(
        FORCE,
        action="store_true",
        help=f"write {outputs} even where a file or folder there is not pastac's own output of that kind "
        "(refused by default; only files of the names pastac writes are replaced)",
    )


def depth_option(group: Group, *, default: int | None, help: str) -> None:
    """--max-depth N: the deepest <async> nesting (what it governs, and its default, are the command's)."""
    group.add_argument("--max-depth", type=count, default=default, metavar="N", help=help)


def width_options(group: Group) -> None:
    """--max-width and --order: how many threads decode at once, and which waiting one starts first."""
    group.add_argument(
        "--max-width",
        type=positive,
        default=Limits().max_width,
        metavar="N",
        help="at most N threads decode at once, the main one included; later promises wait (default: no cap)",
    )
    group.add_argument(
        "--order",
        choices=[str(o) for o in Order],
        default=str(Limits().order),
        help="which waiting promise starts first when a place frees: the first promised (fifo, default), or by "
        "the promises' predicted lengths",
    )


def position_options(
    group: Group, *, policies: Sequence[Policy] = DECODABLE_POLICIES, default: PositionOptions | None = None
) -> None:
    """--policy and --unit: the position ids after a promise.  ``default`` None: unset (the adapter's)."""
    group.add_argument(
        "--policy",
        choices=[str(p) for p in policies],
        default=None if default is None else str(default.policy),
        help="where a parent goes on after a promise: predicted skips tokens= x --unit positions, restart none, "
        "lockstep none and after a join goes past its children"
        + (" (default: the adapter's, else predicted)" if default is None else f" (default {default.policy})"),
    )
    group.add_argument(
        "--unit",
        type=count,
        default=None if default is None else default.unit,
        metavar="N",
        help='a promise\'s tokens="K" predicts K x N tokens'
        + (
            f" (default: the adapter's, else {PositionOptions().unit})"
            if default is None
            else f" (default {default.unit})"
        ),
    )


def sampling_options(group: Group) -> None:
    """--temperature, --top-p and --seed."""
    d = SamplingOptions()
    temperature_option(group)
    group.add_argument(
        "--top-p",
        type=probability_mass,
        default=d.top_p,
        metavar="P",
        help="sample from the smallest set of tokens whose probability reaches P (default 1: all)",
    )
    group.add_argument("--seed", type=int, default=d.seed, metavar="S", help="makes sampling repeatable")


def temperature_option(group: Group) -> None:
    """--temperature T: 0 is greedy."""
    group.add_argument(
        "--temperature",
        type=temperature,
        default=SamplingOptions().temperature,
        metavar="T",
        help="0 (default) is greedy; otherwise the logits are divided by T before sampling",
    )


def stop_option(group: Group) -> None:
    """--stop TEXT, repeatable: a thread ends where it writes one."""
    group.add_argument(
        "--stop",
        action="append",
        type=escaped,
        default=[],
        metavar="TEXT",
        help="a thread's text ends where it writes TEXT, which is left out (backslash escapes such as \\n are "
        "read); repeatable",
    )


def repetition_penalty_option(group: Group, *, default: float | None, help: str) -> None:
    """--repetition-penalty X: Hugging Face's repetition_penalty (what it applies to is the command's)."""
    group.add_argument("--repetition-penalty", type=penalty_factor, default=default, metavar="X", help=help)


def penalty_options(group: Group) -> None:
    """--repetition-penalty, --penalty-scope and --sibling-ngram: keeping threads from repeating."""
    repetition_penalty_option(
        group,
        default=None,
        help="divide the logit of every token already in a thread's context by X (Hugging Face's "
        "repetition_penalty; the tags' own tokens are exempt). Default: the adapter's setting, else 1, which is none",
    )
    group.add_argument(
        "--penalty-scope",
        choices=PENALTY_SCOPES,
        default=SamplingOptions().penalty_scope,
        help="what the repetition penalty counts as already written: thread (default) what the thread sees; "
        "answer: the prompt and every token any thread has written so far, as when one thread writes the whole "
        "answer",
    )
    group.add_argument(
        "--sibling-ngram",
        type=_ngram,
        default=DEFAULT_SIBLING_NGRAM,
        metavar="N",
        help="a thread may not write a token that repeats an N-gram of tokens written by a thread it cannot see (a "
        "sibling, say); N-grams through a tag's tokens do not count. 0 turns it off. "
        f"Default: {DEFAULT_SIBLING_NGRAM}",
    )


def _ngram(text: str) -> int:
    value = count(text)
    if value == 1:
        raise argparse.ArgumentTypeError("must be 0 (off) or at least 2, not 1")
    return value


def guard_options(group: Group) -> None:
    """--no-tag-guard and --no-jump-forward."""
    group.add_argument(
        "--no-tag-guard",
        dest="tag_guard",
        action="store_false",
        help="do not constrain the model's tags to well-formed ones allowed where it writes them (a <sync/> needs "
        "a promise to wait for, a </async> a block to close); malformed tags are then recovered from, with a "
        "warning",
    )
    group.add_argument(
        "--no-jump-forward",
        dest="jump_forward",
        action="store_false",
        help='sample every token of a tag, even the text its canonical form forces (topic=", tokens=", />), which '
        "by default is fed in one step with the token before it",
    )


def load_engine(args: argparse.Namespace, *, adapter: str | None, kernels: str | None = None) -> Engine:
    """The engine that the model options (``model_options``, ``kernels_option``, ``-q``) of ``args`` describe,
    with ``adapter`` (None: the base model) and ``kernels`` (None: ``--kernels``). Raises ``ModelError``."""
    from pastac.backend.attention import BackendError
    from pastac.runtime.engine import Engine

    try:
        return Engine.from_pretrained(
            args.model,
            device=args.device,
            dtype=args.dtype,
            adapter=adapter,
            kernels=args.kernels if kernels is None else kernels,
            attention=args.attention,
            decode_step=args.decode_step,
            forward=args.forward,
            quant=args.quant,
            progress=not args.quiet,
        )
    except BackendError as error:  # --attention triton on a CPU, say
        raise UsageError(str(error)) from None


#: --ray's value when no address is given: Ray's address for a new local cluster, started for the command
LOCAL_RAY = "local"


def ray_address_option(group: Group, *, what: str) -> None:
    """--ray [ADDRESS]: run ``what`` on a Ray cluster (no ADDRESS: a local one started for the command)."""
    group.add_argument(
        "--ray",
        nargs="?",
        const=LOCAL_RAY,
        metavar="ADDRESS",
        help=f"{what} on a Ray cluster: a local one started for the command (no ADDRESS), the one this machine "
        "belongs to (auto), or the one at ADDRESS (HOST:6379, ray://HOST:10001); needs pastac[ray]",
    )


def ray_options(group: Group) -> None:
    """--ray [ADDRESS], --workers, --cpus-per-worker, --gpus-per-worker: the records spread over Ray workers that
    each load the model once (``pastac.scale``); read back with ``ray_settings``."""
    ray_address_option(
        group, what="spread the records over workers that each load the model once, the results back in order,"
    )
    group.add_argument(
        "--workers", type=positive, metavar="N", help="with --ray: workers (default: as many as the cluster holds)"
    )
    group.add_argument(
        "--cpus-per-worker",
        type=number(lambda v: v > 0, "> 0"),
        default=1.0,
        metavar="N",
        help="with --ray: CPUs each worker takes, and its torch threads (default 1)",
    )
    group.add_argument(
        "--gpus-per-worker",
        type=number(lambda v: v >= 0, ">= 0"),
        default=0.0,
        metavar="N",
        help="with --ray: GPUs each worker takes (default 0; 1 with --device cuda)",
    )


def ray_settings(args: argparse.Namespace) -> RayOptions | None:
    """The ``RayOptions`` of ``ray_options``' options, or None without --ray (a usage error if a worker option is
    given without it)."""
    from pastac.scale import RayOptions

    if args.ray is None:
        given = [
            option
            for option, value, default in (
                ("--workers", args.workers, None),
                ("--cpus-per-worker", args.cpus_per_worker, 1.0),
                ("--gpus-per-worker", args.gpus_per_worker, 0.0),
            )
            if value != default
        ]
        if given:
            raise UsageError(f"{', '.join(given)} applies to --ray")
        return None
    if not args.ray.strip():
        raise UsageError("--ray: the address is empty (give none for a local Ray cluster)")
    gpus = args.gpus_per_worker or (1.0 if getattr(args, "device", "cpu") == "cuda" else 0.0)
    return RayOptions(
        address=args.ray, workers=args.workers, cpus_per_worker=args.cpus_per_worker, gpus_per_worker=gpus
    )


def worker_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` for a Ray worker, which loads the model on its own: no progress bars of its own (the command
    shows the run's)."""
    return argparse.Namespace(**{**vars(args), "quiet": True})


def named_model(model: str | None, adapter: str | None = None) -> str:
    """The name the model of ``--model`` (and ``--adapter``) is loaded under, without loading it
    (``pastac.models.model_name``): what the driver of a Ray run checks before its workers load it; a path that
    does not exist is a usage error."""
    from pastac.models import ModelError, model_name

    try:
        return model_name(model, adapter)
    except ModelError as error:
        raise UsageError(str(error)) from None
