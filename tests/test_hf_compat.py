"""The huggingface_hub internals localcascade builds on are all there, with the parameters it passes.

An upgrade of huggingface_hub that renames or drops one fails here, naming it, rather than
in the middle of someone's 20 GB download.
"""

from __future__ import annotations

import pytest

from localcascade.hub import hf_compat
from localcascade.errors import LocalCascadeError


def test_this_huggingface_hub_has_everything_localcascade_uses():
    import huggingface_hub

    missing = hf_compat.missing()
    assert not missing, (f"huggingface_hub {huggingface_hub.__version__} is incompatible with localcascade: "
                         + "; ".join(missing))


def test_a_missing_internal_is_named(monkeypatch):
    import huggingface_hub.file_download

    monkeypatch.delattr(huggingface_hub.file_download, "http_get")

    assert hf_compat.missing() == ["huggingface_hub.file_download.http_get is missing"]
    with pytest.raises(LocalCascadeError, match=r"huggingface_hub \S+ has no huggingface_hub\.file_download\.http_get, "
                                                r"which localcascade needs; install huggingface_hub>=1\.33,<2"):
        hf_compat.http_get("http://127.0.0.1/x", None)


def test_a_changed_signature_is_named(monkeypatch):
    import huggingface_hub.file_download

    def http_get(url, temp_file, *, resume_size=0, headers=None):   # an older shape: no progress options
        raise AssertionError("never called")

    monkeypatch.setattr(huggingface_hub.file_download, "http_get", http_get)

    assert hf_compat.missing() == ["huggingface_hub.file_download.http_get takes no 'expected_size', "
                                   "'displayed_filename', 'tqdm_class'"]


def test_what_cache_deletion_logs_is_collected_not_printed(capsys):
    import logging

    logger = logging.getLogger("huggingface_hub.utils._cache_manager")
    with hf_compat.captured_cache_warnings() as records:
        logger.warning("Couldn't delete blob: permission denied (/x)")

    assert [r.getMessage() for r in records] == ["Couldn't delete blob: permission denied (/x)"]
    assert capsys.readouterr().err == ""
