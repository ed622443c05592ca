"""A Hugging Face Hub-compatible file server on 127.0.0.1, for tests.

It serves repositories registered from local files and answers the requests the
real ``huggingface_hub`` client makes, so tests exercise the real client (and our
code on top of it) without a network::

    server = HFServer().start()
    server.add_file("owner/repo", "model.gguf", local_path)
    os.environ["HF_ENDPOINT"] = server.endpoint      # or use the ``hf_server`` fixture
    hf_hub_download("owner/repo", "model.gguf")
    server.stop()

Routes (model repositories only, ``repo_id`` is ``owner/name``):

* ``HEAD|GET /{repo}/resolve/{revision}/{path}`` - the file, with the headers the hub
  sends: ``ETag`` (quoted sha256 for LFS files, git blob sha1 otherwise),
  ``X-Repo-Commit``, ``X-Linked-Etag``/``X-Linked-Size`` for LFS files,
  ``Content-Length``, ``Accept-Ranges: bytes``. ``Range: bytes=a-b``, ``bytes=a-`` and
  ``bytes=-n`` answer 206 with ``Content-Range``; an unsatisfiable range answers 416.
* ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` - model info with
  ``siblings`` (sizes, blob ids and ``lfs`` when ``blobs=True`` is asked).
* ``POST /api/models/{repo}/paths-info/{rev}`` - form or JSON ``paths``.
* ``GET /api/models/{repo}/tree/{rev}[/{path}]`` - ``recursive`` and ``expand`` honoured.

Errors look like the hub's: 404 with ``X-Error-Code: RepoNotFound``,
``RevisionNotFound`` or ``EntryNotFound``; a gated repository answers 401
``GatedRepo`` and a private one 401 ``RepoNotFound`` unless the request carries
``Authorization: Bearer <server.token>``; any other token answers 401
"Invalid credentials in Authorization header", as the hub does.

LFS files are served directly rather than through a redirect to a CDN host: the
client then reads the same headers from the first response, which is all the
redirect would change for it.

Test hooks:

* ``server.bytes_served[path_in_repo]`` and ``server.total_bytes_served``: body bytes sent.
* ``server.requests``: every request as a :class:`RequestRecord` (method, URL path,
  ``Range`` header, status, bytes sent).
* ``server.fail_after(path, n)``: the NEXT transfer of ``path`` sends ``n`` body bytes and
  then drops the connection (a lost connection mid-download).
* ``server.corrupt(path)``: serve bytes that differ from the advertised sha256 (one
  byte in the middle of the file is flipped; size and headers are unchanged).
"""

from __future__ import annotations

import collections
import hashlib
import json
import random
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HFServer", "RequestRecord"]

