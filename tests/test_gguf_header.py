"""The GGUF header reader: valid files, split sets, hub files, and every kind of bad input."""

from __future__ import annotations

import os
import random
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from localcascade.errors import (
    AuthError,
    GGUFHeaderError,
    ModelNotFoundError,
    OfflineError,
)
from localcascade.model.gguf_header import clear_cache, read_header

GIB = 1024**3


@pytest.fixture(autouse=True)
def fresh_cache():
    clear_cache()
    yield
    clear_cache()


# -- writing files --------------------------------------------------------------------------


def write_model(path: Path, *, split_max_tensors: int = 0) -> Path:
    """A small nemotron_h_moe-flavoured GGUF with every value type and several tensor types."""
    writer = gguf.GGUFWriter(path, "nemotron_h_moe", split_max_tensors=split_max_tensors)
    writer.add_block_count(3)
    writer.add_context_length(1_048_576)
    writer.add_uint8("test.u8", 200)
    writer.add_int8("test.i8", -100)
    writer.add_uint16("test.u16", 60_000)
    writer.add_int16("test.i16", -30_000)
    writer.add_uint32("test.u32", 4_000_000_000)
    writer.add_int32("test.i32", -2_000_000_000)
    writer.add_float32("test.f32", 0.5)
    writer.add_bool("test.bool", True)
    writer.add_string("test.str", "héllo <|im_start|>")
    writer.add_uint64("test.u64", 2**63 + 5)
    writer.add_int64("test.i64", -(2**62))
    writer.add_float64("test.f64", 1e-300)
    writer.add_array("test.ints", [1, 2, 3])
    writer.add_array("test.strs", ["<think>", "</think>", ""])
    writer.add_array("test.nested", [[1, 2], [3, 4, 5]])
    writer.add_tensor("token_embd.weight", np.zeros((8, 64), dtype=np.float32))
    writer.add_tensor("blk.0.ssm_in.weight", np.zeros((4, 64), dtype=np.float16))
    q8 = np.zeros((4, 2 * 34), dtype=np.uint8)  # 4 rows of 64 Q8_0 values: 2 blocks of 34 bytes
    writer.add_tensor("blk.1.ffn_up_exps.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, 4, struct.pack("<I", value))


def tensor(name: str | bytes, shape, ggml_type: int = 0, offset: int = 0) -> bytes:
    dims = b"".join(struct.pack("<Q", d) for d in shape)
    return s(name) + struct.pack("<I", len(shape)) + dims + struct.pack("<IQ", ggml_type, offset)


def raw_gguf(kvs=(), tensors=(), *, magic=b"GGUF", version=3, n_tensors=None, n_kv=None, data_bytes=None) -> bytes:
    """Hand-built GGUF bytes, so each test can break exactly one thing."""
    out = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                              len(kvs) if n_kv is None else n_kv)
    out += b"".join(kvs) + b"".join(tensors)
    out += b"\0" * (-len(out) % 32)
    return out + b"\0" * (4096 if data_bytes is None else data_bytes)


ARCH = kv("general.architecture", 8, s("nemotron_h_moe"))


def one_line_error(tmp_path: Path, content: bytes, name: str = "bad.gguf") -> str:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(GGUFHeaderError) as info:
        read_header(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(path) + ": ")
    return message


# -- valid files ---------------------------------------------------------------------------


