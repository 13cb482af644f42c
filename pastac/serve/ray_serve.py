"""``pastac serve --ray``: the serving app in replicas on Ray Serve.

Each replica is a Ray actor, a process of its own, that loads the model once as ``pastac serve`` does
(``load_engine``: every model, adapter and kernel option means the same), builds its own ``BatchEngine``, with
its own KV cache, and the same FastAPI app (``create_app``).  Serve's HTTP proxy listens on ``--host``/``--port``
and routes each request to a replica, whose engine decodes it together with the others it runs.  Serve runs the
app's lifespan in the replica: it starts the engine's loop there, and at shutdown drains and stops it.  Every
response names the replica that answered in its ``x-pastac-replica`` header.

This module imports Ray; the command line imports it for ``--ray`` only.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import ray
from ray import serve
from ray.exceptions import RayError

from pastac.cli.common import EXIT_OK, UsageError
from pastac.cli.options import LOCAL_RAY
from pastac.scale import unreachable

APP_NAME = "pastac"  # the Serve application (and deployment) this command runs
REPLICA_HEADER = "x-pastac-replica"
SHUTDOWN_MARGIN = 10.0  # seconds a replica's shutdown gets beyond --drain-timeout
PROXY_READY_VARIABLE = "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S"  # how long Serve waits for its proxy, each try

#: what a replica reads of the command line: the model's options (``load_engine``'s), the engine's and the app's
REPLICA_OPTIONS = (
    "model",
    "device",
    "dtype",
    "adapter",
    "kernels",
    "attention",
    "decode_step",
    "forward",
    "quant",
    "quiet",
    "torch_threads",
    "max_concurrent",
    "max_waiting",
    "max_rows",
    "kv_slots",
    "served_model_name",
    "api_key",
    "drain_timeout",
)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# The app of the replica in this process, and the replica's id: a replica is a Ray actor, a process of its own.
_served: tuple[Callable[[Scope, Receive, Send], Awaitable[None]], bytes] | None = None


def replica_options(args: argparse.Namespace) -> dict[str, Any]:
    """What a replica needs of ``args``, as a plain (picklable) dict."""
    return {key: getattr(args, key) for key in REPLICA_OPTIONS}


class ReplicaApp:
    """The ASGI app Serve wraps in every replica: it hands each call (lifespan and HTTP) to the app that the
    replica of this process built, and names that replica in every response's ``x-pastac-replica`` header.

    ``serve.ingress`` takes an app made before the replicas exist (every Ray release that ``pastac[ray]`` allows
    takes any ASGI callable; an app built in the replica needs a recent one), so this stand-in is that app, and
    ``Replica`` builds the real one, over its own engine, when Serve constructs it."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the call on to the replica's app."""
        if _served is None:
            raise RuntimeError("no pastac replica was built in this process")
        app, replica = _served
        if scope["type"] != "http":
            await app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), (REPLICA_HEADER.encode(), replica)]}
            await send(message)

        await app(scope, receive, named)


class Replica:
    """One replica: the model loaded as ``pastac serve`` loads it, its ``BatchEngine``, and the app over them.
    Serve runs the app's lifespan, which starts the engine's loop, and stops it when the replica ends."""

    def __init__(self, options: dict[str, Any]) -> None:
        global _served
        from pastac.cli.options import load_engine
        from pastac.runtime.batch import BatchEngine
        from pastac.serve.app import create_app

        if _served is not None:
            raise RuntimeError("a process holds one pastac replica")
        args = argparse.Namespace(**options)
        if args.torch_threads:
            import torch

            torch.set_num_threads(args.torch_threads)
        engine = load_engine(args, adapter=args.adapter)
        self.batch = BatchEngine(
            engine,
            max_concurrent=args.max_concurrent,
            max_waiting=args.max_waiting,
            max_rows=args.max_rows,
            kv_slots=args.kv_slots,
        )
        # not self.app: Serve's wrapper of this class has a property of that name
        self.server = create_app(
            self.batch, model_name=args.served_model_name, api_key=args.api_key, drain_timeout=args.drain_timeout
        )
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        _served = (self.server, self.replica_id.encode())

    def describe(self) -> dict[str, Any]:
        """The replica's id, the model's id in the API, and the replica's KV slots."""
        return {
            "replica": self.replica_id,
            "model": self.server.state.model_name,
            "kv_slots": self.batch.pool.capacity,
        }


