"""The python tool's sandbox against hostile code: each test fails if the code gets through.

These run the real sandbox (bubblewrap on Linux). They skip, with the reason, only where
no sandbox can be made; CI (.ci/run) installs bubblewrap first.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from localcascade.errors import SandboxUnavailableError
from localcascade.tools.python_tool import PythonTool, find_sandbox
from localcascade.tools.linux_sandbox import python_paths
from localcascade.tools.sandbox import Limits, Unsandboxed
from localcascade.tools.cgroups import RunCgroups

LIMITS = Limits(cpu_seconds=3, wall_seconds=10, memory_bytes=1 << 30, output_bytes=256 << 10, processes=24)


@pytest.fixture
def tool(sandbox):
    return PythonTool(sandbox, LIMITS)


def test_ordinary_code_runs_and_returns_output_and_value(tool):
    result = tool.execute("import math\nprint('hi', math.factorial(5))\nsum(range(10))")
    assert (result.stdout, result.result, result.exit, result.error) == ("hi 120\n", "45", 0, None)
    assert "hi 120" in result.for_model() and "[result] 45" in result.for_model()


def test_an_exception_is_a_result_with_the_traceback(tool):
    result = tool.execute("x = 1\n1/0")
    assert result.exit == 1 and "ZeroDivisionError" in result.stderr and "worker" not in result.stderr
    assert "ZeroDivisionError" in result.for_model()


def test_no_tcp_connection_to_a_server_on_localhost(tool):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    accepted = []

    def accept():
        deadline = time.time() + 15
        while time.time() < deadline and not accepted:
            try:
                accepted.append(server.accept())
            except (socket.timeout, OSError):
                pass

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        result = tool.execute(
            "import socket\ns = socket.create_connection(('127.0.0.1', %d), timeout=3)\nprint('CONNECTED')" % port)
    finally:
        accepted.append(None) if not accepted else None
        thread.join()
        server.close()
    assert "CONNECTED" not in result.stdout
    assert result.exit != 0 and ("Error" in result.stderr)
    assert accepted == [None], "the server saw a connection from the sandbox"


def test_no_connection_to_a_unix_socket_the_test_opened(tool, tmp_path):
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    server.settimeout(3)
    try:
        result = tool.execute(
            "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(%r)\nprint('CONNECTED')" % str(path))
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    assert "CONNECTED" not in result.stdout and result.exit != 0


def test_cannot_read_files_in_the_home_folder_or_the_store(tool, tmp_path):
    secret = f"secret-{uuid.uuid4()}"
    store = Path(os.environ["LOCALCASCADE_HOME"])
    store.mkdir(parents=True, exist_ok=True)
    in_store = store / "notes.txt"
    in_store.write_text(secret)
    in_home = Path.home() / f".localcascade-test-{uuid.uuid4().hex}"
    in_home.write_text(secret)
    try:
        for path in (in_store, in_home):
            result = tool.execute(f"print(open({str(path)!r}).read())")
            assert secret not in result.stdout + result.stderr + (result.result or "")
            assert result.exit != 0 and ("FileNotFoundError" in result.stderr or "PermissionError" in result.stderr)
        listing = tool.execute(f"import os\nprint(os.listdir({str(Path.home())!r}))")
        assert in_home.name not in listing.stdout
    finally:
        in_home.unlink()


def test_the_environment_and_the_parents_environ_do_not_leak(tool, monkeypatch):
    secret = f"hf_{uuid.uuid4().hex}"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setenv("SOME_API_KEY", secret)
    code = (
        "import os\nprint(dict(os.environ))\n"
        "for pid in (%d, os.getppid(), 1):\n"
        "    try:\n        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as err:\n        print('no', pid, err)\n" % os.getpid()
    )
    result = tool.execute(code)
    assert result.exit == 0
    assert secret not in result.stdout + result.stderr
    assert f"no {os.getpid()}" in result.stdout   # the test process is not even visible


def test_writes_outside_the_private_tmp_do_not_reach_the_host(tool, tmp_path):
    target = tmp_path / "written.txt"
    in_home = Path.home() / f".localcascade-write-{uuid.uuid4().hex}"
    code = (
        "import os\nfor p in (%r, %r, '/usr/evil', '/evil'):\n"
        "    try:\n        open(p, 'w').write('x')\n        print('WROTE', p)\n"
        "    except OSError as err:\n        print('refused', p, type(err).__name__)\n"
        "open('/tmp/ok.txt', 'w').write('fine')\nprint(open('/tmp/ok.txt').read())" % (str(target), str(in_home))
    )
    result = tool.execute(code)
    assert not target.exists() and not in_home.exists() and not Path("/usr/evil").exists()
    assert "WROTE" not in result.stdout and "fine" in result.stdout


def test_the_private_tmp_starts_empty(tool):
    tool.execute("open('/tmp/left-behind', 'w').write('x')")
    # The one thing /tmp may hold: the mount point of the interpreter's own read-only folders,
    # when Python itself lives under /tmp (a virtual environment made in a temporary folder).
    interpreter_tops = sorted({p.split("/")[2] for p in python_paths() if p.startswith("/tmp/")})
    assert tool.execute("import os\nsorted(os.listdir('/tmp'))").result == repr(interpreter_tops)


def test_a_fork_bomb_is_held_by_the_process_limit_even_as_root(tool):
    before = len(psutil.pids())
    code = (
        "import os, time\nn = 0\ntry:\n"
        "    while True:\n        if os.fork() == 0:\n            time.sleep(30)\n            os._exit(0)\n"
        "        n += 1\nexcept OSError as err:\n    print('limited at', n, type(err).__name__)\n"
    )
    started = time.monotonic()
    result = tool.execute(code)
    assert time.monotonic() - started < LIMITS.wall_seconds + 5
    assert "limited at" in result.stdout, result
    assert int(result.stdout.split()[2]) < LIMITS.processes
    time.sleep(0.5)
    assert len(psutil.pids()) < before + 5   # the sleeping children are gone with the call


def test_a_real_fork_bomb_ends_with_a_bounded_reported_error(tool):
    started = time.monotonic()
    result = tool.execute("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass")
    assert time.monotonic() - started < LIMITS.wall_seconds + 5
    assert result.error is not None and result.exit is None
    assert tool.execute("print('still fine')").stdout == "still fine\n"


def test_allocating_8_gb_fails_inside_the_code(tool):
    result = tool.execute("x = bytearray(8 << 30)\nprint('ALLOCATED')")
    assert "ALLOCATED" not in result.stdout and "MemoryError" in result.stderr


def test_an_infinite_loop_is_stopped(tool):
    started = time.monotonic()
    result = tool.execute("while True:\n    pass")
    assert time.monotonic() - started < LIMITS.wall_seconds + 5
    assert result.exit is None and ("CPU time" in result.error or "wall-time" in result.error)


def test_a_sleeping_loop_is_stopped_by_the_wall_time(sandbox):
    tool = PythonTool(sandbox, Limits(wall_seconds=2))
    started = time.monotonic()
    result = tool.execute("import time\ntime.sleep(60)")
    assert time.monotonic() - started < 6
    assert result.error == "stopped after 2 s (the wall-time limit)"


def test_printing_100_mb_is_cut_and_stopped(tool):
    result = tool.execute("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * (1 << 20))")
    assert "printed more than" in result.error
    assert len(result.stdout) < LIMITS.output_bytes + (1 << 17)
    assert len(result.for_model()) < 5000


def test_a_background_process_is_gone_after_the_call(tool):
    marker = f"lc{uuid.uuid4().hex}"
    code = (
        "import os, subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120) # %s'],"
        " start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(120) # %s'])\n"
        "    os._exit(0)\nprint('spawned')" % (marker, marker)
    )
    result = tool.execute(code)
    assert "spawned" in result.stdout, result
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert left == []


def test_the_sandbox_sees_no_host_process_and_no_network(tool):
    result = tool.execute(
        "import os, socket\nprint(sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        "print(socket.if_nameindex())")
    pids = eval(result.stdout.splitlines()[0])
    assert max(pids) < 10 and os.getpid() not in pids
    assert "eth" not in result.stdout.splitlines()[1]


def test_no_bubblewrap_is_refused_naming_what_to_install(monkeypatch):
    from localcascade.tools import linux_sandbox

    if not os.sys.platform.startswith("linux"):
        pytest.skip("the Linux sandbox's refusal")
    linux_sandbox.bubblewrap.cache_clear()
    monkeypatch.setattr(linux_sandbox.shutil, "which", lambda name: None)
    try:
        with pytest.raises(SandboxUnavailableError, match="install bubblewrap.*apt install bubblewrap"):
            find_sandbox()
    finally:
        linux_sandbox.bubblewrap.cache_clear()


def test_root_without_a_pids_cgroup_is_refused(monkeypatch):
    from localcascade.tools import linux_sandbox

    if not os.sys.platform.startswith("linux"):
        pytest.skip("the Linux sandbox's refusal")
    linux_sandbox.bubblewrap.cache_clear()
    monkeypatch.setattr(linux_sandbox.shutil, "which", lambda name: "/usr/bin/bwrap")
    monkeypatch.setattr(linux_sandbox.os, "geteuid", lambda: 0)
    monkeypatch.setattr(linux_sandbox, "find_cgroups", lambda: RunCgroups([]))
    try:
        with pytest.raises(SandboxUnavailableError, match="as root needs a writable pids cgroup"):
            find_sandbox()
    finally:
        linux_sandbox.bubblewrap.cache_clear()


def test_binds_name_the_interpreters_files_never_the_root_or_the_home():
    from localcascade.tools.linux_sandbox import python_paths

    paths = python_paths()
    assert "/" not in paths and str(Path.home()) not in paths
    assert os.environ["LOCALCASCADE_HOME"] not in paths
    assert any(p.endswith(("site-packages", "dist-packages")) for p in paths) or not paths


def test_unsandboxed_is_only_the_explicit_choice(tmp_path):
    runner = find_sandbox(unsandboxed=True)
    assert isinstance(runner, Unsandboxed) and not runner.sandboxed
    result = PythonTool(runner, LIMITS).execute("import os\nprint(os.getcwd() != '/')\n6 * 7")
    assert result.result == "42" and result.stdout == "True\n"
