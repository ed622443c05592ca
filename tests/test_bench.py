"""`localcascade bench` on the tiny model: pp/tg tokens/s, repetitions, the plan used."""

from __future__ import annotations

import json
import subprocess
import sys

CMD = [sys.executable, "-m", "localcascade", "bench"]


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CMD, *args], capture_output=True, text=True, timeout=120)


def test_json_reports_each_test_with_its_repetitions_and_plan(tiny_model):
    result = bench(str(tiny_model), "-p", "32", "-n", "8", "-r", "3", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["test"] for r in data["results"]] == ["pp32", "tg8"]
    for r in data["results"]:
        assert len(r["tokens_per_s"]) == 3 and all(v > 0 for v in r["tokens_per_s"])
        assert min(r["tokens_per_s"]) <= r["mean"] <= max(r["tokens_per_s"])
        assert r["stddev"] >= 0
    assert data["plan"]["n_ctx"] >= 32


def test_markdown_table(tiny_model):
    result = bench(str(tiny_model), "-p", "16", "-n", "4", "-r", "1", "--cpu-moe", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("| model |") and len(lines) == 4
    assert "| pp16 |" in lines[2] and "| tg4 |" in lines[3] and "±" in lines[3]
    assert "| 2 |" in lines[2]   # the plan's cpu-moe blocks


def test_bad_values_are_usage_errors(tiny_model):
    result = bench(str(tiny_model), "-r", "0")
    assert result.returncode == 2 and "repetitions" in result.stderr


def test_threads_follow_localcascade_threads(tiny_model, monkeypatch):
    monkeypatch.setenv("LOCALCASCADE_THREADS", "1")
    result = bench(str(tiny_model), "-p", "8", "-n", "2", "-r", "1", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["threads"] == {"generation": 1, "batch": 1}


def test_bad_thread_count_is_one_line(tiny_model, monkeypatch):
    monkeypatch.setenv("LOCALCASCADE_THREADS", "two")
    result = bench(str(tiny_model), "-p", "8", "-n", "2", "-r", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "LOCALCASCADE_THREADS" in result.stderr


def test_threads_default_to_physical_cores_for_generation_and_all_cores_for_prompts(monkeypatch):
    import psutil

    from localcascade.engine.loader import default_threads

    monkeypatch.delenv("LOCALCASCADE_THREADS", raising=False)
    logical = psutil.cpu_count() or 1
    assert default_threads() == (psutil.cpu_count(logical=False) or logical, logical)
