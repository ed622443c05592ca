"""Quantize a BF16/F16/F32 GGUF with llama.cpp's own quantizer, safely.

``quantize()`` runs ``llama_model_quantize`` in a child process
(``quant._worker``) because the C call cannot be cancelled: on Ctrl-C or any
failure the child is killed and its temporary output removed, so no file ever
appears under the final name unless it is complete and checked. Progress comes
from the quantizer's log lines, one callback call per tensor.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from localcascade import safe_io
from localcascade.errors import DiskSpaceError, Interrupted, OutputPathError, QuantizeError, UsageError
from localcascade.model.spec import shard_name
from quant.gguf_facts import GGUFFacts, read_facts, shard_paths
from quant.targets import MAIN_TYPE, UNQUANTIZED_TYPES, accepted_main_types, normalize_target
from quant.workdir import sweep_abandoned, work_dir_for

# progress(done_tensors, total_tensors, tensor_name)
Progress = Callable[[int, int, str], None]
# publish(result whose outputs are the checked temporary files, final paths): puts them in place.
Publish = Callable[["QuantResult", list], None]

_TENSOR_LINE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]\s+(\S+)\s+- \[.*?\], type =\s*(\S+),")
_CONVERTING = re.compile(r"converting to (\S+) \.\.")
_DRY_RUN_TYPE = re.compile(r"MiB \((\S+)\)\s*$")
_ERROR_LINE = re.compile(r"failed to quantize: (.*)$")

# Room kept free beyond the predicted size: the header and filesystem slack.
_DISK_MARGIN = 64 * 1024 * 1024


@dataclass(frozen=True)
class DryRun:
    """What quantizing would produce, without writing anything."""

    target: str
    predicted_bytes: int                      # the whole output file(s), header included
    tensor_types: dict[str, str]              # tensor name -> ggml type it would get
    source_bytes: int

    @property
    def histogram(self) -> dict[str, int]:
        return dict(collections.Counter(self.tensor_types.values()))


@dataclass(frozen=True)
class QuantResult:
    """A finished, checked quantization."""

    target: str
    source: Path
    outputs: tuple[Path, ...]                 # one file, or the shards with keep_split
    output_bytes: int
    predicted_bytes: int
    histogram: dict[str, int]                 # ggml type -> tensor count in the output
    main_type: str                            # the type holding most weight bytes
    loaded: bool                              # llama.cpp loaded the output on the CPU
    n_params: int = 0
    warnings: tuple[str, ...] = field(default=())

    @property
    def path(self) -> Path:
        return self.outputs[0]


def dry_run(src: str | os.PathLike, target: str, *, imatrix: str | os.PathLike | None = None,
            allow_requantize: bool = False) -> DryRun:
    """Ask llama.cpp what ``target`` would produce from ``src`` (params.dry_run); writes nothing."""
    with prepare(src, target, imatrix=imatrix, allow_requantize=allow_requantize) as job:
        return job.plan


def quantize(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    target: str = "Q4_K_M",
    *,
    imatrix: str | os.PathLike | None = None,
    allow_requantize: bool = False,
    keep_split: bool = False,
    nthread: int = 0,
    progress: Progress | None = None,
    verify_load: bool = True,
    overwrite: bool = False,
) -> QuantResult:
    """Quantize ``src`` to ``target`` at ``dst`` and check the result.

    With ``keep_split`` a split source gives split output named
    ``<dst without .gguf>-0000N-of-0000M.gguf``. An existing output file is
    refused unless ``overwrite``. Raises UsageError (``nthread`` out of range),
    QuantizeError, DiskSpaceError, or Interrupted (Ctrl-C); none of them leaves an output file.
    """
    check_threads(nthread)  # before llama.cpp starts
    check_destination(src, dst, keep_split=keep_split, overwrite=overwrite)
    with prepare(src, target, imatrix=imatrix, allow_requantize=allow_requantize) as job:
        return job.run(dst, keep_split=keep_split, nthread=nthread, progress=progress, verify_load=verify_load,
                       overwrite=overwrite)


def max_threads() -> int:
    """The most quantizer threads accepted: llama.cpp starts every one of them, and far past
    the core count the process dies (``terminate called ...``) instead of going faster."""
    return 4 * (os.cpu_count() or 1)


def check_threads(nthread: int) -> None:
    """Refuse a thread count llama.cpp cannot use (0 means one per core)."""
    if not 0 <= nthread <= max_threads():
        raise UsageError(f"--threads takes 0 (all cores) to {max_threads()} (4 per core here), not {nthread}")


def check_destination(src: str | os.PathLike, dst: str | os.PathLike, *, keep_split: bool = False,
                      overwrite: bool = False) -> list[Path]:
    """The output file(s) ``dst`` names for ``src``, or QuantizeError when they cannot be written.

    Cheap (no header read, no llama.cpp), so callers can refuse before the dry run:
    the folder must exist, no output may be a file of the source, and existing
    outputs are refused unless ``overwrite``.
    """
    dst = Path(dst).expanduser().absolute()
    sources = shard_paths(Path(src).expanduser().absolute())
    finals = _split_names(dst, len(sources)) if keep_split and len(sources) > 1 else [dst]
    if not dst.parent.is_dir():
        raise OutputPathError(f"output directory {dst.parent} does not exist")
    if not os.access(dst.parent, os.W_OK):  # a read-only mount also shows 0 bytes free, a misleading reason
        raise OutputPathError(f"cannot write in {dst.parent} (read-only or not yours); choose another --out")
    source_files = {os.path.realpath(p) for p in sources}
    for final in finals:
        if os.path.realpath(final) in source_files:
            raise OutputPathError(f"the output path {final} is the source file; choose another --out")
    for final in finals:
        # Even with --force: a device node, folder or link at the output path is never replaced.
        safe_io.check_output(final, what="a quantized model", overwrite=True)
    existing = [f for f in finals if f.exists() or f.is_symlink()]
    if existing and not overwrite:
        raise OutputPathError(f"{existing[0]} already exists; choose another --out, or pass --force to replace it")
    return finals


def prepare(src: str | os.PathLike, target: str, *, imatrix: str | os.PathLike | None = None,
            allow_requantize: bool = False) -> "Quantization":
    """Check the source, start llama.cpp and make its dry run; ``.plan`` says what ``.run()`` will write.

    Use as a context manager (``with quant.prepare(...) as job:``) so the child
    process goes away even when ``run`` is never called.
    """
    return Quantization(src, target, imatrix=imatrix, allow_requantize=allow_requantize)


class Quantization:
    """One quantization in two steps: the dry run (done on creation), then ``run``."""

    def __init__(self, src, target: str, *, imatrix=None, allow_requantize: bool = False):
        self.target = normalize_target(target)
        self.src = _existing(src)
        if imatrix is not None:  # a folder, FIFO or link loop is named as such, not "not found"
            safe_io.check_input(imatrix, what="imatrix file", limit=safe_io.IMATRIX_MAX_BYTES)
        self.facts = read_facts(self.src)
        _refuse_requantize(self.src, self.facts, allow_requantize)
        self._worker = _Worker({"src": str(self.src), "target": self.target, "allow_requantize": allow_requantize,
                                "imatrix": _opt_str(imatrix)})
        try:
            self.plan = self._dry_run()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Quantization":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._worker.stop()

    def _dry_run(self) -> DryRun:
        lines, message = self._worker.read_until("planned")
        if message is None or message["planned"] != 0:
            raise QuantizeError(_failure_message(lines, f"llama.cpp could not plan quantizing {self.src.name}"))
        types = _tensor_types_from_log(lines, dry_run=True)
        if set(types) != set(self.facts.tensor_types):
            raise QuantizeError(f"llama.cpp's dry run of {self.src.name} did not list every tensor")
        predicted = self.facts.metadata_bytes + sum(
            self.facts.padded_bytes(name, new_type) for name, new_type in types.items()
        )
        return DryRun(target=self.target, predicted_bytes=predicted, tensor_types=types,
                      source_bytes=self.facts.file_bytes)

    def run(self, dst, *, keep_split: bool = False, nthread: int = 0, progress: Progress | None = None,
            verify_load: bool = True, overwrite: bool = False, publish: Publish | None = None) -> QuantResult:
        """Write the quantized file(s) at ``dst`` (through a temporary folder), check them, rename them.

        Existing output files are refused unless ``overwrite``. ``publish`` puts the checked files in
        place (default: ``publish_outputs``); a caller that also records them passes its own, to hold
        one lock across the last check, the rename and the record.
        """
        target, src, plan = self.target, self.src, self.plan
        check_threads(nthread)
        dst = Path(dst).expanduser().absolute()
        check_destination(src, dst, keep_split=keep_split, overwrite=overwrite)
        swept = sweep_abandoned(dst.parent)
        notes = (f"removed {_gib(swept)} left in {dst.parent} by a quantization that was killed",) if swept else ()
        free = shutil.disk_usage(dst.parent).free
        if free < plan.predicted_bytes + _DISK_MARGIN:
            raise DiskSpaceError(
                f"not enough disk space in {dst.parent} for the {target} file: "
                f"need {_gib(plan.predicted_bytes)}, {_gib(free)} free"
            )
        n_split = len(self.facts.shards)
        split_out = keep_split and n_split > 1
        with work_dir_for(dst) as work_dir:
            try:
                tmp_out = work_dir / ("out" if split_out else dst.name)
                finals = _split_names(dst, n_split) if split_out else [dst]
                temps = _split_names(tmp_out, n_split) if split_out else [tmp_out]
                total = len(self.facts.tensor_types)

                def on_line(line: str) -> None:
                    match = _TENSOR_LINE.match(line)
                    if match and progress is not None:
                        progress(int(match.group(1)) - 1, total, match.group(3))

                self._worker.send({"dst": str(tmp_out), "keep_split": split_out, "nthread": nthread,
                                   "load": str(temps[0]) if verify_load else None})
                lines, done = self._worker.read_until("done", on_line)
                if done is None or done["done"] != 0:
                    raise QuantizeError(_failure_message(lines, f"llama.cpp failed to quantize {src.name}"))
                if progress is not None:
                    progress(total, total, "")
                load = {"loaded": False}
                if verify_load:
                    _, load = self._worker.read_until("loaded")
                    load = load or {"loaded": False, "error": "the checker exited without an answer"}
                    if not load.get("loaded"):
                        raise QuantizeError(f"the {target} output does not load in llama.cpp: {load.get('error')}")
                self._worker.stop()
                result = _check_output(src, temps, plan, target, load)
                if publish is None:
                    publish_outputs(temps, finals, overwrite=overwrite)
                else:
                    publish(result, finals)
                return dataclasses.replace(result, outputs=tuple(finals), warnings=notes + result.warnings)
            except KeyboardInterrupt:
                raise Interrupted("interrupted: quantization stopped, no output file was written") from None
            finally:
                self._worker.stop()  # before the folder goes: a killed child writes nothing more


def publish_outputs(temps: list[Path], finals: list[Path], *, overwrite: bool = False) -> None:
    """Rename the checked temporary files to their final names, each in one step.

    Without ``overwrite`` a name taken since the first check (another quantize to the same --out)
    is left alone and the run fails; shards already placed by this call are taken back.
    """
    placed: list[Path] = []
    try:
        for tmp, final in zip(temps, finals):
            safe_io.publish(tmp, final, what="the quantized model", overwrite=overwrite)
            placed.append(final)
    except BaseException:
        if not overwrite:
            for final in placed:
                final.unlink(missing_ok=True)
        raise


# -- checks ------------------------------------------------------------------------------

def _refuse_requantize(src: Path, facts: GGUFFacts, allow: bool) -> None:
    if allow:
        return
    quantized = sorted({t for t in facts.tensor_types.values() if t not in UNQUANTIZED_TYPES})
    if quantized:
        raise QuantizeError(
            f"{src.name} is already quantized ({', '.join(quantized)} tensors); quantizing it again loses "
            "quality - start from a BF16/F16 file, or pass --allow-requantize"
        )


def _check_output(src: Path, outputs: list[Path], plan: DryRun, target: str, load: dict) -> QuantResult:
    """The header must read back, and every tensor must have the type the dry run predicted."""
    try:
        facts = read_facts(outputs[0])
    except QuantizeError as err:
        raise QuantizeError(f"the {target} output's header cannot be read back: {err}") from None
    if facts.tensor_types != plan.tensor_types:
        wrong = sorted(n for n in plan.tensor_types if facts.tensor_types.get(n) != plan.tensor_types[n])
        raise QuantizeError(
            f"the {target} output's tensor types differ from llama.cpp's plan ({len(wrong)} tensors, e.g. {wrong[:3]})"
        )
    main_type = facts.main_weight_type()
    histogram = dict(collections.Counter(facts.tensor_types.values()))
    expected = accepted_main_types(target)
    if not expected & set(histogram):
        raise QuantizeError(f"the {target} output has no {MAIN_TYPE[target]} tensors: {_describe(histogram)}")
    warnings = ()
    if main_type not in expected:
        warnings = (f"most weight bytes are {main_type} ({target} keeps some tensors at higher precision)",)
    elif main_type != MAIN_TYPE[target]:
        warnings = (f"most weights are {main_type}: their rows do not fit {MAIN_TYPE[target]}'s block size",)
    return QuantResult(
        target=target, source=src, outputs=tuple(outputs), output_bytes=sum(p.stat().st_size for p in outputs),
        predicted_bytes=plan.predicted_bytes, histogram=histogram, main_type=main_type,
        loaded=bool(load.get("loaded")), n_params=int(load.get("n_params", 0)), warnings=warnings,
    )


# -- the child process ---------------------------------------------------------------------

class _Worker:
    """``quant._worker`` as a child process, spoken to in JSON lines."""

    def __init__(self, job: dict):
        cmd = [sys.executable, "-m", "quant._worker", json.dumps(job)]
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        self._stderr = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                      env=env, text=True, bufsize=1)

    def read_until(self, key: str, on_line: Callable[[str], None] | None = None) -> tuple[list[str], dict | None]:
        """Log lines up to the message carrying ``key`` (None if the child ended first, or sent an error)."""
        lines: list[str] = []
        try:
            for raw in self._proc.stdout:
                message = json.loads(raw)
                if "log" in message:
                    lines.append(message["log"])
                    if on_line is not None:
                        on_line(message["log"])
                elif "error" in message:
                    lines.append(f"failed to quantize: {message['error']}")
                elif key in message:
                    return lines, message
        except BaseException:
            self.stop()
            raise
        self._proc.wait()
        if not any(_ERROR_LINE.search(line) for line in lines):
            self._stderr.seek(0)
            lines += self._stderr.read().decode(errors="replace").strip().splitlines()[-1:]
        return lines, None

    def send(self, message: dict) -> None:
        self._proc.stdin.write(json.dumps(message) + "\n")
        self._proc.stdin.flush()

    def stop(self) -> None:
        """End the child now (killing it mid-work if need be) and wait for it."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream and not stream.closed:
                stream.close()
        self._stderr.close()


