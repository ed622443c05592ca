"""`pull` through the real huggingface_hub client against the local HF-compatible server.

Transfers use 1 MiB chunks (huggingface_hub's DOWNLOAD_CHUNK_SIZE, normally 10 MiB) so a
few-MiB file is interrupted part-way like a 20 GB one would be.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest

from localcascade.hub import download as hub
from localcascade.store import models as store
from localcascade.resolve.resolver import parse_model_spec
from localcascade.cli.main import main
from localcascade.errors import (
    AuthError,
    DiskSpaceError,
    IntegrityError,
    ModelNotFoundError,
    UsageError,
)

REPO = "someone/Tiny-GGUF"
FILE = "Tiny-Q8_0.gguf"
MIB = 1024 * 1024
SIZE = 8 * MIB


@pytest.fixture
def small_chunks(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", MIB)


@pytest.fixture
def payload(tmp_path) -> Path:
    """An 8 MiB GGUF: the tiny model (pull reads its header before downloading) and random bytes
    after its tensor data, which make every run's file, and its sha256, new."""
    import synth

    (tmp_path / "served").mkdir()
    path = synth.write_nemotron_h_moe(tmp_path / "served" / FILE, synth.TINY)
    with open(path, "ab") as f:
        f.write(os.urandom(SIZE - path.stat().st_size))
    return path


@pytest.fixture
def served(hf_server, payload, small_chunks):
    hf_server.add_file(REPO, FILE, payload)
    hf_server.add_file(REPO, "README.md", _text_file(payload.parent / "README.md", "# tiny\n"))
    return hf_server


def _text_file(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _pull(spec: str):
    return hub.pull(hub.resolve_remote(parse_model_spec(spec)))


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cache() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def _run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_pull_downloads_into_the_shared_cache_and_verifies(served, payload, capsys):
    code, out, err = _run_cli(["pull", f"{REPO}:Q8_0"], capsys)

    assert code == 0, err
    assert "sha256 verified" in out
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(REPO, FILE, cache_dir=_cache())  # where `hf`/transformers look
    assert cached is not None and _sha(cached) == _sha(payload)
    assert str(cached) in out
    assert not list(_cache().rglob("*.incomplete"))
    [model] = [m for m in store.list_models() if m.repo == REPO]
    assert model.verified and model.verified_at and model.name == f"{REPO}:Q8_0"


def test_second_pull_fetches_nothing(served):
    _pull(f"{REPO}:Q8_0")
    served.reset_counters()

    again = _pull(f"{REPO}:Q8_0")

    assert again.downloaded_bytes == 0
    assert served.bytes_served[FILE] == 0


def test_ctrl_c_mid_transfer_resumes_from_the_bytes_on_disk(served, payload):
    def interrupt_after_3_mib(path, n, seen=[0]):
        seen[0] += n
        if seen[0] > 3 * MIB:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hub.pull(hub.resolve_remote(parse_model_spec(f"{REPO}:Q8_0")), on_bytes=interrupt_after_3_mib)
    [partial] = list(_cache().rglob("*.incomplete"))
    kept = partial.stat().st_size
    assert 2 * MIB <= kept < SIZE
    assert not _snapshot_files()  # nothing visible under the final name
    served.reset_counters()

    pulled = _pull(f"{REPO}:Q8_0")

    refetched = served.bytes_served[FILE]
    assert refetched == SIZE - kept  # only the remainder crossed the wire
    assert pulled.resumed_bytes == kept
    assert [r.range for r in served.file_requests(FILE) if r.method == "GET"] == [f"bytes={kept}-"]
    assert _sha(pulled.path) == _sha(payload)
    assert not list(_cache().rglob("*.incomplete"))


def test_killed_process_resumes(served, payload, tmp_path):
    """A pull killed with SIGKILL (no cleanup at all) continues on the next run."""
    script = tmp_path / "slow_pull.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from huggingface_hub import constants
        constants.DOWNLOAD_CHUNK_SIZE = {MIB}
        from localcascade.hub import download as hub
        from localcascade.resolve.resolver import parse_model_spec
        remote = hub.resolve_remote(parse_model_spec("{REPO}:Q8_0"))
        hub.pull(remote, on_bytes=lambda path, n: time.sleep(0.3))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], env=os.environ.copy())
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            partials = list(_cache().rglob("*.incomplete"))
            if partials and partials[0].stat().st_size >= 2 * MIB:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the download never got going")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [partial] = list(_cache().rglob("*.incomplete"))
    kept = partial.stat().st_size
    assert kept < SIZE
    served.reset_counters()

    pulled = _pull(f"{REPO}:Q8_0")

    assert served.bytes_served[FILE] == SIZE - kept
    assert _sha(pulled.path) == _sha(payload)


