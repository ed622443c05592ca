"""What a failed hub request means, in one line: huggingface_hub / httpx / OS errors to ours.

Every hub request (listings, downloads, header range reads) goes through ``hub_errors(...)``, so a
gated repository, a missing file or a silent server reads the same whichever command met it.
huggingface_hub and httpx are imported only when a failure is mapped (importing them costs ~0.3 s).
"""

from __future__ import annotations

import errno

from localcascade import settings
from localcascade.errors import (
    AuthError,
    DiskSpaceError,
    DownloadError,
    LocalCascadeError,
    ModelNotFoundError,
    OfflineError,
)

_LOGIN = "log in with `hf auth login` or set HF_TOKEN"


class EntryMissingError(ModelNotFoundError):
    """The repository is there but the file is not (for a split set: a missing shard)."""


class RepoNotFoundOrPrivateError(AuthError, ModelNotFoundError):
    """The hub answered 401 without a token: the repository does not exist, or it is private."""


class hub_errors:
    """Turn a failure inside the block into our one-line error; ``uri`` (a hub file's hf://
    address) starts the line when given."""

    def __init__(self, repo: str | None, path: str | None = None, *, revision: str | None = None,
                 uri: str | None = None):
        self.repo, self.path, self.revision, self.uri = repo, path, revision, uri

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            return False
        mapped = hub_error(exc, repo=self.repo, path=self.path, revision=self.revision, uri=self.uri)
        if mapped is None:
            return False
        raise mapped from exc


def hub_error(exc: BaseException, *, repo: str | None, path: str | None = None, revision: str | None = None,
              uri: str | None = None) -> LocalCascadeError | None:
    """Our error for ``exc``, or None when it is no hub failure (ours already, Ctrl-C, a bug)."""
    if isinstance(exc, (LocalCascadeError, KeyboardInterrupt, SystemExit)) or not isinstance(exc, Exception):
        return None
    found = _mapped(exc, repo, path, revision)
    if found is None:
        return None
    kind, text = found
    return kind(f"{uri}: {text}" if uri else text)


def _mapped(exc: Exception, repo: str | None, path: str | None, revision: str | None):
    import httpx  # huggingface_hub's HTTP client, installed with it
    from huggingface_hub import errors as hf_errors

    where = f"{repo}/{path}" if repo and path else (repo or path or "the file")
    endpoint = settings.hf_endpoint()
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, hf_errors.OfflineModeIsEnabled):
        return OfflineError, f"HF_HUB_OFFLINE=1 forbids asking the hub for {where}"
    if isinstance(exc, hf_errors.GatedRepoError):
        return AuthError, (f"{repo or where} is gated: accept its terms on the hub and set HF_TOKEN to a token "
                           "with access (or log in with `hf auth login`)")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        if status == 401 and not _token_in_use():
            return RepoNotFoundOrPrivateError, (f"repository {repo} not found on {endpoint} (if it is private, "
                                                "set HF_TOKEN or log in with `hf auth login`)")
        return ModelNotFoundError, f"repository {repo} not found on {endpoint}"
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        rev = f" {revision!r}" if revision else ""
        return ModelNotFoundError, f"revision{rev} not found in {repo}"
    if (isinstance(exc, hf_errors.EntryNotFoundError) and not isinstance(exc, hf_errors.LocalEntryNotFoundError)) \
            or (isinstance(exc, hf_errors.HfHubHTTPError) and status == 404):
        return EntryMissingError, (f"no file {path} in {repo}" if repo and path else f"{where} not found")
    if isinstance(exc, hf_errors.HfHubHTTPError) and status in (401, 403):
        return AuthError, f"the hub refused access to {where} (HTTP {status}): {_LOGIN} with a valid token"
    if isinstance(exc, hf_errors.HfHubHTTPError):
        return DownloadError, f"the hub answered HTTP {status} for {where}"
    if isinstance(exc, httpx.TooManyRedirects):
        return DownloadError, f"the hub at {endpoint} redirects {where} in a loop"
    if isinstance(exc, httpx.RemoteProtocolError) and "complete message body" in str(exc):
        return DownloadError, f"the hub's answer for {where} was cut off mid-way; try again"
    if isinstance(exc, httpx.TimeoutException):
        return DownloadError, f"the hub at {endpoint} did not answer in time ({_first_line(exc)})"
    if isinstance(exc, ValueError):  # JSON or text that does not parse: the answer is not the hub's
        return DownloadError, (f"the hub at {endpoint} sent an answer for {where} that is not the hub's API "
                               f"({type(exc).__name__}); is a proxy or wrong HF_ENDPOINT in the way?")
    if isinstance(exc, (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
        return DownloadError, f"cannot reach the hub at {endpoint}: {_first_line(exc)}"
    if isinstance(exc, httpx.HTTPError):
        return DownloadError, f"talking to the hub about {where} failed: {_first_line(exc)}"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskSpaceError, f"the disk filled up while downloading {where}; the partial file is kept for resuming"
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return DownloadError, f"the transfer of {where} ended early; run the pull again to continue it"
    return None


def _token_in_use() -> bool:
    from huggingface_hub import get_token

    return bool(settings.hf_token() or get_token())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:120] if text else type(exc).__name__
