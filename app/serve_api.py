"""The OpenAI-compatible HTTP API of `orchard serve` (FastAPI on uvicorn).

Routes: GET /health, GET /v1/models, POST /v1/chat/completions, POST /v1/completions, streaming
(server-sent events) or not. Every error is OpenAI's JSON error body with a 4xx status (a 5xx only
if the engine itself failed); the handlers never touch MLX (`ServeEngine` and its scheduler thread do).
"""

from __future__ import annotations

import hmac
import json
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.serve_engine import RequestError, ServeEngine
from app.serve_schema import ChatCompletionRequest, CompletionRequest, error_body, new_id, now, usage_body
from mlxmodels.scheduler import Busy, Closed
from mlxmodels.tools import ToolCallStream, parse_reply

RETRY_AFTER_SECONDS = 1
DISCONNECT_POLL_SECONDS = 0.5  # how often a non-streaming request checks that its client is still there


def error_response(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)


class _Guard:
    """Refuses a request before its route runs: a bad or too large Content-Length, a missing or
    wrong API key on /v1/. A plain ASGI middleware: FastAPI's `@app.middleware("http")` would pass
    every streamed chunk through its own task and memory stream, per token and per client (the
    event loop's time per chunk, docs/performance.md "Serving", run 6)."""

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body_bytes = app, api_key, max_body_bytes

    def refusal(self, headers: Headers, path: str) -> JSONResponse | None:
        declared = headers.get("content-length")
        if declared is not None and not declared.isdigit():
            return error_response(400, f"invalid Content-Length header: {declared!r}")
        if declared is not None and int(declared) > self.max_body_bytes:
            return error_response(413, f"the request body is larger than {self.max_body_bytes} bytes")
        if self.api_key is not None and path.startswith("/v1/"):
            given = headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
                return error_response(401, "invalid or missing API key (Authorization: Bearer KEY)",
                                      code="invalid_api_key")
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused = self.refusal(Headers(scope=scope), scope["path"])
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(engine: ServeEngine, api_key: str | None = None, max_body_bytes: int = 2 << 20,
               on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    app = FastAPI(title="Orchard", docs_url=None, redoc_url=None, openapi_url=None)
    if on_shutdown is not None:
        app.router.on_shutdown.append(on_shutdown)

    # -- limits, authentication, errors -------------------------------------------------------------

    app.add_middleware(_Guard, api_key=api_key, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        elif param:
            message = f"{param}: {message}"
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", kind="server_error")

    async def read_body(request: Request, model_class):
        """The body, bounded while it is read (a client may send no length or lie about it)."""
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > max_body_bytes:
                raise _TooLarge()
        try:
            raw = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestValidationError([{"type": "json_invalid", "loc": ("body",), "msg": "invalid JSON"}])
        if not isinstance(raw, dict):
            raise RequestValidationError([{"type": "dict_type", "loc": ("body",),
                                           "msg": "the request body must be a JSON object"}])
        return model_class.model_validate(raw)

    class _TooLarge(Exception):
        pass

    @app.exception_handler(_TooLarge)
    async def too_large(request: Request, exc: _TooLarge):
        return error_response(413, f"the request body is larger than {max_body_bytes} bytes")

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        return error_response(400, str(exc), param=exc.param, code=exc.code)

    from pydantic import ValidationError

    @app.exception_handler(ValidationError)
    async def invalid_body(request: Request, exc: ValidationError):
        return await invalid(request, RequestValidationError(exc.errors()))

    # -- routes ----------------------------------------------------------------------------------------

    @app.get("/health")
    async def health():
        scheduler = engine.scheduler
        return {"status": "ok", "model": engine.name, "running": scheduler.running,
                "waiting": max(scheduler.load - scheduler.running, 0), "peak_memory_gb": scheduler.peak_memory_gb}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(engine)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        if model_id != engine.name:
            return _unknown_model(model_id)
        return _model_card(engine)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_body(request, ChatCompletionRequest)
        if body.model != engine.name:
            return _unknown_model(body.model)
        prepared = await run_in_threadpool(engine.prepare_chat, body)
        return await _respond(engine, request, body, prepared, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await read_body(request, CompletionRequest)
        if body.model != engine.name:
            return _unknown_model(body.model)
        prepared = await run_in_threadpool(engine.prepare_completion, body)
        return await _respond(engine, request, body, prepared, chat=False)

    return app


def _model_card(engine: ServeEngine) -> dict:
    return {"id": engine.name, "object": "model", "created": 0, "owned_by": "orchard",
            "context_length": engine.context}


def _unknown_model(name: str) -> JSONResponse:
    return error_response(404, f"the model '{name}' does not exist (this server serves one model; "
                               "GET /v1/models lists it)", param="model", code="model_not_found")


async def _respond(engine: ServeEngine, http: Request, body, prepared, chat: bool):
    try:
        running = engine.start(prepared.request)
    except Busy as e:
        return error_response(429, f"the server is busy: {e}; retry later", kind="rate_limit_error",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    except Closed as e:
        return error_response(503, f"{e}; retry later", kind="server_error",
                              headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
    shape = _ChatShape(engine, body, prepared.tool_format) if chat else _TextShape(engine, body)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_events(shape, running, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    pieces, logprobs = [], []
    try:
        while True:
            output = await running.next(timeout=DISCONNECT_POLL_SECONDS)
            if output is None:
                if await http.is_disconnected():
                    return None  # nobody to answer; the request is cancelled below
                continue
            pieces.append(output.text)
            logprobs += output.logprobs or []
            if output.finish_reason is not None:
                break
    finally:
        running.cancel()
    if output.finish_reason == "error":
        return error_response(500, f"generation failed: {output.error}", kind="server_error")
    return JSONResponse(shape.whole("".join(pieces), logprobs, output))


async def _events(shape, running, include_usage: bool):
    """Server-sent events: one chunk per piece of text, the finish reason, usage if asked, [DONE]."""
    try:
        for chunk in shape.opening():
            yield _sse(chunk)
        while True:
            output = await running.next()
            if output.finish_reason == "error":
                yield _sse(error_body(f"generation failed: {output.error}", "server_error"))
                break
            for chunk in shape.chunks(output):
                yield _sse(chunk)
            if output.finish_reason is not None:
                if include_usage:
                    yield _sse(shape.usage_chunk(output.usage))
                break
        yield "data: [DONE]\n\n"
    finally:
        running.cancel()  # a client that left mid-stream frees its batch row now


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _ChatShape:
    """chat.completion / chat.completion.chunk bodies."""

    def __init__(self, engine: ServeEngine, body, tool_format=None):
        self.engine, self.body = engine, body
        self.id, self.created = new_id("chatcmpl"), now()
        self.tool_format = tool_format  # tools offered: calls are read from the reply
        self.calls = None if tool_format is None else ToolCallStream(tool_format)

    def _base(self, kind: str) -> dict:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.engine.name,
                "system_fingerprint": None}

    def _logprobs(self, items) -> dict | None:
        if self.body.logprob_count() is None:
            return None
        text = self.engine.token_text

        def entry(token, logprob):
            piece = text(token)
            return {"token": piece, "logprob": logprob, "bytes": list(piece.encode("utf-8"))}

        return {"content": [{**entry(i.token, i.logprob), "top_logprobs": [entry(t, lp) for t, lp in i.top]}
                            for i in items]}

    def opening(self):
        yield {**self._base("chat.completion.chunk"),
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None}]}

    def chunks(self, output) -> list[dict]:
        """The chunks for one output: its text, or with tools the content and tool-call deltas it
        completes (text that may begin a call is held back until it is clear)."""
        reason = _finish(output.finish_reason)
        if self.calls is None:
            deltas = [{"content": output.text}] if output.text else []
        else:
            deltas = self.calls.feed(output.text)
            if output.finish_reason is not None:
                deltas += self.calls.finish()
                if self.calls.calls and reason == "stop":
                    reason = "tool_calls"
        logprobs = self._logprobs(output.logprobs or [])
        if not deltas and (logprobs or reason):
            deltas = [{}]
        return [{**self._base("chat.completion.chunk"),
                 "choices": [{"index": 0, "delta": delta, "logprobs": logprobs if i == 0 else None,
                              "finish_reason": reason if i == len(deltas) - 1 else None}]}
                for i, delta in enumerate(deltas)]

    def usage_chunk(self, usage) -> dict:
        return {**self._base("chat.completion.chunk"), "choices": [], "usage": usage_body(usage)}

    def whole(self, text: str, logprobs: list, output) -> dict:
        message, reason = {"role": "assistant", "content": text}, _finish(output.finish_reason)
        if self.tool_format is not None:
            reply = parse_reply(self.tool_format, text)
            message["content"] = reply.content or (None if reply.tool_calls else "")
            if reply.tool_calls:
                message["tool_calls"] = [call.to_openai() for call in reply.tool_calls]
                reason = "tool_calls" if reason == "stop" else reason
        return {**self._base("chat.completion"),
                "choices": [{"index": 0, "message": message, "logprobs": self._logprobs(logprobs),
                             "finish_reason": reason}],
                "usage": usage_body(output.usage)}


class _TextShape:
    """text_completion bodies (the legacy completions API)."""

    def __init__(self, engine: ServeEngine, body):
        self.engine, self.body = engine, body
        self.id, self.created = new_id("cmpl"), now()
        self.offset = 0  # characters of completion text sent so far (logprobs' text_offset)

    def _base(self) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.engine.name,
                "system_fingerprint": None}

    def _logprobs(self, items, start: int) -> dict | None:
        if self.body.logprob_count() is None:
            return None
        text = self.engine.token_text
        tokens, offsets, at = [], [], start
        for i in items:
            tokens.append(text(i.token))
            offsets.append(at)
            at += len(tokens[-1])
        return {"tokens": tokens, "token_logprobs": [i.logprob for i in items],
                "top_logprobs": [{text(t): lp for t, lp in i.top} for i in items], "text_offset": offsets}

    def opening(self):
        return ()

    def chunks(self, output) -> list[dict]:
        if not (output.text or output.logprobs or output.finish_reason):
            return []
        logprobs = self._logprobs(output.logprobs or [], self.offset)
        self.offset += len(output.text)
        return [{**self._base(), "choices": [{"index": 0, "text": output.text, "logprobs": logprobs,
                                              "finish_reason": _finish(output.finish_reason)}]}]

    def usage_chunk(self, usage) -> dict:
        return {**self._base(), "choices": [], "usage": usage_body(usage)}

    def whole(self, text: str, logprobs: list, output) -> dict:
        return {**self._base(), "choices": [{"index": 0, "text": text, "logprobs": self._logprobs(logprobs, 0),
                                             "finish_reason": _finish(output.finish_reason)}],
                "usage": usage_body(output.usage)}


def _finish(reason: str | None) -> str | None:
    """OpenAI's finish reasons: "stop" (end of sequence or a stop string) and "length" (the chat
    shape turns "stop" into "tool_calls" when the reply made calls)."""
    return None if reason is None else ("length" if reason == "length" else "stop")