def test_lost_connection_is_resumed_within_the_same_pull(served, payload):
    served.fail_after(FILE, 3 * MIB)

    pulled = _pull(f"{REPO}:Q8_0")

    gets = [r for r in served.file_requests(FILE) if r.method == "GET"]
    assert len(gets) == 2 and gets[1].range is not None and gets[1].range.startswith("bytes=")
    assert served.bytes_served[FILE] < SIZE + MIB  # not the whole file twice
    assert _sha(pulled.path) == _sha(payload)


def test_corrupt_transfer_is_deleted_and_reported(served, capsys):
    served.corrupt(FILE)

    code, out, err = _run_cli(["pull", f"{REPO}:Q8_0"], capsys)

    assert code == 1
    error = _error_line(err)
    assert "sha256" in error and "deleted" in error
    assert not _snapshot_files() and not list(_cache().rglob("*.incomplete"))
    assert not [b for b in _cache().rglob("blobs/*") if b.is_file()]
    served.corrupt(FILE, enabled=False)
    assert _run_cli(["pull", f"{REPO}:Q8_0"], capsys)[0] == 0  # a clean retry works


def test_corrupt_file_already_in_the_cache_is_caught(served, payload):
    from huggingface_hub import hf_hub_download

    served.corrupt(FILE)
    # Another tool downloaded it without checking (huggingface_hub only checks the size).
    path = Path(hf_hub_download(REPO, FILE, cache_dir=_cache()))
    served.corrupt(FILE, enabled=False)

    with pytest.raises(IntegrityError, match="deleted"):
        _pull(f"{REPO}:Q8_0")
    assert not path.exists()


def test_missing_file_and_repo_answer_404(served, capsys):
    code, _, err = _run_cli(["pull", f"hf://{REPO}/nope-Q4_K_M.gguf"], capsys)
    assert code == 1 and "nope-Q4_K_M.gguf" in err and REPO in err

    with pytest.raises(ModelNotFoundError, match=f"no Q4_K_M GGUF file in {REPO}.*Q8_0"):
        _pull(f"{REPO}:Q4_K_M")

    os.environ["HF_TOKEN"] = served.token  # with a token the hub answers 404, not 401
    try:
        with pytest.raises(ModelNotFoundError, match="someone/absent"):
            _pull("someone/absent:Q8_0")
    finally:
        del os.environ["HF_TOKEN"]


def test_gated_repo_answers_401_with_how_to_log_in(hf_server, payload, small_chunks, capsys, monkeypatch):
    hf_server.add_file("corp/Gated-GGUF", FILE, payload, gated=True)

    code, out, err = _run_cli(["pull", "corp/Gated-GGUF:Q8_0"], capsys)

    assert code == 1 and out == ""
    assert "gated" in err and "HF_TOKEN" in err and "hf auth login" in err
    assert hf_server.bytes_served[FILE] == 0

    monkeypatch.setenv("HF_TOKEN", hf_server.token)
    assert _pull("corp/Gated-GGUF:Q8_0").files[0].verified


