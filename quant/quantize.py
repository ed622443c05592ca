"""Quantize a BF16/F16/F32 GGUF with llama.cpp's own quantizer, safely.

``quantize()`` runs ``llama_model_quantize`` in a child process
(``quant._worker``) because the C call cannot be cancelled: on Ctrl-C or any
failure the child is killed and its temporary output removed, so no file ever
appears under the final name unless it is complete and checked. Progress comes
from the quantizer's log lines, one callback call per tensor.
"""

from __future__ import annotations

import collections
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

from localcascade.errors import DiskSpaceError, Interrupted, QuantizeError
from quant.gguf_facts import GGUFFacts, read_facts, shard_paths
from quant.targets import MAIN_TYPE, UNQUANTIZED_TYPES, accepted_main_types, normalize_target

# progress(done_tensors, total_tensors, tensor_name)
Progress = Callable[[int, int, str], None]

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
    target = normalize_target(target)
    src = _existing(src)
    facts = read_facts(src)
    _refuse_requantize(src, facts, allow_requantize)
    lines, rc = _run_worker(
        {"src": str(src), "dst": os.devnull, "target": target, "dry_run": True,
         "allow_requantize": allow_requantize, "imatrix": _opt_str(imatrix)},
        on_line=None,
    )
    if rc != 0:
        raise QuantizeError(_failure_message(lines, f"llama.cpp could not plan quantizing {src.name}"))
    types = _tensor_types_from_log(lines, dry_run=True)
    if set(types) != set(facts.tensor_types):
        raise QuantizeError(f"llama.cpp's dry run of {src.name} did not list every tensor")
    predicted = facts.metadata_bytes + sum(
        facts.padded_bytes(name, new_type) for name, new_type in types.items()
    )
    return DryRun(target=target, predicted_bytes=predicted, tensor_types=types, source_bytes=facts.file_bytes)


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
    plan: DryRun | None = None,
    verify_load: bool = True,
) -> QuantResult:
    """Quantize ``src`` to ``target`` at ``dst`` and check the result.

    ``plan`` is a :func:`dry_run` already made for the same arguments (skips a
    second one). With ``keep_split`` a split source gives split output named
    ``<dst without .gguf>-0000N-of-0000M.gguf``. Raises QuantizeError,
    DiskSpaceError, or Interrupted (Ctrl-C); none of them leaves an output file.
    """
    target = normalize_target(target)
    src = _existing(src)
    dst = Path(dst).expanduser().absolute()
    if dst.exists() and dst.resolve() == src.resolve():
        raise QuantizeError("the output path is the source file; choose another --out")
    if not dst.parent.is_dir():
        raise QuantizeError(f"output directory {dst.parent} does not exist")
    if imatrix is not None and not Path(imatrix).is_file():
        raise QuantizeError(f"imatrix file {imatrix} not found")

    plan = plan or dry_run(src, target, imatrix=imatrix, allow_requantize=allow_requantize)
    free = shutil.disk_usage(dst.parent).free
    if free < plan.predicted_bytes + _DISK_MARGIN:
        raise DiskSpaceError(
            f"not enough disk space in {dst.parent} for the {target} file: "
            f"need {_gib(plan.predicted_bytes)}, {_gib(free)} free"
        )

    facts = read_facts(src)
    n_split = len(facts.shards)
    split_out = keep_split and n_split > 1
    work_dir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
    try:
        tmp_out = work_dir / ("out" if split_out else dst.name)
        finals = _split_names(dst, n_split) if split_out else [dst]
        temps = _split_names(tmp_out, n_split) if split_out else [tmp_out]

        total = len(facts.tensor_types)

        def on_line(line: str) -> None:
            match = _TENSOR_LINE.match(line)
            if match and progress is not None:
                progress(int(match.group(1)) - 1, total, match.group(3))

        lines, rc = _run_worker(
            {"src": str(src), "dst": str(tmp_out), "target": target, "allow_requantize": allow_requantize,
             "keep_split": split_out, "nthread": nthread, "imatrix": _opt_str(imatrix),
             "load": str(temps[0]) if verify_load else None},
            on_line=on_line,
        )
        if rc != 0:
            raise QuantizeError(_failure_message(lines, f"llama.cpp failed to quantize {src.name}"))
        if progress is not None:
            progress(total, total, "")
        load = _load_report(lines) if verify_load else {"loaded": False}
        if verify_load and not load.get("loaded"):
            raise QuantizeError(f"the {target} output does not load in llama.cpp: {load.get('error', 'no answer')}")
        result = _check_output(src, temps, plan, target, load)
        for tmp, final in zip(temps, finals):
            os.replace(tmp, final)
        return QuantResult(**{**result.__dict__, "outputs": tuple(finals)})
    except KeyboardInterrupt:
        raise Interrupted("interrupted: quantization stopped, no output file was written") from None
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


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

def _run_worker(job: dict, on_line: Callable[[str], None] | None) -> tuple[list[str], int]:
    """Run one job in ``quant._worker``; returns (log lines + result messages, exit code)."""
    cmd = [sys.executable, "-m", "quant._worker", json.dumps(job)]
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    lines: list[str] = []
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True,
                                bufsize=1, start_new_session=False)
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                message = json.loads(raw)
                if "log" in message:
                    lines.append(message["log"])
                    if on_line is not None:
                        on_line(message["log"])
                else:
                    lines.append("@" + json.dumps(message))
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        if rc != 0 and not any(_ERROR_LINE.search(line) for line in lines):
            stderr.seek(0)
            tail = stderr.read().decode(errors="replace").strip().splitlines()[-1:]
            lines += tail
    return lines, rc


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


def _load_report(lines: list[str]) -> dict:
    for line in lines:
        if line.startswith("@") and '"loaded"' in line:
            return json.loads(line[1:])
    return {"loaded": False, "error": "the checker exited without an answer"}


def _failure_message(lines: list[str], default: str) -> str:
    for line in reversed(lines):
        match = _ERROR_LINE.search(line)
        if match:
            return f"{default}: {match.group(1).strip()}"
    tail = [line for line in lines if line.strip() and not line.startswith("@")][-1:]
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
    return [Path(f"{prefix}-{i:05d}-of-{n_split:05d}.gguf") for i in range(1, n_split + 1)]


def _describe(histogram: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in sorted(histogram.items(), key=lambda kv: -kv[1]))


def _opt_str(value) -> str | None:
    return None if value is None else str(Path(value).expanduser().absolute())


def _gib(n: int) -> str:
    return f"{n / 1024**3:.2f} GiB"
