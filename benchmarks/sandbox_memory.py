"""How much memory one `--tools python` call can hold: the peak resident memory of all its processes.

The call's code forks CHILDREN processes that each write SIZE MiB and hold it; a thread here sums
the resident memory of every process under this one every 10 ms and prints the peak, with what
the call reported. Usage (it really allocates: keep CHILDREN x SIZE well under the free memory):

    python benchmarks/sandbox_memory.py [CHILDREN] [SIZE_MIB] [--no-memory-cgroup]

--no-memory-cgroup runs the sandbox as a normal user gets it where no memory cgroup is delegated
(the parent's watch), also when run as root.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import psutil

from localcascade.tools.python_tool import PythonTool, find_sandbox


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    children = int(args[0]) if args else 3
    size_mib = int(args[1]) if len(args) > 1 else 1536
    sandbox = find_sandbox()
    if "--no-memory-cgroup" in sys.argv:
        from localcascade.tools.cgroups import RunCgroups
        from localcascade.tools.linux_sandbox import Bubblewrap

        sandbox = Bubblewrap(sandbox.bwrap, RunCgroups([p for p in sandbox.cgroups.places
                                                        if "memory" not in p.controllers]))
    tool = PythonTool(sandbox)
    code = (
        "import os, time\nkids = []\n"
        f"for _ in range({children}):\n    pid = os.fork()\n    if pid == 0:\n"
        f"        block = b'x' * ({size_mib} << 20)\n        time.sleep(4)\n        os._exit(0)\n    kids.append(pid)\n"
        "print('children that held to the end:', sum(os.waitpid(p, 0)[1] == 0 for p in kids))"
    )
    peak, done = [0], threading.Event()

    def sample() -> None:
        me = psutil.Process()
        while not done.is_set():
            total = 0
            for process in me.children(recursive=True):
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    result = tool.execute(code)
    done.set()
    sampler.join()
    print(f"uid {os.geteuid()}; {tool.describe()}")
    print(f"{children} children x {size_mib} MiB: peak held {peak[0] / (1 << 30):.2f} GiB "
          f"in {time.monotonic() - started:.1f} s; stdout {result.stdout.strip()!r}; error {result.error!r}")


if __name__ == "__main__":
    main()
