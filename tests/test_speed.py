"""The speed model: estimates from per-core rates, and this machine's measurement once `bench` ran."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from localcascade.model import catalog
from localcascade.planning import speed
from localcascade.hardware.facts import CPU, GPU, Calibration, Hardware, LlamaCppBuild
from localcascade.planning.memory import Placement
from localcascade.planning.placement import place
from localcascade.planning.plan import PlanRequest

FIT = [sys.executable, "-m", "localcascade", "fit"]
BENCH = [sys.executable, "-m", "localcascade", "bench"]


def variant(quant: str):
    return next(v for v in catalog.load_catalog() if v.quant == quant)


def cpu_machine(calibration: Calibration | None = None, cores: int = 8) -> Hardware:
    return Hardware(ram_total_bytes=64 << 30, ram_available_bytes=60 << 30, ram_bandwidth_bytes_per_s=60e9,
                    cpu=CPU(physical_cores=cores, logical_cores=2 * cores), calibration=calibration)


def test_a_calibration_reproduces_what_was_measured_and_scales_to_other_models():
    q4, iq4 = variant("Q4_K_M").facts, variant("IQ4_XS").facts
    measured = speed.calibrate(q4, tg_tokens_per_s=7.0, pp_tokens_per_s=40.0, cores=8, ram_bandwidth=60e9)
    at = Placement(n_ctx=4096)
    same = speed.predict(q4, at, gpu_bandwidth=None, ram_bandwidth=60e9, cores=8, calibration=measured)
    assert same.measured
    assert same.generation == pytest.approx(7.0) and same.prompt == pytest.approx(40.0)
    # A smaller file of the same model reads fewer bytes per token: faster, by the bytes it saves.
    other = speed.predict(iq4, at, gpu_bandwidth=None, ram_bandwidth=60e9, cores=8, calibration=measured)
    ratio = speed.weights_per_token(q4, at).cpu_quant_bytes / speed.weights_per_token(iq4, at).cpu_quant_bytes
    assert other.generation > 7.0 and other.generation == pytest.approx(7.0 * ratio, rel=0.05)
    assert other.prompt == pytest.approx(40.0)   # same parameters, same arithmetic


def test_a_calibration_from_other_threads_or_with_gpu_layers_is_an_estimate():
    q4 = variant("Q4_K_M").facts
    measured = speed.calibrate(q4, tg_tokens_per_s=7.0, pp_tokens_per_s=40.0, cores=4, ram_bandwidth=60e9)
    plan = place(q4, cpu_machine(measured, cores=8), PlanRequest(), n_ctx=4096)
    assert not plan.speed_measured
    gpu = replace(cpu_machine(replace(measured, threads=8)),
                  gpus=(GPU("RTX 4090", 24 << 30, 24 << 30, memory_bandwidth_bytes_per_s=1008e9),),
                  llama_cpp=LlamaCppBuild(gpu_offload=True))
    plan = place(q4, gpu, PlanRequest(), n_ctx=4096)
    assert plan.n_gpu_layers > 0 and not plan.speed_measured
    assert plan.tokens_per_s > 100 and plan.prompt_tokens_per_s > plan.tokens_per_s


def test_a_calibration_speaks_only_for_models_it_can_speak_for():
    q4, iq4 = variant("Q4_K_M").facts, variant("IQ4_XS").facts
    at = Placement(n_ctx=4096)
    big = speed.calibrate(iq4, tg_tokens_per_s=5.0, pp_tokens_per_s=12.0, cores=8, ram_bandwidth=60e9)
    assert big.cpu_bytes_per_token > 1e9
    # Measured on a model that streams from RAM: it holds for another such model.
    assert speed.predict(q4, at, gpu_bandwidth=None, ram_bandwidth=60e9, cores=8, calibration=big).measured
    # Measured on a model that fits in the CPU's caches (the tiny test model): only for its own size.
    cached = replace(big, cpu_bytes_per_token=4e6)
    guess = speed.predict(q4, at, gpu_bandwidth=None, ram_bandwidth=60e9, cores=8, calibration=cached)
    assert not guess.measured
    assert guess.generation == speed.predict(q4, at, gpu_bandwidth=None, ram_bandwidth=60e9, cores=8).generation
    # One stored before calibrations recorded their size speaks for none.
    assert not speed.predict(q4, at, gpu_bandwidth=None, ram_bandwidth=60e9, cores=8,
                             calibration=replace(big, cpu_bytes_per_token=None)).measured


def test_an_estimate_is_a_range_and_a_measurement_a_point():
    q4 = variant("Q4_K_M").facts
    at = Placement(n_ctx=4096)
    guess = speed.predict(q4, at, gpu_bandwidth=None, ram_bandwidth=60e9, cores=8)
    assert guess.generation_low < guess.generation < guess.generation_high
    measured = speed.calibrate(q4, tg_tokens_per_s=7.0, pp_tokens_per_s=40.0, cores=8, ram_bandwidth=60e9)
    point = speed.predict(q4, at, gpu_bandwidth=None, ram_bandwidth=60e9, cores=8, calibration=measured)
    assert point.generation_low == point.generation == point.generation_high == pytest.approx(7.0)
    # On a GPU the fixed cost per layer keeps a small model far below its bandwidth bound.
    full = Placement(n_ctx=4096, n_gpu_layers=q4.n_layer + 1)
    gpu = speed.predict(q4, full, gpu_bandwidth=1008e9, ram_bandwidth=60e9, cores=8)
    bound = 1008e9 * speed.defaults()["gpu"]["memory_efficiency"] / speed.weights_per_token(q4, full).gpu_bytes
    assert gpu.generation_high < bound and gpu.generation < 0.75 * bound
    # Each expert block kept in RAM costs a round trip beyond its bytes.
    moe = Placement(n_ctx=4096, n_gpu_layers=q4.n_layer + 1, n_cpu_moe=q4.moe_layers[3] + 1)
    assert speed.round_trips(q4, moe) == 4


def test_a_cpu_only_machine_is_compute_bound_not_bandwidth_bound():
    # With 400 GB/s of memory (a big server) a 2-core CPU is still limited by its cores.
    q4 = variant("Q4_K_M").facts
    at = Placement(n_ctx=4096)
    slow = speed.predict(q4, at, gpu_bandwidth=None, ram_bandwidth=400e9, cores=2)
    fast = speed.predict(q4, at, gpu_bandwidth=None, ram_bandwidth=400e9, cores=16)
    assert fast.generation == pytest.approx(8 * slow.generation)
    assert slow.generation < 5   # measured here: 2 cores generate a few tokens/s with this model


def test_the_output_head_of_a_tied_model_is_read_every_token(gemma_model):
    from localcascade.model.gguf_header import read_header
    from localcascade.model.facts import facts_from_header

    facts = facts_from_header(read_header(gemma_model))
    w = speed.weights_per_token(facts, Placement(n_ctx=4096))
    embedding = next(t for t in facts.tensors if t.name == "token_embd.weight")
    assert w.cpu_quant_bytes + w.cpu_float_bytes > embedding.n_bytes


def test_bench_stores_this_machines_speeds_and_fit_uses_them(tiny_model, monkeypatch):
    monkeypatch.delenv("LOCALCASCADE_THREADS")   # fit plans for the default threads: bench must measure those
    before = subprocess.run([*FIT, str(tiny_model), "--json"], capture_output=True, text=True, timeout=120)
    assert before.returncode == 0, before.stderr
    report = json.loads(before.stdout)
    assert report["recommended"]["speed_measured"] is False
    assert any("`localcascade bench MODEL` measures this machine" in n for n in report["notes"])

    result = subprocess.run([*BENCH, str(tiny_model), "-p", "64", "-n", "16", "-r", "2", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    measured = {r["test"][:2]: r["mean"] for r in json.loads(result.stdout)["results"]}
    assert "speeds stored in" in json.loads(result.stdout)["calibration"]

    after = subprocess.run([*FIT, str(tiny_model), "--json", "--ctx", "4K"], capture_output=True, text=True,
                           timeout=120)
    rec = json.loads(after.stdout)["recommended"]
    assert rec["speed_measured"] is True
    assert rec["tokens_per_s"] == pytest.approx(measured["tg"], rel=0.02, abs=0.1)
    assert rec["prompt_tokens_per_s"] == pytest.approx(measured["pp"], rel=0.02, abs=0.1)
    assert any("measured on this machine" in n for n in json.loads(after.stdout)["notes"])
    # A profile is never this machine.
    profile = json.loads(subprocess.run([*FIT, "--gpu", "rtx-4090", "--json"], capture_output=True, text=True,
                                        timeout=120).stdout)
    assert profile["recommended"]["speed_measured"] is False


def test_a_broken_calibration_file_means_estimates(tiny_model, tmp_path, monkeypatch):
    from localcascade import settings

    target = settings.data_dir() / "speed-calibration.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    for content in ("{not json", json.dumps({"cpu_scale": "fast"}), json.dumps([1, 2]), "\x00" * 10):
        target.write_text(content)
        result = subprocess.run([*FIT, str(tiny_model), "--json"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["recommended"]["speed_measured"] is False


def test_a_stored_calibration_says_what_it_can_speak_for_or_is_not_used(monkeypatch, tmp_path):
    from localcascade.hardware import calibration

    monkeypatch.setattr(calibration, "path", lambda: tmp_path / "speed-calibration.json")
    mine = {"cpu_scale": 1.0, "cpu_prompt_flops": 1e9, "threads": 2, "cpu_model": "cpu", "llama_cpp_version": "v"}
    (tmp_path / "speed-calibration.json").write_text(json.dumps(dict(mine, cpu_bytes_per_token=2e8)))
    assert calibration.load("cpu", "v").cpu_bytes_per_token == 2e8
    for bad in ("lots", -1, [1], True, float("nan")):
        (tmp_path / "speed-calibration.json").write_text(json.dumps(dict(mine, cpu_bytes_per_token=bad)))
        assert calibration.load("cpu", "v") is None, bad