def test_single_file_values_and_tensors(tmp_path):
    path = write_model(tmp_path / "model.gguf")
    header = read_header(path)
    assert header.architecture == "nemotron_h_moe"
    assert header.arch_get("block_count") == 3
    assert header.arch_get("context_length") == 1_048_576
    assert header.arch_get("missing", "fallback") == "fallback"
    expected = {
        "test.u8": 200, "test.i8": -100, "test.u16": 60_000, "test.i16": -30_000,
        "test.u32": 4_000_000_000, "test.i32": -2_000_000_000, "test.f32": 0.5, "test.bool": True,
        "test.str": "héllo <|im_start|>", "test.u64": 2**63 + 5, "test.i64": -(2**62), "test.f64": 1e-300,
        "test.ints": [1, 2, 3], "test.strs": ["<think>", "</think>", ""],
        "test.nested": [[1, 2], [3, 4, 5]],
    }
    assert {k: header.get(k) for k in expected} == expected

    by_name = {t.name: t for t in header.tensors}
    assert [t.name for t in header.tensors] == ["token_embd.weight", "blk.0.ssm_in.weight", "blk.1.ffn_up_exps.weight"]
    assert (by_name["token_embd.weight"].shape, by_name["token_embd.weight"].type_name) == ((64, 8), "F32")
    assert by_name["token_embd.weight"].n_bytes == 64 * 8 * 4
    assert (by_name["blk.0.ssm_in.weight"].type_name, by_name["blk.0.ssm_in.weight"].n_bytes) == ("F16", 64 * 4 * 2)
    q8 = by_name["blk.1.ffn_up_exps.weight"]
    assert (q8.shape, q8.type_name, q8.ggml_type, q8.n_bytes) == ((64, 4), "Q8_0", 8, 4 * 2 * 34)

    # Offsets are absolute and agree with gguf's own (whole-file) reader.
    reference = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for t in header.tensors:
        assert t.offset == reference[t.name].data_offset
        assert t.n_bytes == reference[t.name].n_bytes
    f = header.files[0]
    assert (f.version, f.alignment, f.file_size) == (3, 32, path.stat().st_size)
    assert header.file_bytes == path.stat().st_size
    assert header.tensor_bytes == sum(t.n_bytes for t in header.tensors)
    assert f.data_offset % 32 == 0 and f.data_offset <= min(t.offset for t in header.tensors)


def test_empty_and_nested_string_arrays(tmp_path):
    # gguf's writer refuses empty arrays, but files in the wild have them.
    empty = kv("test.empty", 9, struct.pack("<IQ", 4, 0))
    nested = kv("test.nested", 9, struct.pack("<IQ", 9, 2) + struct.pack("<IQ", 8, 1) + s("a")
                + struct.pack("<IQ", 8, 0))
    path = tmp_path / "arrays.gguf"
    path.write_bytes(raw_gguf([ARCH, empty, nested]))
    header = read_header(path)
    assert (header.get("test.empty"), header.get("test.nested")) == ([], [["a"], []])
    assert header.tensors == [] and header.tensor_bytes == 0


@pytest.mark.parametrize("which", [1, 2, 3])
def test_any_shard_of_a_split_set_reads_the_whole_set(tmp_path, which):
    write_model(tmp_path / "model.gguf", split_max_tensors=1)
    header = read_header(tmp_path / f"model-{which:05d}-of-00003.gguf")
    assert [Path(f.source).name for f in header.files] == [f"model-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    assert [(t.name, t.shard) for t in header.tensors] == [
        ("token_embd.weight", 0), ("blk.0.ssm_in.weight", 1), ("blk.1.ffn_up_exps.weight", 2)
    ]
    assert header.architecture == "nemotron_h_moe"  # the first shard's metadata
    assert header.file_bytes == sum((tmp_path / f"model-{i:05d}-of-00003.gguf").stat().st_size for i in (1, 2, 3))
    for t in header.tensors:  # each offset is inside its own shard
        assert t.offset + t.n_bytes <= header.files[t.shard].file_size


def test_missing_shard_is_named(tmp_path):
    write_model(tmp_path / "model.gguf", split_max_tensors=1)
    (tmp_path / "model-00002-of-00003.gguf").unlink()
    with pytest.raises(GGUFHeaderError) as info:
        read_header(tmp_path / "model-00003-of-00003.gguf")
    assert str(info.value) == (
        f"{tmp_path / 'model-00002-of-00003.gguf'}: missing shard 2 of 3 of the split set model-00003-of-00003.gguf"
    )


def test_shards_whose_metadata_disagrees_with_their_names(tmp_path):
    write_model(tmp_path / "model.gguf", split_max_tensors=1)
    # Shard 2 and 3 swapped on disk: split.no no longer matches the names.
    a, b = tmp_path / "model-00002-of-00003.gguf", tmp_path / "model-00003-of-00003.gguf"
    a.rename(tmp_path / "tmp.gguf"), b.rename(a), (tmp_path / "tmp.gguf").rename(b)
    with pytest.raises(GGUFHeaderError, match=r"model-00002-of-00003\.gguf: split\.no is 2, but its name says shard 2"):
        read_header(a)