# Files with these suffixes are stored in LFS on the hub; so is anything large.
_LFS_SUFFIXES = (".gguf", ".bin", ".safetensors", ".pt", ".pth", ".onnx", ".h5", ".msgpack", ".zip")
_LFS_MIN_SIZE = 10 * 1024 * 1024
_CHUNK = 256 * 1024
_LAST_MODIFIED = "2025-01-01T00:00:00.000Z"


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class _File:
    path: str
    local_path: Path
    lfs: bool
    _sha256: str | None = None

    @property
    def size(self) -> int:
        return self.local_path.stat().st_size

    @property
    def sha256(self) -> str:
        # Computed lazily: a test that only reads a header of a large sparse file
        # should not pay for hashing gigabytes unless it asks for the checksum.
        if self._sha256 is None:
            digest = hashlib.sha256()
            with open(self.local_path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    @property
    def pointer(self) -> bytes:
        return _lfs_pointer(self.sha256, self.size)

    @property
    def git_oid(self) -> str:
        return _git_blob_sha1(self.pointer if self.lfs else self.local_path.read_bytes())

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_oid

    def entry(self, commit: str, expand: bool) -> dict:
        """The hub's JSON for this file in tree and paths-info answers."""
        info: dict = {"type": "file", "oid": self.git_oid, "size": self.size, "path": self.path}
        if self.lfs:
            info["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        if expand:
            info["lastCommit"] = {"id": commit, "title": f"Upload {self.path}", "date": _LAST_MODIFIED}
        return info


@dataclass
class _Repo:
    repo_id: str
    gated: bool = False
    private: bool = False
    revisions: dict[str, dict[str, _File]] = field(default_factory=dict)

    def commit(self, revision: str) -> str:
        """A fixed 40-hex commit id per (repo, revision)."""
        return hashlib.sha1(f"{self.repo_id}@{revision}".encode()).hexdigest()

    def resolve_revision(self, revision: str) -> str | None:
        """Branch name or commit id -> branch name, as the hub accepts both."""
        if revision in self.revisions:
            return revision
        for name in self.revisions:
            if self.commit(name) == revision:
                return name
        return None


@dataclass
class RequestRecord:
    method: str
    path: str  # the URL path, unquoted
    range: str | None  # the Range header as sent
    status: int = 0
    bytes_sent: int = 0
    authorized: bool = False
    # Set when the handler is done with the request. The client can hold every byte before
    # the server thread records it, so readers wait on this rather than race the handler.
    finished: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)


# How a hub can answer wrongly (``HFServer.misbehave``): the hostile-hub corpus.
HOSTILE_MODES = ("html", "garbage", "garbage_json", "redirect_loop", "silent", "truncated", "error_500")


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class HFServer:
    """The server. ``start()`` binds a free port on 127.0.0.1 and serves in a thread."""

    def __init__(self, token: str = "hf_test_token_0123456789"):
        self.token = token
        self.repos: dict[str, _Repo] = {}
        self.requests: list[RequestRecord] = []
        self._bytes_served: collections.Counter[str] = collections.Counter()
        self._fail_after: dict[str, int] = {}
        self._corrupt: set[str] = set()
        self._misbehave: str | None = None
        self._release = threading.Event()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> HFServer:
        handler = type("_BoundHandler", (_Handler,), {"hub": self})
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        httpd.daemon_threads = True
        httpd.block_on_close = False  # idle keep-alive connections must not block stop()
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), name="hfserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> HFServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- content -------------------------------------------------------------------
    def add_file(
        self,
        repo_id: str,
        path_in_repo: str,
        local_path: str | Path,
        revision: str = "main",
        *,
        gated: bool | None = None,
        private: bool | None = None,
        lfs: bool | None = None,
        sha256: str | None = None,
    ) -> None:
        """Serve ``local_path`` as ``path_in_repo`` of ``repo_id`` at ``revision``.

        ``gated``/``private`` apply to the whole repository (None keeps what it has).
        ``lfs`` defaults to True for model-weight suffixes and files of 10 MiB or more.
        ``sha256`` may be given to skip hashing a large file (it is then trusted).
        """
        if repo_id.count("/") != 1:
            raise ValueError(f"repo_id must be 'owner/name', got {repo_id!r}")
        local_path = Path(local_path)
        if not local_path.is_file():
            raise FileNotFoundError(local_path)
        if lfs is None:
            lfs = path_in_repo.endswith(_LFS_SUFFIXES) or local_path.stat().st_size >= _LFS_MIN_SIZE
        with self._lock:
            repo = self.repos.setdefault(repo_id, _Repo(repo_id))
            if gated is not None:
                repo.gated = gated
            if private is not None:
                repo.private = private
            repo.revisions.setdefault(revision, {})[path_in_repo] = _File(path_in_repo, local_path, lfs, sha256)

    def commit_id(self, repo_id: str, revision: str = "main") -> str:
        """The 40-hex commit id the server reports for ``repo_id`` at ``revision``."""
        return self.repos[repo_id].commit(revision)

    # -- fault injection and counters -----------------------------------------------
    def fail_after(self, path_in_repo: str, n_bytes: int) -> None:
        """Cut the connection after ``n_bytes`` of the next transfer of ``path_in_repo``."""
        with self._lock:
            self._fail_after[path_in_repo] = n_bytes

    def corrupt(self, path_in_repo: str, enabled: bool = True) -> None:
        """Serve bytes that do not match the advertised sha256 (or stop doing so)."""
        with self._lock:
            (self._corrupt.add if enabled else self._corrupt.discard)(path_in_repo)

    def misbehave(self, mode: str | None) -> None:
        """Answer every request the wrong way (None: behave again). ``mode`` is one of
        ``HOSTILE_MODES``: what a captive portal, a broken proxy or a hostile server sends."""
        if mode is not None and mode not in HOSTILE_MODES:
            raise ValueError(f"unknown mode {mode!r}: one of {', '.join(HOSTILE_MODES)}")
        with self._lock:
            self._misbehave = mode
        if mode is None:
            self._release.set()  # let "silent" handlers go
        else:
            self._release.clear()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every request received so far has been fully handled and recorded."""
        with self._lock:
            pending = list(self.requests)
        for record in pending:
            if not record.finished.wait(timeout):
                raise TimeoutError(f"the test hub is still handling {record.method} {record.path}")

    @property
    def bytes_served(self) -> collections.Counter[str]:
        """Body bytes written per file, counted once every request so far is handled."""
        self.wait_idle()
        return self._bytes_served

    @property
    def total_bytes_served(self) -> int:
        return sum(self.bytes_served.values())

    def reset_counters(self) -> None:
        self.wait_idle()  # a request still being recorded would leak into the fresh counts
        with self._lock:
            self.requests.clear()
            self._bytes_served.clear()

    def file_requests(self, path_in_repo: str) -> list[RequestRecord]:
        """The resolve (download) requests for ``path_in_repo``."""
        self.wait_idle()
        return [r for r in self.requests if "/resolve/" in r.path and r.path.endswith("/" + path_in_repo)]

    # -- lookups used by the handler --------------------------------------------------
    def _lookup(self, repo_id: str, revision: str, authorization: str | None) -> tuple[_Repo, str]:
        repo = self.repos.get(repo_id)
        if authorization is not None and authorization != f"Bearer {self.token}":
            raise _HubError(401, None, "Invalid credentials in Authorization header")
        authorized = authorization is not None
        if repo is None or (repo.private and not authorized):
            # The hub does not tell a private repository from a missing one; without a
            # token it answers 401, with one 404.
            raise _HubError(404 if authorized else 401, "RepoNotFound", "Repository not found")
        if repo.gated and not authorized:
            raise _HubError(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in.",
            )
        branch = repo.resolve_revision(revision)
        if branch is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, branch


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """``(start, end_inclusive)``, None for the whole file, or "unsatisfiable"."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None  # no range, or several ranges: answer the whole file (RFC 9110 allows it)
    spec = header[len("bytes="):].strip()
    first, sep, last = spec.partition("-")
    try:
        if not sep:
            return None
        if first == "":  # suffix: the last n bytes
            n = int(last)
            if n <= 0:
                return "unsatisfiable"
            return max(size - n, 0), size - 1
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError:
        return None
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    hub: HFServer  # set on the bound subclass
    protocol_version = "HTTP/1.1"
    timeout = 30  # idle keep-alive connections close on their own

    def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
        pass

    # -- plumbing ------------------------------------------------------------------
    def _record(self) -> RequestRecord:
        record = RequestRecord(
            method=self.command,
            path=unquote(urlsplit(self.path).path),
            range=self.headers.get("Range"),
            authorized=self.headers.get("Authorization") == f"Bearer {self.hub.token}",
        )
        with self.hub._lock:
            self.hub.requests.append(record)
        return record

    def _send(self, record: RequestRecord, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        record.status = status
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            record.bytes_sent = len(body)

    def _send_json(self, record: RequestRecord, payload, headers: dict | None = None) -> None:
        body = json.dumps(payload).encode()
        self._send(record, 200, body, {"Content-Type": "application/json; charset=utf-8", **(headers or {})})

    def _send_error(self, record: RequestRecord, err: _HubError, extra: dict | None = None) -> None:
        headers = {"X-Error-Message": err.message, "Content-Type": "application/json", **(extra or {})}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._send(record, err.status, json.dumps({"error": err.message}).encode(), headers)

    def _hostile(self, record: RequestRecord, mode: str) -> None:
        if mode == "html":
            page = b"<!doctype html><html><body><h1>Sign in to the guest Wi-Fi</h1></body></html>"
            self._send(record, 200, page, {"Content-Type": "text/html; charset=utf-8"})
        elif mode == "garbage":
            self._send(record, 200, random.Random(0).randbytes(4096), {"Content-Type": "application/octet-stream"})
        elif mode == "garbage_json":
            self._send(record, 200, b'{"siblings": [' + b"\xff\xfe" * 64, {"Content-Type": "application/json"})
        elif mode == "redirect_loop":
            self._send(record, 302, b"", {"Location": self.path})
        elif mode == "silent":
            self.hub._release.wait(300)  # accept, then say nothing until the test ends
            self.close_connection = True
        elif mode == "truncated":
            record.status = 200
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b'[{"type": "file", "path": "model.gguf", "si')
            self.wfile.flush()
            self.close_connection = True
        elif mode == "error_500":
            self._send(record, 500, b"Internal Server Error", {"Content-Type": "text/plain"})

    def _route(self) -> None:
        record = self._record()
        raw_path = urlsplit(self.path).path
        segments = raw_path.strip("/").split("/")
        mode = self.hub._misbehave
        try:
            if mode is not None:
                self._hostile(record, mode)
            elif segments[:2] == ["api", "models"] and len(segments) >= 4:
                self._api(record, "/".join(segments[2:4]), segments[4:])
            elif len(segments) >= 5 and segments[2] == "resolve":
                repo_id = f"{unquote(segments[0])}/{unquote(segments[1])}"
                self._resolve(record, repo_id, unquote(segments[3]), unquote("/".join(segments[4:])))
            else:
                raise _HubError(404, None, f"Not Found: {raw_path}")
        except _HubError as err:
            self._send_error(record, err)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            record.finished.set()

    do_GET = do_HEAD = do_POST = _route

    # -- /api/models/... -------------------------------------------------------------
    def _api(self, record: RequestRecord, repo_id: str, rest: list[str]) -> None:
        query = parse_qs(urlsplit(self.path).query)
        auth = self.headers.get("Authorization")
        if self.command == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not rest or rest[0] == "revision":
            revision = unquote(rest[1]) if len(rest) > 1 else "main"
            repo, branch = self.hub._lookup(repo_id, revision, auth)
            self._send_json(record, self._model_info(repo, branch, _truthy(query.get("blobs"))))
        elif rest[0] == "paths-info" and len(rest) >= 2 and self.command == "POST":
            repo, branch = self.hub._lookup(repo_id, unquote(rest[1]), auth)
            paths, expand = _paths_info_request(self.headers.get("Content-Type", ""), body)
            self._send_json(record, self._paths_info(repo, branch, paths, expand))
        elif rest[0] == "tree" and len(rest) >= 2:
            repo, branch = self.hub._lookup(repo_id, unquote(rest[1]), auth)
            prefix = unquote("/".join(rest[2:])).strip("/")
            entries = self._tree(repo, branch, prefix, _truthy(query.get("recursive")), _truthy(query.get("expand")))
            self._send_json(record, entries)
        else:
            raise _HubError(404, None, f"Not Found: {record.path}")

    def _model_info(self, repo: _Repo, branch: str, blobs: bool) -> dict:
        siblings = []
        for f in sorted(repo.revisions[branch].values(), key=lambda f: f.path):
            sibling: dict = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.git_oid)
                if f.lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
            siblings.append(sibling)
        return {
            "_id": repo.commit("_id")[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.commit(branch),
            "lastModified": _LAST_MODIFIED,
            "private": repo.private,
            "gated": "auto" if repo.gated else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["gguf"],
            "library_name": "gguf",
            "createdAt": _LAST_MODIFIED,
            "siblings": siblings,
        }

    def _paths_info(self, repo: _Repo, branch: str, paths: list[str], expand: bool) -> list[dict]:
        files = repo.revisions[branch]
        dirs = _directories(files)
        out = []
        for p in paths:
            p = p.strip("/")
            if p in files:
                out.append(files[p].entry(repo.commit(branch), expand))
            elif p in dirs:
                out.append(_dir_entry(p))
            # Unknown paths are left out, as the hub does.
        return out

    def _tree(self, repo: _Repo, branch: str, prefix: str, recursive: bool, expand: bool) -> list[dict]:
        files = repo.revisions[branch]
        dirs = _directories(files)
        if prefix and prefix not in dirs:
            raise _HubError(404, "EntryNotFound", f"{prefix} does not exist on {branch}")
        base = prefix + "/" if prefix else ""
        entries = []
        for d in sorted(dirs):
            if d.startswith(base) and d != prefix and (recursive or "/" not in d[len(base):]):
                entries.append(_dir_entry(d))
        for path in sorted(files):
            if path.startswith(base) and (recursive or "/" not in path[len(base):]):
                entries.append(files[path].entry(repo.commit(branch), expand))
        return entries

    # -- /{repo}/resolve/{rev}/{path} --------------------------------------------------
    def _resolve(self, record: RequestRecord, repo_id: str, revision: str, path: str) -> None:
        repo, branch = self.hub._lookup(repo_id, revision, self.headers.get("Authorization"))
        f = repo.revisions[branch].get(path)
        commit_headers = {"X-Repo-Commit": repo.commit(branch)}
        if f is None:
            self._send_error(record, _HubError(404, "EntryNotFound", "Entry not found"), commit_headers)
            return
        size = f.size
        headers = {
            **commit_headers,
            "ETag": f'"{f.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{path.rsplit("/", 1)[-1]}"',
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(size)
        byte_range = _parse_range(self.headers.get("Range"), size)
        if byte_range == "unsatisfiable":
            self._send(record, 416, b"", {**headers, "Content-Range": f"bytes */{size}"})
            return
        if byte_range is None:
            start, end, status = 0, size - 1, 200
        else:
            start, end = byte_range
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        record.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        self._stream(record, f, path, start, length)

    def _stream(self, record: RequestRecord, f: _File, path: str, start: int, length: int) -> None:
        with self.hub._lock:
            cut_at = self.hub._fail_after.pop(path, None)
            corrupt = path in self.hub._corrupt
        flip_at = f.size // 2 if corrupt else -1
        limit = length if cut_at is None else min(cut_at, length)
        sent = 0
        with open(f.local_path, "rb") as src:
            src.seek(start)
            while sent < limit:
                chunk = src.read(min(_CHUNK, limit - sent))
                if not chunk:
                    break
                pos = start + sent
                if pos <= flip_at < pos + len(chunk):
                    i = flip_at - pos
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1:]
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    break
                sent += len(chunk)
                record.bytes_sent = sent
                with self.hub._lock:
                    self.hub._bytes_served[path] += len(chunk)
        if cut_at is not None and cut_at < length:
            # A lost connection: stop mid-body so the client sees a short read.
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in {"1", "true", "yes"}


def _paths_info_request(content_type: str, body: bytes) -> tuple[list[str], bool]:
    """``paths``/``expand`` from a form (what huggingface_hub sends) or a JSON body."""
    if content_type.startswith("application/json"):
        payload = json.loads(body or b"{}")
        paths = payload.get("paths", [])
        return ([paths] if isinstance(paths, str) else list(paths)), bool(payload.get("expand"))
    form = parse_qs(body.decode(), keep_blank_values=True)
    return form.get("paths", []), _truthy(form.get("expand"))


def _directories(files: dict[str, _File]) -> set[str]:
    dirs = set()
    for path in files:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    return dirs


def _dir_entry(path: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(f"tree {path}".encode()).hexdigest(), "size": 0, "path": path}

