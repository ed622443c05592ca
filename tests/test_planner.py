"""The planner on hypothetical machines (pure, fast)."""

import re
from dataclasses import replace

import pytest

from localcascade.cli.wording import error_line, reason_words
from localcascade.model.catalog import find_variant, load_catalog
from localcascade.errors import DoesNotFitError, UsageError
from localcascade.hardware.facts import GPU, Hardware, LlamaCppBuild
from localcascade.planning.memory import GiB
from localcascade.planning.plan import CPU_ONLY, EXPERTS_IN_RAM, FULL_GPU, PARTIAL, WONT_FIT, PlanRequest
from localcascade.planning.placement import place
from localcascade.planning.policy import plan_for_facts, recommend
from localcascade.planning.reasons import NONE_USABLE

Q4 = find_variant("Q4_K_M").facts
IQ4 = find_variant("IQ4_XS").facts


def machine(vram_gib=None, ram_gib=64, bw=1008e9):
    gpus = () if vram_gib is None else (GPU("Test GPU", int(vram_gib * GiB), int(vram_gib * GiB),
                                            memory_bandwidth_bytes_per_s=bw),)
    return Hardware(gpus=gpus, ram_total_bytes=int(ram_gib * GiB), ram_available_bytes=int(ram_gib * GiB),
                    ram_bandwidth_bytes_per_s=70e9, llama_cpp=LlamaCppBuild(gpu_offload=True))


def test_iq4_xs_fits_a_24gb_card_at_256k_but_not_at_1m():
    assert place(IQ4, machine(23.5), n_ctx=262144).verdict == FULL_GPU
    assert place(IQ4, machine(23.5), n_ctx=1048576).verdict == EXPERTS_IN_RAM


def test_q4_k_m_on_24gb_needs_more_expert_blocks_in_ram_as_context_grows():
    blocks = [place(Q4, machine(23.5), n_ctx=c).n_cpu_moe for c in (4096, 262144, 1048576)]
    assert blocks == sorted(blocks) and blocks[0] < blocks[-1]


def test_8gb_card_keeps_experts_in_ram_or_splits_layers():
    plan = place(Q4, machine(8), n_ctx=32768)
    assert plan.verdict in (EXPERTS_IN_RAM, PARTIAL)
    assert plan.gpu_bytes <= 8 * GiB
    assert plan.ram.weights > 15 * GiB


def test_no_gpu_is_cpu_only_and_tiny_ram_wont_fit():
    assert place(Q4, machine(None, 64), n_ctx=4096).verdict == CPU_ONLY
    plan = place(Q4, machine(None, 8), n_ctx=4096)
    assert plan.verdict == WONT_FIT
    reason = plan.reasons[0]
    assert reason.verdict == WONT_FIT and reason.ram_bytes > reason.ram_usable_bytes
    assert "does not fit: it needs" in reason_words(reason)


def test_default_context_is_the_largest_that_keeps_the_best_placement():
    plan = plan_for_facts(IQ4, machine(23.5), name="IQ4_XS")
    assert plan.verdict == FULL_GPU and plan.n_ctx == 524288
    # The reasons say what the next context up would need: its placement at 1M.
    assert any(r.kind == "placed" and r.n_ctx == 1048576 and r.verdict == EXPERTS_IN_RAM for r in plan.reasons)
    assert any("1M needs the experts of" in reason_words(r) for r in plan.reasons)


def test_overrides_are_honoured_or_refused_with_numbers():
    plan = plan_for_facts(Q4, machine(23.5), PlanRequest(n_ctx=8192, n_gpu_layers=30), name="Q4_K_M")
    assert plan.n_gpu_layers == 30 and plan.verdict == PARTIAL
    with pytest.raises(DoesNotFitError) as caught:
        plan_for_facts(Q4, machine(23.5), PlanRequest(n_ctx=8192, n_gpu_layers=53, n_cpu_moe=0), name="Q4_K_M")
    assert caught.value.requested == (53, 0) and caught.value.reason.gpu_bytes > caught.value.reason.gpu_usable_bytes
    assert re.fullmatch(r"Q4_K_M at 8K with n_gpu_layers=53, n_cpu_moe=0 needs [\d.]+ GiB of GPU memory "
                        r"\([\d.]+ GiB usable\) and .* of RAM \(.* usable\)", error_line(caught.value))


def test_requested_context_that_fits_nowhere_raises():
    with pytest.raises(DoesNotFitError):
        plan_for_facts(Q4, machine(None, 8), PlanRequest(n_ctx=4096))


def test_a_requested_context_is_planned_exactly_and_a_cpu_only_machine_gets_the_fastest():
    choice = recommend(machine(80), load_catalog(), PlanRequest(n_ctx=32768))
    assert (choice.variant.quant, choice.plan.verdict, choice.plan.n_ctx) == ("BF16", FULL_GPU, 32768)
    choice = recommend(machine(None, 64), load_catalog(), PlanRequest(n_ctx=4096))
    # 1 core here: no plan reaches a usable speed, so the fastest wins (fewest bytes per token).
    assert choice.plan.verdict == CPU_ONLY and choice.variant.quant == "IQ4_XS"
    assert choice.notes[-1].how == NONE_USABLE
    assert reason_words(choice.notes[-1]).startswith("no plan reaches 20 tokens/s on this machine: the fastest")