def _pythonpath() -> str:
    """Let the child import ``quant`` from wherever this process imported it."""
    root = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return root + (os.pathsep + existing if existing else "")


def _tensor_types_from_log(lines: list[str], dry_run: bool) -> dict[str, str]:
    """Tensor name -> output type, from the quantizer's per-tensor log lines."""
    types: dict[str, str] = {}
    current = None
    for line in lines:
        match = _TENSOR_LINE.match(line)
        if match:
            current = match.group(3)
            types[current] = match.group(4).upper()
        if current is None:
            continue
        new = (_DRY_RUN_TYPE if dry_run else _CONVERTING).search(line)
        if new:
            types[current] = new.group(1).upper()
        if "size =" in line:
            current = None
    return types


def _failure_message(lines: list[str], default: str) -> str:
    for line in reversed(lines):
        match = _ERROR_LINE.search(line)
        if match:
            return f"{default}: {match.group(1).strip()}"
    tail = [line for line in lines if line.strip()][-1:]
    return f"{default}: {tail[0].strip()}" if tail else default


# -- small helpers ------------------------------------------------------------------------

def _existing(src: str | os.PathLike) -> Path:
    path = Path(src).expanduser()
    if not path.is_file():
        raise QuantizeError(f"source file {path} not found")
    for shard in shard_paths(path):
        if not shard.is_file():
            raise QuantizeError(f"{path.name} is part of a split set but {shard.name} is missing")
    return path.absolute()


def _split_names(dst: Path, n_split: int) -> list[Path]:
    """llama.cpp's shard names for an output prefix (llama_split_path: PREFIX-%05d-of-%05d.gguf)."""
    prefix = str(dst)[: -len(".gguf")] if dst.name.endswith(".gguf") else str(dst)
    return [Path(shard_name(prefix, i, n_split)) for i in range(1, n_split + 1)]


def _describe(histogram: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in sorted(histogram.items(), key=lambda kv: -kv[1]))


def _opt_str(value) -> str | None:
    return None if value is None else str(Path(value).expanduser().absolute())


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"
