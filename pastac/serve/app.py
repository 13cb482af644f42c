"""The OpenAI-compatible HTTP API over a ``BatchEngine``: an ASGI app (FastAPI), importable for embedding.

    app = create_app(BatchEngine(Engine.from_pretrained()), model_name="smollm2-135m-pasta")

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed
as server-sent events when ``"stream": true``), ``GET /v1/models``,
``GET /health`` and ``GET /metrics`` (Prometheus text).  An answer is the
stitched text; its ``pasta`` object gives the threads, steps and theoretical
speedup (and the annotated text on request).  A stream sends the stitched
answer in reading order as soon as each part of it is final: a thread's text
waits until the reader reaches its place.  Errors have OpenAI's JSON shape.
The engine's loop runs on a thread of its own from the app's start to its end.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from pastac.models.budget import ContextError
from pastac.runtime.batch import BatchEngine, Draining, QueueFull, Update
from pastac.runtime.options import Mode
from pastac.runtime.results import Generation
from pastac.serve.metrics import PrometheusMetrics

# -- requests ------------------------------------------------------------------------------------------------


class PastaOptions(BaseModel):
    """The ``pasta`` object of a request: how pastac decodes it."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["async", "sequential"] | None = None
    template: str | None = Field(None, description="Pasta-Lang: the main thread's text; the model fulfils its promises")
    max_width: int | None = Field(None, ge=1)
    max_depth: int | None = Field(None, ge=0)
    annotated: bool = False  # give the annotated text (with its tags) in the answer's pasta object
    progress: bool = False  # stream a chunk after every step, with the request's tokens and steps so far


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``."""

    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields a server may leave alone
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1)
    pasta: PastaOptions | None = None


class ContentPart(BaseModel):
    """A part of a message's content; text only."""

    type: Literal["text"]
    text: str


