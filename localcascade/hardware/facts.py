"""What a machine has, as plain data: produced by the probe (detected) or a profile (hypothetical).

The planner reads only these dataclasses; it never asks the machine itself.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GPU:
    name: str
    vram_total_bytes: int
    vram_free_bytes: int
    vendor: str = "nvidia"                 # nvidia | apple | amd
    index: int = 0
    driver_version: str | None = None
    cuda_version: str | None = None
    compute_capability: str | None = None  # "8.9"
    memory_bandwidth_bytes_per_s: float | None = None
    unified_memory: bool = False           # Apple Silicon: VRAM and RAM are the same memory


@dataclass(frozen=True)
class CPU:
    model: str = "unknown"
    physical_cores: int = 1
    logical_cores: int = 1
    features: tuple[str, ...] = ()         # SIMD: avx2, avx512f, amx_tile, neon...


@dataclass(frozen=True)
class LlamaCppBuild:
    version: str | None = None             # llama-cpp-python version
    gpu_offload: bool = False              # llama_supports_gpu_offload()
    backends: tuple[str, ...] = ()         # "CPU", "CUDA", "Metal"...
    system_info: str | None = None
    cuda_archs: tuple[int, ...] = ()       # compiled CUDA architectures (890 = compute capability 8.9)
    wheel_tags: tuple[str, ...] = ()       # the installed wheel's tags ("py3-none-linux_x86_64")

    @property
    def origin(self) -> str:
        """How this llama-cpp-python got here, as far as its wheel tags tell.

        PyPI has only the sdist, which pip builds on the user's machine into a plain
        ``linux_x86_64`` wheel; prebuilt wheels (llama-cpp-python's CUDA/CPU indexes) are
        repaired with auditwheel and carry ``manylinux`` tags. Elsewhere the tags do not say.
        """
        platforms = [tag.rsplit("-", 1)[-1] for tag in self.wheel_tags]
        if any(p.startswith(("manylinux", "musllinux")) for p in platforms):
            return "prebuilt wheel"
        if platforms and all(p.startswith("linux_") for p in platforms):
            return "built from source on this machine"
        return "unknown"


@dataclass(frozen=True)
class Calibration:
    """Speeds llama.cpp reached on this machine's CPU, measured by `localcascade bench` and stored.

    A fact of this machine like its RAM (the probe reads it back); profiles never have one.
    """

    cpu_scale: float           # measured / default generation rate of this CPU's threads (see speed.py)
    cpu_prompt_flops: float    # floating-point operations per second in prompt processing
    threads: int               # llama.cpp threads the measurement used
    cpu_prompt_overhead_s: float | None = None   # fixed seconds per prompt token (None: the default)
    llama_cpp_version: str | None = None
    cpu_model: str | None = None
    model: str = ""            # the model it was measured on
    measured_at: str = ""      # ISO time
    cpu_bytes_per_token: float | None = None   # weight bytes that model reads per token (what it can speak for)


@dataclass(frozen=True)
class Hardware:
    gpus: tuple[GPU, ...] = ()
    ram_total_bytes: int = 0
    ram_available_bytes: int = 0
    ram_bandwidth_bytes_per_s: float | None = None
    cpu: CPU = field(default_factory=CPU)
    disk_free_bytes: int | None = None
    llama_cpp: LlamaCppBuild = field(default_factory=LlamaCppBuild)
    source: str = "detected"               # "detected", "profile:<name>", or "manual"
    model_dir: str | None = None           # the directory disk_free_bytes was measured in
    notes: tuple[str, ...] = ()            # how facts were obtained or assumed ("bandwidth assumed ...")
    warnings: tuple[str, ...] = ()         # what the probe could not read and the user should look at
    calibration: Calibration | None = None # this CPU's measured speeds, if `bench` has run here

    def to_dict(self) -> dict:
        data = asdict(self)
        data["gpus"] = [asdict(g) for g in self.gpus]
        data["calibration"] = asdict(self.calibration) if self.calibration else None
        data["llama_cpp"]["origin"] = self.llama_cpp.origin
        return data
