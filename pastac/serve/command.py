"""``pastac serve``: an OpenAI-compatible server that decodes many requests together.

Listens on 127.0.0.1:8000 unless told otherwise; ``--api-key`` (or the
environment variable ``PASTAC_API_KEY``) makes ``/v1`` require
``Authorization: Bearer KEY``.  Ctrl-C or SIGTERM: running requests end first
(``--drain-timeout``), new ones are answered 503.  Exit status: 0 after a
clean shutdown, 2 usage error or a model that cannot be used.

``--ray [ADDRESS]`` serves replicas of the same app on Ray Serve instead
(``pastac.serve.ray_serve``, imported only then): ``--replicas N``, or
autoscaling between ``--min-replicas`` and ``--max-replicas``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import TextIO

from pastac.cli.common import EXIT_OK, UsageError, count, integer, number, positive
from pastac.cli.options import (
    adapter_options,
    kernel_options,
    load_engine,
    model_options,
    ray_address_option,
    torch_threads_option,
)
from pastac.runtime.options import BatchLimits

PORT = integer(0)
SHARE = number(lambda v: v >= 0, ">= 0")  # a replica's CPUs or GPUs: Ray takes fractions
ONGOING = number(lambda v: v > 0, "> 0")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the command line."""
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible server: many requests decoded together",
        description="Serve a model behind the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models), "
        "with /health and /metrics. The threads of every running request advance in the same forward passes "
        "over one shared KV cache.",
    )
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    net.add_argument("--port", type=PORT, default=8000, help="the port (default 8000; 0: any free one)")
    net.add_argument(
        "--api-key",
        metavar="KEY",
        default=os.environ.get("PASTAC_API_KEY"),
        help="require this key as 'Authorization: Bearer KEY' on /v1 (default: $PASTAC_API_KEY, else none)",
    )
    net.add_argument("--served-model-name", metavar="NAME", help="the model's id in the API (default: its name)")
    model = p.add_argument_group("model")
    model_options(model)
    adapter_options(model)
    kernel_options(model)
    torch_threads_option(model)
    load = p.add_argument_group("load")
    limits = BatchLimits()
    load.add_argument(
        "--max-concurrent",
        type=positive,
        default=limits.max_concurrent,
        metavar="N",
        help=f"requests decoded at once ({limits.max_concurrent})",
    )
    load.add_argument(
        "--max-waiting",
        type=count,
        default=limits.max_waiting,
        metavar="N",
        help=f"requests queued beyond those ({limits.max_waiting})",
    )
    max_rows_option(load)
    load.add_argument(
        "--kv-slots",
        type=positive,
        metavar="N",
        help="slots of the shared KV cache (default: 2,048 per concurrent request, within half the free memory)",
    )
    load.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="at shutdown, seconds the running requests get to end (30)",
    )
    replica_options(p.add_argument_group("replicas on Ray Serve (pip install 'pastac[ray]')"))
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr, warnings only in the log")
    p.set_defaults(run=run)


def replica_options(group: argparse._ActionsContainer) -> None:
    """--ray [ADDRESS], the replicas (a fixed count, or autoscaling bounds) and each replica's resources."""
    ray_address_option(
        group,
        what="serve replicas of the server on Ray Serve, each with its own model and KV cache, behind Serve's HTTP "
        "proxy on --host/--port,",
    )
    group.add_argument("--replicas", type=positive, metavar="N", help="with --ray: N replicas (default 1)")
    group.add_argument(
        "--min-replicas",
        type=count,
        metavar="N",
        help="with --ray: autoscaling, the fewest replicas (default 1; 0: none while idle)",
    )
    group.add_argument("--max-replicas", type=positive, metavar="N", help="with --ray: autoscaling, the most replicas")
    group.add_argument(
        "--target-ongoing-requests",
        type=ONGOING,
        metavar="X",
        help="with --ray: autoscaling, the requests (running and queued) per replica that Serve aims at "
        "(default: --max-concurrent)",
    )
    group.add_argument(
        "--cpus-per-replica",
        type=SHARE,
        metavar="X",
        help="with --ray: the CPUs Ray reserves for each replica (default 1; torch takes as many threads unless "
        "--torch-threads says otherwise)",
    )
    group.add_argument(
        "--gpus-per-replica",
        type=SHARE,
        metavar="X",
        help="with --ray: the GPUs Ray gives each replica (default 1 with --device cuda: a GPU per replica)",
    )


