"""Running the server: a socket bound before the model loads, the decoding thread, uvicorn.

uvicorn holds every connection it accepts for as long as the client likes unless told
otherwise, so the limits are set here: request headers must be complete within
``HEADER_TIMEOUT_S`` of a connection's opening (or of its previous reply), an idle kept-alive
connection is closed after ``KEEP_ALIVE_S``, a request's headers may hold ``MAX_HEADER_BYTES`` (431),
and at most ``max_connections`` are open at once (past it, the oldest connection still waiting for
its request is closed to make room, or the new one when every connection is serving a request).
Bodies have their own deadline and budget (``guard.read_body``). uvicorn's and asyncio's log
lines (refused connections, the ``accept()`` errors at the file-descriptor limit) come out as
one line each, no traceback, at most one a second for each source.

SIGINT or SIGTERM stops the server gracefully: no new connection is taken, every reply in
flight ends at once (a stream with an error event and ``[DONE]``, a plain request with a 503),
the connections get ``SHUTDOWN_GRACE_S`` to finish, and ``serve`` says one line and exits 0.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import resource
import signal
import socket

from localcascade.engine.session import Engine
from localcascade.errors import UsageError
from localcascade.server.app import ServerSettings, create_app
from localcascade.server.http_errors import log as _log
from localcascade.server.scheduler import Scheduler

HEADER_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_HEADER_BYTES = 16 * 1024          # h11's buffer for a request line and headers
MAX_CONNECTIONS = 256
# asyncio accepts up to the listen backlog's count of connections in one go before any is closed,
# and at EMFILE it logs and reschedules itself once per attempt (thousands a second, the flood of
# tracebacks): the cap leaves room for a whole burst, so the descriptor limit is never met.
ACCEPT_BURST = 64
FD_RESERVE = 64 + ACCEPT_BURST        # descriptors left for the model, the sandbox, the log, a burst
SHUTDOWN_GRACE_S = 5
SHUTDOWN_MESSAGE = "the server is shutting down"


def listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: {err.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(listener: socket.socket) -> str:
    host, port = listener.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def connection_cap() -> int:
    """How many connections may be open at once: ``MAX_CONNECTIONS``, or fewer when the process's
    file-descriptor limit (raised to its hard limit first) would not hold them and the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = MAX_CONNECTIONS * 4 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
            soft = max(soft, want)
    return max(1, min(MAX_CONNECTIONS, soft - FD_RESERVE))


def serve_forever(engine: Engine, listener: socket.socket, settings: ServerSettings, *, queue_size: int,
                  max_connections: int | None = None) -> str | None:
    """Serve until SIGINT/SIGTERM; the name of the signal that stopped it (None if none did)."""
    import uvicorn

    _quiet_logs()
    scheduler = Scheduler(engine, queue_size=queue_size).start()
    try:
        config = uvicorn.Config(
            create_app(scheduler, settings), log_config=None, log_level="warning", access_log=False,
            lifespan="off", http=_protocol(max_connections or connection_cap()), timeout_keep_alive=KEEP_ALIVE_S,
            backlog=ACCEPT_BURST, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        )
        server = _server(config, lambda: scheduler.drain(SHUTDOWN_MESSAGE))
        server.run(sockets=[listener])
        return signal.Signals(server.stopped_by).name if server.stopped_by is not None else None
    finally:
        scheduler.close()


class _LogLine(logging.Handler):
    """uvicorn's and asyncio's records as one rate-limited line each, without the traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage().splitlines()[0] if record.getMessage() else record.name
            if record.exc_info and record.exc_info[1] is not None:
                err = record.exc_info[1]
                message += f": {type(err).__name__}: {err}"
            _log(message, kind=f"{record.name}:{record.msg if isinstance(record.msg, str) else ''}")
        except Exception:  # noqa: BLE001 - logging must never raise into the server
            pass


def _quiet_logs() -> None:
    handler = _LogLine(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "asyncio"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _server(config, on_stop):
    """uvicorn's Server, which on a stop signal first ends the replies in flight (``on_stop``) and
    does not raise the signal again once stopped (the CLI says one line and exits)."""
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by: int | None = None

        def handle_exit(self, sig, frame) -> None:
            if self.stopped_by is None:
                self.stopped_by = sig
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets=None) -> None:
            on_stop()       # on the event loop: every reply in flight ends now, the streams say why
            await super().shutdown(sockets)

        @contextlib.contextmanager
        def capture_signals(self):
            from uvicorn.server import HANDLED_SIGNALS

            original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server(config)


def _protocol(max_connections: int):
    """uvicorn's h11 protocol with a deadline on request headers and the connection cap enforced
    at accept (uvicorn's own, ``limit_concurrency``, answers a 503 only once a request's headers have
    come, and holds the connections that never send one)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Protocol(H11Protocol):
        _header_timer = None
        _opened_at = 0.0
        _header_bytes = 0

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._opened_at = self.loop.time()
            open_ = [c for c in self.connections if not c.transport.is_closing()]
            if len(open_) > max_connections:
                # At the cap, the oldest connection still waiting for its request makes room: idle
                # and slow-header sockets (slowloris) cannot lock a real client out; only when
                # every connection is serving a request is the new one refused.
                waiting = [c for c in open_ if c is not self and c._waiting_for_request()]
                oldest = min(waiting, key=lambda c: c._opened_at, default=None)
                _log(f"at the cap of {max_connections} connections: "
                     + ("closed the oldest one still waiting for its request" if oldest else "refused a new one"),
                     kind="connections")
                if oldest is None:
                    transport.abort()
                    return
                oldest.transport.abort()
            self._arm_header_timer()

        def _waiting_for_request(self) -> bool:
            return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                if self._header_timer is None:
                    self._arm_header_timer()        # a new request on a kept-alive connection
                # h11 bounds only a request it has not yet seen whole: headers that arrive in one
                # read are counted here, so the cap holds however they come.
                end = data.find(b"\r\n\r\n")
                self._header_bytes += len(data) if end < 0 else end     # the body that may follow is not counted
                if self._header_bytes > MAX_HEADER_BYTES:
                    _log(f"refused a request whose headers exceed {MAX_HEADER_BYTES // 1024} KiB", kind="headers")
                    if not self.transport.is_closing():
                        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                             b"content-length: 0\r\nconnection: close\r\n\r\n")
                        self.transport.close()
                    return
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._disarm_header_timer()
                self._header_bytes = 0

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(HEADER_TIMEOUT_S, self._headers_too_slow)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                _log(f"closed a connection that sent no complete request within {HEADER_TIMEOUT_S:.0f} s",
                     kind="header-timeout")
                self.transport.abort()

    return Protocol