def deployment_options(args: argparse.Namespace) -> dict[str, Any]:
    """Serve's options for the deployment that ``args`` asks for: a fixed number of replicas (``--replicas``,
    default 1) or autoscaling bounds (``--min-replicas``/``--max-replicas``/``--target-ongoing-requests``), and each
    replica's resources.  Serve sends a replica at most what its engine takes (``--max-concurrent`` running and
    ``--max-waiting`` queued); more requests wait in Serve's queue for a replica with room."""
    gpus = args.gpus_per_replica
    if gpus is None:
        gpus = 1 if args.device == "cuda" else 0
    options: dict[str, Any] = {
        "name": APP_NAME,
        "ray_actor_options": {"num_cpus": 1 if args.cpus_per_replica is None else args.cpus_per_replica},
        "max_ongoing_requests": args.max_concurrent + args.max_waiting,
        "graceful_shutdown_timeout_s": args.drain_timeout + SHUTDOWN_MARGIN,
    }
    if gpus:
        options["ray_actor_options"]["num_gpus"] = gpus
    if args.max_replicas is not None:
        target = args.target_ongoing_requests
        options["autoscaling_config"] = {
            "min_replicas": 1 if args.min_replicas is None else args.min_replicas,
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.max_concurrent if target is None else target,
        }
    else:
        options["num_replicas"] = args.replicas or 1
    if args.quiet:
        options["logging_config"] = {"log_level": "WARNING"}
    return options


def application(args: argparse.Namespace) -> serve.Application:
    """The Serve application of ``args``: the replicas' deployment, bound to their options."""
    deployment = serve.deployment(serve.ingress(ReplicaApp())(Replica))
    return deployment.options(**deployment_options(args)).bind(replica_options(args))


class Deployed:
    """The app running on Serve, on the Ray cluster this process is connected to (``ray.init``): ``start``
    starts Serve's HTTP proxy on ``host``/``port`` (unless Serve already runs there) and runs the app; ``stop``
    deletes it, and shuts Serve down if nothing else runs on it (or ``shutdown_serve``)."""

    def __init__(self, args: argparse.Namespace, *, shutdown_serve: bool = False) -> None:
        self.args, self.shutdown_serve = args, shutdown_serve
        self.url = f"http://{args.host}:{args.port}"
        self.handle: Any = None

    def start(self) -> Deployed:
        """Deploy the replicas and wait until they all serve; ``UsageError`` if they cannot start."""
        try:
            serve.start(http_options={"host": self.args.host, "port": self.args.port})
        except RayError as error:  # the proxy's actor did not come up, e.g. not ready in time, three times over
            why = str(error).strip().splitlines()[0]
            raise UsageError(
                f"Serve's HTTP proxy did not start on {self.args.host}:{self.args.port}: {why} (on a busy machine, "
                f"{PROXY_READY_VARIABLE}=SECONDS where the Ray cluster starts gives it longer than five seconds)"
            ) from None
        if APP_NAME in serve.status().applications:
            raise UsageError(
                f"Serve on this Ray cluster already runs an application named {APP_NAME!r} (another pastac serve?)"
            )
        try:
            self.handle = serve.run(application(self.args), name=APP_NAME, route_prefix="/", blocking=False)
        except RuntimeError as error:  # a replica that failed to start, three times: a model that cannot be used
            why = _deployment_message() or str(error)
            self.stop()
            raise UsageError(f"the replicas did not start: {why}") from None
        except BaseException:  # Ctrl-C while the replicas start
            self.stop()
            raise
        return self

    def describe(self, timeout: float = 60.0) -> dict[str, Any]:
        """What a replica says of itself (``Replica.describe``)."""
        return self.handle.describe.remote().result(timeout_s=timeout)

    def stop(self) -> None:
        """Delete the app (its replicas drain first), and shut Serve down if asked or if it runs nothing else."""
        if self.shutdown_serve:
            serve.shutdown()
            return
        if APP_NAME in serve.status().applications:
            serve.delete(APP_NAME)
        if not serve.status().applications:
            serve.shutdown()

    def __enter__(self) -> Deployed:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _deployment_message() -> str:
    """Why the deployment failed, as Serve says: the last line of a replica's traceback (its error), or ''."""
    application = serve.status().applications.get(APP_NAME)
    deployment = application.deployments.get(APP_NAME) if application is not None else None
    lines = [line.strip() for line in (deployment.message if deployment is not None else "").splitlines()]
    return next((line for line in reversed(lines) if line), "")


