"""The HTTP side: OpenAI's routes over the scheduler, errors in OpenAI's shape.

Routes: ``POST /v1/chat/completions`` (JSON or server-sent events),
``POST /v1/responses`` (OpenAI's Responses API, see responses.py), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /health``. With a server tool (``serve --tools python``)
the code the model runs is reported as ``message.tool_results`` (streaming: one
``delta.tool_results`` per call), each entry shaped as ``ask --json``'s ``tool_calls``. Every failure is answered as
``{"error": {"message", "type", "param", "code"}}`` with its status and logged
as one line on stderr; no traceback ever reaches a client or the log. What a request must be
before it reaches a route (host, origin, key, size, content type) is ``guard``'s. Parsing a
body runs on a worker thread, not on the event loop that answers every other client.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from localcascade.engine.events import AnswerText, ThinkingText, TurnStats
from localcascade.errors import LocalCascadeError, OptionError
from localcascade.server.generation import Generation, RoundEnded, ServerTool, offer_python, with_python
from localcascade.server.guard import BodyRefused, Guard, GuardSettings, UploadBudget, read_body
from localcascade.server.http_errors import error_message, log, refused
from localcascade.server.reply import AnswerFilter, openai_tool_calls
from localcascade.server.responses import (RESPONSES_FIELDS, ResponsesRequest, ResponseStore, ResponseWriter,
                                           conversation, to_chat)
from localcascade.server.scheduler import Failed, QueueFull, Scheduler, Started, Unavailable
from localcascade.server.schema import ChatRequest, option_field, quoted, to_work
from localcascade.tools.loop import ToolCallFinished
from localcascade.tools.python_tool import NAME as PYTHON

DISCONNECT_POLL_S = 0.05


@dataclass(frozen=True)
class ServerSettings:
    model_id: str
    guard: GuardSettings = GuardSettings()
    retry_after_s: int = 2
    tool: ServerTool | None = None     # serve --tools python
    tools_shown: bool = True           # the chat template lists tools to the model (checked at start)
    call_tokens: bool = True           # <tool_call> / </tool_call> are tokens of the model's vocabulary


def create_app(scheduler: Scheduler, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="localcascade", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, settings=settings.guard)
    uploads = UploadBudget(settings.guard.upload_budget_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        # Unknown paths and methods too answer in OpenAI's shape, naming what is served.
        message = str(err.detail)
        if err.status_code in (404, 405):
            served = ", ".join(f"{method} {path}" for path, method in _served_routes(app))
            what = "no route" if err.status_code == 404 else "method not allowed for"
            path = request.url.path
            path = path if len(path) <= 200 else path[:200] + "..."
            message = f"{what} {request.method} {path}; this server serves {served}"
        return _refused(request, err.status_code, message, headers=getattr(err, "headers", None))

    @app.get("/health")
    async def health():
        # Not ok (503) when the decoder thread is dead or stuck: every request would wait on it.
        trouble = scheduler.liveness()
        body = {"status": "ok" if trouble is None else "error", "model": settings.model_id, **scheduler.status()}
        if trouble is not None:
            body["error"] = trouble
        return JSONResponse(body, status_code=200 if trouble is None else 503)

    model = {"id": settings.model_id, "object": "model", "created": 0, "owned_by": "localcascade"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(request: Request, model_id: str):
        if model_id != settings.model_id:
            return _refused(request, 404, f"The model {quoted(model_id)} does not exist (this server serves "
                                          f"{quoted(settings.model_id)})", param="model", code="model_not_found")
        return model

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await _answer(request, settings, _chat(request, scheduler, settings, uploads))

    store = ResponseStore()

    @app.post("/v1/responses")
    async def responses(request: Request):
        return await _answer(request, settings, _responses(request, scheduler, settings, store, uploads))

    return app


def _served_routes(app: FastAPI) -> list[tuple[str, str]]:
    """(path, method) of each route, as a client would write them."""
    return [(route.path.replace(":path}", "}"), method) for route in app.routes
            for method in sorted(getattr(route, "methods", None) or ()) if method != "HEAD"]


async def _answer(request: Request, settings: ServerSettings, handling):
    """Await a route's handling: a refused body is its 4xx/503, a client gone before its request was
    read one quiet log line, any other failure one log line and a 500."""
    try:
        return await handling
    except BodyRefused as err:
        headers = {"Retry-After": str(settings.retry_after_s)} if err.status == 503 else None
        return _refused(request, err.status, err.message, code=err.code, headers=headers)
    except ClientDisconnect:
        log(f"{request.method} {request.url.path}: the client went away before its request was read",
            kind="disconnect")
        return Response(status_code=499)     # nobody receives it
    except Exception as err:  # noqa: BLE001 - one line in the log, a JSON error to the client
        return _refused(request, 500, f"internal error: {type(err).__name__}: {err}", kind="server_error")


def _validation_message(err: ValidationError) -> tuple[str, str | None]:
    """One line for the first problem in a request body, and the field it concerns."""
    first = err.errors(include_url=False)[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON in the request body: {first.get('msg', '')}", None
    loc = ".".join(str(part) for part in first.get("loc", ()))
    more = len(err.errors()) - 1
    return f"{loc or 'body'}: {first.get('msg', 'invalid')}" + (f" (and {more} more)" if more else ""), loc or None


def _refused(request: Request, status: int, message: str, kind: str = "invalid_request_error", **extra) -> JSONResponse:
    return refused(request.method, request.url.path, status, message, kind, **extra)


async def _chat(request: Request, scheduler: Scheduler, settings: ServerSettings, uploads: UploadBudget):
    body = await read_body(request, settings.guard, uploads)
    try:
        req = await asyncio.to_thread(ChatRequest.model_validate_json, body)   # off the event loop
    except ValidationError as err:
        message, param = _validation_message(err)
        return _refused(request, 400, message, param=param)
    del body     # up to --max-body of it: not held for the whole reply
    opened = await _open(request, scheduler, settings, req)
    if not isinstance(opened, _Opened):
        return opened
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _streaming(_sse(opened, _ChatChunks(opened.reply, include_usage), request))
    finished = await _finish(opened, request)
    return finished if isinstance(finished, JSONResponse) else JSONResponse(finished.completion())


async def _responses(request: Request, scheduler: Scheduler, settings: ServerSettings, store: ResponseStore,
                     uploads: UploadBudget):
    body = await read_body(request, settings.guard, uploads)
    try:
        req = await asyncio.to_thread(ResponsesRequest.model_validate_json, body)   # off the event loop
        messages = conversation(req, store)
        chat = to_chat(req, messages)
    except ValidationError as err:
        message, param = _validation_message(err)
        return _refused(request, 400, message, param=param)
    except LocalCascadeError as err:
        return _refused(request, 400, error_message(err))
    opened = await _open(request, scheduler, settings, chat, RESPONSES_FIELDS)
    if not isinstance(opened, _Opened):
        return opened
    writer = ResponseWriter(req, opened.reply, messages, store)
    if req.stream:
        return _streaming(_sse(opened, writer, request))
    finished = await _finish(opened, request)
    return finished if isinstance(finished, JSONResponse) else JSONResponse(writer.finished())


@dataclass
class _Opened:
    """A request the scheduler took: its reply being assembled and the events that build it."""

    reply: "_Reply"
    events: object            # the Generation's async iterator, past its Started
    generation: Generation
    watcher: asyncio.Task     # cancels the generation when the client goes away


async def _open(request: Request, scheduler: Scheduler, settings: ServerSettings, req: ChatRequest,
                renamed: dict[str, str] | None = None):
    """Submit ``req`` and wait for it to start: an _Opened, or the error response to send.
    ``renamed``: the client's names for the chat request's fields (the Responses API's)."""
    try:
        work = await asyncio.to_thread(to_work, req, call_tokens=settings.call_tokens)   # stop strings, grammars
    except OptionError as err:     # a generation option outside its limits: named as the client sent it
        field = option_field(err.field, req)
        field = (renamed or {}).get(field, field)
        return _refused(request, 400, err.naming(field), param=field)
    except LocalCascadeError as err:
        return _refused(request, 400, error_message(err))
    if work.forced_call is not None and not settings.tools_shown:
        return _refused(request, 400, "tool_choice forces a tool call, but this model's chat template does not "
                                      "show tools to the model (serve with --chat-template FILE that renders them)",
                        param="tool_choice")

    served = settings.tool if settings.tool is not None and offer_python(work, req.tool_choice) else None
    if served is not None:
        work = with_python(work)
    generation = Generation(scheduler, work, served)
    try:
        generation.submit()
    except QueueFull:
        return _refused(request, 503, "the server is busy: every conversation slot and the queue are full; retry later",
                        kind="server_error", code="queue_full", headers={"Retry-After": str(settings.retry_after_s)})
    except Unavailable as err:
        return _refused(request, 503, str(err), kind="server_error", code="unavailable")
    watcher = asyncio.create_task(_watch_disconnect(request, generation))
    events = generation.events()
    try:
        first = await events.__anext__()
    except BaseException:
        watcher.cancel()
        generation.cancel()
        raise
    if isinstance(first, Failed):
        watcher.cancel()
        return _refused(request, first.status, first.message, first.kind, code=first.code)
    return _Opened(_Reply(settings.model_id, work, first, served is not None), events, generation, watcher)


async def _finish(opened: _Opened, request: Request):
    """Run the reply to its end (not streaming): the finished _Reply, or the error response."""
    reply, generation = opened.reply, opened.generation
    try:
        async for event in opened.events:
            if isinstance(event, Failed):
                return _refused(request, event.status, event.message, event.kind, code=event.code)
            reply.take(event, generation)
            if isinstance(event, TurnStats):
                return reply
        raise RuntimeError("the reply ended without its usage")
    finally:
        opened.watcher.cancel()
        if not reply.finished:
            generation.cancel()


def _streaming(lines) -> StreamingResponse:
    return StreamingResponse(lines, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _watch_disconnect(request: Request, generation: Generation) -> None:
    """Stop the reply as soon as its client goes away (queued, evaluating, generating or running code)."""
    while not generation.cancelled:
        if await request.is_disconnected():
            generation.cancel()
            return
        await asyncio.sleep(DISCONNECT_POLL_S)


class _Reply:
    """One reply being assembled from engine events: the deltas to stream and the final message."""

    def __init__(self, model_id: str, work, started: Started, runs_python: bool = False) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model_id = model_id
        self.started = started
        self.filter = AnswerFilter(stop=work.stop, parse_tools=work.parse_tools, max_calls=work.max_calls)
        self.reasoning: list[str] = []
        self.calls: list[dict] = []
        self.tool_results: list[dict] = []     # the python calls the server ran (or refused)
        self._new_round = False
        # Calls to the server's own python are never the client's to answer.
        self.hidden = {PYTHON} if runs_python else set()
        self.stats: TurnStats | None = None
        self.finished = False

    def take(self, event, generation: Generation) -> dict | None:
        """Fold ``event`` in; the delta it adds for a streaming client, or None."""
        if isinstance(event, ThinkingText):
            text = event.text
            if self._new_round and self.reasoning:
                text = "\n\n" + text         # each round's thought starts afresh, as in ask
            self._new_round = False
            self.reasoning.append(text)
            return {"reasoning_content": text}
        if isinstance(event, AnswerText):
            shown = self.filter.feed(event.text)
            if self.filter.stopped:
                generation.stop_round()     # a stop string: nothing after it is wanted
            return {"content": shown} if shown else None
        if isinstance(event, RoundEnded):
            self._new_round = True
            rest, _ = self.filter.finish()     # the python call it held: reported as tool_results
            return {"content": rest} if rest else None
        if isinstance(event, ToolCallFinished):
            entry = event.result.to_dict()
            self.tool_results.append(entry)
            return {"tool_results": [dict(entry, index=len(self.tool_results) - 1)]}
        if isinstance(event, TurnStats):
            self.stats = event
            self.finished = True
            rest, calls = self.filter.finish()
            self.calls = openai_tool_calls([c for c in calls if c.name not in self.hidden])
            delta: dict = {}
            if rest:
                delta["content"] = rest
            if self.calls:
                delta["tool_calls"] = [dict(c, index=i) for i, c in enumerate(self.calls)]
            return delta or None
        return None

    @property
    def finish_reason(self) -> str:
        if self.calls:
            return "tool_calls"
        if self.stats is not None and self.stats.stop_reason == "length" and not self.filter.stopped:
            return "length"
        return "stop"

    def usage(self) -> dict:
        s = self.stats
        return {
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "total_tokens": s.prompt_tokens + s.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": s.prompt_tokens - s.evaluated_tokens},
            # OpenAI's names for predicted tokens the reply kept and threw away: here, the n-gram drafts.
            "completion_tokens_details": {"reasoning_tokens": s.thinking_tokens,
                                          "accepted_prediction_tokens": s.accepted_tokens,
                                          "rejected_prediction_tokens": s.drafted_tokens - s.accepted_tokens},
            "evaluated_prompt_tokens": s.evaluated_tokens,
        }

    def completion(self) -> dict:
        message: dict = {"role": "assistant", "content": self.filter.content or (None if self.calls else "")}
        reasoning = "".join(self.reasoning).strip()
        if reasoning:
            message["reasoning_content"] = reasoning
        if self.calls:
            message["tool_calls"] = self.calls
        if self.tool_results:
            message["tool_results"] = self.tool_results
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
                "usage": self.usage()}

    def chunk(self, delta: dict, finish_reason: str | None = None) -> str:
        data = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}
        return _sse_line(data)


