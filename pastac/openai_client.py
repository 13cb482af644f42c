"""The client pastac asks OpenAI-compatible servers with: vLLM, SGLang, llama.cpp's ``llama-server``, ``pastac serve``.

``OpenAIClient(url)`` sends chat completions (``chat``: one ``ChatRequest``, its ``Completion``: the reply's
text and finish reason) over httpx, and many of them with at most N in flight (``chat_all``, ``chat_each``,
both in the requests' order).  Invariants:

- The URL is the API's base, as OpenAI clients take it: ``http://host:port/v1``. A URL with no path
  (``http://host:port``) gets ``/v1``; any other path is used as it is (``https://host/api/v1``). Only
  ``http://`` and ``https://`` URLs with a host are accepted (``ValueError`` otherwise).
- A request that fails with HTTP 408, 429 or 5xx, or with no HTTP answer (the connection refused or lost, a
  timeout), is sent again, at most ``Retries.attempts`` times in all, after an exponential backoff with jitter,
  or after what the answer's ``Retry-After`` says (capped at ``Retries.max_delay``). Any other error status
  fails at once. Every failure is a ``ServerError`` (a ``RuntimeError``) whose message names the URL, the
  status and the server's own message, and how many attempts were made.
- ``chat_each`` yields each completion as soon as it and those before it are done; it takes at most
  ``2 x concurrency`` requests ahead of the one it yields, and runs at most ``concurrency`` at once.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import hashlib
import math
import queue
import random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_TIMEOUT = 600.0  # seconds for one answer: a busy server may queue a request for minutes
CONNECT_TIMEOUT = 10.0  # seconds to open a connection (a host that does not answer at all)
RETRIED_STATUSES = frozenset({408, 429})  # and every 5xx


class ServerError(RuntimeError):
    """A request that failed, after its retries: ``url`` (the endpoint), ``status`` (the HTTP status; None when
    no HTTP answer came), ``detail`` (the server's message, or what went wrong) and ``attempts``."""

    def __init__(self, url: str, detail: str, *, status: int | None = None, attempts: int = 1) -> None:
        self.url, self.detail, self.status, self.attempts = url, detail, status, attempts
        tried = f" (gave up after {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"POST {url}: {detail}{tried}")


def api_base(url: str) -> str:
    """The API base that ``url`` names: without a trailing slash, with ``/v1`` when it has no path.
    Raises ``ValueError`` for a URL that is not http:// or https:// with a host."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"the URL must start with http:// or https://, not {url!r}")
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise ValueError(f"not a valid URL: {url!r} ({error})") from None
    if not parsed.host:
        raise ValueError(f"the URL names no host: {url!r}")
    if parsed.query or parsed.fragment:
        raise ValueError(f"the URL must have no query or fragment (http://host:port/v1), not {url!r}")
    base = url.rstrip("/")
    return base + "/v1" if parsed.path in ("", "/") else base


@dataclass(frozen=True)
class Retries:
    """How often, and after how long, a failed request is sent again.

    ``attempts``: requests in all (1: no retry). Before retry k (from 1) the client waits ``backoff x 2^(k-1)``
    seconds, of which the second half is random (jitter, so that clients that failed together do not retry
    together), capped at ``max_delay``; or what the answer's ``Retry-After`` asks for, capped at ``max_delay``.
    """

    attempts: int = 5
    backoff: float = 0.5
    max_delay: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if not (self.backoff >= 0 and self.max_delay >= 0):
            raise ValueError("backoff and max_delay must be >= 0")

    def delay(self, retry: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``retry`` (1 for the first), given the answer's Retry-After, if any."""
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        step = min(self.max_delay, self.backoff * 2 ** (retry - 1))
        return step / 2 + random.uniform(0, step / 2)


def retry_after(value: str | None) -> float | None:
    """The seconds a ``Retry-After`` header asks for (a number of seconds or an HTTP date); None if none."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None or when.tzinfo is None:
            return None
        return max(0.0, when.timestamp() - time.time())
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion to ask for. ``prompt``: the text of one user message, or the messages themselves.
    A setting left None is not sent (the server's default applies); ``extra`` adds fields to the request body
    (a server's own, such as ``repetition_penalty``)."""

    prompt: str | Sequence[Mapping[str, Any]]
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON body of ``POST /chat/completions``."""
        messages = (
            [{"role": "user", "content": self.prompt}]
            if isinstance(self.prompt, str)
            else [dict(m) for m in self.prompt]
        )
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        for key in ("max_tokens", "temperature", "top_p", "seed"):
            value = getattr(self, key)
            if value is not None:
                body[key] = value
        body.update(self.extra)
        return body


@dataclass(frozen=True)
class Completion:
    """A server's reply: its text and finish reason (``"stop"``: the model ended it; ``"length"``: the token
    limit cut it; others, such as ``"content_filter"``, or None when the server gave none)."""

    text: str
    finish_reason: str | None
    model: str | None = None

    @property
    def finished(self) -> bool:
        """Whether the model ended the reply itself (finish reason ``"stop"``)."""
        return self.finish_reason == "stop"


def seed_for(seed: int, key: str) -> int:
    """A request's seed from a run's ``seed`` and the request's ``key`` (a prompt's id): the same on every run,
    different across keys, and in [0, 2^31) so that every server takes it."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class OpenAIClient:
    """Chat completions from an OpenAI-compatible server at ``url`` (see ``api_base``).

    ``api_key`` is sent as ``Authorization: Bearer KEY``; ``timeout`` bounds each attempt (seconds; opening a
    connection is bounded by ``CONNECT_TIMEOUT`` too); ``retries`` says when a failed request is sent again.
    The client may be used from several threads at once; close it (or use it in a ``with`` block) when done.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: Retries = Retries(),
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, not {timeout}")
        self.base = api_base(url)
        self.timeout = timeout
        self.retries = retries
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
        )

    def endpoint(self, path: str) -> str:
        """The URL of ``path`` (``"chat/completions"``) under the API base."""
        return f"{self.base}/{path.lstrip('/')}"

    def post(self, path: str, body: Mapping[str, Any]) -> Any:
        """POST ``body`` as JSON to ``path``, retrying as ``retries`` says; the reply's JSON. Raises ``ServerError``."""
        url = self.endpoint(path)
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            try:
                response = self._http.post(url, json=body)
            except httpx.TransportError as error:
                failure = ServerError(url, _transport_problem(error, self.timeout), attempts=attempt)
            else:
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError as error:
                        raise ServerError(url, f"the reply is not JSON ({error})", attempts=attempt) from None
                failure = ServerError(
                    url,
                    f"HTTP {response.status_code} {response.reason_phrase}: {_server_message(response)}",
                    status=response.status_code,
                    attempts=attempt,
                )
                if not _retried(response.status_code):
                    raise failure
                wait = retry_after(response.headers.get("retry-after"))
            if attempt >= self.retries.attempts:
                raise failure
            time.sleep(self.retries.delay(attempt, wait))

    def chat(self, request: ChatRequest) -> Completion:
        """The server's completion of ``request``. Raises ``ServerError``."""
        url = self.endpoint("chat/completions")
        reply = self.post("chat/completions", request.body())
        try:
            choice = reply["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ServerError(url, f"unexpected reply: {str(reply)[:200]}") from None
        if not isinstance(content, str):
            raise ServerError(url, "the reply has no text content")
        reason = choice.get("finish_reason")
        model = reply.get("model") if isinstance(reply, dict) else None
        return Completion(
            content, reason if isinstance(reason, str) else None, model if isinstance(model, str) else None
        )

    def chat_each(self, requests: Iterable[ChatRequest], *, concurrency: int = 8) -> Generator[Completion, None, None]:
        """The completions of ``requests`` in their order, each as soon as it and those before it are done, at
        most ``concurrency`` asked at once.  The first failure is raised in its place; close the iterator (or
        exhaust it) to let its threads end."""
        return ordered_map(self.chat, requests, concurrency=concurrency)

    def chat_all(self, requests: Iterable[ChatRequest], *, concurrency: int = 8) -> list[Completion]:
        """The completions of ``requests`` in their order, at most ``concurrency`` asked at once."""
        with contextlib.closing(self.chat_each(requests, concurrency=concurrency)) as each:
            return list(each)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> OpenAIClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, concurrency: int, lookahead: int | None = None
) -> Generator[R, None, None]:
    """``fn`` of each item, yielded in the items' order, each as soon as it and those before it are done.

    At most ``concurrency`` calls run at once (on daemon threads, which do not hold the process up when it
    exits); at most ``lookahead`` items (default ``2 x concurrency``) are taken ahead of the one yielded. An
    exception of ``fn`` is raised where its item's result would have been yielded; then, and when the iterator
    is closed, the calls not yet started are dropped (those running end on their own).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, not {concurrency}")
    ahead = max(concurrency, 2 * concurrency if lookahead is None else lookahead)
    return _ordered(fn, iter(items), concurrency, ahead)


def _ordered(fn: Callable[[T], R], items: Iterator[T], concurrency: int, ahead: int) -> Generator[R, None, None]:
    tasks: queue.SimpleQueue[tuple[Future[R], T] | None] = queue.SimpleQueue()

    def work() -> None:
        while (task := tasks.get()) is not None:
            future, item = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(item)
            except BaseException as error:  # handed to the consumer, whatever it is
                future.set_exception(error)
            else:
                future.set_result(result)

    pending: collections.deque[Future[R]] = collections.deque()
    workers = 0
    try:
        while True:
            for item in items:
                future: Future[R] = Future()
                pending.append(future)
                tasks.put((future, item))
                if workers < concurrency:  # threads only as many as there are items, up to concurrency
                    threading.Thread(target=work, name="pastac-client", daemon=True).start()
                    workers += 1
                if len(pending) >= ahead:
                    break
            if not pending:
                return
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        for _ in range(workers):
            tasks.put(None)


def _retried(status: int) -> bool:
    return status in RETRIED_STATUSES or status >= 500


def _transport_problem(error: httpx.TransportError, timeout: float) -> str:
    """What went wrong when no HTTP answer came."""
    if isinstance(error, httpx.ConnectTimeout):
        return f"cannot connect: no answer within {min(timeout, CONNECT_TIMEOUT):g} s"
    if isinstance(error, httpx.TimeoutException):
        return f"no answer within {timeout:g} s ({type(error).__name__})"
    if isinstance(error, httpx.ConnectError):
        return f"cannot connect: {error or type(error).__name__}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _server_message(response: httpx.Response) -> str:
    """The server's own message in an error answer: OpenAI's ``{"error": {"message"}}``, vLLM's ``{"message"}``,
    FastAPI's ``{"detail"}``, or the start of the body's text."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str) and error:
            return error[:500]
        for key in ("message", "detail"):
            if body.get(key):
                return str(body[key])[:500]
    text = " ".join(response.text.split())
    return text[:300] or "(no message)"
