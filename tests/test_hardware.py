"""The hardware probe on recorded answers of NVML, sysctl, sysfs, psutil and llama-cpp-python,
the hardware profiles, and the resolution of --gpu/--vram/--ram into a Hardware."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pynvml
import pytest

from localcascade.errors import HardwareError, UsageError
from localcascade.hardware import advice, amd, apple, cpu, disk, llama_build, nvidia, probe, profiles
from localcascade.hardware.facts import GPU, Hardware
from localcascade.hardware.replay import LlamaBuildReplay, NVMLReplay, PsutilReplay, load_recording
from localcascade.hardware.resolve import hardware_for

DATA = Path(__file__).parent / "data" / "hardware"
GiB = 1024**3


def nvml(name: str) -> NVMLReplay:
    return NVMLReplay.from_file(DATA / f"{name}.json")


# --- NVIDIA ---------------------------------------------------------------------------------

def test_one_rtx_4090_is_read_exactly():
    found = nvidia.gpus(nvml("rtx4090"))
    assert found.warnings == [] and found.notes == []
    (gpu,) = found.gpus
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    assert gpu.vram_total_bytes == 25757220864
    assert gpu.vram_free_bytes == 24913510400
    assert gpu.driver_version == "560.35.03"
    assert gpu.cuda_version == "12.6"
    assert gpu.compute_capability == "8.9"
    assert gpu.vendor == "nvidia" and gpu.index == 0 and not gpu.unified_memory
    # 10501 MHz x 2 (data rate) x 384 bit / 8 = the 1008 GB/s of the spec sheet.
    assert gpu.memory_bandwidth_bytes_per_s == pytest.approx(1008.096e9)


def test_two_gpus_keep_their_order_and_a_missing_bus_width_falls_back_to_the_profile():
    found = nvidia.gpus(nvml("two_gpus"))
    assert [g.name for g in found.gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"]
    assert [g.index for g in found.gpus] == [0, 1]
    assert [g.compute_capability for g in found.gpus] == ["8.9", "8.6"]
    assert {g.cuda_version for g in found.gpus} == {"12.4"}
    # The 3090 did not answer the bus width: its bandwidth comes from the rtx-3090 profile.
    assert found.gpus[1].memory_bandwidth_bytes_per_s == pytest.approx(936.2e9)
    assert found.warnings == []


def test_no_nvidia_driver_is_an_empty_list_and_a_note():
    found = nvidia.gpus(nvml("nvml_missing"))
    assert found.gpus == [] and found.warnings == []
    assert len(found.notes) == 1 and "driver" in found.notes[0]


def test_failing_nvml_gives_warnings_not_exceptions():
    found = nvidia.gpus(nvml("nvml_failing"))  # nvmlShutdown raises too; that must not escape
    assert found.gpus == []
    assert len(found.warnings) == 2
    assert "GPU 0" in found.warnings[0] and "GPU is lost" in found.warnings[0]
    assert "GPU 1" in found.warnings[1] and "Unknown Error" in found.warnings[1]


def test_unknown_gpu_without_clocks_has_no_bandwidth_until_resolved():
    (gpu,) = nvidia.gpus(nvml("rtx_a6000_no_clocks")).gpus
    assert gpu.name == "NVIDIA RTX A6000" and gpu.memory_bandwidth_bytes_per_s is None
    assert gpu.cuda_version == "11.4"
    detected = Hardware(gpus=(gpu,), ram_total_bytes=64 * GiB, ram_available_bytes=60 * GiB)
    resolved = hardware_for(detect_fn=lambda: detected)
    # 48 GiB class default, and the assumption is stated.
    assert resolved.gpus[0].memory_bandwidth_bytes_per_s == pytest.approx(864e9)
    assert any("NVIDIA RTX A6000" in n and "assumed 864 GB/s" in n for n in resolved.notes)
    assert any("RAM bandwidth assumed" in n for n in resolved.notes)


def test_replay_raises_real_pynvml_errors():
    replay = nvml("nvml_missing")
    with pytest.raises(pynvml.NVMLError_LibraryNotFound):
        replay.nvmlInit()
    assert replay.NVML_CLOCK_MEM == pynvml.NVML_CLOCK_MEM


def test_recording_this_machine_replays_to_the_same_answer():
    from localcascade.hardware.replay import record

    recording = record(nvml("two_gpus"))
    again = nvidia.gpus(NVMLReplay(recording))
    assert again.gpus == nvidia.gpus(nvml("two_gpus")).gpus


def test_nvml_replay_env_var_feeds_the_probe(monkeypatch):
    monkeypatch.setenv("LOCALCASCADE_NVML_REPLAY", str(DATA / "rtx4090.json"))
    assert [g.name for g in nvidia.gpus().gpus] == ["NVIDIA GeForce RTX 4090"]


def test_unreadable_recording_is_a_hardware_error(tmp_path):
    with pytest.raises(HardwareError, match="cannot read"):
        load_recording(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HardwareError, match="not valid JSON"):
        load_recording(bad)


# --- Apple, AMD -----------------------------------------------------------------------------

def _apple(overrides: dict | None = None):
    rec = load_recording(DATA / "apple_m4max_64gb.json")
    answers = {**rec["sysctl"], **(overrides or {})}
    return apple.gpus(sysctl=answers.get, **rec["platform"])


def test_apple_silicon_is_one_unified_gpu_with_the_default_metal_share():
    found = _apple()
    (gpu,) = found.gpus
    assert gpu.unified_memory and gpu.vendor == "apple" and gpu.name == "Apple M4 Max"
    assert gpu.vram_total_bytes == 48 * GiB  # 75% of 64 GiB
    assert gpu.memory_bandwidth_bytes_per_s == pytest.approx(546e9)  # the 64 GB M4 Max profile
    assert any("75%" in n for n in found.notes)


def test_apple_wired_limit_replaces_the_default_share():
    (gpu,) = _apple({"iogpu.wired_limit_mb": "57344"}).gpus
    assert gpu.vram_total_bytes == 56 * GiB


def test_apple_small_mac_gets_two_thirds():
    (gpu,) = _apple({"hw.memsize": str(16 * GiB)}).gpus
    assert gpu.vram_total_bytes == int(16 * GiB * 2 / 3)


def test_apple_probe_ignores_other_platforms():
    assert apple.gpus(sysctl=lambda name: "1", system="Linux", machine="x86_64").gpus == []
    assert apple.gpus(sysctl=lambda name: "1", system="Darwin", machine="x86_64").gpus == []


def test_amd_vram_from_sysfs(tmp_path):
    for rel, text in load_recording(DATA / "amd_rx7900xtx.json")["files"].items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = amd.gpus(drm_root=tmp_path)
    (gpu,) = found.gpus
    assert gpu.name == "Radeon RX 7900 XTX" and gpu.vendor == "amd"
    assert gpu.vram_total_bytes == 25753026560
    assert gpu.vram_free_bytes == 25753026560 - 1288155136
    assert amd.gpus(drm_root=tmp_path / "nothing").gpus == []


# --- CPU, RAM, disk, llama.cpp build ----------------------------------------------------------

def test_memory_and_cores_from_psutil_recording():
    ps = PsutilReplay.from_file(DATA / "psutil_64gib.json")
    assert cpu.memory(ps) == (67324596224, 58518450176)
    info = cpu.cpu(ps, cpuinfo=(DATA / "cpuinfo_ryzen_7950x.txt").read_text(), system="Linux")
    assert info.model == "AMD Ryzen 9 7950X 16-Core Processor"
    assert (info.physical_cores, info.logical_cores) == (8, 16)
    assert "avx512f" in info.features and "avx2" in info.features
    assert not any(f.startswith("amx") for f in info.features)


def test_cpu_features_of_interest():
    xeon = cpu.features_from_cpuinfo((DATA / "cpuinfo_xeon_amx.txt").read_text())
    assert {"amx_tile", "amx_int8", "amx_bf16", "avx512_bf16", "avx2", "fma", "f16c"} <= set(xeon)
    assert "sse2" not in xeon and "avx512_fp16" not in xeon  # only the features of interest
    arm = cpu.features_from_cpuinfo((DATA / "cpuinfo_graviton3.txt").read_text())
    assert set(arm) == {"neon", "dotprod", "i8mm", "sve"}


def test_mac_cpu_from_sysctl():
    ps = PsutilReplay.from_file(DATA / "psutil_64gib.json")
    answers = load_recording(DATA / "apple_m4max_64gb.json")["sysctl"]
    info = cpu.cpu(ps, sysctl=answers.get, system="Darwin", machine="arm64")
    assert info.model == "Apple M4 Max" and info.features == ("neon", "dotprod")


def test_disk_free_is_measured_at_the_nearest_existing_parent(tmp_path):
    free, where = disk.free_bytes(tmp_path / "not" / "yet" / "there")
    assert where == tmp_path and free is not None and free > 0


def test_llama_build_from_a_cuda_recording():
    build = llama_build.build(LlamaBuildReplay.from_file(DATA / "llama_build_cuda.json"))
    assert build.version == "0.3.36" and build.gpu_offload is True
    assert build.backends == ("CUDA", "CPU")
    assert build.system_info.startswith("CUDA : ARCHS")


def test_llama_build_of_this_environment_matches_the_library():
    import llama_cpp

    build = llama_build.build()
    assert build.version == llama_cpp.__version__
    assert build.gpu_offload == bool(llama_cpp.llama_supports_gpu_offload())
    assert "CPU" in build.backends


def test_detect_this_machine(tmp_path):
    hw = probe.detect(model_dir=tmp_path)
    assert hw.source == "detected" and hw.model_dir == str(tmp_path)
    assert hw.ram_total_bytes >= hw.ram_available_bytes > 0
    assert hw.cpu.logical_cores >= hw.cpu.physical_cores >= 1
    assert hw.disk_free_bytes and hw.disk_free_bytes > 0
    json.dumps(hw.to_dict())  # plain data all the way down


# --- advice ---------------------------------------------------------------------------------

def _with_build(name: str, gpus=()) -> Hardware:
    build = llama_build.build(LlamaBuildReplay.from_file(DATA / f"{name}.json"))
    return Hardware(gpus=tuple(gpus), llama_cpp=build)


def test_gpu_without_offload_gets_the_exact_reinstall_command():
    gpus = nvidia.gpus(nvml("rtx4090")).gpus
    (warning,) = advice.warnings(_with_build("llama_build_cpu_amx", gpus))
    assert ('CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
            "llama-cpp-python==0.3.36") in warning
    assert advice.warnings(_with_build("llama_build_cuda", gpus)) == []


def test_mac_without_metal_gets_the_metal_command():
    hw = _with_build("llama_build_cpu_amx", _apple().gpus)
    (warning,) = advice.warnings(hw)
    assert 'CMAKE_ARGS="-DGGML_METAL=on"' in warning


def test_amx_cpu_warns_with_the_portable_build():
    xeon = cpu.cpu(PsutilReplay.from_file(DATA / "psutil_64gib.json"),
                   cpuinfo=(DATA / "cpuinfo_xeon_amx.txt").read_text(), system="Linux")
    native = replace(_with_build("llama_build_cpu_amx"), cpu=xeon)
    (warning,) = advice.warnings(native)
    assert "SIGILL" in warning and "this llama.cpp build uses AMX" in warning
    assert "-DGGML_NATIVE=OFF" in warning
    ryzen = cpu.cpu(PsutilReplay.from_file(DATA / "psutil_64gib.json"),
                    cpuinfo=(DATA / "cpuinfo_ryzen_7950x.txt").read_text(), system="Linux")
    assert advice.warnings(replace(native, cpu=ryzen)) == []


# --- profiles -------------------------------------------------------------------------------

EXPECTED_PROFILES = {
    "rtx-5090", "rtx-4090", "rtx-4080", "rtx-4070-ti", "rtx-4060-ti-16gb", "rtx-4060", "rtx-3090",
    "rtx-3060-12gb", "rtx-5060-ti-16gb", "rtx-2080-ti", "a100-40gb", "a100-80gb", "h100-80gb", "l4",
    "apple-m4-max-36gb",
    "apple-m4-pro-48gb", "apple-m4-max-64gb", "apple-m4-max-128gb", "cpu-only",
}


def test_every_profile_file_loads_into_sane_hardware():
    shipped = {p.id for p in profiles.list_profiles()}
    assert shipped == EXPECTED_PROFILES
    for profile in profiles.list_profiles():
        hw = profiles.load_profile(profile.id)
        assert hw.source == f"profile:{profile.id}"
        assert hw.ram_total_bytes >= hw.ram_available_bytes > 0
        assert hw.ram_bandwidth_bytes_per_s > 1e9
        for gpu in hw.gpus:
            assert 0 < gpu.vram_free_bytes <= gpu.vram_total_bytes
            assert 100e9 < gpu.memory_bandwidth_bytes_per_s < 10e12
            assert hw.llama_cpp.gpu_offload
        assert bool(hw.gpus) == (profile.vendor != "cpu")


def test_profile_numbers_match_nvml_and_spec_sheets():
    rtx4090 = profiles.load_profile("rtx-4090").gpus[0]
    recorded = nvidia.gpus(nvml("rtx4090")).gpus[0]
    assert rtx4090.vram_total_bytes == recorded.vram_total_bytes == 25757220864
    assert rtx4090.name == recorded.name
    assert rtx4090.memory_bandwidth_bytes_per_s == 1008e9
    mac = profiles.load_profile("apple-m4-max-128gb")
    assert mac.gpus[0].unified_memory and mac.ram_total_bytes == 128 * GiB
    assert mac.gpus[0].vram_total_bytes == 96 * GiB


@pytest.mark.parametrize("alias", ["4090", "rtx4090", "RTX 4090", "rtx-4090", "NVIDIA GeForce RTX 4090"])
def test_profile_aliases(alias):
    assert profiles.load_profile(alias).source == "profile:rtx-4090"


def test_unknown_profile_is_one_line_with_close_matches():
    with pytest.raises(HardwareError) as err:
        profiles.load_profile("rtx 4091")
    message = str(err.value)
    assert "\n" not in message and "rtx-4090" in message
    with pytest.raises(HardwareError, match="a100-40gb.*a100-80gb|a100-80gb.*a100-40gb"):
        profiles.load_profile("a100")


# --- resolve: --gpu / --vram / --ram --------------------------------------------------------

def _never_detect():
    raise AssertionError("a profile must not probe the machine")


def _machine() -> Hardware:
    return Hardware(
        gpus=(),
        ram_total_bytes=32 * GiB,
        ram_available_bytes=28 * GiB,
        cpu=cpu.cpu(PsutilReplay.from_file(DATA / "psutil_64gib.json"),
                    cpuinfo=(DATA / "cpuinfo_ryzen_7950x.txt").read_text(), system="Linux"),
        disk_free_bytes=100 * GiB,
        notes=("no NVIDIA GPU: the NVIDIA driver is not available",),
    )


def test_resolve_profile():
    hw = hardware_for(gpu="4090", vram=None, ram=None, detect_fn=_never_detect)
    assert hw.source == "profile:rtx-4090" and hw.gpus[0].vram_total_bytes == 25757220864
    assert hw.ram_total_bytes == 64 * GiB and hw.ram_bandwidth_bytes_per_s == 70e9


def test_resolve_ram_overrides_a_profile():
    hw = hardware_for(gpu="rtx-4090", vram=None, ram="128GiB", detect_fn=_never_detect)
    assert hw.ram_total_bytes == 128 * GiB and hw.ram_available_bytes == 124 * GiB
    assert hw.gpus[0].vram_total_bytes == 25757220864
    mac = hardware_for(gpu="apple-m4-max-64gb", vram=None, ram="128GiB", detect_fn=_never_detect)
    assert mac.gpus[0].vram_total_bytes == 96 * GiB  # the Metal share follows the memory


def test_resolve_manual_vram_on_this_machine():
    hw = hardware_for(gpu=None, vram="24GiB", ram="64GiB", detect_fn=_machine)
    assert hw.source == "manual"
    (gpu,) = hw.gpus
    assert gpu.vram_total_bytes == gpu.vram_free_bytes == 24 * GiB
    assert gpu.memory_bandwidth_bytes_per_s == 936e9  # typical 24 GiB card, stated
    assert any("typical of its VRAM class" in n for n in hw.notes)
    assert not any(n.startswith("no NVIDIA GPU") for n in hw.notes)
    assert hw.llama_cpp.gpu_offload  # what would fit with a GPU build
    assert hw.ram_total_bytes == 64 * GiB and hw.cpu.model.startswith("AMD Ryzen")


def test_resolve_detected_with_ram_override():
    hw = hardware_for(gpu=None, vram=None, ram="16GiB", detect_fn=_machine)
    assert hw.source == "detected" and hw.ram_total_bytes == 16 * GiB
    assert hw.ram_available_bytes == 12 * GiB
    assert hw.ram_bandwidth_bytes_per_s == 45e9


def test_resolve_detected_unchanged_by_default():
    hw = hardware_for(detect_fn=_machine)
    assert hw.ram_total_bytes == 32 * GiB and hw.gpus == ()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gpu="4090", vram="24GiB"), "not both"),
        (dict(vram="lots"), "cannot read size"),
        (dict(vram="0GiB"), "above zero"),
        (dict(ram="-4GiB"), "cannot read size"),
    ],
)
def test_resolve_bad_input_is_a_usage_error(kwargs, match):
    with pytest.raises(UsageError, match=match):
        hardware_for(detect_fn=_machine, **kwargs)


def test_unified_memory_bandwidth_is_the_ram_bandwidth():
    mac_gpu = GPU(name="Apple M4 Pro", vram_total_bytes=36 * GiB, vram_free_bytes=36 * GiB,
                  vendor="apple", unified_memory=True)
    hw = hardware_for(detect_fn=lambda: Hardware(gpus=(mac_gpu,), ram_total_bytes=48 * GiB))
    assert hw.gpus[0].memory_bandwidth_bytes_per_s == 273e9 == hw.ram_bandwidth_bytes_per_s