def run(args: argparse.Namespace) -> int:
    """Serve on Ray until Ctrl-C or SIGTERM: connect to the cluster at ``args.ray`` (``local``: start one), run
    the replicas, wait, then delete them and disconnect (stopping the local cluster).  A signal while the replicas
    start deletes them and is an interruption (``KeyboardInterrupt``: exit status 130)."""
    local = args.ray == LOCAL_RAY  # a new local cluster, which this command starts and stops
    _check_reachable(args.ray)
    try:
        ray.init(address=args.ray, logging_level=logging.WARNING if args.quiet else logging.INFO)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UsageError(f"--ray {args.ray}: cannot reach the Ray cluster: {error}") from None
    with _Signals() as signals:  # after ray.init, whose own handlers these replace
        try:
            with Deployed(args, shutdown_serve=local) as deployed:
                signals.serving()
                if not args.quiet:
                    print(f"pastac: serving {_what(args, deployed, f'{deployed.url}/v1')}", file=sys.stderr)
                signals.wait()
                if not args.quiet:
                    print("pastac: shutting down: the replicas finish their requests", file=sys.stderr)
        finally:
            ray.shutdown()
    return EXIT_OK


def _check_reachable(address: str) -> None:
    """Refuse (``UsageError``) an address where no cluster answers (``pastac.scale.unreachable``)."""
    if (why := unreachable(address)) is not None:
        raise UsageError(f"--ray {address}: {why}")


def _what(args: argparse.Namespace, deployed: Deployed, url: str) -> str:
    """What is served where, for the line that says the server is up."""
    each = f"each {args.max_concurrent} requests at once"
    if args.max_replicas is None:
        count = args.replicas or 1
        replicas = f"{count} replica{'s' if count > 1 else ''}"
    else:
        fewest = 1 if args.min_replicas is None else args.min_replicas
        replicas = f"{fewest} to {args.max_replicas} replicas (autoscaling)"
        if not fewest:  # no replica to ask yet
            return f"{args.served_model_name or 'the model'} on {url} through Ray Serve: {replicas}, {each}"
    about = deployed.describe()
    return f"{about['model']} on {url} through Ray Serve: {replicas}, {each} and {about['kv_slots']:,} KV slots"


class _Signals:
    """SIGINT (Ctrl-C) and SIGTERM for the command's whole life on Ray, from ``ray.init`` on; the handlers before
    are put back at the end.

    ``ray.init`` installs handlers of its own for SIGTERM: one in Python that exits with status 1, and one in C++
    that aborts the process (SIGABRT) if it is still running three seconds after the signal, which deleting the
    replicas and disconnecting takes longer than.  These replace both.  While the replicas start, the first signal
    raises ``KeyboardInterrupt`` where the command is (``Deployed.start`` deletes what it started); once they
    serve (``serving``), a signal ends ``wait``.  Later signals change nothing: the shutdown under way goes on."""

    _NUMBERS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._serving = False
        self._before: dict[int, Any] = {}

    def _handle(self, _number: int, _frame: object) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if not self._serving:
            raise KeyboardInterrupt

    def serving(self) -> None:
        """From now on a signal ends ``wait`` instead of interrupting."""
        self._serving = True

    def wait(self) -> None:
        """Block until a signal (or return at once if one came already)."""
        while not self._stop.wait(0.5):
            pass

    def __enter__(self) -> _Signals:
        self._before = {number: signal.signal(number, self._handle) for number in self._NUMBERS}
        return self

    def __exit__(self, *exc: object) -> None:
        for number, handler in self._before.items():
            signal.signal(number, handler)
