"""quant/ and `localcascade quantize` on the QUANTIZABLE F16 test model (rows are multiples of 256)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest

from quant.quantize import dry_run, quantize
from quant.targets import MAIN_TYPE
from localcascade.store import models as store
from localcascade.store import index as store_index
from localcascade.errors import DiskSpaceError, QuantizeError, UsageError
from localcascade.resolve.resolver import resolve

# The targets the project promises, and two more the ftype table allows.
TARGETS = ["IQ4_XS", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "Q5_K_S"]


def _load_and_eval(path: Path) -> list[float]:
    """Load a GGUF with llama.cpp on the CPU and evaluate two tokens; return the last logits."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=64, n_batch=8, n_gpu_layers=0, logits_all=True, verbose=False)
    try:
        llm.eval([1, 42])
        return list(llm.scores[1])
    finally:
        llm.close()


@pytest.mark.parametrize("target", TARGETS)
def test_each_target_quantizes_checks_and_loads(tiny_f16_model, tmp_path, target):
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    seen = []

    result = quantize(tiny_f16_model, tmp_path / "out.gguf", target, progress=lambda d, t, n: seen.append(d))

    assert result.path == tmp_path / "out.gguf" and result.path.is_file()
    assert result.main_type == MAIN_TYPE[target]  # no fallback types on this shape
    assert result.histogram[MAIN_TYPE[target]] > 0
    assert result.loaded and result.n_params > 0
    # llama.cpp's dry run predicts the file size to within the metadata's few bytes.
    assert abs(result.output_bytes - result.predicted_bytes) < 4096
    assert seen == sorted(seen) and seen[-1] == sum(result.histogram.values())  # one call per tensor, to the end
    assert all(math.isfinite(x) for x in _load_and_eval(result.path))
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]  # no temporary left behind


def test_dry_run_writes_nothing_and_shrinks_with_fewer_bits(tiny_f16_model, tmp_path):
    sizes = {t: dry_run(tiny_f16_model, t).predicted_bytes for t in ("Q8_0", "Q6_K", "Q4_K_M")}
    assert sizes["Q8_0"] > sizes["Q6_K"] > sizes["Q4_K_M"]
    assert sizes["Q8_0"] < tiny_f16_model.stat().st_size


def test_already_quantized_source_is_refused_unless_allowed(tiny_f16_model, tmp_path):
    q8 = quantize(tiny_f16_model, tmp_path / "q8.gguf", "Q8_0", verify_load=False).path

    with pytest.raises(QuantizeError, match=r"already quantized \(Q8_0.*--allow-requantize"):
        quantize(q8, tmp_path / "q4.gguf", "Q4_K_M")
    assert not (tmp_path / "q4.gguf").exists()

    again = quantize(q8, tmp_path / "q4.gguf", "Q4_0", allow_requantize=True, verify_load=False)
    assert again.main_type == "Q4_0"


def test_not_enough_disk_is_refused_before_work(tiny_f16_model, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))

    with pytest.raises(DiskSpaceError, match=r"not enough disk space in .*: need 0\.01 GiB, 0\.00 GiB free"):
        quantize(tiny_f16_model, tmp_path / "out.gguf", "Q8_0")
    assert not (tmp_path / "out.gguf").exists()


def test_failure_leaves_no_output(tiny_f16_model, tmp_path):
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    bad = tmp_path / "bad.imatrix"
    bad.write_bytes(b"\x00\x00")
    with pytest.raises(QuantizeError, match="imatrix"):
        quantize(tiny_f16_model, tmp_path / "out.gguf", "Q4_K_M", imatrix=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.imatrix"]


def test_imatrix_is_used(tiny_f16_model, tmp_path):
    """A legacy-format importance matrix (all ones) for every quantized weight is accepted."""
    import struct

    from quant.gguf_facts import read_facts

    facts = read_facts(tiny_f16_model)
    entries = [(n, ne) for n, ne in facts.tensor_ne.items() if n.endswith(".weight") and len(ne) >= 2]
    data = struct.pack("<i", len(entries))
    for name, ne in entries:
        n_values = ne[0] * (ne[2] if len(ne) > 2 else 1)  # per input column, per expert
        data += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", 1, n_values)
        data += struct.pack(f"<{n_values}f", *([1.0] * n_values))
    imatrix = tmp_path / "ones.dat"
    imatrix.write_bytes(data)

    result = quantize(tiny_f16_model, tmp_path / "out.gguf", "IQ4_XS", imatrix=imatrix)
    assert result.main_type == "IQ4_XS" and result.loaded


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "localcascade", *args], capture_output=True, text=True,
                          env=os.environ.copy(), **kwargs)


def test_cli_quantize_registers_the_result(tiny_f16_model, tmp_path):
    out = tmp_path / "out.gguf"

    done = _cli("quantize", str(tiny_f16_model), "--to", "q8_0", "--out", str(out))

    assert done.returncode == 0, done.stderr
    assert "predicted" in done.stderr.splitlines()[0]
    assert done.stdout.split("\t")[0] == "out" and str(out) in done.stdout
    assert out.is_file()
    listed = json.loads(_cli("list", "--json").stdout)
    [entry] = [m for m in listed if m["name"] == "out"]
    assert entry["quant"] == "Q8_0" and entry["verified"] and entry["source"] == str(tiny_f16_model)
    assert resolve("out", need="file").path == out  # `run out` / `fit out` find it by name


