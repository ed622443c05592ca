"""AMD GPUs where it is cheap: the amdgpu driver's VRAM counters in sysfs (Linux), nothing else."""

from __future__ import annotations

from pathlib import Path

from localcascade.hardware.facts import GPU
from localcascade.hardware.findings import GPUFindings

DRM_ROOT = Path("/sys/class/drm")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None


def _card_index(card: Path) -> int:
    digits = card.name[len("card"):]
    return int(digits) if digits.isdigit() else 0


def gpus(drm_root: Path = DRM_ROOT) -> GPUFindings:
    """Every card the amdgpu driver exposes VRAM counters for, under ``drm_root`` (/sys/class/drm)."""
    found = GPUFindings()
    # card0, card1... only: card0-DP-1 and friends are connectors of the same card.
    cards = [c for c in drm_root.glob("card*") if c.name[len("card"):].isdigit()]
    for index, card in enumerate(sorted(cards, key=_card_index)):
        device = card / "device"
        total = _read(device / "mem_info_vram_total")
        if total is None:
            continue
        used = _read(device / "mem_info_vram_used")
        try:
            total_bytes = int(total)
            used_bytes = int(used) if used is not None else 0
        except ValueError:
            found.warnings.append(f"AMD GPU {card.name}: unreadable VRAM counters")
            continue
        name = _read(device / "product_name")
        if name is None:
            device_id = _read(device / "device") or "unknown"
            name = f"AMD GPU (device {device_id})"
        found.gpus.append(
            GPU(
                name=name,
                vram_total_bytes=total_bytes,
                vram_free_bytes=max(total_bytes - used_bytes, 0),
                vendor="amd",
                index=index,
            )
        )
    return found