def test_speed_drops_when_experts_move_to_ram():
    fast = place(IQ4, machine(23.5), n_ctx=4096).tokens_per_s
    slow = place(IQ4, machine(23.5), n_ctx=1048576).tokens_per_s
    cpu = place(IQ4, machine(None), n_ctx=4096).tokens_per_s
    assert fast > slow > cpu > 0


def test_a_gpu_the_installed_build_cannot_use_is_planned_as_cpu_only():
    with_cuda = machine(23.5)
    cpu_build = replace(with_cuda, llama_cpp=LlamaCppBuild(gpu_offload=False))
    assert place(IQ4, with_cuda, n_ctx=4096).verdict == FULL_GPU
    plan = place(IQ4, cpu_build, n_ctx=4096)
    assert plan.verdict == CPU_ONLY and plan.n_gpu_layers == 0 and plan.gpu_bytes == 0
    assert plan.reasons[0].gpu_offload_missing and "no GPU offload" in reason_words(plan.reasons[0])


def test_experts_in_ram_counts_moe_blocks_not_layers():
    plan = place(Q4, machine(23.5), n_ctx=1048576)
    assert plan.verdict == EXPERTS_IN_RAM
    # --n-cpu-moe counts layers; about half of the leading layers are MoE blocks in this pattern.
    assert 0 < plan.moe_blocks_in_ram < plan.n_cpu_moe
    assert plan.moe_blocks_in_ram == sum(1 for i in Q4.moe_layers if i < plan.n_cpu_moe)


def test_two_12gb_cards_hold_less_than_one_24gb_card():
    one = machine(24)
    two = replace(one, gpus=(GPU("A", 12 * GiB, 12 * GiB, index=0, memory_bandwidth_bytes_per_s=1008e9),
                             GPU("B", 12 * GiB, 12 * GiB, index=1, memory_bandwidth_bytes_per_s=1008e9)))
    single = place(IQ4, one, n_ctx=262144)
    split = place(IQ4, two, n_ctx=262144)
    assert single.verdict == FULL_GPU
    # Each card runs its own CUDA context and compute buffer, and whole layers cannot be split evenly.
    assert split.gpu.overhead == 2 * single.gpu.overhead
    assert split.gpu.compute == 2 * single.gpu.compute
    assert split.verdict == FULL_GPU
    tight = place(Q4, two, n_ctx=4096)
    assert tight.verdict != FULL_GPU and place(Q4, one, n_ctx=4096).verdict == FULL_GPU


def test_when_nothing_fits_the_error_names_the_smallest_variant_and_its_shortfall():
    with pytest.raises(DoesNotFitError) as err:
        recommend(machine(None, 8), load_catalog(), PlanRequest())
    message = error_line(err.value)
    assert err.value.models[-1] == "IQ4_XS" and err.value.reason.model == "IQ4_XS"
    assert message.startswith("none of BF16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, IQ4_XS fits this machine: IQ4_XS at 4K")
    assert "GiB of RAM" in message and "requested" not in message


def test_cpu_moe_past_the_last_layer_is_refused_and_ngl_past_it_means_all():
    n = Q4.n_layer
    with pytest.raises(UsageError) as caught:
        plan_for_facts(Q4, machine(None, 512), PlanRequest(n_ctx=4096, n_cpu_moe=n + 1), name="Q4_K_M")
    # The planner names no flag: the figures travel in the error, the command line says its flag.
    assert (caught.value.value, caught.value.n_layer, caught.value.model) == (n + 1, n, "Q4_K_M")
    assert "--" not in str(caught.value)
    assert error_line(caught.value).startswith(f"--cpu-moe {n + 1} is more than the {n} layers of Q4_K_M: give 0 to {n}")
    assert plan_for_facts(Q4, machine(None, 512), PlanRequest(n_ctx=4096, n_cpu_moe=n)).n_cpu_moe == n
    # llama.cpp takes any count past the output layer as "all"; the plan (and the int32 llama.cpp
    # is handed) says how many that is.
    plan = plan_for_facts(IQ4, machine(80), PlanRequest(n_ctx=4096, n_gpu_layers=10**12))
    assert plan.n_gpu_layers == n + 1 and plan.verdict == FULL_GPU


def test_drafting_plans_the_snapshots_it_rolls_back_with_and_prices_them():
    # Cascade-2's Mamba state (~47 MiB a sequence) is kept once more per draft token, and a verified
    # draft's tokens share one micro-batch.
    plain = place(IQ4, machine(23.5), PlanRequest(draft_tokens=0), n_ctx=32768)
    drafted = place(IQ4, machine(23.5), PlanRequest(draft_tokens=8, n_ubatch=4), n_ctx=32768)
    assert plain.n_rs_seq == 0 and drafted.n_rs_seq == 8
    assert drafted.n_ubatch >= 9
    state = plain.gpu.recurrent
    assert 40 * 2**20 < state < 60 * 2**20
    assert drafted.gpu.recurrent == 9 * state


def test_drafting_is_planned_by_default_only_where_the_experts_stay_on_the_gpu():
    assert place(IQ4, machine(23.5), n_ctx=32768).n_rs_seq == 8            # all on a 24 GB card
    in_ram = place(Q4, machine(8), n_ctx=32768)
    assert in_ram.n_cpu_moe > 0 and in_ram.n_rs_seq == 0                  # experts in RAM: verifying is dear
    assert place(IQ4, machine(None), n_ctx=32768).n_rs_seq == 0           # CPU only
    assert place(IQ4, machine(8), PlanRequest(draft_tokens=8), n_ctx=32768).n_rs_seq == 8   # asked for: honoured