class Message(BaseModel):
    """A chat message."""

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[ContentPart]

    def text(self) -> str:
        """The message's text."""
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: the prompt is text, continued as it is (no chat template)."""

    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", **more: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.more = status, message, kind, more

    def response(self) -> JSONResponse:
        """The error as a JSON response."""
        body = {"error": {"message": self.message, "type": self.kind, "param": None, "code": None, **self.more}}
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return JSONResponse(body, status_code=self.status, headers=headers)


# -- the app -------------------------------------------------------------------------------------------------


def create_app(
    batch: BatchEngine,
    *,
    model_name: str | None = None,
    api_key: str | None = None,
    drain_timeout: float = 30.0,
) -> FastAPI:
    """The API over ``batch`` (whose loop the app starts and stops).  ``model_name``: the id clients name
    (default: the engine's model name).  ``api_key``: required as ``Authorization: Bearer KEY`` on ``/v1``.
    At shutdown running requests get ``drain_timeout`` seconds to end, new ones 503."""
    name = model_name or batch.engine.name
    metrics = PrometheusMetrics(batch)
    batch.metrics = metrics

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        batch.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batch.drain, drain_timeout)
            await asyncio.to_thread(batch.stop)

    app = FastAPI(title="pastac", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batch = batch
    app.state.model_name = name

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def bad_request(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return ApiError(400, message, param=where or None).response()

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "a valid API key is needed: Authorization: Bearer KEY", code="invalid_api_key")

    guarded = [Depends(authorize)]

    @app.get("/health")
    async def health() -> JSONResponse:
        if batch.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        body, content_type = metrics.render()
        return PlainTextResponse(body, media_type=content_type)

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> JSONResponse:
        return JSONResponse(
            {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "pastac"}]}
        )

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat(body: ChatRequest, request: Request) -> Response:
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages]
        budget = body.max_completion_tokens or body.max_tokens
        return await _answer(request, batch, name, body, [messages], budget, chat=True)

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(400, "prompt: give at least one prompt", param="prompt")
        if body.stream and len(prompts) > 1:
            raise ApiError(400, "prompt: a stream answers one prompt", param="prompt")
        return await _answer(request, batch, name, body, prompts, body.max_tokens, chat=False)

    return app


def _check_model(body: _Sampling, name: str) -> None:
    if body.model != name:
        raise ApiError(
            404,
            f"the model {body.model!r} is not served here; this server serves {name!r}",
            code="model_not_found",
            param="model",
        )


def _changes(body: _Sampling, budget: int | None, chat: bool) -> tuple[dict[str, Any], str | None]:
    """The engine's options for ``body``, and its template."""
    changes: dict[str, Any] = {"chat": chat}
    if budget is not None:
        changes["max_new_tokens"] = budget
    for key in ("temperature", "top_p", "seed"):
        value = getattr(body, key)
        if value is not None:
            changes[key] = value
    if body.stop is not None:
        changes["stop"] = [body.stop] if isinstance(body.stop, str) else list(body.stop)
    pasta = body.pasta or PastaOptions()
    if pasta.mode is not None:
        changes["mode"] = Mode(pasta.mode)
    if pasta.max_width is not None:
        changes["max_width"] = pasta.max_width
    if pasta.max_depth is not None:
        changes["max_depth"] = pasta.max_depth
    return changes, pasta.template


def _submit(batch: BatchEngine, prompt: Any, changes: dict[str, Any], template: str | None, listener: Callable) -> Any:
    """Queue one prompt; the engine's refusals become HTTP errors."""
    try:
        return batch.submit(prompt, template=template, listener=listener, **changes)
    except QueueFull as error:
        raise ApiError(429, f"the server is busy: {error}", "rate_limit_error") from None
    except Draining:
        raise ApiError(503, "the server is shutting down", "server_error") from None
    except ContextError as error:
        raise ApiError(413, str(error), code="context_length_exceeded", param="messages") from None
    except (ValueError, TypeError) as error:  # InputError, BudgetError, RequestTooLarge, options
        raise ApiError(400, str(error)) from None


def _finish_reason(result: Generation) -> str:
    return "length" if str(result.finish_reason) == "length" else "stop"


def _usage(result: Generation) -> dict[str, int]:
    prompt, answer = result.stats.prompt_tokens, result.stats.tokens
    return {"prompt_tokens": prompt, "completion_tokens": answer, "total_tokens": prompt + answer}


def _pasta(result: Generation, annotated: bool) -> dict[str, Any]:
    s = result.stats
    out: dict[str, Any] = {
        "threads": s.threads,
        "steps": s.steps,
        "max_width": s.max_width,
        "theoretical_speedup": round(s.theoretical_speedup, 4),
        "parallelism": round(s.parallelism, 4),
    }
    if result.warnings:
        out["warnings"] = list(result.warnings)
    if annotated:
        out["annotated"] = result.annotated
    return out


async def _answer(
    request: Request,
    batch: BatchEngine,
    name: str,
    body: _Sampling,
    prompts: list[Any],
    budget: int | None,
    *,
    chat: bool,
) -> Response:
    _check_model(body, name)
    changes, template = _changes(body, budget, chat)
    loop = asyncio.get_running_loop()
    created = int(time.time())
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    annotated = bool(body.pasta and body.pasta.annotated)
    if body.stream:
        updates: asyncio.Queue[Update] = asyncio.Queue()
        job = _submit(batch, prompts[0], changes, template, lambda u: loop.call_soon_threadsafe(updates.put_nowait, u))
        stream = _stream(request, batch, job, updates, ident, created, name, body, chat=chat, annotated=annotated)
        return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    ended = [asyncio.Event() for _ in prompts]
    jobs = []
    try:
        for event, prompt in zip(ended, prompts, strict=True):

            def done(update: Update, event: asyncio.Event = event) -> None:
                if update.final:
                    loop.call_soon_threadsafe(event.set)

            jobs.append(_submit(batch, prompt, changes, template, done))
        while not all(e.is_set() for e in ended):
            waiting = [asyncio.ensure_future(e.wait()) for e in ended if not e.is_set()]
            _, pending = await asyncio.wait(waiting, timeout=0.25, return_when=asyncio.ALL_COMPLETED)
            for future in pending:
                future.cancel()
            if await request.is_disconnected():
                raise asyncio.CancelledError
    except BaseException:
        for job in jobs:
            batch.cancel(job)
        raise
    choices = []
    results: list[Generation] = []
    for index, job in enumerate(jobs):
        if job.error is not None:
            raise ApiError(500, f"decoding failed: {job.error}", "server_error")
        result = job.result
        if result is None:  # cancelled by the server: its shutdown's drain ran out of time
            raise ApiError(503, "the request was cancelled: the server is shutting down", "server_error")
        results.append(result)
        reason = _finish_reason(result)
        if chat:
            choices.append(
                {
                    "index": index,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": reason,
                    "logprobs": None,
                }
            )
        else:
            choices.append({"index": index, "text": result.text, "finish_reason": reason, "logprobs": None})
    usage = {k: sum(_usage(r)[k] for r in results) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    reply: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": name,
        "choices": choices,
        "usage": usage,
        "pasta": _pasta(results[0], annotated) if len(results) == 1 else [_pasta(r, annotated) for r in results],
    }
    return JSONResponse(reply)


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _stream(
    request: Request,
    batch: BatchEngine,
    job: Any,
    updates: asyncio.Queue[Update],
    ident: str,
    created: int,
    name: str,
    body: _Sampling,
    *,
    chat: bool,
    annotated: bool,
) -> AsyncIterator[bytes]:
    """The answer as server-sent events; a client that goes away cancels the request."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    progress = bool(body.pasta and body.pasta.progress)
    usage_too = bool(body.stream_options and body.stream_options.include_usage)

    def chunk(text: str | None, reason: str | None = None, **extra: Any) -> bytes:
        if chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if text is not None and first[0]:
                delta["role"] = "assistant"
                first[0] = False
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": reason, "logprobs": None}
        data = {"id": ident, "object": kind, "created": created, "model": name, "choices": [choice], **extra}
        if usage_too:
            data["usage"] = None
        return _event(data)

    first = [True]
    sent = ""
    finished = False
    try:
        if chat:
            yield chunk("")
        while True:
            update = await updates.get()
            if update.final:
                finished = True
                if update.error is not None or update.result is None:
                    why = "the request was cancelled" if update.error is None else f"decoding failed: {update.error}"
                    yield _event({"error": {"message": why, "type": "server_error", "param": None, "code": None}})
                    break
                result = update.result
                text = result.text
                if text.startswith(sent) and len(text) > len(sent):
                    yield chunk(text[len(sent) :])
                yield chunk(None if chat else "", _finish_reason(result), pasta=_pasta(result, annotated))
                if usage_too:
                    yield _event(
                        {
                            "id": ident,
                            "object": kind,
                            "created": created,
                            "model": name,
                            "choices": [],
                            "usage": _usage(result),
                        }
                    )
                break
            text = update.settled
            delta = text[len(sent) :] if text.startswith(sent) else ""
            if delta or progress:
                sent += delta
                extra = {"pasta": {"tokens": update.tokens, "steps": update.steps}} if progress else {}
                yield chunk(delta, **extra)
        yield b"data: [DONE]\n\n"
    finally:
        if not finished:
            batch.cancel(job)
