"""What runs inside the sandbox: read the code on stdin, run it like a notebook cell.

Run as ``python -I -c <this file's text> NPROC RESULT_FD SITE_DIR...``. It is shipped as text
and never imported by localcascade itself: it must run on the bare interpreter with
nothing but the standard library.

The value of a final expression (as in a notebook) is written, as repr text, to file
descriptor RESULT_FD, kept apart from what the code prints.
"""

import ast
import os
import resource
import sys
import traceback

RESULT_LIMIT = 8192


def _limit_processes(count):
    # Inside a user namespace this counts only the sandbox's own processes (kernel >= 5.14);
    # the host-side limit for root is a pids cgroup set up by the parent.
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (count, count))
    except (ValueError, OSError):
        pass


def _write_result(fd, value):
    try:
        text = repr(value)
    except Exception as err:  # noqa: BLE001 - a repr that raises is the code's own business
        text = f"<repr failed: {type(err).__name__}: {err}>"
    data = text.encode("utf-8", errors="replace")[:RESULT_LIMIT]
    try:
        os.write(fd, data)
    except OSError:
        pass


def main():
    _limit_processes(int(sys.argv[1]))
    result_fd = int(sys.argv[2])
    os.set_inheritable(result_fd, False)   # not handed on to programs the code starts
    import site

    for folder in sys.argv[3:]:
        if os.path.isdir(folder):
            site.addsitedir(folder)
    code = sys.stdin.read()
    sys.stdin.close()
    sys.stdin = open(os.devnull)
    sys.argv = ["<tool>"]
    try:
        os.chdir(os.environ.get("TMPDIR", "/tmp"))
    except OSError:
        pass
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        tree = ast.parse(code, "<tool>", "exec")
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<tool>", "exec"), namespace)
        if last is not None:
            value = eval(compile(last, "<tool>", "eval"), namespace)
            if value is not None:
                _write_result(result_fd, value)
    except SystemExit as stop:
        code = stop.code
        sys.stdout.flush()
        os._exit(code if isinstance(code, int) else (0 if code is None else 1))
    except BaseException as err:  # noqa: BLE001 - the code's error is its result
        tb = err.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != "<tool>":
            tb = tb.tb_next   # the traceback starts at the user's code, not at this runner
        traceback.print_exception(type(err), err, tb)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)   # no atexit handlers or thread joins of the code's making


main()
