"""How well `fit` predicts this machine's speed: calibrate on one model, check on the others.

    python benchmarks/speed_model.py [--calibrate-on gemma] [--models gemma,tiny,skeleton] [-r 2]

Step 1 runs `localcascade bench` on the calibration model (which stores this machine's speeds in a
temporary LOCALCASCADE_HOME). Step 2, for every model, asks `localcascade fit MODEL --json --ctx N`
for the predicted generation and prompt tokens/s with that calibration, and with none (the
per-core estimates of profiles/speed.json), and measures both with `localcascade bench` at the same
context. It prints predicted/measured for each; the goal is within +-30% on the models the
calibration did not see. Models: the Gemma 3 270M test model, a tiny nemotron_h_moe with the
real 131,072-token vocabulary, and a full-size Cascade-2 IQ4_XS sparse skeleton with live routing
(tests/synth.py; 18.2 GB apparent, ~0.25 GB on disk), written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

# pp and tg sizes per model: the skeleton generates a few tokens/s on two cores.
SIZES = {"gemma": (256, 64), "tiny": (256, 64), "skeleton": (64, 8)}


def model_paths(names: list[str], folder: Path) -> dict[str, Path]:
    """The same test models as the side-by-side benchmark (written into ``folder`` when missing)."""
    from side_by_side import prepare_model

    return {name: prepare_model(name, folder).path for name in names}


def cli(env: dict, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "localcascade", *args], capture_output=True, text=True,
                            env=env, timeout=3600)
    if result.returncode != 0:
        raise SystemExit(f"localcascade {' '.join(args)} failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout)


def measured(env: dict, path: Path, pp: int, tg: int, reps: int, calibrate: bool) -> dict:
    data = cli(env, "bench", str(path), "-p", str(pp), "-n", str(tg), "-r", str(reps), "--ctx", "4096", "--json",
               "--calibrate" if calibrate else "--no-calibrate")
    return {r["test"][:2]: r["mean"] for r in data["results"]}


def predicted(env: dict, path: Path) -> dict:
    rec = cli(env, "fit", str(path), "--ctx", "4096", "--json")["recommended"]
    return {"tg": rec["tokens_per_s"], "pp": rec["prompt_tokens_per_s"], "measured": rec["speed_measured"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate-on", default="gemma")
    parser.add_argument("--models", default="gemma,tiny,skeleton")
    parser.add_argument("-r", "--repetitions", type=int, default=2)
    args = parser.parse_args()
    names = args.models.split(",")
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as folder:  # noqa: SIM117
        env = dict(os.environ, LOCALCASCADE_HOME=home)
        paths = model_paths(sorted(set(names) | {args.calibrate_on}), Path(folder))
        estimates = {name: predicted(env, paths[name]) for name in names}   # before any calibration
        pp, tg = SIZES.get(args.calibrate_on, (256, 64))
        measured(env, paths[args.calibrate_on], pp, tg, args.repetitions, calibrate=True)
        print(f"calibrated on {args.calibrate_on} (bench -p {pp} -n {tg} -r {args.repetitions}); "
              f"threads: llama.cpp's default here")
        print("| model | test | measured t/s | predicted, calibrated | ratio | predicted, estimate | ratio |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for name in names:
            pp, tg = SIZES.get(name, (256, 64))
            truth = measured(env, paths[name], pp, tg, args.repetitions, calibrate=False)
            guess = predicted(env, paths[name])
            for test in ("tg", "pp"):
                mark = " (calibration model)" if name == args.calibrate_on else ""
                print(f"| {name}{mark} | {test} | {truth[test]:.2f} | {guess[test]:.2f} | "
                      f"{guess[test] / truth[test]:.2f} | {estimates[name][test]:.2f} | "
                      f"{estimates[name][test] / truth[test]:.2f} |")
        print("goal: calibrated ratios within 0.70-1.30 on the models not calibrated on")


if __name__ == "__main__":
    main()