def _sse_line(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _ChatChunks:
    """The server-sent events of a streamed chat completion (see _sse for the calls)."""

    def __init__(self, reply: _Reply, include_usage: bool) -> None:
        self.reply = reply
        self.include_usage = include_usage

    def start(self) -> list[str]:
        return [self.reply.chunk({"role": "assistant", "content": ""})]

    def delta(self, delta: dict) -> list[str]:
        return [self.reply.chunk(delta)]

    def end(self) -> list[str]:
        reply = self.reply
        lines = [reply.chunk({}, reply.finish_reason)]
        if self.include_usage:
            lines.append(_sse_line({"id": reply.id, "object": "chat.completion.chunk", "created": reply.created,
                                    "model": reply.model_id, "choices": [], "usage": reply.usage()}))
        return lines

    def failed(self, message: str, kind: str, code: str | None) -> list[str]:
        return [_sse_line({"error": {"message": message, "type": kind, "param": None, "code": code}})]

    def close(self) -> list[str]:
        return ["data: [DONE]\n\n"]


async def _sse(opened: _Opened, render, request: Request):
    """Stream the reply's events as ``render`` (start, delta, end, failed, close) writes them."""
    reply, generation = opened.reply, opened.generation
    try:
        for line in render.start():
            yield line
        async for event in opened.events:
            if isinstance(event, Failed):
                log(f"{event.status} {request.method} {request.url.path} (mid-stream): {event.message}",
                    kind=str(event.status))
                for line in render.failed(event.message, event.kind, event.code):
                    yield line
                break
            delta = reply.take(event, generation)
            for line in render.delta(delta) if delta else ():
                yield line
            if isinstance(event, TurnStats):
                for line in render.end():
                    yield line
                break
        for line in render.close():
            yield line
    except Exception as err:  # noqa: BLE001 - headers are sent: end the stream with an error event
        message = f"internal error: {type(err).__name__}: {err}"
        log(f"500 {request.method} {request.url.path} (mid-stream): {message}", kind="500")
        for line in render.failed(message, "server_error", None):
            yield line
    finally:
        opened.watcher.cancel()
        if not reply.finished:
            generation.cancel()      # the client went away mid-stream: free its sequence, kill its code
