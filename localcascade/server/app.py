"""The HTTP side: OpenAI's routes over the scheduler, errors in OpenAI's shape.

Routes: ``POST /v1/chat/completions`` (JSON or server-sent events),
``GET /v1/models``, ``GET /health``. With a server tool (``serve --tools python``)
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
from localcascade.errors import LocalCascadeError
from localcascade.server.http_errors import log, refused
from localcascade.server.generation import Generation, RoundEnded, ServerTool, offer_python, with_python
from localcascade.server.guard import BodyRefused, Guard, GuardSettings, UploadBudget, read_body
from localcascade.server.reply import AnswerFilter, openai_tool_calls
from localcascade.server.scheduler import Failed, QueueFull, Scheduler, Started, Unavailable
from localcascade.server.schema import ChatRequest, to_work
from localcascade.tools.loop import ToolCallFinished
from localcascade.tools.python_tool import NAME as PYTHON

DISCONNECT_POLL_S = 0.05


@dataclass(frozen=True)
class ServerSettings:
    model_id: str
    guard: GuardSettings = GuardSettings()
    retry_after_s: int = 2
    tool: ServerTool | None = None     # serve --tools python


def create_app(scheduler: Scheduler, settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="localcascade", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, settings=settings.guard)
    uploads = UploadBudget(settings.guard.upload_budget_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        # Unknown paths and methods too answer in OpenAI's shape.
        return _refused(request, err.status_code, str(err.detail), headers=getattr(err, "headers", None))

    @app.get("/health")
    async def health():
        # Not ok (503) when the decoder thread is dead or stuck: every request would wait on it.
        trouble = scheduler.liveness()
        body = {"status": "ok" if trouble is None else "error", "model": settings.model_id, **scheduler.status()}
        if trouble is not None:
            body["error"] = trouble
        return JSONResponse(body, status_code=200 if trouble is None else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [
            {"id": settings.model_id, "object": "model", "created": 0, "owned_by": "localcascade"}
        ]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        try:
            return await _chat(request, scheduler, settings, uploads)
        except BodyRefused as err:
            headers = {"Retry-After": str(settings.retry_after_s)} if err.status == 503 else None
            return _refused(request, err.status, err.message, code=err.code, headers=headers)
        except ClientDisconnect:
            log(f"{request.method} {request.url.path}: the client went away before its request was read",
                kind="disconnect")
            return Response(status_code=499)     # nobody receives it
        except Exception as err:  # noqa: BLE001 - one line in the log, a JSON error to the client
            return _refused(request, 500, f"internal error: {type(err).__name__}: {err}", kind="server_error")

    return app


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


def _parse(body: bytes) -> tuple[ChatRequest, object]:
    """(the request, its Work); ValidationError or LocalCascadeError for a bad one (run off the loop)."""
    req = ChatRequest.model_validate_json(body)
    return req, to_work(req)


async def _chat(request: Request, scheduler: Scheduler, settings: ServerSettings, uploads: UploadBudget):
    body = await read_body(request, settings.guard, uploads)
    try:
        req, work = await asyncio.to_thread(_parse, body)
    except ValidationError as err:
        message, param = _validation_message(err)
        return _refused(request, 400, message, param=param)
    except LocalCascadeError as err:
        return _refused(request, 400, str(err))
    del body

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
    reply = _Reply(settings.model_id, work, first, served is not None)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(_sse(reply, events, generation, watcher, include_usage, request),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    try:
        async for event in events:
            if isinstance(event, Failed):
                return _refused(request, event.status, event.message, event.kind, code=event.code)
            reply.take(event, generation)
            if isinstance(event, TurnStats):
                return JSONResponse(reply.completion())
        raise RuntimeError("the reply ended without its usage")
    finally:
        watcher.cancel()
        if not reply.finished:
            generation.cancel()


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
        self.filter = AnswerFilter(stop=work.stop, parse_tools=work.parse_tools)
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
            "completion_tokens_details": {"reasoning_tokens": s.thinking_tokens},
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


async def _sse(reply: _Reply, events, generation: Generation, watcher: asyncio.Task, include_usage: bool,
               request: Request):
    try:
        yield reply.chunk({"role": "assistant", "content": ""})
        async for event in events:
            if isinstance(event, Failed):
                log(f"{event.status} {request.method} {request.url.path} (mid-stream): {event.message}",
                    kind=str(event.status))
                yield _sse_line({"error": {"message": event.message, "type": event.kind, "param": None,
                                           "code": event.code}})
                break
            delta = reply.take(event, generation)
            if delta:
                yield reply.chunk(delta)
            if isinstance(event, TurnStats):
                yield reply.chunk({}, reply.finish_reason)
                if include_usage:
                    yield _sse_line({"id": reply.id, "object": "chat.completion.chunk", "created": reply.created,
                                     "model": reply.model_id, "choices": [], "usage": reply.usage()})
                break
        yield "data: [DONE]\n\n"
    except Exception as err:  # noqa: BLE001 - headers are sent: end the stream with an error event
        message = f"internal error: {type(err).__name__}: {err}"
        log(f"500 {request.method} {request.url.path} (mid-stream): {message}", kind="500")
        yield _sse_line({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
    finally:
        watcher.cancel()
        if not reply.finished:
            generation.cancel()      # the client went away mid-stream: free its sequence, kill its code
