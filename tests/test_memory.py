"""The memory model on the catalog's full-size facts: pure arithmetic, no loads."""

import pytest

from localcascade.model.catalog import find_variant
from localcascade.errors import UsageError
from localcascade.planning.memory import GiB, MiB, Placement, estimate, padded_ctx

Q4 = find_variant("Q4_K_M").facts


def test_kv_grows_with_context_and_only_for_the_six_attention_layers():
    assert len(Q4.attention_layers) == 6
    small = estimate(Q4, Placement(n_ctx=4096)).ram.kv
    large = estimate(Q4, Placement(n_ctx=1048576)).ram.kv
    assert small == 6 * 2 * 2 * 128 * 2 * 4096           # K and V, 2 heads x 128, f16
    assert large == 6144 * 1048576 == 6 * GiB            # 6 GiB at 1M, as the model card arithmetic says


def test_q8_0_kv_is_smaller_by_34_over_64():
    f16 = estimate(Q4, Placement(n_ctx=262144)).ram.kv
    q8 = estimate(Q4, Placement(n_ctx=262144, type_k="q8_0", type_v="q8_0")).ram.kv
    assert q8 * 64 == f16 * 34


def test_context_is_padded_to_256():
    assert padded_ctx(3000) == (3072, 3072)
    assert estimate(Q4, Placement(n_ctx=3000)).n_ctx == 3072


def test_recurrent_state_is_per_sequence_and_independent_of_context():
    one = estimate(Q4, Placement(n_ctx=4096)).ram.recurrent
    assert one == estimate(Q4, Placement(n_ctx=1048576)).ram.recurrent
    assert one == 23 * (3 * (4096 + 2 * 8 * 128) + 128 * 4096) * 4
    assert estimate(Q4, Placement(n_ctx=8192, n_seq=2)).ram.recurrent == 2 * one


def test_quantized_v_cache_refused_without_flash_attention():
    with pytest.raises(UsageError, match="flash attention"):
        estimate(Q4, Placement(n_ctx=4096, type_v="q8_0", flash_attn=False))


def test_without_flash_attention_the_compute_buffer_explodes_at_long_context():
    fa = estimate(Q4, Placement(n_ctx=1048576, flash_attn=True)).ram.compute
    no_fa = estimate(Q4, Placement(n_ctx=1048576, flash_attn=False)).ram.compute
    assert fa < 2 * GiB
    assert no_fa > 64 * GiB          # KQ = n_ctx * n_ubatch * n_head * 4 B


def test_weights_follow_layer_assignment_and_expert_override():
    cpu = estimate(Q4, Placement(n_ctx=4096))
    full = estimate(Q4, Placement(n_ctx=4096, n_gpu_layers=Q4.n_layer + 1))
    embd = next(t.n_bytes for t in Q4.tensors if t.name == "token_embd.weight")
    assert cpu.gpu.weights == 0
    assert full.gpu.weights == Q4.file_tensor_bytes - embd      # the token embedding stays on the CPU
    head = next(t.n_bytes for t in Q4.tensors if t.name == "output.weight")
    only_output = estimate(Q4, Placement(n_ctx=4096, n_gpu_layers=1))
    assert only_output.gpu.weights == head + next(t.n_bytes for t in Q4.tensors if t.name == "output_norm.weight")
    moe = estimate(Q4, Placement(n_ctx=4096, n_gpu_layers=Q4.n_layer + 1, n_cpu_moe=2))
    experts_blk1 = sum(t.n_bytes for t in Q4.tensors if t.name.startswith("blk.1.ffn_") and "_exps" in t.name)
    assert full.gpu.weights - moe.gpu.weights == experts_blk1
    assert moe.gpu.compute > full.gpu.compute   # op offload copies CPU experts into the GPU compute buffer


def test_cuda_overhead_only_with_gpu_layers():
    assert estimate(Q4, Placement(n_ctx=4096)).gpu.overhead == 0
    assert estimate(Q4, Placement(n_ctx=4096, n_gpu_layers=53)).gpu.overhead == int(0.45 * GiB)


def test_unknown_kv_type_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown KV cache type"):
        estimate(Q4, Placement(n_ctx=4096, type_k="q3_x"))


def test_output_buffer_is_logits_of_one_token_per_sequence():
    assert estimate(Q4, Placement(n_ctx=4096)).ram.output == 131072 * 4 == 512 * 1024
    assert MiB == 1048576


def test_repacked_cpu_weights_are_resident_once():
    # IQ4_XS falls back to iq4_nl for this model's 2688-wide rows, and the CPU backend repacks
    # iq4_nl: llama.cpp's log shows those bytes twice (mapped + CPU_REPACK), RAM holds them once.
    iq4 = find_variant("IQ4_XS").facts
    est = estimate(iq4, Placement(n_ctx=4096, n_gpu_layers=0))
    assert est.repacked_bytes > iq4.file_tensor_bytes // 2
    assert est.ram.weights == iq4.file_tensor_bytes
    assert est.gpu.weights == 0


def test_a_kept_cascade_2_state_costs_what_its_shape_says():
    """REFERENCE: only the 6 attention blocks hold KV, 6,144 B per token at f16 (3,264 at q8_0); the
    23 Mamba-2 blocks hold (18,432 + 524,288) f32 values each, ~47.6 MiB per state."""
    from localcascade.model.catalog import find_variant
    from localcascade.planning.memory import kept_state_bytes

    facts = find_variant("Q4_K_M").facts
    assert kept_state_bytes(facts) == (6144, 23 * (18432 + 524288) * 4)
    assert kept_state_bytes(facts, "q8_0", "q8_0")[0] == 3264
