"""Class 8: the sandbox holds as root. Hostile code runs in the real sandbox (bubblewrap) and each
test fails if it reaches the host: kernel settings, devices, memory past the call's limit.

Safe for the host: a sysctl is only ever written with a value that is restored at once if the
write unexpectedly gets through (and the test then fails); device nodes are only chmod'ed to
the mode they already have. Run as root (CI) and as a normal user (see docs/tools.md).
"""

from __future__ import annotations

import json
import os
import platform
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from localcascade.tools.cgroups import RunCgroups, find_cgroups
from localcascade.tools.python_tool import PythonTool
from localcascade.tools.sandbox import Limits

MIB = 1 << 20
LIMITS = Limits(cpu_seconds=5, wall_seconds=15, memory_bytes=512 * MIB, output_bytes=256 << 10, processes=24)
AS_ROOT = os.geteuid() == 0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux sandbox")


@pytest.fixture
def tool(sandbox):
    return PythonTool(sandbox, LIMITS)


def _run_json(tool: PythonTool, code: str):
    """Run ``code`` whose last line prints one JSON value; that value."""
    result = tool.execute(code)
    assert result.exit == 0, result
    return json.loads(result.stdout.splitlines()[-1])


# -- kernel settings: /proc/sys and the rest of /proc that writes to the kernel -------------------

def _write_in_sandbox(tool: PythonTool, path: str, value: str) -> str:
    code = (
        "import os\n"
        f"try:\n    fd = os.open({path!r}, os.O_WRONLY)\n"
        f"    os.write(fd, {value.encode()!r})\n    os.close(fd)\n    print('WROTE')\n"
        "except OSError as err:\n    print('refused', err.errno)\n"
    )
    return tool.execute(code).stdout


@pytest.mark.parametrize("name", ["kernel/core_pattern", "kernel/core_uses_pid", "vm/overcommit_ratio"])
def test_a_global_sysctl_cannot_be_written(tool, name):
    path = f"/proc/sys/{name}"
    before = Path(path).read_text()
    # core_pattern is a route to root: it is only ever "written" with its own value.
    value = before if name == "kernel/core_pattern" else str(int(before) ^ 1 if "uses_pid" in name else int(before) + 1)
    try:
        said = _write_in_sandbox(tool, path, value)
    finally:
        after = Path(path).read_text()
        if after != before:
            Path(path).write_text(before)
    assert said.startswith("refused"), f"the sandbox wrote {path}: {said!r}"
    assert after == before


def test_nothing_under_proc_dev_or_sys_opens_for_writing(tool):
    # Every file of /proc (the sandbox's own processes included), /sys and /dev is opened for
    # writing, nothing written; only the five harmless devices and /dev/shm may open.
    code = r"""
import json, os
opened = []
def try_open(path):
    if os.path.islink(path):   # /dev/stdout and the like: this process's own pipes
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return
    os.close(fd)
    opened.append(path)
for top in ('/proc', '/sys', '/dev'):
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if d not in ('fd', 'fdinfo', 'task', 'map_files') and
                   not (folder == '/proc' and d.isdigit() and d not in ('1', str(os.getpid())))]
        for name in files:
            try_open(os.path.join(folder, name))
print(json.dumps(sorted(opened)))
"""
    opened = _run_json(tool, code)
    assert opened == ["/dev/full", "/dev/null", "/dev/random", "/dev/urandom", "/dev/zero"]


def test_the_sysrq_trigger_and_kernel_proc_files_are_out_of_reach(tool):
    # /proc/sysrq-trigger reboots a host with one byte: opened for writing only, never written.
    said = _run_json(tool, (
        "import json, os\nout = {}\n"
        "for path in ('/proc/sysrq-trigger', '/proc/sys/kernel/sysrq', '/proc/sys/vm/drop_caches',\n"
        "             '/proc/timer_list', '/proc/keys', '/proc/kallsyms', '/proc/interrupts'):\n"
        "    try:\n        os.close(os.open(path, os.O_WRONLY))\n        out[path] = 'OPENED'\n"
        "    except OSError as err:\n        out[path] = err.errno\n"
        "    try:\n        out[path + ' read'] = len(open(path, 'rb').read())\n"
        "    except OSError as err:\n        pass\n"
        "print(json.dumps(out))"))
    assert "OPENED" not in said.values(), said
    # The host's timers, keys, interrupts and kernel symbols read empty (covered), when they read at all.
    for name in ("/proc/timer_list", "/proc/keys", "/proc/kallsyms", "/proc/interrupts"):
        assert said.get(name + " read", 0) == 0, said


