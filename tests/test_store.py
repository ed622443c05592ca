"""The local store: `list`, `show`, `rm`, and name resolution, over the HF cache and registered files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from quant.quantize import quantize
import synth
from localcascade.hub import download as hub
from localcascade.resolve import plans as planning
from localcascade.store import models as store
from localcascade.store import index as store_index
from localcascade.model.catalog import find_variant, load_catalog
from localcascade.cli.main import main
from localcascade.errors import ModelNotFoundError
from localcascade.resolve.resolver import parse_model_spec, resolve

REPO = "someone/Tiny-GGUF"


def _cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def _cache() -> Path:
    return Path(os.environ["HF_HUB_CACHE"])


def _pull(spec: str):
    return hub.pull(hub.resolve_remote(parse_model_spec(spec)))


@pytest.fixture
def served(hf_server, tiny_model, tmp_path):
    hf_server.add_file(REPO, "Tiny-Q8_0.gguf", tiny_model)
    readme = tmp_path / "README.md"
    readme.write_text("# tiny\n")
    hf_server.add_file(REPO, "README.md", readme)
    other = synth.write_nemotron_h_moe(tmp_path / "other.gguf", synth.TINY, seed=1)
    hf_server.add_file("elsewhere/Other-GGUF", "Other-F32.gguf", other)
    return hf_server


def test_list_shows_pulled_registered_and_other_tools_models(served, tiny_f16_model, tmp_path, capsys):
    from huggingface_hub import hf_hub_download

    _pull(f"{REPO}:Q8_0")
    hf_hub_download("elsewhere/Other-GGUF", "Other-F32.gguf", cache_dir=_cache())  # "another tool"
    hf_hub_download(REPO, "README.md", cache_dir=_cache())
    made = quantize(tiny_f16_model, tmp_path / "mine-Q8_0.gguf", "Q8_0", verify_load=False)
    store.register_local("mine-Q8_0", [made.path], quant="Q8_0", source=str(tiny_f16_model), check="test")

    code, out, _ = _cli(["list", "--json"], capsys)

    assert code == 0
    models = {m["name"]: m for m in json.loads(out)}
    assert set(models) == {f"{REPO}:Q8_0", "elsewhere/Other-GGUF:F32", "mine-Q8_0"}
    pulled, other, mine = models[f"{REPO}:Q8_0"], models["elsewhere/Other-GGUF:F32"], models["mine-Q8_0"]
    assert pulled["where"] == "hf-cache" and pulled["verified"] and pulled["check"] == "sha256"
    assert pulled["size"] == Path(pulled["path"]).stat().st_size
    assert other["where"] == "hf-cache" and not other["verified"]  # nobody checked it yet
    assert mine["where"] == "local" and mine["path"] == str(made.path) and mine["quant"] == "Q8_0"

    code, out, _ = _cli(["list"], capsys)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "WHERE", "VERIFIED", "PATH"] and len(lines) == 4
    assert [name for name in models if name in out] == list(models)
    assert not list(store_index.index_path().parent.glob("*.tmp"))  # the index was renamed into place


def test_pulling_what_another_tool_downloaded_verifies_it_without_downloading(served):
    from huggingface_hub import hf_hub_download

    hf_hub_download(REPO, "Tiny-Q8_0.gguf", cache_dir=_cache())
    [model] = [m for m in store.list_models() if m.repo == REPO]
    assert not model.verified
    served.reset_counters()

    _pull(f"{REPO}:Q8_0")

    assert served.bytes_served["Tiny-Q8_0.gguf"] == 0
    [model] = [m for m in store.list_models() if m.repo == REPO]
    assert model.verified


def test_names_resolve_to_local_files(served, tiny_model):
    pulled = _pull(f"{REPO}:Q8_0")

    assert resolve(f"{REPO}:Q8_0", need="file").path == pulled.path
    assert resolve(f"{REPO}:q8_0", need="file").path == pulled.path
    assert resolve(f"hf://{REPO}/Tiny-Q8_0.gguf", need="file").path == pulled.path
    assert resolve(str(tiny_model), need="file").path == tiny_model
    with pytest.raises(ModelNotFoundError, match="not downloaded: run `localcascade pull elsewhere/Other-GGUF:F32`"):
        resolve("elsewhere/Other-GGUF:F32", need="file").path
    with pytest.raises(ModelNotFoundError):
        resolve("no-such-model", need="file").path


def test_catalog_variant_in_the_cache_is_found_by_name_and_by_the_planner(hf_server, tiny_model):
    variant = find_variant("Q4_K_M")
    hf_server.add_file(variant.repo, variant.files[0], tiny_model)  # same name, tiny content

    pulled = _pull("q4_k_m")

    [model] = store.list_models()
    assert model.name == "Q4_K_M" and model.variant == "Q4_K_M"
    assert resolve("Q4_K_M", need="file").path == pulled.path
    from localcascade.hardware.profiles import load_profile

    best, plan = planning.best_local_variant(store.list_models(), load_profile("rtx-4090"))
    assert best.name == "Q4_K_M" and plan.model == "Q4_K_M"
    # Planned from the file on disk (tiny here), not from the catalog's 24.7 GB facts.
    assert plan.source == "header" and plan.gpu.weights + plan.ram.weights < 10 * 1024**2


def test_pull_auto_takes_the_planners_choice(hf_server, tiny_model, capsys):
    for variant in load_catalog():
        for name in variant.files:
            hf_server.add_file(variant.repo, name, tiny_model)
    from localcascade.hardware.profiles import load_profile
    from localcascade.planning.policy import recommend

    expected = recommend(load_profile("rtx-4090"), load_catalog()).variant

    code, out, err = _cli(["pull", "--gpu", "rtx-4090", "--yes"], capsys)

    assert code == 0, err
    assert f"best for this machine: {expected.quant}" in err
    assert out.split("\t")[0] == expected.quant
    assert [m.name for m in store.list_models()] == [expected.quant]


def test_pull_auto_prefer_quality_takes_the_quality_rule_and_names_the_trades(hf_server, tiny_model, capsys):
    for variant in load_catalog():
        for name in variant.files:
            hf_server.add_file(variant.repo, name, tiny_model)
    from localcascade.hardware.profiles import load_profile
    from localcascade.planning.plan import PlanRequest
    from localcascade.planning.policy import recommend

    default = recommend(load_profile("rtx-4090"), load_catalog()).variant
    expected = recommend(load_profile("rtx-4090"), load_catalog(), PlanRequest(prefer="quality")).variant
    assert expected.quality_rank < default.quality_rank   # a real difference to see

    code, out, err = _cli(["pull", "--gpu", "rtx-4090", "--prefer", "quality", "--yes"], capsys)

    assert code == 0, err
    assert f"best for this machine: {expected.quant}" in err
    assert f"alternative, faster: {default.quant} " in err
    assert out.split("\t")[0] == expected.quant


def test_rm_deletes_only_the_models_files(served, capsys):
    from huggingface_hub import hf_hub_download

    pulled = _pull(f"{REPO}:Q8_0")
    readme = Path(hf_hub_download(REPO, "README.md", cache_dir=_cache()))
    blob = pulled.path.resolve()

    code, _, err = _cli(["rm", f"{REPO}:Q8_0"], capsys)  # stdin is not a terminal: needs --yes
    assert code == 2 and "--yes" in err and pulled.path.exists()

    code, out, _ = _cli(["rm", f"{REPO}:Q8_0", "--yes"], capsys)

    assert code == 0 and f"removed {REPO}:Q8_0" in out
    assert not pulled.path.exists() and not pulled.path.is_symlink() and not blob.exists()
    assert readme.read_text() == "# tiny\n"
    assert store.list_models() == []

    code, _, err = _cli(["rm", f"{REPO}:Q8_0", "--yes"], capsys)
    assert code == 1 and "not downloaded" in err


def test_rm_registered_model(tiny_f16_model, tmp_path, capsys):
    made = quantize(tiny_f16_model, tmp_path / "mine.gguf", "Q8_0", verify_load=False)
    store.register_local("mine", [made.path], quant="Q8_0", source=None, check="test")

    code, _, _ = _cli(["rm", "mine", "--yes"], capsys)

    assert code == 0 and not made.path.exists()
    assert store.list_models() == []


def test_rm_refuses_files_the_store_does_not_know(tiny_model, capsys):
    code, _, err = _cli(["rm", str(tiny_model), "--yes"], capsys)
    assert code == 1 and "not a model the store knows" in err
    assert tiny_model.exists()


def test_show_summarizes_the_tiny_model(tiny_model, capsys):
    code, out, err = _cli(["show", str(tiny_model), "--gpu", "rtx-4090"], capsys)

    assert code == 0, err
    shape = synth.TINY
    n_m, n_e, n_a = (len(shape.mamba_layers), len(shape.moe_layers), len(shape.attention_layers))
    assert f"blocks         {shape.n_layer}: {n_m} Mamba-2, {n_e} MoE, {n_a} attention" in out
    assert shape.pattern in out
    assert f"experts        {shape.n_expert} routed, {shape.n_expert_used} used per token" in out
    assert "context        4K tokens" in out
    assert "chat template  yes" in out and "<think> </think> tokens present" in out
    assert "fit            full gpu" in out

    # What the state cache keeps: K and V rows of the attention blocks per token (f16 on the 4090's
    # plan), the Mamba blocks' f32 conv and ssm state once per checkpoint.
    per_token = n_a * 2 * shape.n_head_kv * shape.head_dim * 2
    per_state = len(shape.mamba_layers) * ((shape.ssm_d_conv - 1) * shape.ssm_conv_dim
                                           + shape.ssm_d_state * shape.ssm_d_inner) * 4
    assert f"kept state     {per_token:,} B per cached token" in out

    code, out, _ = _cli(["show", str(tiny_model), "--json"], capsys)
    data = json.loads(out)
    assert data["kept_state"] == {"bytes_per_token": per_token, "bytes_per_state": per_state,
                                  "type_k": "f16", "type_v": "f16"}
    assert data["summary"]["blocks"] == {"mamba": n_m, "moe": n_e, "attention": n_a}
    assert data["summary"]["pattern"] == shape.pattern
    assert data["plan"]["n_ctx"] > 0
    # The plan's reasons in the words `show` prints, and the records they were said from.
    plan = data["plan"]
    assert len(plan["reasons"]) == len(plan["reason_data"]) and plan["reason_data"][0]["kind"] == "placed"
    assert plan["reason_data"][0]["verdict"] == plan["verdict"] and plan["reasons"][0].startswith(plan["model"])
    assert len(plan["alternatives"]) == len(plan["alternative_data"])


def test_show_reads_a_hub_model_without_downloading_it(served, capsys):
    code, out, err = _cli(["show", f"hf://{REPO}/Tiny-Q8_0.gguf"], capsys)

    assert code == 0, err
    assert "nemotron_h_moe" in out and "6 Mamba-2" in out
    assert served.bytes_served["Tiny-Q8_0.gguf"] < Path(served.repos[REPO].revisions["main"]["Tiny-Q8_0.gguf"]
                                                        .local_path).stat().st_size
    assert store.list_models() == []


def test_show_a_catalog_variant_before_pulling_reads_its_hub_header(hf_server, tiny_model, capsys):
    from localcascade.model.catalog import find_variant

    variant = find_variant("Q4_K_M")
    hf_server.add_file(variant.repo, variant.files[0], tiny_model)

    code, out, err = _cli(["show", "Q4_K_M"], capsys)

    assert code == 0, err
    assert "nemotron_h_moe" in out and "6 Mamba-2" in out
    assert store.list_models() == []      # nothing was downloaded


def test_quantize_a_pulled_model_by_name_writes_outside_the_hub_cache(hf_server, tiny_f16_model, capsys):
    hf_server.add_file("someone/Src-GGUF", "Src-F16.gguf", tiny_f16_model)
    _pull("someone/Src-GGUF:F16")

    code, out, err = _cli(["quantize", "someone/Src-GGUF:F16", "--to", "Q8_0"], capsys)

    assert code == 0, err
    name, _, path = out.strip().split("\t")
    assert name == "Src-Q8_0" and Path(path).is_file()
    assert not Path(path).is_relative_to(_cache())
    assert resolve("Src-Q8_0", need="file").path == Path(path)
    assert {m.name for m in store.list_models()} == {"someone/Src-GGUF:F16", "Src-Q8_0"}


def test_index_updates_from_two_processes_keep_both_records(tmp_path, monkeypatch):
    """A second process updating the index while this one is between load and save must not be lost."""
    import subprocess
    import sys

    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF")
    script = f"from localcascade.store import index as store_index; store_index.record_verified({str(other)!r}, sha256='b' * 64, size=4, verified=True)"
    real_load = store_index.load_index
    seen = []

    def load_then_let_the_other_process_in():
        data = real_load()
        if not seen:
            seen.append(subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy()))
            try:  # it runs to the end unless the index is locked; locked, it waits for our save
                seen[0].wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        return data

    monkeypatch.setattr(store_index, "load_index", load_then_let_the_other_process_in)
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"GGUF")

    store_index.record_verified(mine, sha256="a" * 64, size=4, verified=True)

    assert seen[0].wait(timeout=60) == 0
    monkeypatch.setattr(store_index, "load_index", real_load)
    assert store_index.verified_record(mine)["sha256"] == "a" * 64
    assert store_index.verified_record(other)["sha256"] == "b" * 64


def test_interrupted_index_save_leaves_no_temporary_file(tmp_path, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        store_index.record_verified(f, sha256=None, size=4, verified=False)

    assert [p.name for p in store_index.index_path().parent.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("content", ["[]", '"text"', '{"models": [], "verified": {}}'])
def test_a_malformed_index_is_one_clear_line(content, capsys):
    store_index.index_path().parent.mkdir(parents=True, exist_ok=True)
    store_index.index_path().write_text(content)

    code, out, err = _cli(["list"], capsys)

    assert code == 1 and out == ""
    assert "Traceback" not in err
    assert f"the store index {store_index.index_path()} is not a localcascade index" in err.strip().splitlines()[-1]
    assert store_index.index_path().read_text() == content  # left for the user to look at


def test_pulling_a_registered_name_says_it_is_already_here(tiny_model, capsys):
    store.register_local("mine-Q8_0", [tiny_model], quant="Q8_0", source=None, check="test")
    code, out, err = _cli(["pull", "mine-Q8_0"], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"localcascade: mine-Q8_0 is a model on this machine ({tiny_model}); nothing to pull"


def _lock_path() -> Path:
    return store_index.index_path().with_name(store_index.index_path().name + ".lock")


@pytest.mark.parametrize("content, entry, problem", [
    ('{"models": {"x": {}}}', "models['x']", "no 'files'"),
    ('{"models": {"x": 5}}', "models['x']", "a JSON number, not an object"),
    ('{"models": {"x": {"files": [5]}}}', "models['x']", "its 'files' must be a list of file paths"),
    ('{"models": {"x": {"files": "/a.gguf"}}}', "models['x']", "its 'files' is a JSON string"),
    ('{"verified": {"/a.gguf": {"size": 4}}}', "verified['/a.gguf']", "no 'checked_at'"),
    ('{"verified": {"/a.gguf": []}}', "verified['/a.gguf']", "a JSON array, not an object"),
])
def test_a_malformed_entry_is_one_line_naming_it_and_the_file_is_kept(tiny_model, content, entry, problem, capsys):
    store.register_local("good", [tiny_model], quant="Q8_0", source=None, check="test")
    data = json.loads(store_index.index_path().read_text())
    for section, entries in json.loads(content).items():
        data[section].update(entries)
    text = json.dumps(data)
    store_index.index_path().write_text(text)
    expected = (f"localcascade: the store index {store_index.index_path()} has a malformed entry {entry} ({problem}); "
                "fix or delete that entry by hand (localcascade leaves the file as it is)")

    for args in (["list"], ["show", "good"], ["rm", "good", "--yes"], ["fit", "good"],
                 ["quantize", "good", "--to", "Q4_0"]):
        code, out, err = _cli(args, capsys)
        assert (code, out, err.splitlines()) == (1, "", [expected]), args

    assert store_index.index_path().read_text() == text  # the good entry and the bad one, for the user to fix
    assert tiny_model.exists()


def test_rm_with_an_unwritable_store_is_one_line_and_deletes_nothing(tiny_model, tmp_path, capsys):
    mine = tmp_path / "mine.gguf"
    shutil.copy(tiny_model, mine)
    store.register_local("mine", [mine], quant="Q8_0", source=None, check="test")
    _lock_path().unlink(missing_ok=True)  # filelock leaves it behind
    _lock_path().mkdir()  # a folder where the lock file goes: unwritable even for root

    code, out, err = _cli(["rm", "mine", "--yes"], capsys)

    assert code == 1 and out == ""
    assert err.splitlines()[-1] == (f"localcascade: cannot write {_lock_path()}: Is a directory (the store index "
                                    f"lives in {store_index.index_path().parent}; set LOCALCASCADE_HOME to a writable "
                                    "folder)")
    assert mine.exists()
    assert resolve("mine", need="file").path == mine


def test_a_pull_that_cannot_record_its_check_still_says_it_is_downloaded(served, capsys):
    _lock_path().parent.mkdir(parents=True, exist_ok=True)
    _lock_path().mkdir()

    code, out, err = _cli(["pull", f"{REPO}:Q8_0"], capsys)

    assert code == 0, err
    name, _size, state, path = out.strip().split("\t")
    assert name == f"{REPO}:Q8_0" and state == "sha256 verified" and Path(path).is_file()
    assert "Traceback" not in err
    [note] = [line for line in err.splitlines() if line.startswith("localcascade: note:")]
    assert note == (f"localcascade: note: the download is complete ({path}), but its check could not be recorded: "
                    f"cannot write {_lock_path()}: Is a directory (the store index lives in "
                    f"{store_index.index_path().parent}; set LOCALCASCADE_HOME to a writable folder); "
                    "`localcascade list` shows it as not verified and the next pull checks it again")
    [model] = store.list_models()
    assert model.path == Path(path) and not model.verified


def test_rm_of_a_file_that_cannot_be_deleted_is_one_line_and_keeps_the_entry(tiny_model, tmp_path, capsys,
                                                                            monkeypatch):
    mine = tmp_path / "mine.gguf"
    shutil.copy(tiny_model, mine)
    store.register_local("mine", [mine], quant="Q8_0", source=None, check="test")
    real_unlink = Path.unlink

    def read_only_for_mine(self, *args, **kwargs):
        if self == mine:  # the model's folder is read-only (root cannot be stopped by chmod)
            raise OSError(30, "Read-only file system")
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", read_only_for_mine)

    code, out, err = _cli(["rm", "mine", "--yes"], capsys)

    assert code == 1 and out == ""
    assert err.splitlines()[-1] == f"localcascade: cannot delete {mine}: Read-only file system"
    assert mine.exists() and resolve("mine", need="file").path == mine


def test_show_names_an_unknown_hardware_profile_before_looking_for_the_model(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = _cli(["show", "Q4_K_M", "--gpu", "nosuch"], capsys)
    assert code == 2 and out == "" and "nosuch" in err and "HF_HUB_OFFLINE" not in err


def test_list_tells_of_interrupted_downloads_still_holding_disk(served, capsys):
    _pull(f"{REPO}:Q8_0")
    blobs = next(_cache().glob("models--someone--Tiny-GGUF/blobs"))
    partial = blobs / ("0" * 64 + ".incomplete")   # what an interrupted pull keeps to continue from
    partial.write_bytes(b"\0" * 3000)

    code, out, err = _cli(["list"], capsys)

    assert code == 0 and str(partial) not in out   # the table stays one model per line
    assert f"partial download: 2.9 KiB of a file from {REPO} ({partial}); pulling the same model again" in err


@pytest.mark.parametrize("command", [["ask", "-m"], ["fit"], ["show"], ["quantize", "--to", "Q8_0"]])
def test_a_folder_or_device_named_as_the_model_is_said_to_be_one(command, tmp_path, capsys, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))  # ask reads piped stdin first
    for path, kind in ((tmp_path, "a folder"), (Path("/dev/null"), "not a regular file")):
        args = [*command, str(path)] if command[0] != "ask" else [*command, str(path), "hi"]
        code, out, err = _cli(args, capsys)
        assert code == 1 and out == ""
        assert err == f"localcascade: {path} is {kind}: give a .gguf model file\n"


def _registered_then_deleted(tiny_model, tmp_path) -> Path:
    mine = tmp_path / "mine.gguf"
    shutil.copy(tiny_model, mine)
    store.register_local("mine", [mine], quant="Q8_0", source=None, check="test")
    mine.unlink()   # deleted by hand: only the record is left
    return mine


def test_list_marks_a_registered_model_whose_file_is_gone(tiny_model, tmp_path, capsys):
    mine = _registered_then_deleted(tiny_model, tmp_path)

    code, out, err = _cli(["list"], capsys)

    assert code == 0
    [row] = out.splitlines()[1:]
    assert row.split()[0] == "mine" and "file missing" in row and row.endswith(str(mine))
    assert f"mine: its file {mine} is gone; `localcascade rm mine` forgets it" in err
    code, out, _ = _cli(["list", "--json"], capsys)
    [entry] = json.loads(out)
    assert entry["name"] == "mine" and entry["missing"] and entry["path"] == str(mine)


def test_rm_of_a_model_whose_file_is_gone_forgets_its_record(tiny_model, tmp_path, capsys):
    _registered_then_deleted(tiny_model, tmp_path)

    code, out, err = _cli(["rm", "mine", "--yes"], capsys)

    assert code == 0, err
    assert out.strip() == "removed mine (its file was already gone; the record is forgotten)"
    assert json.loads(store_index.index_path().read_text())["models"] == {}
    code, out, err = _cli(["list"], capsys)
    assert code == 0 and out == "" and "mine" not in err


def test_using_a_model_whose_file_is_gone_says_so(tiny_model, tmp_path, capsys):
    mine = _registered_then_deleted(tiny_model, tmp_path)

    for args in (["show", "mine"], ["fit", "mine"], ["quantize", "mine", "--to", "Q4_0"]):
        code, out, err = _cli(args, capsys)
        assert (code, out) == (1, ""), args
        assert err.splitlines() == [f"localcascade: mine is registered to {mine}, which is gone: "
                                    "`localcascade rm mine` forgets it"], args


def test_rm_of_a_downloaded_model_says_what_it_could_not_delete(served, capsys, monkeypatch):
    """huggingface_hub's deletion logs and skips a blob it may not delete: rm still says so, in one
    line, and fails."""
    pulled = _pull(f"{REPO}:Q8_0")
    blob = pulled.path.resolve()
    real_remove = os.remove

    def blob_is_read_only(path, *args, **kwargs):
        if Path(path) == blob:
            raise PermissionError(13, "Permission denied", str(path))
        return real_remove(path, *args, **kwargs)

    monkeypatch.setattr(os, "remove", blob_is_read_only)

    code, out, err = _cli(["rm", f"{REPO}:Q8_0", "--yes"], capsys)

    assert code == 1 and out == ""
    assert err.splitlines()[-1] == (f"localcascade: cannot delete {blob}: Permission denied "
                                    "(1 file(s) were deleted before it)")
    assert "Traceback" not in err
    assert blob.exists() and not os.path.lexists(pulled.path)   # what is left on disk is what it said