RAY_ONLY = (
    "replicas",
    "min_replicas",
    "max_replicas",
    "target_ongoing_requests",
    "cpus_per_replica",
    "gpus_per_replica",
)
AUTOSCALING = ("min_replicas", "max_replicas", "target_ongoing_requests")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_ray_options(args: argparse.Namespace) -> None:
    """Refuse (``UsageError``) replica options without --ray, a fixed count with autoscaling bounds, and
    resources that do not fit --device; nothing here imports Ray."""
    given = [name for name in RAY_ONLY if getattr(args, name) is not None]
    if args.ray is None:
        if given:
            raise UsageError(f"{_flag(given[0])} needs --ray: replicas run on Ray Serve")
        return
    if not args.ray.strip():
        raise UsageError("--ray: the address is empty (give none for a local Ray cluster)")
    if args.port == 0:
        raise UsageError("--ray needs a fixed --port: Serve's HTTP proxy listens on it")
    scaling = [name for name in AUTOSCALING if name in given]
    if args.replicas is not None and scaling:
        raise UsageError(
            f"--replicas (a fixed count) and {_flag(scaling[0])} (autoscaling) exclude each other: give one"
        )
    if scaling and args.max_replicas is None:
        raise UsageError(f"{_flag(scaling[0])} needs --max-replicas: Serve scales between --min-replicas and it")
    if args.min_replicas is not None and args.min_replicas > args.max_replicas:
        raise UsageError(f"--min-replicas ({args.min_replicas}) is more than --max-replicas ({args.max_replicas})")
    if args.device == "cuda" and args.gpus_per_replica == 0:
        raise UsageError("--device cuda needs a GPU for each replica: --gpus-per-replica must be > 0")
    if args.device == "cpu" and args.gpus_per_replica:
        raise UsageError("--gpus-per-replica needs --device cuda (the model runs on the CPU)")


def max_rows_option(group: argparse._ActionsContainer) -> None:
    """--max-rows: the queries of one forward pass (``BatchLimits.max_rows``)."""
    default = BatchLimits().max_rows
    group.add_argument(
        "--max-rows",
        type=positive,
        default=default,
        metavar="N",
        help=f"queries per forward pass: the running requests' new tokens, then prompts in chunks ({default}; "
        "on a CPU a step's time grows with it, on a GPU a few hundred cost little more than one)",
    )


def run(args: argparse.Namespace, out: TextIO) -> int:
    """Load the model and serve until interrupted."""
    from pastac.models import ModelError
    from pastac.runtime.batch import BatchEngine
    from pastac.serve.app import create_app
    from pastac.serve.server import serve

    if args.drain_timeout < 0:
        raise UsageError(f"--drain-timeout must be >= 0, not {args.drain_timeout}")
    if args.api_key is not None and not args.api_key.strip():
        raise UsageError("--api-key is empty")
    check_ray_options(args)
    if args.ray is not None:
        return _run_on_ray(args)
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    try:
        engine = load_engine(args, adapter=args.adapter)
        batch = BatchEngine(
            engine,
            max_concurrent=args.max_concurrent,
            max_waiting=args.max_waiting,
            max_rows=args.max_rows,
            kv_slots=args.kv_slots,
        )
    except (ModelError, ValueError) as error:
        raise UsageError(str(error)) from None
    app = create_app(batch, model_name=args.served_model_name, api_key=args.api_key, drain_timeout=args.drain_timeout)
    if not args.quiet:
        print(
            f"pastac: serving {app.state.model_name} on http://{args.host}:{args.port}/v1 "
            f"({args.max_concurrent} requests at once, {batch.pool.capacity:,} KV slots)",
            file=sys.stderr,
        )
    # uvicorn drains on SIGINT and SIGTERM, then raises the signal again: a clean shutdown is exit status 0
    signal.signal(signal.SIGTERM, lambda _signal, _frame: None)
    with contextlib.suppress(KeyboardInterrupt):
        serve(
            app,
            host=args.host,
            port=args.port,
            drain_timeout=args.drain_timeout,
            log_level="warning" if args.quiet else "info",
        )
    return EXIT_OK


def _run_on_ray(args: argparse.Namespace) -> int:
    """``--ray``: the replicas on Ray Serve (``pastac.serve.ray_serve``); Ray not installed is a usage error."""
    try:
        from pastac.serve import ray_serve
    except ImportError as error:
        if (error.name or "").partition(".")[0] == "pastac":
            raise
        raise UsageError(
            f"--ray needs Ray Serve, which cannot be imported ({error}): pip install 'pastac[ray]'"
        ) from None
    return ray_serve.run(args)
