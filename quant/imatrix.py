"""Read an importance-matrix file into the per-tensor arrays llama.cpp's quantizer takes.

Both formats llama.cpp's ``llama-imatrix`` writes are read, and normalised the
way ``tools/quantize/quantize.cpp`` does before calling ``llama_model_quantize``:
- GGUF (current): tensors ``<name>.in_sum2`` and ``<name>.counts``; sums are
  divided by the per-expert count (1.0 where the count is zero).
- legacy ``.dat``: int32 entry count, then per entry name, ncall, values;
  values are divided by ncall.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from localcascade import safe_io
from localcascade.errors import QuantizeError

_GGUF_MAGIC = b"GGUF"


def load_imatrix(path: str | Path) -> dict[str, np.ndarray]:
    """Return {tensor name: float32 importance values}; QuantizeError if the file is unreadable."""
    # Through the one door for user-named files: a device, a FIFO or a folder is refused in one line.
    path = safe_io.check_input(path, what="imatrix file", limit=safe_io.IMATRIX_MAX_BYTES)
    try:
        with path.open("rb") as f:
            magic = f.read(4)
        entries = _load_gguf(path) if magic == _GGUF_MAGIC else _load_legacy(path.read_bytes())
    except OSError as err:
        raise QuantizeError(f"cannot read imatrix file {path}: {err.strerror or err}") from None
    except (ValueError, struct.error, KeyError, IndexError) as err:
        raise QuantizeError(f"imatrix file {path} is not a valid importance matrix: {err}") from None
    if not entries:
        raise QuantizeError(f"imatrix file {path} holds no entries")
    for name, values in entries.items():
        if not np.all(np.isfinite(values)):
            raise QuantizeError(f"imatrix file {path} has non-finite values for {name}")
    return entries


def _load_gguf(path: Path) -> dict[str, np.ndarray]:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for tensor in reader.tensors:
        if tensor.name.endswith(".in_sum2"):
            sums[tensor.name[: -len(".in_sum2")]] = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
        elif tensor.name.endswith(".counts"):
            counts[tensor.name[: -len(".counts")]] = np.asarray(tensor.data, dtype=np.float32).reshape(-1)
    if set(sums) != set(counts):
        raise ValueError("sums and counts do not pair up")
    entries = {}
    for name, total in sums.items():
        count = np.rint(counts[name])
        per_expert = total.reshape(len(count), -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            normalised = np.where(count[:, None] > 0, per_expert / count[:, None], 1.0)
        entries[name] = normalised.astype(np.float32).reshape(-1)
    return entries


def _load_legacy(data: bytes) -> dict[str, np.ndarray]:
    (n_entries,) = struct.unpack_from("<i", data, 0)
    if n_entries < 1:
        raise ValueError("no entries")
    offset = 4
    entries = {}
    for _ in range(n_entries):
        (name_len,) = struct.unpack_from("<i", data, offset)
        offset += 4
        name = data[offset : offset + name_len].decode("utf-8")
        offset += name_len
        ncall, nval = struct.unpack_from("<ii", data, offset)
        offset += 8
        if nval < 1 or offset + 4 * nval > len(data):
            raise ValueError(f"bad value count for {name}")
        values = np.frombuffer(data, dtype="<f4", count=nval, offset=offset).astype(np.float32)
        offset += 4 * nval
        entries[name] = values / ncall if ncall > 0 else values
    return entries
