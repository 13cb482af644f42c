"""``pastac serve``: an OpenAI-compatible server that decodes many requests together.

Listens on 127.0.0.1:8000 unless told otherwise; ``--api-key`` (or the
environment variable ``PASTAC_API_KEY``) makes ``/v1`` require
``Authorization: Bearer KEY``.  Ctrl-C or SIGTERM: running requests end first
(``--drain-timeout``), new ones are answered 503.  Exit status: 0 after a
clean shutdown, 2 usage error or a model that cannot be used.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from typing import TextIO

from pastac.cli.common import EXIT_OK, UsageError, count, integer, positive
from pastac.cli.options import adapter_options, kernel_options, load_engine, model_options, torch_threads_option
from pastac.runtime.options import BatchLimits

PORT = integer(0)


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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr, warnings only in the log")
    p.set_defaults(run=run)


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