def test_no_sys_no_mount_no_nested_namespace(tool):
    said = _run_json(tool, (
        "import ctypes, json, os\nlibc = ctypes.CDLL(None, use_errno=True)\nout = {'sys': os.path.exists('/sys')}\n"
        "out['mount'] = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)\n"
        "out['remount /proc rw'] = libc.mount(b'none', b'/proc', None, 0x20 | 0x1000, None)\n"
        "out['umount /proc'] = libc.umount2(b'/proc', 2)\n"
        "out['unshare user'] = libc.unshare(0x10000000)\n"
        "out['unshare mount'] = libc.unshare(0x00020000)\n"
        "out['caps'] = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
        "print(json.dumps(out))"))
    assert said == {"sys": False, "mount": -1, "remount /proc rw": -1, "umount /proc": -1, "unshare user": -1,
                    "unshare mount": -1, "caps": "0000000000000000"}


def test_host_processes_cannot_be_traced(tool):
    said = _run_json(tool, (
        "import ctypes, json, os\nlibc = ctypes.CDLL(None, use_errno=True)\nout = {}\n"
        f"for pid in ({os.getpid()}, {os.getppid()}):\n"
        "    out[pid] = libc.ptrace(16, pid, None, None)\n"   # PTRACE_ATTACH
        "    if out[pid] == 0:\n        libc.ptrace(17, pid, None, None)\n"   # PTRACE_DETACH
        "print(json.dumps(out))"))
    assert set(said.values()) == {-1}, said


def test_open_files_are_capped_and_the_cap_cannot_be_raised(tool):
    # Pipe and socket buffers are kernel memory no process's RSS shows: descriptors are capped.
    said = _run_json(tool, (
        "import json, os, resource\nout = {}\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "try:\n    resource.setrlimit(resource.RLIMIT_NOFILE, (hard + 1, hard + 1))\n    out['raised'] = True\n"
        "except (ValueError, OSError):\n    out['raised'] = False\n"
        "pipes = []\ntry:\n    while len(pipes) < 100000:\n        pipes.append(os.pipe())\n"
        "except OSError as err:\n    out['errno'] = err.errno\n"
        "out['hard'], out['pipes'] = hard, len(pipes)\nprint(json.dumps(out))"))
    assert said["raised"] is False and said["hard"] == LIMITS.open_files and said["errno"] == 24   # EMFILE
    assert said["pipes"] < LIMITS.open_files // 2


# -- devices: nothing of the host's, a read-only /dev, a small /dev/shm -----------------------------

def test_the_hosts_device_nodes_cannot_be_changed(tool):
    modes = {name: stat.S_IMODE(os.stat(f"/dev/{name}").st_mode) for name in ("null", "zero", "urandom")}
    said = _run_json(tool, (
        "import json, os\nout = {}\n"
        f"for name, mode in {modes!r}.items():\n"
        "    try:\n        os.chmod('/dev/' + name, mode)\n        out[name] = 'CHANGED'\n"
        "    except OSError as err:\n        out[name] = err.errno\n"
        "print(json.dumps(out))"))
    assert "CHANGED" not in said.values(), said
    assert modes == {name: stat.S_IMODE(os.stat(f"/dev/{name}").st_mode) for name in modes}


# Fills a folder with 8 MiB files (each under the 16 MiB file-size limit) until the folder is full:
# (MiB written, the errno that stopped it).
FILL = """
def fill(folder):
    written, chunk = 0, b'x' * (1 << 20)
    for index in range(512):
        try:
            with open(f'{folder}/fill{index}', 'wb') as f:
                for _ in range(8):
                    f.write(chunk)
                    f.flush()
                    written += 1
        except OSError as err:
            return written, err.errno
    return written, None
"""


def test_dev_is_read_only_and_dev_shm_is_small(tool):
    said = _run_json(tool, (
        "import json, os\nout = {}\n"
        "try:\n    open('/dev/evil', 'w').write('x')\n    out['dev'] = 'WROTE'\n"
        "except OSError as err:\n    out['dev'] = err.errno\n"
        f"{FILL}out['shm MiB'], out['shm error'] = fill('/dev/shm')\nout['devices'] = sorted(os.listdir('/dev'))\n"
        "print(open('/dev/null', 'w').write('fine') and json.dumps(out))"))
    assert said["dev"] in (13, 30)   # EACCES or EROFS
    assert said["shm error"] == 28 and said["shm MiB"] <= LIMITS.shm_bytes // MIB   # ENOSPC
    assert said["devices"] == ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "urandom", "zero"]


