"""`localcascade fit` as a user runs it."""

import json
import subprocess
import sys


def run(*args, env_extra=None):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "localcascade", "fit", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_fit_4090_json_offline_has_every_variant_and_context():
    out = run("--gpu", "rtx-4090", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {v["variant"] for v in data["variants"]} == {"BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "IQ4_XS"}
    for v in data["variants"]:
        assert v["source"] == "catalog"
        assert [r["n_ctx"] for r in v["rows"]] == [4096, 32768, 131072, 262144, 1048576]
        for r in v["rows"]:
            assert set(r["components"]) == {"weights", "kv", "recurrent", "compute", "output", "overhead"}
            assert r["verdict"] in {"full_gpu", "experts_in_ram", "partial", "cpu_only", "wont_fit"}
    # The seed's claim, answered: Q4_K_M sits fully on a 4090 only at short context; at 256K only
    # IQ4_XS does, and at 1M nothing does without keeping some expert tensors in system RAM.
    # A thinking model gets at least 64K, fully on the card (the 4-bit file, not Q8_0 with experts in
    # RAM), and the alternatives say what they trade.
    rec = data["recommended"]
    assert data["policy"]["rule"] == "full-gpu-first" and data["policy"]["prefer"] is None
    assert rec["n_ctx"] >= 65536 and rec["verdict"] == "full_gpu" and rec["cpu_moe_blocks"] == 0
    assert [a["trade"] for a in data["alternatives"]] == ["higher quality", "longer context"]
    higher, longer = data["alternatives"]
    assert higher["verdict"] == "experts_in_ram" and higher["tokens_per_s"] < rec["tokens_per_s"]
    assert higher["summary"].startswith(f"higher quality: {higher['variant']} ")
    assert longer["n_ctx"] > rec["n_ctx"] and longer["variant"] == rec["variant"]
    rows = {v["variant"]: {r["n_ctx"]: r for r in v["rows"]} for v in data["variants"]}
    assert rows["Q4_K_M"][4096]["verdict"] == "full_gpu"
    assert rows["Q4_K_M"][262144]["verdict"] == "experts_in_ram"
    assert rows["IQ4_XS"][262144]["verdict"] == "full_gpu"
    assert all(rows[v][1048576]["verdict"] != "full_gpu" for v in rows)
    assert data["hardware"]["gpus"][0]["name"].endswith("4090")
    # Each reason in words and, beside it, the record it was said from: a script reads the figures.
    q4_1m = rows["Q4_K_M"][1048576]
    assert q4_1m["reason_data"]["kind"] == "placed" and q4_1m["reason_data"]["verdict"] == "experts_in_ram"
    blocks = q4_1m["reason_data"]["moe_blocks_in_ram"]
    assert blocks == q4_1m["cpu_moe_blocks"] and f"needs the experts of {blocks} MoE blocks" in q4_1m["reason"]
    placed, *_ = rec["reason_data"]
    assert (placed["kind"], placed["model"], placed["verdict"]) == ("placed", rec["variant"], "full_gpu")
    assert placed["gpu_bytes"] <= placed["gpu_usable_bytes"] and rec["reasons"][0].startswith(f"{rec['variant']} fits fully")
    # and the speed, drafting and the kept-state cost, said from the plan's own fields
    assert len(rec["reasons"]) == len(rec["reason_data"]) + 3
    assert [p["kind"] for p in rec["policy_data"]] == ["picked"] and rec["policy_data"][0]["how"] == "best_quality_full_gpu"
    assert rec["policy"] == [f"the best quality that runs fully on the GPU, at {rec['n_ctx'] // 1024}K"]
    assert data["policy"]["machine_rule"] == "full-gpu-first" and data["policy"]["description"].startswith(
        "the best quality that runs fully on the GPU")


def test_fit_prefer_picks_by_another_rule_and_says_which():
    quality = json.loads(run("--gpu", "rtx-4090", "--prefer", "quality", "--json").stdout)
    assert quality["policy"]["rule"] == quality["policy"]["prefer"] == "quality"
    assert quality["recommended"]["verdict"] == "experts_in_ram"
    assert quality["recommended"]["tokens_per_s"] >= quality["policy"]["usable_tokens_per_s"]
    context = json.loads(run("--gpu", "rtx-4090", "--prefer", "CONTEXT", "--json").stdout)
    assert context["recommended"]["n_ctx"] == 1048576 and context["policy"]["rule"] == "context"
    table = run("--gpu", "rtx-4090", "--prefer", "speed")
    assert "then prefer speed: the fastest" in table.stdout
    bad = run("--gpu", "rtx-4090", "--prefer", "fast")
    assert bad.returncode == 2 and bad.stderr.strip() == "localcascade: --prefer takes quality, speed, context, not 'fast'"


def test_fit_says_the_rule_of_a_cpu_only_and_a_unified_memory_machine():
    cpu = json.loads(run("--gpu", "cpu-only", "--json").stdout)
    assert cpu["policy"]["rule"] == "cpu-only" and cpu["recommended"]["verdict"] == "cpu_only"
    mac = run("--gpu", "apple-m4-max-64gb")
    assert "then unified memory: fully on the GPU first" in mac.stdout


def test_fit_requested_context_adds_a_row():
    data = json.loads(run("Q4_K_M", "--gpu", "rtx-4090", "--ctx", "64K", "--json").stdout)
    assert [r["n_ctx"] for r in data["variants"][0]["rows"]] == [4096, 32768, 65536, 131072, 262144, 1048576]


def test_fit_local_file(tiny_model):
    out = run(str(tiny_model), "--vram", "8GiB", "--ram", "32GiB")
    assert out.returncode == 0, out.stderr
    assert "full_gpu" in out.stdout and "Recommended" in out.stdout
    data = json.loads(run(str(tiny_model), "--vram", "8GiB", "--ram", "32GiB", "--json").stdout)
    assert data["variants"][0]["source"] == "header"


def test_bad_size_is_one_line_exit_2():
    out = run("--vram", "lots")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "cannot read size" in out.stderr


def test_unknown_variant_is_one_line_error():
    out = run("Q3_XYZ", "--gpu", "rtx-4090")
    assert out.returncode != 0 and out.stderr.strip().count("\n") == 0


def test_cuda_overhead_and_margin_are_stated_and_configurable():
    default = json.loads(run("Q4_K_M", "--gpu", "rtx-4090", "--json").stdout)
    assert default["assumptions"]["cuda_context_bytes_per_gpu"] == int(0.45 * 1024**3)
    assert default["assumptions"]["gpu_margin_bytes"] == 256 * 1024**2
    assert default["variants"][0]["rows"][0]["verdict"] == "full_gpu"
    # A driver that takes 0.8 GiB for its context leaves Q4_K_M short even at 4K.
    heavier = json.loads(run("Q4_K_M", "--gpu", "rtx-4090", "--gpu-overhead", "0.8GiB", "--json").stdout)
    assert heavier["assumptions"]["cuda_context_bytes_per_gpu"] == int(0.8 * 1024**3)
    assert heavier["variants"][0]["rows"][0]["verdict"] == "experts_in_ram"
    bad = run("--gpu-margin", "much")
    assert bad.returncode == 2 and "cannot read size" in bad.stderr


def test_rows_stop_at_the_trained_context_and_beyond_it_is_said(tiny_model):
    data = json.loads(run(str(tiny_model), "--ctx", "64K", "--json").stdout)
    assert [r["n_ctx"] for r in data["variants"][0]["rows"]] == [4096, 65536]   # tiny is trained for 4K
    assert any("trained for 4K" in note for note in data["notes"])


def test_nothing_fits_names_the_context_asked_for():
    out = run("--ctx", "100M")
    assert out.returncode == 0
    assert "nothing fits this machine at 100M" in out.stdout


def test_no_color_on_a_terminal_writes_no_escape_codes():
    import os

    import pexpect

    env = dict(os.environ, NO_COLOR="1", TERM="xterm-256color", HF_HUB_OFFLINE="1")
    out = pexpect.run(f"{sys.executable} -m localcascade fit Q4_K_M --gpu rtx-4090", env=env, timeout=60)
    assert b"Q4_K_M" in out and b"\x1b" not in out
    with_color = pexpect.run(f"{sys.executable} -m localcascade fit Q4_K_M --gpu rtx-4090",
                             env={k: v for k, v in env.items() if k != "NO_COLOR"}, timeout=60)
    assert b"\x1b" in with_color   # the check above can fail: a terminal does get styles


# -- which facts a named model is planned from ------------------------------------------------

CATALOG_REPO = "bartowski/nvidia_Nemotron-Cascade-2-30B-A3B-GGUF"


def _fit_json(args, capsys, monkeypatch, offline=False):
    import pytest

    from localcascade.cli.main import main

    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--json"])
    captured = capsys.readouterr()
    return exit_info.value.code, (json.loads(captured.out) if captured.out else None), captured.err


def test_a_repository_is_planned_model_by_model_from_its_live_headers(hf_server, tiny_model, tiny_f16_model,
                                                                       capsys, monkeypatch):
    hf_server.add_file("someone/Tiny-GGUF", "Tiny-F32.gguf", tiny_model)
    hf_server.add_file("someone/Tiny-GGUF", "Tiny-F16.gguf", tiny_f16_model)

    code, data, err = _fit_json(["someone/Tiny-GGUF", "--vram", "8GiB"], capsys, monkeypatch)

    assert code == 0, err
    assert {(v["variant"], v["source"]) for v in data["variants"]} == {("F32", "header"), ("F16", "header")}
    sizes = {v["variant"]: v["file_bytes"] for v in data["variants"]}
    assert sizes == {"F32": tiny_model.stat().st_size, "F16": tiny_f16_model.stat().st_size}


def test_another_repos_model_is_never_answered_with_the_catalogs_numbers(capsys, monkeypatch):
    code, data, err = _fit_json(["someone/Llama-3-8B-GGUF:Q4_K_M"], capsys, monkeypatch, offline=True)
    assert code == 1 and data is None
    assert "HF_HUB_OFFLINE" in err and err.count("\n") == 1
    # The catalog's own repo may stand in for the hub, and says so.
    code, data, err = _fit_json([f"{CATALOG_REPO}:Q4_K_M"], capsys, monkeypatch, offline=True)
    assert code == 0 and data["variants"][0]["source"] == "catalog"
    assert any("answered from the built-in catalog" in note for note in data["notes"])


def test_a_registered_or_downloaded_model_is_planned_from_its_own_header(hf_server, tiny_model, capsys, monkeypatch):
    from localcascade.hub import download as hub
    from localcascade.store import models as store
    from localcascade.resolve.resolver import parse_model_spec

    store.register_local("mine-Q8_0", [tiny_model], quant="Q8_0", source=None, check="test")
    code, data, err = _fit_json(["mine-Q8_0"], capsys, monkeypatch)
    assert code == 0, err
    assert data["variants"][0]["source"] == "header" and data["variants"][0]["file_bytes"] == tiny_model.stat().st_size

    # A catalog variant once pulled: its real header replaces the derived catalog facts.
    hf_server.add_file(CATALOG_REPO, "nvidia_Nemotron-Cascade-2-30B-A3B-Q4_K_M.gguf", tiny_model)
    hub.pull(hub.resolve_remote(parse_model_spec("Q4_K_M")))
    code, data, err = _fit_json([], capsys, monkeypatch, offline=True)
    assert code == 0, err
    sources = {v["variant"]: v["source"] for v in data["variants"]}
    assert sources.pop("Q4_K_M") == "header" and set(sources.values()) == {"catalog"}
    assert any(note.startswith("BF16, Q8_0") and "downloaded files' headers" in note for note in data["notes"])


def test_the_4090_section_of_the_docs_is_what_fit_prints():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "fit.md").read_text(encoding="utf-8")
    section = doc.split("## What it says about an RTX 4090", 1)[1].split("```", 2)[1]
    shown = [line for line in section.strip("\n").splitlines() if not line.startswith(("┏", "┃", "┡", "│", "└"))]
    out = run("--gpu", "rtx-4090")
    assert out.returncode == 0, out.stderr
    printed = [line for line in out.stdout.splitlines() if not line.startswith(("┏", "┃", "┡", "│", "└"))]
    assert shown == printed, "docs/fit.md's RTX 4090 section is stale: paste `localcascade fit --gpu rtx-4090`"
    assert "Recommended: IQ4_XS at 512K, KV f16 (full_gpu)" in shown


def test_pull_and_run_refuse_an_unknown_preference_in_one_line():
    import os

    for command in ("pull", "run"):
        out = subprocess.run([sys.executable, "-m", "localcascade", command, "--prefer", "cheap"],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120,
                             env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert out.returncode == 2, (command, out.stderr)
        assert out.stderr.strip() == "localcascade: --prefer takes quality, speed, context, not 'cheap'"


def test_fit_says_what_drafting_reserves_and_what_a_kept_prompt_state_costs(capsys, monkeypatch):
    code, data, err = _fit_json(["--gpu", "rtx-4090"], capsys, monkeypatch, offline=True)
    assert code == 0, err
    rec = data["recommended"]
    assert rec["drafts"]["draft_tokens"] == 8
    assert 0.3 * 2**30 < rec["drafts"]["snapshot_bytes"] < 0.45 * 2**30    # 8 x ~47.6 MiB of Mamba state
    assert rec["kept_state"]["bytes_per_token"] == 6144                     # 6 attention blocks, f16 K and V
    assert any("drafts up to 8 tokens" in r for r in rec["reasons"])
    code, data, err = _fit_json(["--gpu", "rtx-4060"], capsys, monkeypatch, offline=True)
    assert code == 0, err
    assert data["recommended"]["verdict"] != "full_gpu" and data["recommended"]["drafts"]["draft_tokens"] == 0
    assert any(r.startswith("token by token") for r in data["recommended"]["reasons"])
