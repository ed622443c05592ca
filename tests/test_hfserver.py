"""The test hub answers the real huggingface_hub client the way the hub does."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Imported before the fixture runs on purpose: the fixture must still redirect it.
import huggingface_hub
from huggingface_hub import HfApi, hf_hub_download, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session

REPO = "tester/tiny-GGUF"


@pytest.fixture
def payload(tmp_path) -> Path:
    path = tmp_path / "model.gguf"
    # Deterministic, non-repeating bytes so any misplaced range shows up.
    path.write_bytes(b"".join(hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(40_000)))
    return path


@pytest.fixture
def hub(hf_server, payload, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# tiny\n")
    hf_server.add_file(REPO, "model.gguf", payload)
    hf_server.add_file(REPO, "README.md", readme)
    hf_server.add_file(REPO, "split/model-00001-of-00002.gguf", payload)
    return hf_server


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_download_lands_in_the_cache_at_the_servers_commit(hub, payload):
    local = Path(hf_hub_download(REPO, "model.gguf"))
    assert local.read_bytes() == payload.read_bytes()
    assert local.parent.name == hub.commit_id(REPO)  # snapshots/<commit>/model.gguf
    assert hub.bytes_served["model.gguf"] == payload.stat().st_size
    # A second call is answered from the cache: metadata only, no body bytes.
    hf_hub_download(REPO, "model.gguf")
    assert hub.bytes_served["model.gguf"] == payload.stat().st_size


def test_metadata_carries_lfs_sha256_and_size(hub, payload):
    api = HfApi()
    infos = {i.path: i for i in api.get_paths_info(REPO, ["model.gguf", "README.md", "split", "missing.gguf"])}
    assert set(infos) == {"model.gguf", "README.md", "split"}
    assert infos["model.gguf"].lfs.sha256 == sha256(payload)
    assert infos["model.gguf"].size == payload.stat().st_size
    assert infos["README.md"].lfs is None and infos["README.md"].size == len("# tiny\n")

    info = huggingface_hub.model_info(REPO, files_metadata=True)
    assert info.sha == hub.commit_id(REPO)
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["model.gguf"].lfs.sha256 == sha256(payload)
    assert siblings["split/model-00001-of-00002.gguf"].size == payload.stat().st_size

    top = {e.path for e in api.list_repo_tree(REPO)}
    assert top == {"model.gguf", "README.md", "split"}
    everything = {e.path for e in api.list_repo_tree(REPO, recursive=True)}
    assert "split/model-00001-of-00002.gguf" in everything
    assert [e.path for e in api.list_repo_tree(REPO, path_in_repo="split")] == ["split/model-00001-of-00002.gguf"]


def test_revisions_resolve_by_branch_and_commit(hub, payload, tmp_path):
    other = tmp_path / "other.gguf"
    other.write_bytes(b"v2" * 100)
    hub.add_file(REPO, "model.gguf", other, revision="v2")
    assert Path(hf_hub_download(REPO, "model.gguf", revision="v2")).read_bytes() == other.read_bytes()
    by_commit = hf_hub_download(REPO, "model.gguf", revision=hub.commit_id(REPO, "main"))
    assert Path(by_commit).read_bytes() == payload.read_bytes()
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "model.gguf", revision="nope")


def test_missing_file_and_repo_are_404_like_the_hub(hub):
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "absent.gguf")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/absent", "model.gguf")
    with pytest.raises(RepositoryNotFoundError):
        huggingface_hub.model_info("tester/absent")


def test_gated_and_private_repos_need_the_token(hf_server, payload):
    hf_server.add_file("corp/gated", "model.gguf", payload, gated=True)
    hf_server.add_file("corp/private", "model.gguf", payload, private=True)
    with pytest.raises(GatedRepoError) as gated:
        hf_hub_download("corp/gated", "model.gguf")
    assert gated.value.response.status_code == 401
    with pytest.raises(RepositoryNotFoundError):  # the hub hides private repos
        hf_hub_download("corp/private", "model.gguf")
    with pytest.raises(HfHubHTTPError) as bad_token:
        hf_hub_download("corp/gated", "model.gguf", token="hf_wrong")
    assert bad_token.value.response.status_code == 401
    assert hf_server.total_bytes_served == 0

    for repo in ("corp/gated", "corp/private"):
        local = hf_hub_download(repo, "model.gguf", token=hf_server.token)
        assert Path(local).read_bytes() == payload.read_bytes()


def test_range_requests_answer_206_and_count_only_the_range(hub, payload):
    data = payload.read_bytes()
    url = hf_hub_url(REPO, "model.gguf")
    session = get_session()

    def get(range_header):
        return session.get(url, headers={**build_hf_headers(), "Range": range_header})

    r = get("bytes=100-199")
    assert r.status_code == 206 and r.content == data[100:200]
    assert r.headers["Content-Range"] == f"bytes 100-199/{len(data)}"
    assert r.headers["X-Linked-Size"] == str(len(data))
    assert r.headers["ETag"] == f'"{sha256(payload)}"'
    assert get(f"bytes={len(data) - 10}-").content == data[-10:]
    assert get("bytes=-7").content == data[-7:]
    assert get(f"bytes={len(data)}-").status_code == 416
    assert hub.bytes_served["model.gguf"] == 100 + 10 + 7
    assert [rec.range for rec in hub.file_requests("model.gguf")] == [
        "bytes=100-199", f"bytes={len(data) - 10}-", "bytes=-7", f"bytes={len(data)}-"
    ]


def test_lost_connection_mid_download_is_resumed_with_a_range(hf_server, tmp_path):
    # huggingface_hub writes in 10 MiB chunks and resumes from the last whole chunk it
    # wrote, so the file must be larger than that for the resume to show.
    import random

    big = tmp_path / "big.gguf"
    big.write_bytes(random.Random(0).randbytes(24 * 1024 * 1024))
    hf_server.add_file(REPO, "big.gguf", big)
    chunk = huggingface_hub.constants.DOWNLOAD_CHUNK_SIZE
    hf_server.fail_after("big.gguf", chunk + 12345)

    local = hf_hub_download(REPO, "big.gguf")

    assert sha256(local) == sha256(big)
    gets = [r for r in hf_server.file_requests("big.gguf") if r.method == "GET"]
    assert [r.range for r in gets] == [None, f"bytes={chunk}-"]
    assert [r.bytes_sent for r in gets] == [chunk + 12345, big.stat().st_size - chunk]


def test_corrupt_serves_bytes_that_do_not_match_the_advertised_sha256(hub, payload):
    hub.corrupt("model.gguf")
    local = Path(hf_hub_download(REPO, "model.gguf"))
    advertised = HfApi().get_paths_info(REPO, ["model.gguf"])[0].lfs.sha256
    assert advertised == sha256(payload)
    assert local.stat().st_size == payload.stat().st_size
    assert sha256(local) != advertised


def test_a_subprocess_reaches_the_server_through_the_environment(hub, payload):
    code = "from huggingface_hub import hf_hub_download; print(hf_hub_download('%s', 'model.gguf'))" % REPO
    out = subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).read_bytes() == payload.read_bytes()
