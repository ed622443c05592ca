"""`localcascade doctor`: what this machine has, what llama.cpp can use of it, and what to fix."""

from __future__ import annotations

import json

import typer

from localcascade.cli.app import app
from localcascade.stderr import say


@app.command()
def doctor(
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    list_profiles: bool = typer.Option(
        False, "--profiles", help="List the hardware profiles usable with --gpu instead."
    ),
) -> None:
    """Show GPUs, RAM, CPU, free disk and the llama.cpp build; warn about setup problems."""
    if list_profiles:
        from localcascade.hardware.profiles import list_profiles as load_all

        _show_profiles(load_all(), as_json)
        return

    from localcascade.hardware import advice
    from localcascade.hardware.probe import detect

    from localcascade.settings import data_dir_problem

    hardware = detect()
    warnings = list(hardware.warnings) + advice.warnings(hardware)
    if data_dir_problem():
        warnings.append(data_dir_problem())
    if as_json:
        data = hardware.to_dict()
        data["warnings"] = warnings
        typer.echo(json.dumps(data, indent=2))
        return
    _show_hardware(hardware)
    for warning in warnings:
        say(f"warning: {warning}", prefix=False)


def _console():
    from localcascade.cli.console import make_console

    return make_console(soft_wrap=False)


def _gb_per_s(value: float | None) -> str:
    return f"{value / 1e9:.0f} GB/s" if value else "unknown"


def _show_hardware(hw) -> None:
    from rich.table import Table

    from localcascade.units import format_bytes

    console = _console()
    if hw.gpus:
        from rich import box

        gpus = Table(title="GPUs", title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0),
                     pad_edge=False)
        for column in ("#", "name", "VRAM free/total", "driver/CUDA", "cc", "bandwidth"):
            gpus.add_column(column, no_wrap=True)
        for g in hw.gpus:
            driver = "/".join(v for v in (g.driver_version, g.cuda_version) if v) or "-"
            if g.unified_memory:
                driver = "Metal, unified"
            vram = f"{g.vram_free_bytes / 1024**3:.2f}/{g.vram_total_bytes / 1024**3:.2f} GiB"
            gpus.add_row(str(g.index), g.name, vram, driver, g.compute_capability or "-",
                         _gb_per_s(g.memory_bandwidth_bytes_per_s))
        console.print(gpus)
    else:
        console.print("GPUs: none found")

    system = Table(title="System", title_justify="left", show_header=False)
    system.add_column("what", style="bold")
    system.add_column("value")
    system.add_row("RAM", f"{format_bytes(hw.ram_total_bytes)} total, "
                          f"{format_bytes(hw.ram_available_bytes)} available")
    system.add_row("CPU", f"{hw.cpu.model}, {hw.cpu.physical_cores} cores / "
                          f"{hw.cpu.logical_cores} threads")
    system.add_row("SIMD", " ".join(hw.cpu.features) or "none detected")
    disk = format_bytes(hw.disk_free_bytes) if hw.disk_free_bytes is not None else "unknown"
    system.add_row("Disk", f"{disk} free in {hw.model_dir}")
    build = hw.llama_cpp
    if build.version:
        archs = f", CUDA architectures: {' '.join(str(a) for a in build.cuda_archs)}" if build.cuda_archs else ""
        system.add_row("llama.cpp", f"llama-cpp-python {build.version} ({build.origin}), GPU offload: "
                                    f"{'yes' if build.gpu_offload else 'no'}, backends: "
                                    f"{', '.join(build.backends) or 'none'}{archs}")
    else:
        system.add_row("llama.cpp", "llama-cpp-python is not installed or does not load")
    console.print(system)
    for note in hw.notes:
        console.print(f"note: {note}")
    console.file.flush()  # so warnings on stderr follow the tables on a shared terminal


def _profile_row(profile) -> dict:
    gpu = profile.gpu
    hw = profile.hardware
    return {
        "id": profile.id,
        "name": profile.name,
        "vendor": profile.vendor,
        "aliases": list(profile.aliases),
        "vram_total_bytes": gpu.vram_total_bytes if gpu else 0,
        "vram_usable_bytes": gpu.vram_free_bytes if gpu else 0,
        "unified_memory": bool(gpu and gpu.unified_memory),
        "memory_bandwidth_bytes_per_s": gpu.memory_bandwidth_bytes_per_s if gpu else None,
        "ram_total_bytes": hw.ram_total_bytes,
        "ram_bandwidth_bytes_per_s": hw.ram_bandwidth_bytes_per_s,
    }


def _show_profiles(profiles, as_json: bool) -> None:
    vendor_order = {"nvidia": 0, "amd": 1, "apple": 2, "cpu": 3}
    rows = sorted((_profile_row(p) for p in profiles),
                  key=lambda r: (vendor_order.get(r["vendor"], 9), -r["vram_total_bytes"], r["id"]))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    from localcascade.units import format_bytes

    from rich import box

    table = Table(title="Hardware profiles (use with --gpu ID)", title_justify="left",
                  box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)
    table.add_column("name")
    for column in ("VRAM", "bandwidth", "RAM"):
        table.add_column(column, no_wrap=True, justify="right")
    for row in rows:
        vram = format_bytes(row["vram_total_bytes"]) if row["vram_total_bytes"] else "-"
        if row["unified_memory"]:
            vram += "*"
        bandwidth = row["memory_bandwidth_bytes_per_s"] or row["ram_bandwidth_bytes_per_s"]
        table.add_row(row["id"], row["name"], vram, _gb_per_s(bandwidth),
                      f"{row['ram_total_bytes'] / 1024**3:.0f} GiB")
    console = _console()
    console.print(table)
    console.print("* unified memory: the share Metal may use by default")
