"""Hardware profiles: machines described as data (profiles/hardware/*.json), for planning what a
machine you do not have (or not yet) would hold. See profiles/hardware/README.md for the fields.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

from localcascade.errors import HardwareError, UnknownProfileError
from localcascade.hardware.facts import CPU, GPU, Hardware, LlamaCppBuild

# The llama.cpp build a profile's owner would have: the one matching their GPU vendor.
_BUILD_FOR_VENDOR = {
    "nvidia": LlamaCppBuild(gpu_offload=True, backends=("CUDA", "CPU")),
    "apple": LlamaCppBuild(gpu_offload=True, backends=("Metal", "CPU")),
    "amd": LlamaCppBuild(gpu_offload=True, backends=("ROCm", "CPU")),
    "cpu": LlamaCppBuild(gpu_offload=False, backends=("CPU",)),
}


def build_for_vendor(vendor: str) -> LlamaCppBuild:
    """The llama.cpp build assumed for a hypothetical machine: the one its GPU vendor needs."""
    return _BUILD_FOR_VENDOR.get(vendor, LlamaCppBuild())


@dataclass(frozen=True)
class HardwareProfile:
    """One profile file, as written, plus the Hardware it stands for."""

    id: str
    name: str
    vendor: str
    aliases: tuple[str, ...]
    data: dict

    @property
    def hardware(self) -> Hardware:
        return _hardware_from(self)

    @property
    def gpu(self) -> GPU | None:
        gpus = self.hardware.gpus
        return gpus[0] if gpus else None


def _key(name: str) -> str:
    """How names are compared: case, spaces and punctuation do not matter ("RTX 4090" == "rtx-4090")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _profile_dir():
    return files("localcascade.profiles") / "hardware"


@lru_cache(maxsize=1)
def list_profiles() -> tuple[HardwareProfile, ...]:
    """Every shipped profile, sorted by id. Files starting with "_" hold shared defaults, not machines."""
    profiles = []
    for entry in _profile_dir().iterdir():
        if not entry.name.endswith(".json") or entry.name.startswith("_"):
            continue
        try:
            data = json.loads(entry.read_text(encoding="utf-8"))
            profiles.append(
                HardwareProfile(
                    id=data["id"],
                    name=data["name"],
                    vendor=data["vendor"],
                    aliases=tuple(data.get("aliases", ())),
                    data=data,
                )
            )
        except (ValueError, KeyError) as err:
            raise HardwareError(f"hardware profile {entry.name} is malformed: {err}") from err
    return tuple(sorted(profiles, key=lambda p: p.id))


@lru_cache(maxsize=1)
def defaults() -> dict:
    """Shared assumptions (bandwidth by VRAM class, RAM bandwidth, OS RAM reserve): _defaults.json."""
    return json.loads((_profile_dir() / "_defaults.json").read_text(encoding="utf-8"))


def _names_of(profile: HardwareProfile) -> list[str]:
    names = [profile.id, profile.name, *profile.aliases]
    if profile.data.get("gpu"):
        names.append(profile.data["gpu"]["name"])
    return names


def find_profile(name: str) -> HardwareProfile:
    """The profile a user named by id, display name or alias; HardwareError naming close matches."""
    wanted = _key(name)
    by_key: dict[str, HardwareProfile] = {}
    for profile in list_profiles():
        for alias in _names_of(profile):
            by_key.setdefault(_key(alias), profile)
    if wanted and wanted in by_key:
        return by_key[wanted]
    close = difflib.get_close_matches(wanted, list(by_key), n=8, cutoff=0.6)
    # Substring hits catch "a100" -> both A100 profiles, which edit distance ranks low.
    close += [k for k in by_key if wanted and len(wanted) >= 2 and wanted in k]
    suggestions = list(dict.fromkeys(by_key[k].id for k in close))[:5]
    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
    raise UnknownProfileError(
        f"unknown hardware profile {name!r}{hint} (`localcascade doctor --profiles` lists them)"
    )


def load_profile(name: str) -> Hardware:
    """The Hardware a profile describes (source "profile:<id>")."""
    return find_profile(name).hardware


def metal_usable_bytes(unified_bytes: int, fraction: float | None = None) -> int:
    """What Metal lets one process wire on Apple Silicon by default (recommendedMaxWorkingSetSize):
    about 3/4 of memory on machines above 32 GiB and 2/3 at or below, unless a fraction is given.
    """
    if fraction is None:
        fraction = 0.75 if unified_bytes > 32 * 1024**3 else 2 / 3
    return int(unified_bytes * fraction)


def _hardware_from(profile: HardwareProfile) -> Hardware:
    data = profile.data
    system = data["system"]
    gpus: tuple[GPU, ...] = ()
    gpu = data.get("gpu")
    if gpu:
        unified = "unified_memory_bytes" in gpu
        if unified:
            total = metal_usable_bytes(gpu["unified_memory_bytes"], gpu.get("metal_usable_fraction"))
            usable = total
        else:
            total = gpu["vram_total_bytes"]
            usable = gpu.get("vram_usable_bytes", total)
        gpus = (
            GPU(
                name=gpu["name"],
                vram_total_bytes=total,
                vram_free_bytes=usable,
                vendor=profile.vendor,
                compute_capability=gpu.get("compute_capability"),
                memory_bandwidth_bytes_per_s=float(gpu["memory_bandwidth_bytes_per_s"]),
                unified_memory=unified,
            ),
        )
    cpu = data.get("cpu")
    return Hardware(
        gpus=gpus,
        ram_total_bytes=system["ram_total_bytes"],
        ram_available_bytes=system.get("ram_available_bytes", system["ram_total_bytes"]),
        ram_bandwidth_bytes_per_s=float(system["ram_bandwidth_bytes_per_s"]),
        cpu=CPU(
            model=cpu["model"],
            physical_cores=cpu["physical_cores"],
            logical_cores=cpu["logical_cores"],
            features=tuple(cpu.get("features", ())),
        )
        if cpu
        else CPU(),
        llama_cpp=build_for_vendor(profile.vendor),
        source=f"profile:{profile.id}",
        notes=(f"system RAM assumed: {system['ram_description']}",) if "ram_description" in system else (),
    )


def bandwidth_for_gpu(name: str, vram_total_bytes: int | None = None) -> float | None:
    """Memory bandwidth of a GPU known by name (as NVML or sysctl reports it), or None.

    Several profiles can share a name (an M4 Max with 36 or 128 GB, a 4060 Ti with 8 or 16 GB);
    then the one whose memory size is closest decides.
    """
    wanted = _key(name)
    candidates = [p.gpu for p in list_profiles() if p.gpu and wanted in {_key(n) for n in _names_of(p)}]
    if not candidates:
        return None
    if vram_total_bytes is not None:
        candidates.sort(key=lambda g: abs(g.vram_total_bytes - vram_total_bytes))
    return candidates[0].memory_bandwidth_bytes_per_s


def default_gpu_bandwidth(vram_total_bytes: int) -> tuple[float, str]:
    """Bandwidth typical of a VRAM class, and the card it is typical of (for the stated assumption)."""
    for tier in defaults()["gpu_bandwidth_by_vram"]:
        if tier["max_vram_bytes"] is None or vram_total_bytes <= tier["max_vram_bytes"]:
            return float(tier["memory_bandwidth_bytes_per_s"]), tier["typical"]
    raise HardwareError("profiles/hardware/_defaults.json has no open-ended bandwidth tier")