def test_tmp_and_shm_hold_no_more_than_their_sizes_together(tool):
    said = _run_json(tool, f"import json\n{FILL}print(json.dumps([fill('/tmp'), fill('/dev/shm')]))")
    assert said == [[LIMITS.tmp_bytes // MIB, 28], [LIMITS.shm_bytes // MIB, 28]]


# -- memory: one limit for the whole call -----------------------------------------------------------

CHILDREN_HOLD = (
    "import os, time\nheld = 0\nkids = []\n"
    "for _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n"
    "        block = b'x' * (300 << 20)\n        time.sleep(3)\n        os._exit(0)\n    kids.append(pid)\n"
    "for pid in kids:\n    _, status = os.waitpid(pid, 0)\n    held += status == 0\n"
    "print('children that held 300 MiB to the end:', held)"
)


def _assert_held_to_one_limit(result) -> None:
    assert "held 300 MiB to the end: 3" not in result.stdout, result
    assert result.error == "stopped: its processes used more than 512.0 MiB of memory together", result


def test_three_children_are_held_to_one_memory_limit(tool):
    # Each child is within its own address space (512 MiB); together they want 900 MiB.
    _assert_held_to_one_limit(tool.execute(CHILDREN_HOLD))
    assert tool.execute("print('still fine')").stdout == "still fine\n"


def test_without_a_memory_cgroup_the_watch_holds_the_whole_call(sandbox):
    # What a normal user gets where no memory cgroup is delegated: the parent's watch.
    tool = PythonTool(_sandbox_holding_memory_by(sandbox, "watch"), LIMITS)
    assert "watched by localcascade" in tool.describe()
    _assert_held_to_one_limit(tool.execute(CHILDREN_HOLD))


def _sandbox_holding_memory_by(sandbox, how: str):
    """The sandbox with its memory held by the cgroup or, the cgroup left out, by the watch."""
    from localcascade.tools.linux_sandbox import Bubblewrap

    places = find_cgroups().places
    if how == "cgroup":
        if not any("memory" in p.controllers for p in places):
            pytest.skip("no memory cgroup can be made here (a normal user's usual case)")
        return sandbox
    return Bubblewrap(sandbox.bwrap, RunCgroups([p for p in places if "memory" not in p.controllers]))


SMALL_MEMORY = Limits(cpu_seconds=8, wall_seconds=15, memory_bytes=100 * MIB)


@pytest.mark.parametrize("how", ["cgroup", "watch"])
@pytest.mark.parametrize("code", [
    # 56 MiB in /tmp plus 60 MiB in the process: each within its own cap, over 100 MiB together.
    "with open('/tmp/a', 'wb') as f:\n    f.write(b'x' * (8 << 20))\n"
    "for i in range(6):\n    open(f'/tmp/b{i}', 'wb').write(b'x' * (8 << 20))\n"
    "block = b'x' * (60 << 20)\nimport time\ntime.sleep(2)\nprint('HELD')",
    # Empty files: no bytes, yet an inode and a dentry each, kernel memory no RSS shows.
    "import os\nfor n in range(400000):\n    os.close(os.open(f'/tmp/f{n}', os.O_CREAT | os.O_WRONLY))\nprint('HELD')",
], ids=["tmp-bytes", "empty-files"])
def test_what_the_code_keeps_in_tmp_counts_toward_the_calls_memory(sandbox, how, code):
    result = PythonTool(_sandbox_holding_memory_by(sandbox, how), SMALL_MEMORY).execute(code)
    assert "HELD" not in result.stdout, result
    assert result.error == "stopped: its processes used more than 100.0 MiB of memory together", result


def test_the_memory_bound_is_said_in_one_line(tool):
    line = tool.describe()
    assert line.startswith("bubblewrap; memory: 512.0 MiB for the whole call") and "\n" not in line
    if AS_ROOT and find_cgroups().has("memory"):
        assert "memory limit)" in line


# -- the session keyring: nothing of localcascade's ---------------------------------------------------

KEYRING_PROBE = r"""
import ctypes, json, os, sys
from localcascade.tools.python_tool import PythonTool
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
KEYCTL, ADD_KEY = 250, 248
libc.syscall(KEYCTL, 1, b"localcascade-test-ring")            # KEYCTL_JOIN_SESSION_KEYRING
secret = b"keyring-secret-" + os.urandom(8).hex().encode()
assert libc.syscall(ADD_KEY, b"user", b"lc-test", secret, len(secret), -3) > 0
code = '''
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
buf = ctypes.create_string_buffer(4096)
ring = libc.syscall(250, 0, -3, 0)
n = libc.syscall(250, 6, ring, buf, 4096)
ids = ctypes.create_string_buffer(4096)
m = libc.syscall(250, 11, -3, ids, 4096)
found = []
for i in range(0, max(m, 0), 4):
    key = int.from_bytes(ids.raw[i:i + 4], "little")
    data = ctypes.create_string_buffer(256)
    k = libc.syscall(250, 11, key, data, 256)
    found.append(data.raw[:max(k, 0)].decode("latin-1"))
print(json.dumps({"ring": buf.value.decode("latin-1"), "keys": found}))
'''
result = PythonTool().execute(code)
print(json.dumps({"secret": secret.decode(), "stdout": result.stdout, "stderr": result.stderr}))
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the probe's syscall numbers are x86-64's")
def test_the_code_does_not_hold_localcascades_session_keyring(sandbox):
    probe = subprocess.run([sys.executable, "-c", KEYRING_PROBE], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    said = json.loads(probe.stdout.splitlines()[-1])
    assert said["secret"] not in said["stdout"] + said["stderr"]
    inside = json.loads(said["stdout"].splitlines()[-1])
    assert "localcascade-test-ring" not in inside["ring"] and inside["keys"] == []


# -- execute() never raises ---------------------------------------------------------------------------

@pytest.mark.parametrize("code, error", [
    ("print('\ud800')", "a lone surrogate (U+D800) at character 7"),
    ("x = '\udfff'\nx", "a lone surrogate (U+DFFF)"),
    ("print(1)\x00print(2)", "a NUL character at character 8"),
    ("#" * (2 << 20), "longer than 1.0 MiB"),
    ("'" + "\u00e9" * (600 << 10) + "'", "longer than 1.0 MiB"),   # under 1 Mi characters, over 1 MiB
])
def test_code_no_interpreter_takes_is_an_error_result(tool, code, error):
    result = tool.execute(code)
    assert error in (result.error or ""), result.error
    assert result.exit is None and result.stdout == "" and "[error]" in result.for_model()
    json.dumps(result.to_dict())   # the result is printable as ask --json prints it


def test_a_sandbox_that_cannot_start_is_an_error_result(sandbox):
    from localcascade.tools.linux_sandbox import Bubblewrap

    broken = Bubblewrap("/nonexistent/bwrap", sandbox.cgroups)
    result = PythonTool(broken, LIMITS).execute("print(1)")
    assert result.error.startswith("could not run the code: cannot start the sandbox") and result.exit is None


# -- the normal user's path, from a root test run -------------------------------------------------------

NORMAL_USER_PROBE = r"""
import json, os, sys
from localcascade.tools.python_tool import PythonTool
from localcascade.tools.sandbox import Limits
tool = PythonTool(limits=Limits(cpu_seconds=5, wall_seconds=15, memory_bytes=512 << 20, processes=24))
out = {"uid": os.geteuid(), "describe": tool.describe()}
out["memory"] = tool.execute(sys.argv[1]).error
forks = tool.execute("import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
                     "            time.sleep(30)\n            os._exit(0)\n        n += 1\nexcept OSError:\n    print(n)")
out["forks"] = forks.stdout.strip()
out["sysctl"] = tool.execute("import os\ntry:\n    os.open('/proc/sys/kernel/core_pattern', os.O_WRONLY)\n"
                             "    print('OPENED')\nexcept OSError as err:\n    print(err.errno)").stdout.strip()
print(json.dumps(out))
"""


def _system_python_for(uid: int) -> str | None:
    """An interpreter (with its standard library) a process of ``uid`` can run, or None."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.path.exists(candidate):
            probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 10))"],
                                   capture_output=True, text=True, preexec_fn=_as_user(uid), timeout=30)
            if probe.stdout.strip() == "True":
                return candidate
    return None


