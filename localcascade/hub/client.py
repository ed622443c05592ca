"""The HTTP client every hub request goes through: bounded in time and redirects, and checked in kind.

huggingface_hub's own client has no timeout (a server that accepts and never answers hangs the
listing forever) and takes any 200 answer as the hub's: a captive portal's HTML page or a proxy's
garbage then fails deep in a JSON parser. ``configure()`` installs a client that gives up on
silence, on a redirect loop, and on an API answer that is not JSON, each as one DownloadError.
"""

from __future__ import annotations

from localcascade.hub import hf_compat
from localcascade.errors import DownloadError

CONNECT_TIMEOUT_S = 10.0
# Between two reads of one answer: a download keeps bytes flowing, a listing answers at once.
READ_TIMEOUT_S = 15.0
MAX_REDIRECTS = 10

_configured = False


def configure() -> None:
    """Make huggingface_hub use the bounded, checked client (once per process)."""
    global _configured
    if _configured:
        return
    hf_compat.set_client_factory(_make_client)
    _configured = True


def _make_client():
    import httpx  # with huggingface_hub, at the first hub request only: it is slow to import

    hooks = {"request": [bound_in_time], "response": [check_answer]}
    hub_hook = hf_compat.request_event_hook()
    if hub_hook is not None:
        hooks["request"].append(hub_hook)
    return httpx.Client(
        event_hooks=hooks, follow_redirects=True, max_redirects=MAX_REDIRECTS,
        timeout=httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
    )


def bound_in_time(request) -> None:
    """Give every request a time limit: huggingface_hub passes ``timeout=None`` explicitly on some
    calls (the repository listing), which overrides a client's default and waits forever."""
    limits = dict(request.extensions.get("timeout") or {})
    defaults = {"connect": CONNECT_TIMEOUT_S, "read": READ_TIMEOUT_S, "write": READ_TIMEOUT_S,
                "pool": CONNECT_TIMEOUT_S}
    for key, value in defaults.items():
        if limits.get(key) is None:
            limits[key] = value
    request.extensions["timeout"] = limits


def check_answer(response) -> None:
    """An answer from the hub's API (``/api/...``) must be JSON: anything else is not the hub."""
    if response.status_code != 200 or "/api/" not in response.request.url.path:
        return
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        url = response.request.url
        host = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
        shown = kind or "no content type"
        raise DownloadError(f"{host} answered with {shown}, not the hub's JSON: is a captive portal, proxy "
                            "or wrong HF_ENDPOINT in the way?")