def test_private_repo_without_token_says_how_to_log_in(hf_server, payload, small_chunks):
    hf_server.add_file("corp/Private-GGUF", FILE, payload, private=True)
    with pytest.raises(AuthError, match="private.*HF_TOKEN"):
        _pull("corp/Private-GGUF:Q8_0")


def test_offline_uses_the_cache_and_refuses_the_network(served, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = _run_cli(["pull", f"{REPO}:Q8_0"], capsys)
    assert code == 1 and "HF_HUB_OFFLINE" in err
    assert served.requests == []

    monkeypatch.delenv("HF_HUB_OFFLINE")
    _pull(f"{REPO}:Q8_0")
    served.reset_counters()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = _run_cli(["pull", f"{REPO}:Q8_0"], capsys)
    assert code == 0 and "already here" in err
    assert served.requests == []


def test_not_enough_disk_is_refused_before_downloading(served, monkeypatch):
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")

    def tiny_disk(path):
        total = real(path).total
        return usage(total, total - 5 * MIB, 5 * MIB)

    monkeypatch.setattr(shutil, "disk_usage", tiny_disk)

    with pytest.raises(DiskSpaceError, match=r"needs 8\.0 MiB more, 5\.0 MiB free"):
        _pull(f"{REPO}:Q8_0")
    assert served.bytes_served[FILE] == 0


def test_disk_check_counts_only_the_remaining_bytes(served, monkeypatch):
    def interrupt(path, n, seen=[0]):
        seen[0] += n
        if seen[0] > 5 * MIB:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        hub.pull(hub.resolve_remote(parse_model_spec(f"{REPO}:Q8_0")), on_bytes=interrupt)
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(real(p).total, 0, 4 * MIB))

    assert _pull(f"{REPO}:Q8_0").size == SIZE  # 4 MiB free is enough for the last ~4 MiB


@pytest.mark.parametrize("spec", [f"hf://{REPO}/../escape.gguf", f"hf://{REPO}//etc/escape.gguf",
                                  f"hf://{REPO}/a/../../escape.gguf"])
def test_file_names_escaping_the_cache_are_refused_before_any_request(served, spec, capsys):
    code, _, err = _run_cli(["pull", spec], capsys)
    assert code == 2 and "outside the download directory" in err
    assert served.requests == []


def test_escaping_name_in_a_repo_listing_is_refused(hf_server, payload, small_chunks):
    hf_server.add_file("evil/Repo", "../../escape-Q8_0.gguf", payload)
    with pytest.raises(UsageError, match="outside the download directory"):
        _pull("evil/Repo:Q8_0")
    assert hf_server.bytes_served["../../escape-Q8_0.gguf"] == 0
    assert not list(_cache().parent.rglob("escape-Q8_0.gguf"))


