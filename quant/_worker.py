"""The child process that runs llama.cpp's quantizer: ``python -m quant._worker '<json job>'``.

llama.cpp's ``llama_model_quantize`` cannot be cancelled and can abort the
process on bad input, so it runs here and the parent (``quant.quantize``) can
kill it on Ctrl-C and delete its temporary output.

The job runs in two steps in the one process (so llama_cpp is imported once):
1. a dry run (``params.dry_run``), answered with ``{"planned": rc}``;
2. after the parent writes one JSON line on stdin with the output path and
   options (an empty line or EOF means stop), the real run, answered with
   ``{"done": rc}`` and, when asked, ``{"loaded": bool, ...}``.
Messages go as JSON lines on the original stdout, with ``{"log": line}`` for
each llama.cpp log line; anything the C code prints on its own goes to stderr.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys


def _die_with_parent() -> None:
    """On Linux, ask the kernel to kill us if the parent dies, so no orphan keeps writing."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def main() -> int:
    job = json.loads(sys.argv[1])
    # The parent owns Ctrl-C: it kills this process and cleans up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()

    messages = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray C printf output must not corrupt the message stream

    def send(obj: dict) -> None:
        messages.write(json.dumps(obj) + "\n")

    import llama_cpp

    pending = []

    @llama_cpp.llama_log_callback
    def on_log(level, text, user_data):  # noqa: ARG001 - C signature
        pending.append(text.decode("utf-8", errors="replace"))
        if pending[-1].endswith("\n"):
            for line in "".join(pending).splitlines():
                send({"log": line})
            pending.clear()

    llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
    llama_cpp.llama_backend_init()

    def flush_log() -> None:
        if pending:
            send({"log": "".join(pending)})
            pending.clear()

    try:
        imatrix = _imatrix_array(llama_cpp, job.get("imatrix"))
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        send({"error": str(err)})
        return 1
    rc = _quantize(llama_cpp, {**job, "dst": os.devnull, "dry_run": True}, imatrix)
    flush_log()
    send({"planned": rc})
    if rc != 0:
        return rc
    go = sys.stdin.readline()
    if not go.strip():
        return 0
    job.update(json.loads(go))
    rc = _quantize(llama_cpp, job, imatrix)
    flush_log()
    send({"done": rc})
    if rc == 0 and job.get("load"):
        send(_load(llama_cpp, job["load"]))
    messages.flush()
    return rc


def _quantize(llama_cpp, job: dict, imatrix) -> int:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{job['target']}")
    params.allow_requantize = bool(job.get("allow_requantize"))
    params.keep_split = bool(job.get("keep_split"))
    params.dry_run = bool(job.get("dry_run"))
    params.nthread = int(job.get("nthread") or 0)
    if imatrix is not None:
        params.imatrix = ctypes.cast(imatrix[0], ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    return int(llama_cpp.llama_model_quantize(job["src"].encode(), job["dst"].encode(), ctypes.byref(params)))


def _imatrix_array(llama_cpp, path: str | None):
    """The NULL-terminated C array of importance data, and the Python objects it points into."""
    if not path:
        return None
    from quant.imatrix import load_imatrix

    entries = load_imatrix(path)
    array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    keep_alive = []
    for i, (name, values) in enumerate(entries.items()):
        name_bytes = name.encode()
        keep_alive += [name_bytes, values]
        array[i].name = name_bytes
        array[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        array[i].size = values.size
    array[len(entries)].name = None  # the C side stops at the first NULL name
    return array, keep_alive


def _load(llama_cpp, path: str) -> dict:
    """Load the finished file on the CPU to prove llama.cpp accepts it (tensor table, sizes, offsets).

    Memory-mapped and without the CPU repacking buffers, so it costs a fraction of a
    second even for a 20 GB file instead of rewriting every weight in memory.
    """
    model = llama_cpp.llama_model_load_from_file(path.encode(), _load_params(llama_cpp))
    if not model:
        return {"loaded": False, "error": "llama.cpp could not load the output file"}
    n_params = int(llama_cpp.llama_model_n_params(model))
    llama_cpp.llama_model_free(model)
    return {"loaded": True, "n_params": n_params}


def _load_params(llama_cpp):
    """CPU, memory-mapped, no repacking. 0.3.36's struct has ``load_mode``, not ``use_mmap``: ctypes
    would keep an unknown attribute as a plain Python one and llama.cpp would never see it."""
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_MMAP
    params.use_extra_bufts = False
    return params


if __name__ == "__main__":
    sys.exit(main())
