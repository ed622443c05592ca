"""Running the server: a socket bound before the model loads, the decoding thread, uvicorn."""

from __future__ import annotations

import ipaddress
import socket

from localcascade.engine.session import Engine
from localcascade.errors import UsageError
from localcascade.server.app import ServerSettings, create_app
from localcascade.server.scheduler import Scheduler


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


def serve_forever(engine: Engine, listener: socket.socket, settings: ServerSettings, *, queue_size: int) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's graceful shutdown), then stop every reply in flight."""
    import uvicorn

    scheduler = Scheduler(engine, queue_size=queue_size).start()
    try:
        config = uvicorn.Config(create_app(scheduler, settings), log_level="warning", access_log=False,
                                lifespan="off", timeout_graceful_shutdown=2)
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        scheduler.close()