def test_cli_refuses_requantize_and_unknown_types(tiny_f16_model, tmp_path):
    q8 = quantize(tiny_f16_model, tmp_path / "q8.gguf", "Q8_0", verify_load=False).path

    refused = _cli("quantize", str(q8), "--to", "Q4_K_M", "--out", str(tmp_path / "x.gguf"))
    assert refused.returncode == 1 and "--allow-requantize" in refused.stderr
    assert "Traceback" not in refused.stderr

    unknown = _cli("quantize", str(tiny_f16_model), "--to", "Q9_Z")
    assert unknown.returncode == 2 and "unknown quantization type 'Q9_Z'" in unknown.stderr
    assert not (tmp_path / "x.gguf").exists()


def test_ctrl_c_during_quantize_leaves_no_output(tiny_f16_model, tmp_path):
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    out = tmp_path / "out.gguf"
    proc = subprocess.Popen(
        [sys.executable, "-m", "localcascade", "quantize", str(tiny_f16_model), "--to", "IQ4_XS", "--out", str(out)],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=os.environ.copy(),
    )
    try:
        for line in proc.stderr:  # wait until the quantizer is part-way through
            if "quantizing to IQ4_XS:" in line and not line.split(":")[1].strip().startswith("0/"):
                break
        partials = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
        assert partials, "the quantizer should be writing its temporary output now"
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder went too
    time.sleep(0.2)
    assert not _workers_writing_to(tmp_path)


def test_a_killed_quantize_leaves_work_that_the_next_one_removes(tiny_f16_model, tmp_path):
    """SIGKILL skips every clean-up; the next quantization into the folder frees the space, and
    leaves alone the work folder of a quantization that is still running."""
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    cmd = [sys.executable, "-m", "localcascade", "quantize", str(tiny_f16_model), "--to", "IQ4_XS"]
    proc = subprocess.Popen([*cmd, "--out", str(tmp_path / "killed.gguf")], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=os.environ.copy())
    try:
        for line in proc.stderr:
            if "quantizing to IQ4_XS:" in line and not line.split(":")[1].strip().startswith("0/"):
                break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    [killed] = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    running = tmp_path / ".running.gguf.abc123.partial"
    running.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from filelock import FileLock; lock = FileLock(sys.argv[1]); lock.acquire(); "
        "print('held', flush=True); time.sleep(120)"), str(running / ".lock")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        old = time.time() - 3600  # both look long abandoned by their age alone
        for folder in (killed, running):
            os.utime(folder, (old, old))

        result = _cli("quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(tmp_path / "next.gguf"))

        assert result.returncode == 0, result.stderr
        assert "left in" in result.stderr and "by a quantization that was killed" in result.stderr
        assert not killed.exists() and running.is_dir()
        assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "next.gguf"]
    finally:
        holder.kill()
        holder.wait()


def _workers_writing_to(folder: Path) -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(p.info["cmdline"] or [])
        if "quant._worker" in cmdline and str(folder) in cmdline:
            pids.append(p.pid)
    return pids


def test_output_check_loads_memory_mapped_through_real_struct_fields():
    """Every setting reaches llama.cpp: an unknown field name would only become a Python attribute."""
    import llama_cpp

    from quant._worker import _load_params

    params = _load_params(llama_cpp)

    assert vars(params) == {}  # nothing set outside the C struct
    assert params.load_mode == llama_cpp.LLAMA_LOAD_MODE_MMAP
    assert params.n_gpu_layers == 0 and params.use_extra_bufts is False


def _cli_in_process(args, capsys):
    from localcascade.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.parametrize("name", ["Q4_K_M", "q8_0"])
def test_cli_refuses_a_catalog_variant_name_before_any_work(tiny_f16_model, tmp_path, capsys, name):
    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q4_0", "--name", name,
                                    "--out", str(tmp_path / "x.gguf"), "--force"], capsys)

    assert code == 2 and "catalog variant" in err and "predicted" not in err
    assert not (tmp_path / "x.gguf").exists() and store.list_models() == []


def test_cli_refuses_an_existing_name_or_output_unless_forced(tiny_f16_model, tmp_path, capsys):
    first, second = tmp_path / "first.gguf", tmp_path / "second.gguf"
    assert _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(first),
                            "--name", "mine"], capsys)[0] == 0
    before = first.read_bytes()

    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q4_0", "--out", str(first),
                                    "--name", "other"], capsys)
    assert code == 2 and "already exists" in err and "--force" in err and "predicted" not in err
    assert first.read_bytes() == before

    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q4_0", "--out", str(second),
                                    "--name", "mine"], capsys)
    assert code == 2 and "already registered" in err and "--force" in err and "predicted" not in err
    assert not second.exists() and resolve("mine", need="file").path == first

    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q4_0", "--out", str(second),
                                    "--name", "mine", "--force"], capsys)
    assert code == 0, err
    assert resolve("mine", need="file").path == second
    assert f"{first}" in err and "no longer registered" in err  # the user learns about the old file

    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(second),
                                    "--name", "mine", "--force"], capsys)
    assert code == 0, err
    [entry] = [m for m in store.list_models() if m.name == "mine"]
    assert entry.path == second and entry.quant == "Q8_0"


