"""Running the app with uvicorn: in the foreground (``serve``) or on a thread of this process (``ServerThread``).

Shutting down (Ctrl-C, SIGTERM, ``ServerThread.stop``): the server goes on listening while the running
requests end, for at most the drain timeout, answering new requests 503; then it stops listening, and what is
still running is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI

from pastac.runtime.batch import BatchEngine


class _DrainingServer(uvicorn.Server):
    """A uvicorn server that lets the engine's running requests end before it closes its sockets."""

    def __init__(self, config: uvicorn.Config, batch: BatchEngine, drain_timeout: float) -> None:
        super().__init__(config)
        self.batch, self.drain_timeout = batch, drain_timeout

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        """Refuse new requests, wait for the running ones (bounded), then shut down as uvicorn does."""
        await asyncio.to_thread(self.batch.drain, self.drain_timeout)
        await super().shutdown(sockets)


def _config(app: FastAPI, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on", timeout_keep_alive=5)


def serve(
    app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, drain_timeout: float = 30.0, log_level: str = "info"
) -> None:
    """Serve ``app`` (from ``pastac.serve.app.create_app``) until interrupted."""
    server = _DrainingServer(_config(app, host, port, log_level), app.state.batch, drain_timeout)
    server.run()


class ServerThread:
    """``app`` served on ``host`` at a free port, on a thread of this process; ``url`` once ``start`` returns.

    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")
    """

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        drain_timeout: float = 10.0,
        log_level: str = "warning",
    ) -> None:
        self.server = _DrainingServer(_config(app, host, port, log_level), app.state.batch, drain_timeout)
        self.thread = threading.Thread(target=self.server.run, name="pastac-http", daemon=True)
        self.url = ""

    def start(self, timeout: float = 30.0) -> ServerThread:
        """Start serving; returns once the server listens (raises ``RuntimeError`` if it does not in time)."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Shut down as a signal would (running requests end first, within the drain timeout)."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
