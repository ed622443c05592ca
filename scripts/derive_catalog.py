"""Derive the built-in catalog (profiles/variants/*.json) from llama.cpp's own quantizer rules.

No hub is needed: a full-size BF16 skeleton of Nemotron-Cascade-2-30B-A3B (real shapes, sparse
data; tests/synth.py) goes through llama.cpp's quantizer dry run for each target type, which
logs every tensor's target type without touching data. The per-tensor types, shapes and byte
sizes, and the header facts the planner needs, are written to one JSON file per variant.

Run again after a llama-cpp-python upgrade:  python scripts/derive_catalog.py
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import llama_cpp  # noqa: E402
import synth  # noqa: E402

from localcascade.model.gguf_header import read_header  # noqa: E402
from localcascade.model.facts import facts_from_header  # noqa: E402

REPO = "bartowski/nvidia_Nemotron-Cascade-2-30B-A3B-GGUF"
STEM = "nvidia_Nemotron-Cascade-2-30B-A3B"

# quant -> (llama_ftype, quality rank (1 = best), published file size in bytes or None, note).
# A rounded published size is used as given: when it is above the derived size the catalog
# loader grows the tensors to it, and planning a little large is the safe side.
VARIANTS = {
    "BF16": (32, 1, None, "size derived: the skeleton's own BF16 tensors"),
    "Q8_0": (7, 2, 33_590_000_000, "published size, rounded (REFERENCE: ~33.59 GB)"),
    "Q6_K": (18, 3, None, "size derived"),
    "Q5_K_M": (17, 4, 26_200_000_000, "published size, rounded (REFERENCE: ~26.2 GB)"),
    "Q4_K_M": (15, 5, 24_725_740_992, "published size"),
    "IQ4_XS": (30, 6, 18_166_698_432, "published size"),
}
_LINE = re.compile(r"\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[.*\], type =\s*(\S+), size =.*?(?:\((\S+)\))?$")


_LOG: list[str] = []


@llama_cpp.llama_log_callback
def _collect(level, text, user):  # noqa: ARG001 - kept at module level so ctypes never frees it
    _LOG.append(text.decode(errors="replace"))


def dry_run_types(source: Path, ftype: int) -> dict[str, str]:
    lines = _LOG
    lines.clear()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.dry_run = True
    params.nthread = 1
    out = str(source.with_suffix(".unused.gguf")).encode()
    if llama_cpp.llama_model_quantize(str(source).encode(), out, params) != 0:
        raise SystemExit(f"quantizer dry run failed for ftype {ftype}")
    types = {}
    for line in "".join(lines).splitlines():
        match = _LINE.match(line)
        if match:
            types[match.group(1)] = match.group(3) or match.group(2)
    return types


def main() -> None:
    llama_cpp.llama_log_set(_collect, None)
    llama_cpp.llama_backend_init()
    out_dir = ROOT / "profiles" / "variants"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        skeleton = synth.write_nemotron_h_moe(Path(tmp) / "bf16.gguf", synth.FULL, dtype="bf16", sparse=True)
        header_bytes = os.path.getsize(skeleton) - read_header(skeleton).tensor_bytes
        for quant, (ftype, rank, published, note) in VARIANTS.items():
            types = dry_run_types(skeleton, ftype)
            path = synth.write_nemotron_h_moe(Path(tmp) / f"{quant}.gguf", synth.FULL, dtype="bf16", sparse=True,
                                              tensor_types=types)
            facts = facts_from_header(read_header(path))
            derived = facts.file_tensor_bytes + header_bytes
            split = quant == "BF16"
            files = ([f"{STEM}-{quant}/{STEM}-{quant}-0000{i}-of-00002.gguf" for i in (1, 2)] if split
                     else [f"{STEM}-{quant}.gguf"])
            entry = {
                "quant": quant,
                "repo": REPO,
                "files": files,
                "size_bytes": published or derived,
                "sha256": None,
                "quality_rank": rank,
                "derived_from": {
                    "method": "llama.cpp quantizer dry run (llama-cpp-python "
                              f"{llama_cpp.__version__}) on a full-size BF16 skeleton",
                    "size": note,
                    "derived_file_bytes": derived,
                    "gap_vs_published": None if not published else f"{(derived - published) / published:+.2%}",
                    "file_names": "split-set names assumed, not checked against the hub" if split else "published",
                },
                "hparams": facts.to_dict(),
                "tensors": [[t.name, t.type_name, list(t.shape), t.n_bytes] for t in facts.tensors],
            }
            target = out_dir / f"{quant}.json"
            tmp_target = target.with_suffix(".json.tmp")
            tmp_target.write_text(json.dumps(entry, indent=1) + "\n")
            tmp_target.replace(target)
            print(f"{quant:7s} derived {derived:>15,d} B  published {published or '-':>15}  "
                  f"{entry['derived_from']['gap_vs_published'] or ''}")


if __name__ == "__main__":
    main()
