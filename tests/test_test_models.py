"""The synthetic nemotron_h_moe files load in llama.cpp like the real model, and the fixtures work."""

from __future__ import annotations

import math
import os
from pathlib import Path

import gguf
import jinja2
import jinja2.sandbox
import numpy as np
import pytest

import synth


def _llama(path: Path, **kwargs):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)


@pytest.fixture(scope="module")
def tiny_llm(tiny_model: Path):
    return _llama(tiny_model, n_ctx=256, seed=1)


def _render(template: str, *, trim: bool, **context) -> str:
    # llama-cpp-python renders with trim_blocks/lstrip_blocks, llama.cpp's engine without.
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(), trim_blocks=trim, lstrip_blocks=trim
    )
    return env.from_string(template).render(**context)


# ---- TINY: loads, identifies itself, generates ----------------------------------------------

def test_tiny_model_reports_architecture_and_layer_count(tiny_llm):
    meta = tiny_llm.metadata
    assert meta["general.architecture"] == "nemotron_h_moe"
    assert int(meta["nemotron_h_moe.block_count"]) == synth.TINY.n_layer == 14
    assert tiny_llm.n_vocab() == synth.TINY.vocab_size
    assert tiny_llm.n_embd() == synth.TINY.n_embd


def test_tiny_model_has_the_real_block_kinds(tiny_model: Path):
    import llama_cpp

    model = _llama(tiny_model, n_ctx=64)
    # Like the real model: hybrid (Mamba state + attention KV), not purely recurrent.
    assert llama_cpp.llama_model_is_hybrid(model.model)
    assert not llama_cpp.llama_model_is_recurrent(model.model)
    shape = synth.TINY
    assert len(shape.attention_layers) >= 2 and len(shape.mamba_layers) >= 3 and len(shape.moe_layers) >= 3


def test_tiny_model_generates_finite_logits_and_tokens(tiny_llm):
    tokens = tiny_llm.tokenize(b"Hello, how are you today?", add_bos=False)
    tiny_llm.reset()
    tiny_llm.eval(tokens)
    # Without logits_all, llama-cpp-python keeps no copy of the logits: read llama.cpp's.
    logits = np.ctypeslib.as_array(tiny_llm._ctx.get_logits_ith(-1), shape=(tiny_llm.n_vocab(),)).copy()
    assert logits.shape == (synth.TINY.vocab_size,)
    assert np.isfinite(logits).all() and logits.std() > 0

    out = tiny_llm.create_completion("The answer is", max_tokens=24, temperature=0.8, seed=3)
    assert out["usage"]["completion_tokens"] > 0
    assert isinstance(out["choices"][0]["text"], str)


def test_tiny_model_same_seed_same_output(tiny_model: Path, tmp_path: Path):
    again = synth.write_nemotron_h_moe(tmp_path / "again.gguf", synth.TINY)
    assert again.read_bytes() == tiny_model.read_bytes()
    other = synth.write_nemotron_h_moe(tmp_path / "other.gguf", synth.TINY, seed=1)
    assert other.read_bytes() != tiny_model.read_bytes()


# ---- vocabulary and chat template -----------------------------------------------------------

@pytest.mark.parametrize(
    "text, token_id",
    [("<|im_start|>", 10), ("<|im_end|>", 11), ("<think>", 12), ("</think>", 13),
     ("<tool_call>", 14), ("</tool_call>", 15)],
)
def test_special_tokens_are_single_control_tokens(tiny_llm, text: str, token_id: int):
    import llama_cpp

    assert tiny_llm.tokenize(text.encode(), add_bos=False, special=True) == [token_id]
    # Not parsed as special, the same text is ordinary bytes (what user text must not become).
    assert len(tiny_llm.tokenize(text.encode(), add_bos=False, special=False)) > 1
    vocab = llama_cpp.llama_model_get_vocab(tiny_llm.model)
    assert llama_cpp.llama_vocab_is_control(vocab, token_id)


def test_eos_is_im_end_and_ends_generation(tiny_llm):
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(tiny_llm.model)
    assert tiny_llm.token_eos() == 11
    assert tiny_llm.token_bos() == 1
    assert llama_cpp.llama_vocab_is_eog(vocab, 11)


