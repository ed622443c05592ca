"""Classes 1, 2 and 8 (outputs): no command replaces what is not a regular file, nor another model's
file, and two commands that race for one output or one model take turns (the test holds the lock they
meet at, so they meet deterministically, never by timing luck)."""

from __future__ import annotations

import json
import os
import stat


from _support import assert_one_line, cli, holding_lock, popen_cli, wait_until_waiting


def _non_regular_targets(tmp_path):
    """What may sit at an output path: a device node (root only, as in the audit), a FIFO, a folder,
    a symbolic link to a file the user cares about."""
    targets = {}
    if os.geteuid() == 0:
        node = tmp_path / "null"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
        targets["device"] = node
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    targets["pipe"] = fifo
    folder = tmp_path / "folder.gguf"
    folder.mkdir()
    targets["folder"] = folder
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    link = tmp_path / "link.gguf"
    link.symlink_to(precious)
    targets["symbolic link"] = link
    return targets


def _mode(path):
    return os.lstat(path).st_mode


def test_quantize_force_never_replaces_a_device_folder_pipe_or_link(tiny_f16_model, tmp_path):
    for kind, target in _non_regular_targets(tmp_path).items():
        before = _mode(target)
        result = cli("quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(target), "--force")
        line = assert_one_line(result, 2, str(target), "only ever written as a regular file")
        assert "predicted" not in result.stderr, f"{kind}: refused only after the work"
        assert _mode(target) == before, f"the {kind} was replaced: {line}"
        assert _models() == []  # nothing was registered under its name
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_save_replacing_never_replaces_a_device_folder_pipe_or_link(tiny_model, tmp_path):
    targets = _non_regular_targets(tmp_path)
    script = "hi\n" + "".join(f"/save! {target}\n" for target in targets.values()) + "/bye\n"
    result = cli("run", "--model", str(tiny_model), "--no-think", "--max-tokens", "2", stdin=script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    said = (result.stdout + result.stderr).splitlines()
    for kind, target in targets.items():
        [line] = [line for line in said if str(target) in line]
        assert kind in line and "cannot save" in line or "only ever written as a regular file" in line, line
        assert not stat.S_ISREG(_mode(target)), f"/save! replaced the {kind}"
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_quantize_force_does_not_take_another_models_file(tiny_f16_model, tmp_path):
    out = tmp_path / "mine.gguf"
    assert cli("quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(out), "--name", "mine").returncode == 0
    before = out.read_bytes()
    result = cli("quantize", str(tiny_f16_model), "--to", "Q4_0", "--out", str(out), "--name", "other", "--force")
    assert_one_line(result, 2, f"{out} is the file of the model mine", "localcascade rm mine")
    assert out.read_bytes() == before
    assert [m["name"] for m in _models()] == ["mine"]


def _models():
    return json.loads(cli("list", "--json").stdout)


def _registered(name):
    return next(m for m in _models() if m["name"] == name)


def _file_type(path):
    from localcascade.model.gguf_header import read_header

    return read_header(path).metadata["general.file_type"]


def test_two_quantizes_to_one_output_cannot_both_win(tiny_f16_model, tmp_path):
    from localcascade.store import index as store_index

    out = tmp_path / "same.gguf"
    with holding_lock(store_index.outputs_lock_path()):
        runs = [popen_cli("quantize", str(tiny_f16_model), "--to", to, "--out", str(out)) for to in ("Q8_0", "Q4_0")]
        # Both have passed every check and finished the work: they wait to put their file in place.
        wait_until_waiting(store_index.outputs_lock_path(), runs)
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    [(_, _, loser_err)] = [r for r in results if r[0] == 2]
    loser_said = loser_err.strip().splitlines()[-1]  # refused under the lock: the name or the file is taken
    assert str(out) in loser_said and ("already registered" in loser_said or "appeared while" in loser_said)
    # The index describes the file that is there: same size, same type.
    model = _registered("same")
    assert model["size"] == out.stat().st_size
    winner_type = {"Q8_0": 7, "Q4_0": 2}[model["quant"]]
    assert _file_type(out) == winner_type


def test_two_forced_quantizes_to_one_output_leave_file_and_index_agreeing(tiny_f16_model, tmp_path):
    from localcascade.store import index as store_index

    out = tmp_path / "same.gguf"
    with holding_lock(store_index.outputs_lock_path()):
        runs = [popen_cli("quantize", str(tiny_f16_model), "--to", to, "--out", str(out), "--force")
                for to in ("Q8_0", "Q4_0")]
        wait_until_waiting(store_index.outputs_lock_path(), runs)
    assert [run.wait(timeout=300) for run in runs] == [0, 0], [run.communicate() for run in runs]
    model = _registered("same")
    assert model["size"] == out.stat().st_size
    assert _file_type(out) == {"Q8_0": 7, "Q4_0": 2}[model["quant"]]


def test_two_rm_of_one_model_remove_it_once(tiny_f16_model, tmp_path):
    from localcascade.store import index as store_index

    out = tmp_path / "gone.gguf"
    assert cli("quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(out)).returncode == 0
    with holding_lock(store_index.index_lock_path()):
        runs = [popen_cli("rm", "gone", "--yes") for _ in range(2)]
        wait_until_waiting(store_index.index_lock_path(), runs)  # both found the model; both wait to delete it
    results = [(run.wait(timeout=120), *run.communicate()) for run in runs]
    assert sorted(code for code, _, _ in results) == [0, 1], results
    assert sum("removed gone" in stdout for _, stdout, _ in results) == 1
    [(_, _, err)] = [r for r in results if r[0] == 1]
    assert err.strip().splitlines()[-1] == "localcascade: gone is no longer in the store (another command removed it)"
    assert not out.exists()
