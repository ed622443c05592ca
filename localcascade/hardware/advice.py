"""What a user should fix about their setup, in words, from the facts alone."""

from __future__ import annotations

import re
from importlib import metadata

from localcascade.hardware.facts import Hardware

# CMake flags that give llama.cpp each vendor's GPU backend.
GPU_BUILD_FLAGS = {"nvidia": "-DGGML_CUDA=on", "apple": "-DGGML_METAL=on", "amd": "-DGGML_HIP=on"}
# A portable x86 build: no -march=native, so no AMX code a virtual machine may refuse.
PORTABLE_CPU_FLAGS = "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
AMX_FEATURES = ("amx_tile", "amx_int8", "amx_bf16")


def llama_cpp_requirement() -> str:
    """The llama-cpp-python this project pins ("llama-cpp-python==0.3.36"), read from its metadata."""
    try:
        for requirement in metadata.requires("localcascade") or ():
            name = re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0]
            if name.lower().replace("_", "-") == "llama-cpp-python":
                return requirement.split(";")[0].replace(" ", "")
    except metadata.PackageNotFoundError:
        pass
    return "llama-cpp-python"


def reinstall_command(cmake_flags: str) -> str:
    return (f'CMAKE_ARGS="{cmake_flags}" pip install --force-reinstall --no-cache-dir '
            f"{llama_cpp_requirement()}")


def warnings(hardware: Hardware) -> list[str]:
    """Setup problems: a GPU the llama.cpp build cannot use, a CPU whose AMX may crash native builds."""
    found = []
    gpu = hardware.gpus[0] if hardware.gpus else None
    if gpu is not None and not hardware.llama_cpp.gpu_offload:
        flags = GPU_BUILD_FLAGS.get(gpu.vendor, GPU_BUILD_FLAGS["nvidia"])
        found.append(
            f"{gpu.name} found, but the installed llama-cpp-python has no GPU offload "
            f"(backends: {', '.join(hardware.llama_cpp.backends) or 'none'}); the model would run "
            f"on the CPU only. Reinstall it with: {reinstall_command(flags)}"
        )
    archs = hardware.llama_cpp.cuda_archs
    for g in hardware.gpus:
        arch = _cuda_arch(g.compute_capability) if g.vendor == "nvidia" else None
        if arch is not None and archs and arch not in archs:
            # Newer cards may still run through embedded PTX (compiled at first load); older ones cannot.
            fate = ("can run only if the build embedded PTX, compiled on first use" if arch > max(archs)
                    else "cannot run its kernels")
            found.append(
                f"{g.name} (compute capability {g.compute_capability}) is not among the CUDA architectures this "
                f"llama-cpp-python was compiled for ({', '.join(str(a) for a in archs)}): it {fate}. Rebuild for "
                f"this card with: {reinstall_command(GPU_BUILD_FLAGS['nvidia'] + f' -DCMAKE_CUDA_ARCHITECTURES={arch // 10}')}"
            )
            break
    if any(f in hardware.cpu.features for f in AMX_FEATURES):
        uses_amx = "AMX" in (hardware.llama_cpp.system_info or "").upper()
        state = ("this llama.cpp build uses AMX" if uses_amx
                 else "this llama.cpp build does not use AMX, but a native rebuild would")
        found.append(
            f"the CPU reports AMX ({state}); on virtual machines AMX code can crash llama.cpp with "
            f"SIGILL. If it does, reinstall with: {reinstall_command(PORTABLE_CPU_FLAGS)}"
        )
    return found


def _cuda_arch(compute_capability: str | None) -> int | None:
    """"8.9" -> 890, as llama.cpp's system info lists architectures."""
    major, _, minor = (compute_capability or "").partition(".")
    return int(major) * 100 + int(minor or 0) * 10 if major.isdigit() and (minor or "0").isdigit() else None
