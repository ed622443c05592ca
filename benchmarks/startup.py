"""Start-up time of `localcascade --help` (goal < 0.3 s): the median of several runs.

    python benchmarks/startup.py [--runs N]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def main() -> None:
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 7
    command = [sys.executable, "-m", "localcascade", "--help"]
    subprocess.run(command, capture_output=True, check=True)   # warm the file cache
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    bare = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], capture_output=True, check=True)
        bare.append(time.perf_counter() - start)
    median = statistics.median(times)
    print(f"localcascade --help: median {median:.3f} s over {runs} runs (min {min(times):.3f} s); "
          f"bare python {statistics.median(bare):.3f} s")
    print(f"ratio to the 0.3 s goal: {median / 0.3:.2f}   (goal < 1.0)")


if __name__ == "__main__":
    main()