def test_english_text_round_trips_through_the_tokenizer(tiny_llm):
    text = "Hello world! What is 2+2? The answer, in English: four. Ünïcödé ✓"
    tokens = tiny_llm.tokenize(text.encode(), add_bos=False)
    assert tiny_llm.detokenize(tokens).decode() == text
    # Common words are whole tokens; anything else falls back to bytes.
    assert len(tokens) < len(text.encode())
    pieces = [tiny_llm.detokenize([t]) for t in tiny_llm.tokenize(b"the answer is hello world", add_bos=False)]
    assert pieces == [b"the", b" answer", b" is", b" hello", b" world"]


def test_chat_template_is_in_the_file_and_matches_the_data_file(tiny_llm):
    template = synth.CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
    assert tiny_llm.metadata["tokenizer.chat_template"] == template


@pytest.mark.parametrize("trim", [True, False])
def test_chat_template_renders_both_thinking_forms(trim: bool):
    template = synth.chat_template()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    head = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"

    thinking = _render(template, trim=trim, messages=messages, add_generation_prompt=True)
    assert thinking == head + "<|im_start|>assistant\n<think>\n"
    default_on = _render(template, trim=trim, messages=messages, add_generation_prompt=True, enable_thinking=True)
    assert default_on == thinking
    off = _render(template, trim=trim, messages=messages, add_generation_prompt=True, enable_thinking=False)
    assert off == head + "<|im_start|>assistant\n<think></think>"


@pytest.mark.parametrize("trim", [True, False])
def test_chat_template_drops_reasoning_from_earlier_assistant_turns(trim: bool):
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n4"},
        {"role": "assistant", "content": "Sure.", "reasoning_content": "hidden"},
        {"role": "user", "content": "and 3+3? /no_think"},
    ]
    rendered = _render(synth.chat_template(), trim=trim, messages=messages, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>4<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>Sure.<|im_end|>\n"
        "<|im_start|>user\nand 3+3? /no_think<|im_end|>\n"
        "<|im_start|>assistant\n<think></think>"  # /no_think in user text turns thinking off
    )
    assert "add them" not in rendered and "hidden" not in rendered


def test_chat_template_renders_through_llama_cpp_python(tiny_model: Path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    formatter = Jinja2ChatFormatter(synth.chat_template(), eos_token="<|im_end|>", bos_token="<s>")
    result = formatter(messages=[{"role": "user", "content": "Hi"}])
    assert result.prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n"


# ---- QUANTIZABLE F16 ------------------------------------------------------------------------

def test_quantizable_f16_model_loads_with_rows_fit_for_k_quants(tiny_f16_model: Path):
    llm = _llama(tiny_f16_model, n_ctx=64)
    assert llm.metadata["general.architecture"] == "nemotron_h_moe"
    assert int(llm.metadata["general.file_type"]) == int(gguf.LlamaFileType.MOSTLY_F16)
    out = llm.create_completion("Hi", max_tokens=4, temperature=0.0)
    assert out["usage"]["completion_tokens"] > 0

    reader = gguf.GGUFReader(tiny_f16_model)
    f16 = [t for t in reader.tensors if t.tensor_type == gguf.GGMLQuantizationType.F16]
    q = synth.QUANTIZABLE  # the big matrices of each block kind, plus token_embd and output
    assert len(f16) == 2 + 2 * len(q.mamba_layers) + 4 * len(q.attention_layers) + 4 * len(q.moe_layers)
    assert all(int(t.shape[0]) % 256 == 0 for t in f16), [t.name for t in f16 if t.shape[0] % 256]
    assert tiny_f16_model.stat().st_size < 40 * 1024**2


@pytest.mark.parametrize("ftype, expert_types", [("Q4_K_M", {"Q4_K", "Q6_K"}), ("IQ4_XS", {"IQ4_XS"})])
def test_quantizable_model_quantizes_without_fallback_types(
    tiny_f16_model: Path, tmp_path: Path, ftype: str, expert_types: set[str]
):
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    out = tmp_path / f"quantized-{ftype}.gguf"
    assert llama_cpp.llama_model_quantize(str(tiny_f16_model).encode(), str(out).encode(), ctypes.byref(params)) == 0

    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out).tensors}
    experts = {v for k, v in types.items() if "_exps." in k or "_shexp." in k}
    assert experts <= expert_types, experts
    # Q5_0/Q5_1 are what K-quants fall back to when a row is not a multiple of 256.
    assert not {"Q5_0", "Q5_1", "Q4_0", "Q4_1"} & set(types.values()), types
    assert _llama(out, n_ctx=64).create_completion("Hi", max_tokens=2)["usage"]["completion_tokens"] > 0