def test_no_network_is_one_clear_line(monkeypatch, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")

    code, _, err = _run_cli(["pull", f"{REPO}:Q8_0"], capsys)

    assert code == 1
    assert f"cannot reach the hub at http://127.0.0.1:{port}" in _error_line(err)


def test_split_set_is_pulled_as_one_model(hf_server, tmp_path, small_chunks):
    shards = []
    for i in (1, 2):
        shard = tmp_path / f"Big-BF16-0000{i}-of-00002.gguf"
        shard.write_bytes(b"GGUF" + os.urandom(2 * MIB))
        hf_server.add_file("someone/Big-GGUF", f"BF16/{shard.name}", shard)
        shards.append(shard)

    pulled = _pull("someone/Big-GGUF:BF16")

    assert [f.path_in_repo for f in pulled.files] == [f"BF16/{s.name}" for s in shards]
    assert [_sha(f.local_path) for f in pulled.files] == [_sha(s) for s in shards]
    [model] = [m for m in store.list_models() if m.repo == "someone/Big-GGUF"]
    assert model.name == "someone/Big-GGUF:BF16" and len(model.files) == 2 and model.size == pulled.size


def _error_line(err: str) -> str:
    """The one-line error the CLI ends with (and no traceback)."""
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("localcascade: ")
    return last


def _snapshot_files() -> list[Path]:
    return [p for p in _cache().rglob("snapshots/**/*") if p.is_file() or p.is_symlink()]


def test_pull_waiting_on_the_lock_uses_the_blob_a_concurrent_pull_finished(served, payload, monkeypatch):
    """Two pulls of one file: the one that waited for the blob lock must not fetch and replace it again."""
    import contextlib

    import huggingface_hub.utils

    real_lock = huggingface_hub.utils.WeakFileLock

    @contextlib.contextmanager
    def lock_released_by_a_finished_pull(lock_path, *args, **kwargs):
        with real_lock(lock_path, *args, **kwargs):
            if Path(lock_path).parent.name == ".localcascade-locks":  # the pull's own blob lock
                # What the other pull left when it released the lock: the verified blob under its final name.
                blob = Path(lock_path).parent.parent / "blobs" / Path(lock_path).stem
                shutil.copyfile(payload, blob)
            yield

    monkeypatch.setattr(huggingface_hub.utils, "WeakFileLock", lock_released_by_a_finished_pull)

    pulled = _pull(f"{REPO}:Q8_0")

    assert served.bytes_served[FILE] == 0 and pulled.downloaded_bytes == 0
    assert _sha(pulled.path) == _sha(payload) and pulled.files[0].verified
    assert not list(_cache().rglob("*.incomplete"))


def test_branch_moving_during_the_download_keeps_the_pinned_commit(served, payload):
    """A commit lands on main while the file downloads: the link goes where the metadata said, and exists."""
    repo = served.repos[REPO]
    pinned = served.commit_id(REPO)
    moved = "f" * 40
    old_commit = repo.commit

    def push_a_commit(path, n, done=[]):
        if not done:
            done.append(True)
            # From now on main is `moved`; the pinned commit still resolves to the same files.
            repo.revisions[pinned] = repo.revisions["main"]
            repo.commit = lambda rev: moved if rev == "main" else pinned if rev == pinned else old_commit(rev)

    pulled = hub.pull(hub.resolve_remote(parse_model_spec(f"{REPO}:Q8_0")), on_bytes=push_a_commit)

    assert pulled.commit == pinned
    assert pulled.path == _cache() / "models--someone--Tiny-GGUF" / "snapshots" / pinned / FILE
    assert pulled.path.exists() and _sha(pulled.path) == _sha(payload)
    assert not (_cache() / "models--someone--Tiny-GGUF" / "snapshots" / moved).exists()
    from huggingface_hub import try_to_load_from_cache

    assert try_to_load_from_cache(REPO, FILE, cache_dir=_cache()) == str(pulled.path)  # refs/main -> what we have


def test_pull_shows_the_plan_from_the_hub_header_before_downloading(served, capsys):
    code, _, err = _run_cli(["pull", f"{REPO}:Q8_0", "--vram", "8GiB", "--ctx", "2K"], capsys)
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == f"localcascade: {REPO}:Q8_0: {REPO}, 8.0 MiB"
    assert lines[1].startswith("  full gpu at 2K context: GPU ")


def test_a_file_that_is_no_gguf_model_is_refused_before_its_bytes_are_fetched(hf_server, tmp_path, capsys):
    fake = tmp_path / "Fake-Q8_0.gguf"
    fake.write_bytes(b"<html>not a model</html>" + os.urandom(SIZE))   # e.g. an LFS mishap
    hf_server.add_file("someone/Fake-GGUF", "Fake-Q8_0.gguf", fake)

    code, out, err = _run_cli(["pull", "someone/Fake-GGUF:Q8_0"], capsys)

    assert code == 1 and out == ""
    assert err.splitlines()[-1].endswith("; nothing was downloaded")
    assert "GGUF" in err.splitlines()[-1], err
    assert hf_server.bytes_served["Fake-Q8_0.gguf"] <= MIB   # one range request, not the file
    assert not list(_cache().rglob("*.incomplete")) and not [m for m in store.list_models() if m.repo]
