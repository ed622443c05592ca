

# --- hf_server: a Hugging Face-compatible hub on 127.0.0.1 (see tests/hfserver.py) ---

import pytest as _pytest


@_pytest.fixture
def hf_server(monkeypatch, tmp_path):
    """A started :class:`hfserver.HFServer` that huggingface_hub (and subprocesses) talk to.

    huggingface_hub copies HF_ENDPOINT and the cache/token locations into module
    globals when it is first imported, so setting the environment is not enough
    once any test has imported it: the copies are patched as well. Downloads go to
    a per-test cache, and no token from the environment or ~/.cache leaks in.
    """
    import huggingface_hub.constants as hf_constants
    from huggingface_hub import hf_api
    from huggingface_hub.utils import _cache_manager

    from hfserver import HFServer

    server = HFServer().start()
    endpoint = server.endpoint
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # the module-level HfApi behind model_info() & co.
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf-token"))
    monkeypatch.setattr(hf_constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "hf-stored-tokens"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    try:
        yield server
    finally:
        server.stop()
