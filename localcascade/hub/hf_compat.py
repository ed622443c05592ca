"""The parts of huggingface_hub localcascade uses that are not its documented API, in one place.

The resumable pull builds on huggingface_hub's download internals (``http_get``, the ref writer,
the cache's folder names, its file lock) and the hub client on its HTTP helpers. These may change
in any release, so every use goes through this module: ``missing()`` lists what this installed
version lacks (tests/test_hf_compat.py runs it), and a call to something absent fails with one
line naming it and the version, never an AttributeError deep in a download.

huggingface_hub is imported at call time, not here: importing it costs ~0.3 s, and ``localcascade
--help`` and ``fit`` offline never need it. Each lookup reads the attribute afresh, so a test that
replaces one (``huggingface_hub.utils.WeakFileLock``) is seen.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
from typing import Any, Iterator

from localcascade.errors import LocalCascadeError

# name here -> (module, attribute, keyword parameters localcascade passes it)
_NEEDED: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "http_get": ("huggingface_hub.file_download", "http_get",
                 ("resume_size", "headers", "expected_size", "displayed_filename", "tqdm_class")),
    "cache_commit_hash": ("huggingface_hub.file_download", "_cache_commit_hash_for_specific_revision", ()),
    "repo_folder_name": ("huggingface_hub.file_download", "repo_folder_name", ("repo_id", "repo_type")),
    "WeakFileLock": ("huggingface_hub.utils", "WeakFileLock", ()),
    "build_hf_headers": ("huggingface_hub.utils", "build_hf_headers", ("token",)),
    "get_session": ("huggingface_hub.utils", "get_session", ()),
    "hf_raise_for_status": ("huggingface_hub.utils", "hf_raise_for_status", ()),
    "tqdm": ("huggingface_hub.utils", "tqdm", ()),
    "set_client_factory": ("huggingface_hub", "set_client_factory", ()),
    # HFCacheInfo.delete_files() logs (and swallows) what it could not delete on this logger.
    "cache_manager_logger": ("huggingface_hub.utils._cache_manager", "logger", ()),
}
# Used when present: huggingface_hub's own request hook (user agent, request ids).
_OPTIONAL = {"hf_request_event_hook": ("huggingface_hub.utils._http", "hf_request_event_hook")}
_REQUIREMENT = "huggingface_hub>=1.33,<2"


def _version() -> str:
    try:
        return importlib.import_module("huggingface_hub").__version__
    except (ImportError, AttributeError):
        return "not installed"


def _lookup(module_name: str, attribute: str) -> Any:
    """The attribute, or AttributeError/ImportError when this huggingface_hub has none."""
    return getattr(importlib.import_module(module_name), attribute)


def _problem(name: str) -> str | None:
    module_name, attribute, keywords = _NEEDED[name]
    where = f"{module_name}.{attribute}"
    try:
        found = _lookup(module_name, attribute)
    except (ImportError, AttributeError):
        return f"{where} is missing"
    if keywords and callable(found):
        try:
            parameters = inspect.signature(found).parameters
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check
            return None
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        absent = [k for k in keywords if k not in parameters and not takes_any]
        if absent:
            return f"{where} takes no {', '.join(repr(k) for k in absent)}"
    return None


def missing() -> list[str]:
    """What localcascade needs that this huggingface_hub lacks, one line each (empty: compatible)."""
    return [problem for problem in map(_problem, _NEEDED) if problem]


def _get(name: str) -> Any:
    module_name, attribute, _ = _NEEDED[name]
    try:
        return _lookup(module_name, attribute)
    except (ImportError, AttributeError):
        raise LocalCascadeError(
            f"huggingface_hub {_version()} has no {module_name}.{attribute}, which localcascade needs; "
            f"install {_REQUIREMENT}"
        ) from None


# -- the internals, one function each -----------------------------------------------------------

def http_get(url: str, file, **options) -> None:
    """Stream ``url`` into ``file`` (resume_size, headers, expected_size, displayed_filename, tqdm_class)."""
    _get("http_get")(url, file, **options)


def cache_ref(storage_folder: str, revision: str, commit_hash: str) -> None:
    """Write ``refs/<revision>`` -> ``commit_hash`` in a cached repo folder, as hf_hub_download would."""
    _get("cache_commit_hash")(storage_folder, revision, commit_hash)


def repo_folder_name(repo_id: str) -> str:
    """The cache's folder name for a model repository (``models--owner--name``)."""
    return _get("repo_folder_name")(repo_id=repo_id, repo_type="model")


def weak_file_lock(path):
    """huggingface_hub's own lock on a cache file, so our pulls and its downloads take turns."""
    return _get("WeakFileLock")(path)


def build_hf_headers(token: str | None = None) -> dict:
    return _get("build_hf_headers")(token=token)


def get_session():
    """The httpx client huggingface_hub sends every request through."""
    return _get("get_session")()


def hf_raise_for_status(response) -> None:
    _get("hf_raise_for_status")(response)


def tqdm_class():
    """huggingface_hub's progress bar class (it honours HF_HUB_DISABLE_PROGRESS_BARS)."""
    return _get("tqdm")


def set_client_factory(factory) -> None:
    _get("set_client_factory")(factory)


def request_event_hook():
    """huggingface_hub's request hook, or None where this version has none (it is optional)."""
    try:
        return _lookup(*_OPTIONAL["hf_request_event_hook"])
    except (ImportError, AttributeError):
        return None


@contextlib.contextmanager
def captured_cache_warnings() -> Iterator[list[logging.LogRecord]]:
    """Collect, instead of printing, what the cache manager logs while the block runs.

    ``DeleteCacheStrategy.execute()`` logs a path it could not delete (with a traceback) and goes
    on; the caller reads the records to say in one line what is left.
    """
    logger: logging.Logger = _get("cache_manager_logger")
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Collect(level=logging.WARNING)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
