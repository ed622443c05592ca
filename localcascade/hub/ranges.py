"""The first bytes of a hub file, read with HTTP range requests, never the weights.

The header reader (gguf_header) asks for a file's metadata once (``head``: where it lives, its
ETag, commit and size) and then for byte ranges as far as the header goes (``range_fetcher``),
through huggingface_hub's own session, endpoint and token. Failures come out as huggingface_hub /
httpx errors; the caller maps them (hub_errors) with the file's hf:// address. huggingface_hub
and httpx are imported at the first read: importing them costs ~0.3 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from localcascade import settings
from localcascade.hub import hf_compat
from localcascade.hub import client as hub_http
from localcascade.model.spec import HubFile

FETCH_ATTEMPTS = 3  # per range request, for dropped connections and timeouts


@dataclass
class RemoteMeta:
    url: str  # resolve URL pinned at the commit when the hub gave one
    etag: str | None
    commit: str | None
    size: int | None


def head(hub: HubFile) -> RemoteMeta:
    """Where ``hub`` lives and what it is now (one HEAD request)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    hub_http.configure()
    endpoint = settings.hf_endpoint()
    url = hf_hub_url(hub.repo_id, hub.path, revision=hub.revision, endpoint=endpoint)
    meta = get_hf_file_metadata(url, endpoint=endpoint)
    pinned = (hf_hub_url(hub.repo_id, hub.path, revision=meta.commit_hash, endpoint=endpoint)
              if meta.commit_hash else url)
    return RemoteMeta(pinned, meta.etag, meta.commit_hash, meta.size)


def range_fetcher(url: str) -> Callable[[int, int], bytes]:
    """``fetch(offset, n)``: up to ``n`` bytes of ``url`` from ``offset``, asked again on a dropped connection."""
    import httpx
    from huggingface_hub import constants

    hub_http.configure()

    def fetch_once(offset: int, n: int) -> bytes:
        headers = {**hf_compat.build_hf_headers(), "Range": f"bytes={offset}-{offset + n - 1}",
                   "Accept-Encoding": "identity"}
        # huggingface_hub's session has no timeout of its own: a stalled server must not hang us.
        with hf_compat.get_session().stream("GET", url, headers=headers,
                                            timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT) as response:
            hf_compat.hf_raise_for_status(response)
            skip = offset if response.status_code == 200 else 0  # the server ignored the range
            chunks, have = [], 0
            for chunk in response.iter_bytes():
                if skip:
                    dropped = min(skip, len(chunk))
                    chunk, skip = chunk[dropped:], skip - dropped
                chunks.append(chunk)
                have += len(chunk)
                if have >= n:
                    break  # leaving the block closes the stream: never read the weights
        return b"".join(chunks)[:n]

    def fetch(offset: int, n: int) -> bytes:
        for attempt in range(FETCH_ATTEMPTS):
            try:
                return fetch_once(offset, n)
            except httpx.TransportError:  # a dropped connection or a timeout: ask again
                if attempt == FETCH_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    return fetch