def _as_user(uid: int):
    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    return drop


@pytest.mark.skipif(not AS_ROOT, reason="run as a normal user, the whole suite is the normal user's path")
def test_as_a_normal_user_the_sandbox_holds_with_the_watch(sandbox, tmp_path):
    # A child that drops to uid 65534 runs localcascade with a system Python: no cgroup is writable
    # to it, so the process limit is the user namespace's and the memory limit the parent's watch.
    uid = 65534
    repo = Path(__file__).resolve().parents[2]
    python = _system_python_for(uid)
    if python is None or not os.access(repo, os.R_OK | os.X_OK):
        pytest.skip("no interpreter or checkout a normal user can run here")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, uid, uid)
    tmp_path.chmod(0o755)
    probe = subprocess.run([python, "-c", NORMAL_USER_PROBE, CHILDREN_HOLD], capture_output=True, text=True,
                           timeout=120, cwd=home, preexec_fn=_as_user(uid),
                           env={"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(repo)})
    if probe.returncode != 0 and "No module named" in probe.stderr:
        pytest.skip(f"localcascade does not import on {python}: {probe.stderr.strip().splitlines()[-1]}")
    assert probe.returncode == 0, probe.stderr
    said = json.loads(probe.stdout.splitlines()[-1])
    assert said["uid"] == uid and "watched by localcascade" in said["describe"]
    assert said["memory"] == "stopped: its processes used more than 512.0 MiB of memory together"
    assert 0 < int(said["forks"]) < 24
    assert said["sysctl"] == "13"   # EACCES: the kernel's files are root's, and this is not root