def test_first_shard_renamed_alone_is_refused(tmp_path):
    write_model(tmp_path / "model.gguf", split_max_tensors=1)
    (tmp_path / "model-00001-of-00003.gguf").rename(tmp_path / "renamed.gguf")
    with pytest.raises(GGUFHeaderError, match="shard 1 of a 3-file split set, but its name"):
        read_header(tmp_path / "renamed.gguf")


def test_big_sparse_file_reads_only_the_header(tmp_path):
    path = tmp_path / "big.gguf"
    n = 2 * GIB // 4  # one 2 GiB F32 tensor, never written: a hole
    path.write_bytes(raw_gguf([ARCH], [tensor("huge.weight", [n], 0, 0)], data_bytes=0))
    data_offset = path.stat().st_size
    os.truncate(path, data_offset + 2 * GIB)
    header = read_header(path)
    assert header.tensors[0].n_bytes == 2 * GIB
    assert header.tensors[0].offset == data_offset
    assert header.files[0].header_bytes_read < 2 * 1024 * 1024


@pytest.mark.gemma
def test_real_gemma_header(gemma_model):
    # gguf.GGUFReader takes seconds on this file, so check against what the file itself
    # must satisfy: tensors packed back to back (padded) from data_offset to the end.
    header = read_header(gemma_model)
    f = header.files[0]
    assert header.architecture == "gemma3"
    assert header.arch_get("block_count") == 18
    assert header.arch_get("embedding_length") == 640
    assert len(header.get("tokenizer.ggml.tokens")) == 262144
    assert len(header.tensors) == 236
    position = f.data_offset
    for t in sorted(header.tensors, key=lambda t: t.offset):
        assert t.offset == position, t.name
        position += -(-t.n_bytes // f.alignment) * f.alignment
    assert position == f.file_size
    assert f.header_bytes_read < f.file_size / 10


def test_local_cache_notices_a_changed_file(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(raw_gguf([ARCH, kv_u32("test.v", 1)]))
    assert read_header(path).get("test.v") == 1
    path.write_bytes(raw_gguf([ARCH, kv_u32("test.v", 2)]))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert read_header(path).get("test.v") == 2


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such file"):
        read_header(tmp_path / "absent.gguf")
    with pytest.raises(GGUFHeaderError, match="not a regular file"):
        read_header(tmp_path)


# -- bad input: each gives one line naming the file and the problem ----------------------------

GOOD_TENSOR = tensor("w", [64], 0, 0)
BAD_INPUTS = {
    "wrong magic": (raw_gguf(magic=b"GGML"), "not a GGUF file (starts with b'GGML', expected b'GGUF')"),
    "empty file": (b"", "truncated: the magic number needs byte 4 but the file has 0"),
    "unknown version": (raw_gguf(version=7), "unsupported GGUF version 7 (this reader knows versions 2 and 3)"),
    "version 1": (raw_gguf(version=1), "unsupported GGUF version 1"),
    "absurd tensor count": (raw_gguf(n_tensors=2**60), "the tensor count claims 1,152,921,504,606,846,976 entries"),
    "absurd kv count": (raw_gguf(n_kv=10**12), "the metadata count claims 1,000,000,000,000 entries"),
    "absurd key length": (raw_gguf([struct.pack("<Q", 2**62)], n_kv=1), "metadata key 0 claims"),
    "absurd string length": (raw_gguf([kv("k", 8, struct.pack("<Q", 2**40))]), "the value of 'k' claims"),
    "absurd array length": (raw_gguf([kv("k", 9, struct.pack("<IQ", 6, 2**50))]), "the value of 'k' claims"),
    "truncated in metadata": (raw_gguf([ARCH, kv_u32("k", 1)])[:60], "truncated: "),
    "too many dims": (raw_gguf([ARCH], [tensor("w", [1, 1, 1, 1, 1])]), "tensor 'w' has 5 dimensions (at most 4)"),
    "zero dim": (raw_gguf([ARCH], [tensor("w", [64, 0])]), "tensor 'w' has a non-positive dimension in shape [64, 0]"),
    "negative dim": (raw_gguf([ARCH], [tensor("w", [2**64 - 1])]), "tensor 'w' has a non-positive dimension"),
    "unknown ggml type": (raw_gguf([ARCH], [tensor("w", [64], 99)]), "tensor 'w' has unknown ggml type 99"),
    "row not a block multiple": (raw_gguf([ARCH], [tensor("w", [33], 8)]), "first dimension 33 is not a multiple of the Q8_0 block (32)"),
    "unknown value type": (raw_gguf([kv("k", 77, b"")]), "the value of 'k' has unknown value type 77"),
    "non-utf8 key": (raw_gguf([kv(b"\xff\xfekey", 4, b"\0" * 4)]), "metadata key 0 is not valid UTF-8"),
    "non-utf8 value": (raw_gguf([kv("k", 8, s(b"\xc3\x28"))]), "the value of 'k' is not valid UTF-8"),
    "non-utf8 tensor name": (raw_gguf([ARCH], [tensor(b"\x80", [64])]), "the name of tensor 0 is not valid UTF-8"),
    "empty key": (raw_gguf([kv("", 4, b"\0" * 4)]), "metadata key 0 is empty"),
    "duplicate key": (raw_gguf([kv_u32("k", 1), kv_u32("k", 2)]), "duplicate metadata key 'k'"),
    "duplicate tensor": (raw_gguf([ARCH], [GOOD_TENSOR, tensor("w", [64], 0, 256)]), "duplicate tensor name 'w'"),
    "data past end": (raw_gguf([ARCH], [tensor("w", [64], 0, 4096)]), "tensor 'w' data ends at byte"),
    "misaligned offset": (raw_gguf([ARCH], [tensor("w", [64], 0, 8)]), "tensor 'w' data offset 8 is not aligned to 32"),
    "overlapping tensors": (raw_gguf([ARCH], [GOOD_TENSOR, tensor("v", [64], 0, 32)]), "tensor 'v' data overlaps tensor 'w'"),
    "bad alignment": (raw_gguf([kv_u32("general.alignment", 48)]), "general.alignment 48 is not a power of two"),
    "deep nesting": (raw_gguf([kv("k", 9, struct.pack("<IQ", 9, 1) * 9 + struct.pack("<IQ", 4, 0))]), "nests arrays deeper than 8"),
    "long tensor name": (raw_gguf([ARCH], [tensor("x" * 64, [64])]), "name longer than 63 bytes"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_clear_line(tmp_path, case):
    content, expected = BAD_INPUTS[case]
    message = one_line_error(tmp_path, content)
    assert expected in message, message


def test_absurd_counts_fail_before_reading_or_allocating(tmp_path):
    # A tiny file claiming a 2**50-entry array must fail on the count, not by
    # trying to read (or allocate for) 8 PiB.
    path = tmp_path / "lying.gguf"
    path.write_bytes(raw_gguf([kv("k", 9, struct.pack("<IQ", 10, 2**50))], data_bytes=0))
    with pytest.raises(GGUFHeaderError, match="claims 1,125,899,906,842,624 entries"):
        read_header(path)


def test_big_endian_files_are_read(tmp_path):
    path = tmp_path / "be.gguf"
    writer = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_uint32("test.u32", 123456)
    writer.add_array("test.ints", [1, -2, 3])
    writer.add_tensor("w", np.zeros((2, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(path)
    assert (header.get("test.u32"), header.get("test.ints")) == (123456, [1, -2, 3])
    assert header.tensors[0].shape == (32, 2)


def test_fuzzed_headers_only_ever_raise_gguf_header_errors(tmp_path):
    original = write_model(tmp_path / "model.gguf").read_bytes()
    header_end = read_header(tmp_path / "model.gguf").files[0].data_offset
    rng = random.Random(1234)
    outcomes = {"ok": 0, "error": 0}
    for i in range(300):
        data = bytearray(original)
        if rng.random() < 0.3:
            data = data[: rng.randrange(header_end)]
        else:
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(header_end)] = rng.randrange(256)
        path = tmp_path / f"fuzz-{i}.gguf"
        path.write_bytes(bytes(data))
        try:
            read_header(path)
            outcomes["ok"] += 1
        except GGUFHeaderError as err:
            assert "\n" not in str(err) and str(err).startswith(str(path))
            outcomes["error"] += 1
        path.unlink()
    assert outcomes["error"] > 50  # the damage was real


# -- hub files ------------------------------------------------------------------------------------

REPO = "nvidia-test/Cascade-GGUF"


def comparable(header):
    return [(f.version, f.alignment, f.metadata, f.tensors, f.data_offset, f.file_size) for f in header.files]


def test_hub_file_header_equals_the_local_parse_and_reads_little(hf_server, tmp_path):
    path = tmp_path / "big.gguf"
    path.write_bytes(raw_gguf([ARCH, kv_u32("test.v", 7)], [tensor("huge.weight", [2 * GIB // 4])], data_bytes=0))
    os.truncate(path, path.stat().st_size + 2 * GIB)
    hf_server.add_file(REPO, "big.gguf", path, sha256="ab" * 32)  # skip hashing 2 GiB of zeros

    remote = read_header(f"hf://{REPO}/big.gguf")

    assert comparable(remote) == comparable(read_header(path))
    assert remote.source == f"hf://{REPO}/big.gguf"
    assert 0 < hf_server.bytes_served["big.gguf"] <= 1024 * 1024
    assert all(r.range for r in hf_server.file_requests("big.gguf") if r.method == "GET")


@pytest.mark.gemma
def test_large_header_grows_the_read_geometrically(hf_server, tmp_path, gemma_model):
    hf_server.add_file(REPO, "gemma.gguf", gemma_model)
    header = read_header(f"hf://{REPO}/gemma.gguf")
    assert comparable(header) == comparable(read_header(gemma_model))
    gets = [r for r in hf_server.file_requests("gemma.gguf") if r.method == "GET"]
    assert gets[0].range == "bytes=0-1048575"
    assert len(gets) <= 5  # 1, 2, 4, 8 MiB: doubling, not one request per field
    assert hf_server.bytes_served["gemma.gguf"] < 2 * header.files[0].data_offset + 1024 * 1024


def test_second_read_of_a_hub_header_comes_from_the_disk_cache(hf_server, tmp_path):
    path = write_model(tmp_path / "model.gguf")
    hf_server.add_file(REPO, "model.gguf", path)
    first = read_header(f"hf://{REPO}/model.gguf")
    served = hf_server.total_bytes_served
    clear_cache()  # a new process: only the disk cache remains
    second = read_header(f"hf://{REPO}/model.gguf")
    assert comparable(second) == comparable(first)
    assert hf_server.total_bytes_served == served  # a HEAD only, no body bytes
    assert list((Path(os.environ["LOCALCASCADE_HOME"]) / "headers").glob("*.json"))


def test_changed_hub_file_is_read_again(hf_server, tmp_path):
    one, two = tmp_path / "one.gguf", tmp_path / "two.gguf"
    one.write_bytes(raw_gguf([ARCH, kv_u32("test.v", 1)]))
    two.write_bytes(raw_gguf([ARCH, kv_u32("test.v", 2)]))
    hf_server.add_file(REPO, "m.gguf", one)
    assert read_header(f"hf://{REPO}/m.gguf").get("test.v") == 1
    hf_server.add_file(REPO, "m.gguf", two)  # a new upload: new ETag
    clear_cache()
    assert read_header(f"hf://{REPO}/m.gguf").get("test.v") == 2


def test_hub_split_set_and_revision(hf_server, tmp_path):
    write_model(tmp_path / "model.gguf", split_max_tensors=1)
    for i in (1, 2, 3):
        name = f"model-{i:05d}-of-00003.gguf"
        hf_server.add_file(REPO, f"Q8_0/{name}", tmp_path / name, revision="v2")
    header = read_header(f"hf://{REPO}@v2/Q8_0/model-00002-of-00003.gguf")
    assert comparable(header) == comparable(read_header(tmp_path / "model-00001-of-00003.gguf"))
    assert [f.source for f in header.files] == [f"hf://{REPO}@v2/Q8_0/model-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]


def test_hub_missing_shard_is_named(hf_server, tmp_path):
    write_model(tmp_path / "model.gguf", split_max_tensors=1)
    for i in (1, 3):
        name = f"model-{i:05d}-of-00003.gguf"
        hf_server.add_file(REPO, name, tmp_path / name)
    with pytest.raises(GGUFHeaderError) as info:
        read_header(f"hf://{REPO}/model-00001-of-00003.gguf")
    assert str(info.value) == (
        f"hf://{REPO}/model-00002-of-00003.gguf: missing shard 2 of 3 of the split set model-00001-of-00003.gguf"
    )


def test_hub_errors_are_clear(hf_server, tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    path.write_bytes(raw_gguf([ARCH]))
    hf_server.add_file(REPO, "m.gguf", path)
    hf_server.add_file("corp/gated", "m.gguf", path, gated=True)
    hf_server.add_file("corp/private", "m.gguf", path, private=True)
    hf_server.add_file(REPO, "bad.gguf", tmp_path.joinpath("bad.gguf").write_bytes(b"GGML" + b"\0" * 100) and tmp_path / "bad.gguf")

    cases = [
        (f"hf://{REPO}/absent.gguf", ModelNotFoundError, f"hf://{REPO}/absent.gguf: no file absent.gguf in {REPO}"),
        ("hf://nobody/nothing/m.gguf", ModelNotFoundError, "repository nobody/nothing not found"),
        (f"hf://{REPO}@nope/m.gguf", ModelNotFoundError, "revision 'nope' not found"),
        ("hf://corp/gated/m.gguf", AuthError, "corp/gated is gated: accept its terms on the hub and set HF_TOKEN"),
        ("hf://corp/private/m.gguf", ModelNotFoundError, "if it is private, set HF_TOKEN"),
        (f"hf://{REPO}/bad.gguf", GGUFHeaderError, f"hf://{REPO}/bad.gguf: not a GGUF file"),
        ("hf://only-owner/m.gguf", ModelNotFoundError, "write hub files as hf://owner/repo[@revision]/path/file.gguf"),
    ]
    for uri, error, text in cases:
        with pytest.raises(error) as info:
            read_header(uri)
        assert text in str(info.value) and "\n" not in str(info.value), str(info.value)

    monkeypatch.setenv("HF_TOKEN", "hf_not_the_right_one")
    with pytest.raises(AuthError, match="refused access"):
        read_header("hf://corp/gated/m.gguf")
    monkeypatch.setenv("HF_TOKEN", hf_server.token)  # HF_TOKEN is honoured
    assert read_header("hf://corp/gated/m.gguf").architecture == "nemotron_h_moe"
    assert read_header("hf://corp/private/m.gguf").architecture == "nemotron_h_moe"


def test_offline_mode_refuses_hub_sources(hf_server, tmp_path, monkeypatch):
    path = tmp_path / "m.gguf"
    path.write_bytes(raw_gguf([ARCH]))
    hf_server.add_file(REPO, "m.gguf", path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE is set"):
        read_header(f"hf://{REPO}/m.gguf")
    assert hf_server.requests == []


def test_a_dropped_connection_during_a_header_read_is_retried(hf_server, tmp_path):
    path = write_model(tmp_path / "model.gguf")
    hf_server.add_file(REPO, "model.gguf", path)
    hf_server.fail_after("model.gguf", 100)
    header = read_header(f"hf://{REPO}/model.gguf")
    assert comparable(header) == comparable(read_header(path))
    gets = [r for r in hf_server.file_requests("model.gguf") if r.method == "GET"]
    assert [r.bytes_sent for r in gets] == [100, path.stat().st_size]


def test_a_huge_byte_array_is_refused_before_it_becomes_a_python_list(tmp_path):
    # 9M one-byte elements pass the bytes-left check (they are all there) but would make a
    # ~75 MB list; at the 128 MiB header limit, ~1 GiB.
    from localcascade.model.gguf_header import MAX_METADATA_ELEMENTS

    n = MAX_METADATA_ELEMENTS + 1
    content = raw_gguf([ARCH, kv("blob", 9, struct.pack("<IQ", 0, n) + bytes(n))])

    message = one_line_error(tmp_path, content)

    assert f"{n:,} elements" in message and "'blob'" in message


def test_an_interrupted_header_cache_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import json

    from localcascade.model import gguf_header

    parsed = read_header(write_model(tmp_path / "m.gguf")).files[0]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gguf_header._store_cached("some-hub-key", parsed)

    folder = gguf_header._cache_path("some-hub-key").parent
    assert not folder.exists() or list(folder.iterdir()) == []
