"""`localcascade doctor` as a user sees it, on this machine and on recorded GPUs."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from pathlib import Path

import llama_cpp
import pytest
from typer.testing import CliRunner

from localcascade.cli.main import app
from localcascade.hardware.profiles import list_profiles

DATA = Path(__file__).parent / "data" / "hardware"
CUDA_REINSTALL = ('CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
                  "llama-cpp-python==0.3.36")
HAS_NVIDIA_DRIVER = ctypes.util.find_library("nvidia-ml") is not None


def doctor(*args: str, nvml: str | None = None, llama: str | None = None):
    env = {"COLUMNS": "200", "NO_COLOR": "1"}
    if nvml:
        env["LOCALCASCADE_NVML_REPLAY"] = str(DATA / f"{nvml}.json")
    if llama:
        env["LOCALCASCADE_LLAMA_REPLAY"] = str(DATA / f"{llama}.json")
    result = CliRunner().invoke(app, ["doctor", *args], env=env)
    assert result.exit_code == 0, result.output
    return result


def doctor_json(**recordings) -> dict:
    return json.loads(doctor("--json", **recordings).stdout)


@pytest.mark.skipif(HAS_NVIDIA_DRIVER, reason="this machine has an NVIDIA driver")
def test_json_on_this_machine_without_gpu():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALCASCADE_")}
    proc = subprocess.run([sys.executable, "-m", "localcascade", "doctor", "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout holds the JSON object and nothing else
    assert data["gpus"] == []
    assert data["ram_total_bytes"] >= data["ram_available_bytes"] > 0
    assert data["cpu"]["logical_cores"] >= 1 and data["cpu"]["model"]
    assert data["disk_free_bytes"] > 0 and data["model_dir"]
    assert data["llama_cpp"]["version"] == llama_cpp.__version__
    assert data["llama_cpp"]["gpu_offload"] == bool(llama_cpp.llama_supports_gpu_offload())
    assert "CPU" in data["llama_cpp"]["backends"]
    assert isinstance(data["warnings"], list)
    assert proc.stderr == ""


def test_json_rtx_4090_with_a_cpu_build_warns_with_the_reinstall_command():
    data = doctor_json(nvml="rtx4090", llama="llama_build_cpu_amx")
    (gpu,) = data["gpus"]
    assert gpu["name"] == "NVIDIA GeForce RTX 4090"
    assert gpu["vram_total_bytes"] == 25757220864 and gpu["vram_free_bytes"] == 24913510400
    assert (gpu["driver_version"], gpu["cuda_version"], gpu["compute_capability"]) == ("560.35.03", "12.6", "8.9")
    assert round(gpu["memory_bandwidth_bytes_per_s"] / 1e9) == 1008
    assert data["llama_cpp"] == {"version": "0.3.36", "gpu_offload": False, "backends": ["CPU"],
                                 "system_info": data["llama_cpp"]["system_info"], "cuda_archs": [],
                                 "wheel_tags": [], "origin": "unknown"}
    assert any(CUDA_REINSTALL in w for w in data["warnings"])


def test_json_rtx_4090_with_a_cuda_build_has_no_offload_warning():
    data = doctor_json(nvml="rtx4090", llama="llama_build_cuda")
    assert data["llama_cpp"]["gpu_offload"] is True
    assert data["llama_cpp"]["backends"] == ["CUDA", "CPU"]
    assert not any("GPU offload" in w for w in data["warnings"])


def test_a_source_build_and_a_prebuilt_wheel_are_told_apart():
    built = doctor_json(nvml="rtx4090", llama="llama_build_cuda")["llama_cpp"]
    assert built["origin"] == "built from source on this machine"
    assert built["cuda_archs"] == [500, 610, 700, 750, 800, 860, 890]
    prebuilt = doctor_json(nvml="rtx4090", llama="llama_build_cuda_prebuilt")["llama_cpp"]
    assert prebuilt["origin"] == "prebuilt wheel" and prebuilt["cuda_archs"] == [750, 800, 860]
    text = doctor(nvml="rtx4090", llama="llama_build_cuda_prebuilt").stdout
    assert "llama-cpp-python 0.3.36 (prebuilt wheel)" in text and "CUDA architectures: 750 800 860" in text


def test_a_card_the_build_was_not_compiled_for_is_a_warning_with_the_rebuild_command():
    data = doctor_json(nvml="rtx4090", llama="llama_build_cuda_prebuilt")   # 8.9 vs 750, 800, 860
    (warning,) = [w for w in data["warnings"] if "CUDA architectures" in w]
    assert "compute capability 8.9" in warning and "embedded PTX" in warning
    assert '-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=89" pip install --force-reinstall' in warning
    covered = doctor_json(nvml="rtx4090", llama="llama_build_cuda")   # 890 is in its list
    assert not any("CUDA architectures" in w for w in covered["warnings"])


def test_this_machines_install_says_where_it_came_from():
    data = doctor_json()
    # pip built the pinned sdist here: PyPI has no wheel of it.
    assert data["llama_cpp"]["origin"] == "built from source on this machine"
    assert data["llama_cpp"]["wheel_tags"] and all("manylinux" not in t for t in data["llama_cpp"]["wheel_tags"])


def test_json_two_gpus():
    data = doctor_json(nvml="two_gpus", llama="llama_build_cuda")
    assert [g["name"] for g in data["gpus"]] == ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"]
    assert [g["index"] for g in data["gpus"]] == [0, 1]


def test_json_no_driver():
    data = doctor_json(nvml="nvml_missing", llama="llama_build_cuda")
    assert data["gpus"] == []
    assert any("driver" in n for n in data["notes"])
    assert not any("GPU offload" in w for w in data["warnings"])


def test_json_failing_nvml_reports_the_lost_gpu():
    data = doctor_json(nvml="nvml_failing", llama="llama_build_cuda")
    assert data["gpus"] == []
    assert any("GPU is lost" in w for w in data["warnings"])


def test_human_output_tables_and_warnings_on_stderr():
    result = doctor(nvml="rtx4090", llama="llama_build_cpu_amx")
    out = result.stdout
    for text in ("NVIDIA GeForce RTX 4090", "23.20/23.99 GiB", "560.35.03/12.6", "8.9",
                 "1008 GB/s", "RAM", "CPU", "SIMD", "Disk", "llama-cpp-python 0.3.36",
                 "GPU offload: no"):
        assert text in out, text
    assert CUDA_REINSTALL in result.stderr
    assert "warning:" not in out


def test_human_output_without_gpu():
    result = doctor(nvml="nvml_missing", llama="llama_build_cuda")
    assert "GPUs: none found" in result.stdout
    assert "GPU offload: yes" in result.stdout and "CUDA, CPU" in result.stdout


def test_profiles_table_and_json():
    ids = {p.id for p in list_profiles()}
    table = doctor("--profiles").stdout
    assert all(i in table for i in ids)
    assert "1008 GB/s" in table and "23.99 GiB" in table
    rows = json.loads(doctor("--profiles", "--json").stdout)
    assert {r["id"] for r in rows} == ids
    rtx4090 = next(r for r in rows if r["id"] == "rtx-4090")
    assert rtx4090["vram_total_bytes"] == 25757220864
    assert rtx4090["memory_bandwidth_bytes_per_s"] == 1008e9


def test_bad_recording_is_one_line_and_exit_1(tmp_path):
    env = {**os.environ, "LOCALCASCADE_NVML_REPLAY": str(tmp_path / "absent.json")}
    proc = subprocess.run([sys.executable, "-m", "localcascade", "doctor", "--json"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("localcascade: cannot read hardware recording")
    assert proc.stderr.count("\n") == 1


@pytest.mark.parametrize("columns", ["0", "5"])
def test_a_tiny_or_zero_terminal_width_still_prints_the_tables(columns):
    result = subprocess.run([sys.executable, "-m", "localcascade", "doctor"], capture_output=True, text=True,
                            env={**os.environ, "COLUMNS": columns, "NO_COLOR": "1"}, timeout=60)
    assert result.returncode == 0
    assert "RAM" in result.stdout and "GiB" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) >= 40