# ---- FULL-shape sparse skeleton -------------------------------------------------------------

@pytest.fixture(scope="module")
def full_reader(full_bf16_skeleton: Path) -> gguf.GGUFReader:
    return gguf.GGUFReader(full_bf16_skeleton)  # ~3 s: the 131072-token vocabulary is parsed in Python


def test_full_bf16_skeleton_is_sparse_full_size_and_readable(full_bf16_skeleton: Path, full_reader):
    path, reader = full_bf16_skeleton, full_reader
    st = path.stat()
    tensor_bytes = [int(t.n_bytes) for t in reader.tensors]
    padded = sum(gguf.GGUFWriter.ggml_pad(n, reader.alignment) for n in tensor_bytes)
    assert st.st_size == reader.data_offset + padded
    assert sum(tensor_bytes) > 60e9  # the real BF16 model is ~63 GB
    assert st.st_blocks * 512 < 16 * 1024**2  # only the header occupies disk

    by_name = {t.name: t for t in reader.tensors}
    assert by_name["blk.1.ffn_up_exps.weight"].tensor_type == gguf.GGMLQuantizationType.BF16
    assert list(by_name["blk.1.ffn_up_exps.weight"].shape) == [2688, 1856, 128]
    assert by_name["blk.1.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32
    assert list(by_name["blk.0.ssm_in.weight"].shape) == [2688, 2 * 4096 + 2 * 8 * 128 + 64]

    llm = _llama(path, vocab_only=True)
    assert llm.metadata["general.architecture"] == "nemotron_h_moe"
    assert int(llm.metadata["nemotron_h_moe.block_count"]) == 52
    assert int(llm.metadata["nemotron_h_moe.context_length"]) == 1_048_576
    assert llm.n_vocab() == 131072
    assert llm.tokenize(b"<|im_end|>", add_bos=False, special=True) == [11]


def test_llama_cpp_accepts_every_full_skeleton_tensor(full_bf16_skeleton: Path, full_reader):
    """llama.cpp checks each tensor's shape against the architecture and builds the whole model and a
    context for it on the CPU; no_alloc skips the data (mapping the 63 GB of zeros only filled the
    page cache: a minute, and every other file's cache evicted)."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.no_alloc = True  # "only load metadata and simulate memory allocations"
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE  # no_alloc cannot map the file
    params.n_gpu_layers = 0  # the CPU build of the whole model, whatever this llama.cpp was built with
    model = llama_cpp.llama_model_load_from_file(str(full_bf16_skeleton).encode(), params)
    assert model, "llama.cpp refused the skeleton (see the log for the first bad tensor)"
    try:
        desc = ctypes.create_string_buffer(128)
        llama_cpp.llama_model_desc(model, desc, len(desc))
        # llama.cpp recognises the 52-block layout as the 31B-A3.5B model type.
        assert desc.value.decode() == "nemotron_h_moe 31B.A3.5B BF16"
        assert llama_cpp.llama_model_n_layer(model) == 52
        assert 31.5e9 < llama_cpp.llama_model_n_params(model) < 31.7e9  # "31.6B total parameters"
        reader_bytes = sum(int(t.n_bytes) for t in full_reader.tensors)
        assert llama_cpp.llama_model_size(model) == reader_bytes
        context_params = llama_cpp.llama_context_default_params()
        context_params.n_ctx = 512
        context = llama_cpp.llama_init_from_model(model, context_params)
        assert context, "llama.cpp built no context for the whole model (see the log)"
        llama_cpp.llama_free(context)
        assert llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)) == 131072
    finally:
        llama_cpp.llama_model_free(model)


def test_full_shape_matches_the_published_architecture():
    s = synth.FULL
    assert s.n_layer == 52
    assert (len(s.mamba_layers), len(s.moe_layers), len(s.attention_layers)) == (23, 23, 6)
    assert s.attention_layers == [5, 12, 19, 26, 33, 42]
    # KV bytes per token at f16 (2 tensors x 6 layers x 2 heads x 128 x 2 B), per REFERENCE.md.
    assert 2 * len(s.attention_layers) * s.n_head_kv * s.head_dim * 2 == 6144


def test_skeleton_with_tensor_types_follows_ggml_type_sizes(tmp_path: Path):
    types = {"blk.1.ffn_up_exps.weight": "Q4_K", "blk.0.ssm_in.weight": "Q8_0", "output.weight": "Q6_K"}
    path = synth.write_nemotron_h_moe(tmp_path / "mixed.gguf", synth.QUANTIZABLE, dtype="f16", sparse=True,
                                      tensor_types=types, file_type=gguf.LlamaFileType.MOSTLY_Q4_K_M)
    reader = gguf.GGUFReader(path)
    by_name = {t.name: t for t in reader.tensors}
    for name, type_name in types.items():
        tensor = by_name[name]
        qtype = gguf.GGMLQuantizationType[type_name]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        assert tensor.tensor_type == qtype
        assert int(tensor.n_bytes) == math.prod(int(d) for d in tensor.shape) // block * size
    llm = _llama(path, vocab_only=True)
    assert int(llm.metadata["general.file_type"]) == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)


def test_tensor_types_loads_for_real_with_quantized_data(tmp_path: Path):
    path = synth.write_nemotron_h_moe(tmp_path / "q8.gguf", synth.QUANTIZABLE, dtype="f16",
                                      tensor_types={"blk.1.ffn_up_exps.weight": "Q8_0"})
    llm = _llama(path, n_ctx=64)
    assert llm.create_completion("Hi", max_tokens=2)["usage"]["completion_tokens"] > 0


def test_bad_requests_fail_clearly(tmp_path: Path):
    with pytest.raises(ValueError, match="dtype"):
        synth.write_nemotron_h_moe(tmp_path / "x.gguf", synth.TINY, dtype="q4")
    with pytest.raises(ValueError, match="does not have"):
        synth.write_nemotron_h_moe(tmp_path / "x.gguf", synth.TINY, tensor_types={"blk.99.nope": "F16"})
    with pytest.raises(ValueError, match="block size"):
        # TINY rows are 64 wide: K-quants need 256.
        synth.write_nemotron_h_moe(tmp_path / "x.gguf", synth.TINY, sparse=True,
                                   tensor_types={"output.weight": "Q4_K"})
    assert not any(tmp_path.iterdir())  # no partial files left behind


# ---- Gemma and isolation --------------------------------------------------------------------

@pytest.mark.gemma
def test_gemma_generates_real_text(gemma_model: Path):
    llm = _llama(gemma_model, n_ctx=512)
    assert llm.metadata["general.architecture"] == "gemma3"
    # A base (not instruction-tuned) model without tokenizer.chat_template: tests that need
    # chat formatting must bring their own template or use plain completion.
    assert "tokenizer.chat_template" not in llm.metadata
    answer = llm.create_completion("Q: What is the capital of France?\nA:", max_tokens=12, temperature=0.0)
    assert "paris" in answer["choices"][0]["text"].lower()
    counting = llm.create_completion("One, two, three, four,", max_tokens=6, temperature=0.0)
    assert "five" in counting["choices"][0]["text"].lower()


def test_each_test_gets_private_directories(tmp_path: Path):
    for var in ("LOCALCASCADE_HOME", "HF_HOME", "HF_HUB_CACHE"):
        assert os.environ[var].startswith(str(tmp_path))
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert "HF_TOKEN" not in os.environ and "HF_HUB_OFFLINE" not in os.environ


@pytest.fixture(scope="module")
def hub_constants():
    # Imported before the per-test isolation runs, as happens when any earlier test used the hub.
    import huggingface_hub.constants

    return huggingface_hub.constants


def test_hub_already_imported_is_isolated_too(hub_constants, tmp_path: Path):
    for name in ("HF_HOME", "HF_HUB_CACHE", "HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH"):
        assert str(getattr(hub_constants, name)).startswith(str(tmp_path)), name
    assert hub_constants.HF_HUB_OFFLINE is False


# ---- live routing: sparse skeletons whose tokens spread over the experts ----------------------

def _experts_chosen(path: Path, shape: synth.NemotronShape, tokens: np.ndarray) -> list[set[int]]:
    """Per MoE block, the experts llama.cpp's routing picks for ``tokens`` when every block before it
    adds zero (the big matrices are holes): sigmoid(router . rms_norm(embedding)) + bias, top k."""
    reader = gguf.GGUFReader(path)
    tensors = {t.name: t for t in reader.tensors}

    def values(name: str) -> np.ndarray:
        t = tensors[name]
        return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(n) for n in t.shape])))

    x = values("token_embd.weight")[tokens]
    chosen = []
    for i in shape.moe_layers:
        h = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + shape.norm_eps) * values(f"blk.{i}.attn_norm.weight")
        scores = 1 / (1 + np.exp(-(h @ values(f"blk.{i}.ffn_gate_inp.weight").T)))
        scores = scores + values(f"blk.{i}.exp_probs_b.bias")
        chosen.append(set(np.argsort(-scores, axis=1)[:, :shape.n_expert_used].ravel().tolist()))
    return chosen


def test_live_routing_skeleton_spreads_tokens_over_experts_and_stays_sparse(tmp_path: Path):
    shape = synth.TINY
    types = {"token_embd.weight": "IQ4_NL"}   # the full IQ4_XS skeleton's embedding type
    live = synth.write_nemotron_h_moe(tmp_path / "live.gguf", shape, sparse=True, live_routing=True,
                                      tensor_types=types)
    dead = synth.write_nemotron_h_moe(tmp_path / "dead.gguf", shape, sparse=True, tensor_types=types)
    tokens = np.random.default_rng(0).integers(0, shape.vocab_size, 64)
    for experts in _experts_chosen(live, shape, tokens):
        assert len(experts) == shape.n_expert    # 64 tokens x 2 picks reach all 8 experts
    # An all-hole skeleton scores every expert alike: one fixed set for every token.
    assert all(len(e) == shape.n_expert_used for e in _experts_chosen(dead, shape, tokens))
    # The expert matrices themselves stay holes, so the file keeps its full size at little disk cost.
    reader = gguf.GGUFReader(live)
    up = next(t for t in reader.tensors if t.name.endswith("ffn_up_exps.weight"))
    assert not np.asarray(up.data).any()


def test_live_routing_skeleton_runs_in_llama_cpp(tmp_path: Path):
    path = synth.write_nemotron_h_moe(tmp_path / "live.gguf", synth.TINY, sparse=True, live_routing=True,
                                      tensor_types={"token_embd.weight": "IQ4_NL"})
    llm = _llama(path, n_ctx=64)
    llm.eval(llm.tokenize(b"hello world", add_bos=False))
    assert all(math.isfinite(v) for v in llm.scores[llm.n_tokens - 1][:64])


@pytest.mark.slow
def test_full_live_routing_skeleton_costs_little_disk(tmp_path: Path):
    from localcascade.model.catalog import find_variant

    types = {t.name: t.type_name for t in find_variant("IQ4_XS").facts.tensors}
    path = synth.write_nemotron_h_moe(tmp_path / "iq4xs.gguf", synth.FULL, dtype="bf16", sparse=True,
                                      live_routing=True, tensor_types=types)
    size, on_disk = path.stat().st_size, path.stat().st_blocks * 512
    assert size > 18_000_000_000             # the real IQ4_XS file's size ...
    assert on_disk < 300 * 1024**2            # ... of which the embedding and routers are written