def test_cli_refuses_an_existing_output_unless_forced(tiny_f16_model, tmp_path, capsys):
    out = tmp_path / "out.gguf"
    out.write_bytes(b"someone else's file")

    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(out)], capsys)
    assert code == 2 and "already exists" in err and "--force" in err and "predicted" not in err
    assert out.read_bytes() == b"someone else's file"

    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(out), "--force"],
                                   capsys)
    assert code == 0, err
    assert out.read_bytes()[:4] == b"GGUF"


def test_cli_refuses_a_missing_out_folder_or_the_source_before_the_dry_run(tiny_f16_model, tmp_path, capsys):
    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0",
                                    "--out", str(tmp_path / "nowhere" / "x.gguf")], capsys)
    assert code == 2 and "output directory" in err and "does not exist" in err and "predicted" not in err

    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(tiny_f16_model),
                                    "--force"], capsys)
    assert code == 2 and "is the source file" in err and "predicted" not in err
    assert not (tmp_path / "nowhere").exists()


def _unwritable_store() -> Path:
    """A store whose lock file cannot be created, even by root (chmod would not stop root):
    a folder sits where the lock file goes."""
    lock = store_index.index_path().with_name(store_index.index_path().name + ".lock")
    lock.mkdir(parents=True)
    return lock


def test_cli_refuses_an_unwritable_store_before_any_work(tiny_f16_model, tmp_path, capsys):
    lock = _unwritable_store()
    out = tmp_path / "out.gguf"

    code, stdout, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(out)], capsys)

    assert code == 1 and stdout == ""
    assert err.splitlines() == [f"localcascade: cannot write {lock}: Is a directory (the store index lives in "
                                f"{lock.parent}; set LOCALCASCADE_HOME to a writable folder)"]
    assert not out.exists() and list(tmp_path.glob(".out.gguf.*")) == []


def test_cli_says_where_the_file_is_when_registering_fails_after_the_work(tiny_f16_model, tmp_path, capsys,
                                                                          monkeypatch):
    from localcascade.errors import LocalCascadeError

    def store_went_read_only(*args, **kwargs):
        raise LocalCascadeError("cannot write /somewhere/store.json: Read-only file system")

    monkeypatch.setattr(store, "register_local", store_went_read_only)
    out = tmp_path / "out.gguf"

    code, stdout, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(out)], capsys)

    assert code == 1 and stdout == ""
    assert err.splitlines()[-1] == (f"localcascade: wrote {out}, but could not register it as out: cannot write "
                                    "/somewhere/store.json: Read-only file system; use it by its path")
    assert out.is_file()


@pytest.mark.parametrize("threads", ["-1", "100000"])
def test_cli_refuses_a_thread_count_llama_cpp_cannot_use(tiny_f16_model, tmp_path, capsys, threads):
    out = tmp_path / "out.gguf"

    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--threads", threads,
                                    "--out", str(out)], capsys)

    most = 4 * os.cpu_count()
    assert code == 2
    assert err.splitlines() == [f"localcascade: --threads takes 0 (all cores) to {most} (4 per core here), "
                                f"not {threads}"]
    assert not out.exists()
    with pytest.raises(UsageError):
        quantize(tiny_f16_model, out, "Q8_0", nthread=int(threads))


def test_cli_refuses_an_output_folder_it_cannot_write_before_the_dry_run(tiny_f16_model, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "read-only"
    locked.mkdir()
    real_access = os.access
    # Tests run as root, which writes anywhere but on a read-only mount: stand in for that mount.
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if Path(path) == locked else real_access(path, mode, **kw))
    code, _, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(locked / "x.gguf")], capsys)
    assert code == 2 and f"cannot write in {locked}" in err and "predicted" not in err
    assert list(locked.iterdir()) == []


def test_cli_quantize_to_the_path_of_a_stale_record_replaces_it_before_any_work(tiny_f16_model, tmp_path, capsys):
    """A registered model whose file was deleted by hand: quantizing to that path again needs no
    --force, and the record is decided on up front, not refused after the work."""
    out = tmp_path / "out.gguf"
    assert _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q8_0", "--out", str(out)], capsys)[0] == 0
    out.unlink()

    code, stdout, err = _cli_in_process(["quantize", str(tiny_f16_model), "--to", "Q4_0", "--out", str(out)], capsys)

    assert code == 0, err
    lines = err.splitlines()
    note = f"note: out was registered to {out}, which is gone; it will name the new file"
    assert note in lines and lines.index(note) < next(i for i, l in enumerate(lines) if "predicted" in l)
    assert stdout.split("\t")[0] == "out" and out.is_file()
    [entry] = [m for m in store.list_models() if m.name == "out"]
    assert entry.path == out and entry.quant == "Q4_0" and not entry.missing
    assert store.stale_models() == []
