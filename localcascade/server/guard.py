"""What a request must be before any route runs, and how its body is read.

A browser lets any web page the user visits send requests to 127.0.0.1, so the server refuses
what only a browser sends (the real clients, the openai package, curl, editors, send no Origin):

- ``Host`` must name this server (DNS rebinding: a page at evil.example, re-resolved to
  127.0.0.1, sends ``Host: evil.example``): an IP address, ``localhost``, the ``--host`` name,
  this machine's name, or an ``--allowed-host``; else 403.
- ``Origin``, when sent, must be one of ``--cors-origin``; else 403. A browser's preflight
  (``OPTIONS`` with ``Access-Control-Request-Method``) for an allowed origin is answered with the
  CORS headers, and every answer to that origin carries ``Access-Control-Allow-Origin``.
- A ``POST`` body must be declared ``Content-Type: application/json`` (a form or ``text/plain``
  is what a page can send without asking first); else 415.
- The API key (``/v1/``) and the body size by ``Content-Length`` (413), as before.

``read_body`` reads a body within the size cap, a deadline (408: a client trickling bytes holds a
connection and a buffer) and a budget of bytes buffered by all uploads at once (503 past it).
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import socket
from dataclasses import dataclass, field

from starlette.requests import Request

from localcascade.server.http_errors import refused

# A body must arrive within this: 8 MiB at 1 Mbit/s takes ~70 s.
BODY_TIMEOUT_S = 120.0
ANY = "*"
_PREFLIGHT_MAX_AGE_S = "600"


@dataclass(frozen=True)
class GuardSettings:
    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    host_names: frozenset[str] = frozenset({"localhost"})   # names a Host header may give (IPs always may)
    cors_origins: frozenset[str] = frozenset()              # origins a browser may call from; "*": any
    upload_budget_bytes: int = 64 * 1024 * 1024             # bytes of bodies buffered at once, all uploads
    body_timeout_s: float = BODY_TIMEOUT_S


def host_names(listen_host: str, extra: tuple[str, ...] = ()) -> frozenset[str]:
    """The names a ``Host`` header may use for this server (IP addresses need no listing)."""
    names = {"localhost", socket.gethostname(), listen_host, *extra}
    return frozenset(_normal_name(n) for n in names if n)


def origin_of(value: str) -> str:
    """An origin as browsers send it (``scheme://host[:port]``), for ``--cors-origin``; ValueError if not one."""
    from urllib.parse import urlsplit

    if value == ANY:
        return ANY
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{value!r} is not an origin (scheme://host[:port], as a browser sends it)")
    return f"{parts.scheme}://{parts.netloc.lower()}"


class Guard:
    """Plain ASGI middleware (so streaming and disconnects pass through untouched)."""

    def __init__(self, app, settings: GuardSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = _headers(scope)
        origin = headers.get("origin")
        allowed_origin = origin if origin is not None and self._origin_allowed(origin) else None
        if allowed_origin is not None:
            send = _with_cors(send, allowed_origin)
        refusal = self._check(scope, headers, origin, allowed_origin)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.settings.cors_origins
        return ANY in allowed or origin.lower() in allowed

    def _check(self, scope, headers: dict, origin: str | None, allowed_origin: str | None):
        settings = self.settings
        method, path = scope["method"], scope["path"]

        def no(status: int, message: str, kind: str = "invalid_request_error", **extra):
            return refused(method, path, status, message, kind, **extra)

        host = headers.get("host")
        if host is not None and not self._host_allowed(host):
            return no(403, f"Host {host[:100]!r} does not name this server (serve --allowed-host NAME allows "
                           "a name: this refusal stops DNS rebinding)", "permission_error", code="host_not_allowed")
        if origin is not None and allowed_origin is None:
            return no(403, f"requests from web pages at {origin[:100]!r} are not allowed (serve --cors-origin "
                           "ORIGIN allows one)", "permission_error", code="origin_not_allowed")
        if method == "OPTIONS" and allowed_origin is not None and "access-control-request-method" in headers:
            return _preflight(headers)
        if settings.api_key is not None and path.startswith("/v1/"):
            given = headers.get("authorization", "")
            token = given[7:].strip() if given[:7].lower() == "bearer " else ""
            if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), settings.api_key.encode()):
                return no(401, "invalid or missing API key (Authorization: Bearer KEY)",
                          "authentication_error", code="invalid_api_key")
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.max_body_bytes:
            return no(413, f"the request body is {length} bytes; at most {settings.max_body_bytes} are accepted")
        if method == "POST" and not _declared_json(headers.get("content-type", "")):
            given = headers.get("content-type")
            return no(415, f"the body must be sent as Content-Type: application/json, not "
                           f"{given[:100]!r}" if given else "the body must be sent as Content-Type: application/json")
        return None

    def _host_allowed(self, host: str) -> bool:
        names = self.settings.host_names
        if ANY in names:
            return True
        name = _host_name(host)
        if name is None:
            return False
        try:
            ipaddress.ip_address(name)
            return True          # an address is no name a page's DNS can move
        except ValueError:
            return name in names


@dataclass
class UploadBudget:
    """Bytes held by request bodies being read at once; past ``limit``, an upload is refused."""

    limit: int
    held: int = field(default=0)

    def take(self, n: int) -> bool:
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


class BodyRefused(Exception):
    """The body was not read: ``status`` and ``message`` say why (413, 408, 503)."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


async def read_body(request: Request, settings: GuardSettings, budget: UploadBudget) -> bytes:
    """The request's body, within the size cap, the deadline and the upload budget (BodyRefused);
    starlette's ``ClientDisconnect`` when the client goes away."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > settings.max_body_bytes:
                    raise BodyRefused(413, f"the request body is larger than {settings.max_body_bytes} bytes")
                if not budget.take(len(chunk)):
                    size -= len(chunk)
                    raise BodyRefused(503, "the server is reading as many request bodies as it holds at once; "
                                           "retry later", "uploads_busy")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyRefused(408, f"the request body did not arrive within {settings.body_timeout_s:.0f} s") from None
    finally:
        budget.give(size)
    return b"".join(chunks)


def _headers(scope) -> dict[str, str]:
    """The request's headers by lower-case name (the first of repeated ones)."""
    found: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        found.setdefault(key.decode("latin-1").lower(), value.decode("latin-1"))
    return found


def _normal_name(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


def _host_name(host: str) -> str | None:
    """The name in a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), or None if malformed."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        if end < 0 or (host[end + 1:] and not (host[end + 1] == ":" and host[end + 2:].isdigit())):
            return None
        return host[1:end].lower()
    name, colon, port = host.rpartition(":")
    if not colon:
        name = host
    elif not port.isdigit():
        return None
    return _normal_name(name) or None


def _declared_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _preflight(headers: dict):
    from starlette.responses import Response

    requested = headers.get("access-control-request-headers", "")
    return Response(status_code=204, headers={
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": requested[:1000] or "Authorization, Content-Type",
        "Access-Control-Max-Age": _PREFLIGHT_MAX_AGE_S,
    })


def _with_cors(send, origin: str):
    async def sending(message) -> None:
        if message["type"] == "http.response.start":
            message = dict(message)
            message["headers"] = list(message.get("headers", ())) + [
                (b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        await send(message)
    return sending
