"""The one memory model (moesim.memory): per-device bytes derived by hand from published shapes, the
expert slots a budget leaves, and the planner and the simulator agreeing on them."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import UserError
from moesim.memory import MemoryModel, non_expert_weights, staging_experts
from moesim.specs import load_cluster, load_model, with_weight_dtype
from tests.conftest import MIXTRAL_FIXED_BYTES


def test_deepseek_v2_lite_weights_add_up_to_its_published_size():
    """DeepSeek-V2-Lite has 15.7 B parameters (its model card); per layer by hand (bf16, 2 B): MLA
    q 2048 x 16 x 192, kv_a 2048 x 576, kv_b 512 x 16 x 256, o 16 x 128 x 2048; 26 MoE layers of a
    64-way router and 2 shared experts of 3 x 2048 x 1408; one dense FFN of 3 x 2048 x 10944."""
    m = load_model("deepseek-v2-lite")
    w = non_expert_weights(m)
    assert w.attention_bytes == 27 * (6_291_456 + 1_179_648 + 2_097_152 + 4_194_304) * 2
    assert w.embeddings_bytes == 2 * 102_400 * 2048 * 2
    assert w.router_bytes == 26 * 2048 * 64 * 2
    assert w.shared_experts_bytes == 26 * 2 * 3 * 2048 * 1408 * 2
    assert w.dense_ffn_bytes == 3 * 2048 * 10_944 * 2
    routed = 26 * 64 * 3 * 2048 * 1408
    assert (w.total_bytes / 2 + routed) / 1e9 == pytest.approx(15.7, abs=0.05)


def test_mixtral_breakdown_per_gpu():
    """One layout on 8 GPUs: data-parallel attention (the default) holds every layer's non-expert
    weights whole and 1/8 of the batch's KV; TP 8 holds 1/8 of them and its group's (the whole batch's)
    sequences at 1/8 of the KV heads (Mixtral: 8 KV heads, one per GPU)."""
    from moesim.parallel import Parallelism

    m = load_model("mixtral-8x7b")
    one = MemoryModel(m).device("g", 80e9)
    assert one.fixed_bytes == MIXTRAL_FIXED_BYTES
    assert one.kv_cache_bytes == 4096 * 32 * 2 * 8 * 128 * 2
    eight = MemoryModel(m, gpus=8, batch_size=16).device("g", 80e9, staging_experts=2)
    assert eight.non_expert_weight_bytes == one.non_expert_weight_bytes
    assert eight.kv_cache_bytes == 2 * one.kv_cache_bytes  # 16 sequences, 2 per GPU
    assert eight.activation_bytes == 16 * one.activation_bytes  # a layer's workspace for the whole step
    assert eight.staging_bytes == 2 * 3 * 4096 * 14336 * 2
    parts = eight.parts()
    assert sum(parts.values()) == pytest.approx(eight.fixed_bytes)
    tp = MemoryModel(m, gpus=8, batch_size=16, parallel=Parallelism(tp=8, dp=1, ep=8)).device("g", 80e9)
    assert tp.attention_bytes == pytest.approx(one.attention_bytes / 8)
    assert tp.embeddings_bytes == pytest.approx(one.embeddings_bytes / 8)
    assert tp.router_bytes == one.router_bytes  # the router is whole on every GPU
    assert tp.kv_cache_bytes == 16 * one.kv_cache_bytes / 8
    uneven = MemoryModel(m, gpus=8, batch_size=17)
    assert uneven.kv_cache_bytes().tolist() == [3 * one.kv_cache_bytes] + [2 * one.kv_cache_bytes] * 7
    with pytest.raises(UserError, match="--tp x --dp = the 8 GPUs"):
        MemoryModel(m, gpus=8, parallel=Parallelism(tp=2, dp=2, ep=4))


def test_slots_and_the_two_budgets():
    m = with_weight_dtype(load_model("mixtral-8x7b"), "fp8")
    eb = 3 * 4096 * 14336  # one fp8 expert, bytes
    layout = MemoryModel(m)
    fixed = layout.device("g", 24e9).fixed_bytes
    assert layout.expert_slots(layout.device("g", fixed + 7 * eb)) == 7
    assert layout.expert_slots(layout.device("g", fixed + 7 * eb - 1)) == 6
    assert layout.expert_slots(layout.device("g", fixed / 2)) == 0
    budget = layout.expert_budget("g", 24e9)
    assert budget == pytest.approx(24e9 - fixed)
    assert layout.experts_per_layer(budget) == 3  # 24 GB less 2.1 GB holds 3 x 32 fp8 experts, not 4
    with pytest.raises(UserError) as e:
        layout.expert_budget("n0.gpu0", 2**30)
    assert e.value.field == "--gpu-memory" and "--expert-cache 1GiB" in e.value.message
    assert "\n" not in str(e.value)


def test_staging_only_for_a_static_cache_that_fetches():
    assert staging_experts("static", "fetch", "none", 2) == 2
    assert staging_experts("static", "lowbit", "predictor", 2) == 4
    assert staging_experts("static", "cpu", "none", 2) == 0
    assert staging_experts("lru", "fetch", "oracle", 2) == 0


def test_plan_and_simulate_give_the_same_slots_for_the_same_gpu_memory():
    """``moesim plan --gpu-memory B`` (the cache planner) and ``moesim simulate --gpu-memory B`` see the
    same experts per layer in B: one memory model."""
    from moesim.cost import CostModel
    from moesim.planners.cache_ilp import plan_cache
    from moesim.plans.default import default_plan
    from moesim.sim.config import SimConfig
    from moesim.traces import RoutingTrace

    m = with_weight_dtype(load_model("mixtral-8x7b"), "fp8")
    cluster = load_cluster("rtx4090-workstation")
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=m).rows(0, 64)
    for budget in (16e9, 18e9, 24e9):
        for policy in ("static", "lru"):
            cp = plan_cache(m, cluster, trace, budget, CostModel(cluster, m), policy=policy, time_limit_s=5)
            sim = SimConfig(cluster, m, trace, cache_policy=policy, gpu_memory_bytes=budget)
            per_layer = sim.cache_plan(default_plan(m, cluster)).capacity_experts
            slots = cp.params["expert_slots_per_device"][0]
            assert set(per_layer) == {slots // m.num_moe_layers}, (budget, policy)


def test_simulate_counts_the_non_expert_weights():
    """The run's memory check holds attention and embeddings too: 4 fp8 experts per layer (22.55 GB)
    fit a 24 GB card alone, not beside Mixtral's 3.2 GB of other weights (bf16: ``--weight-dtype`` is
    the routed experts' dtype)."""
    from moesim.sim.config import SimConfig
    from moesim.sim.engine import simulate
    from moesim.traces import RoutingTrace

    m = with_weight_dtype(load_model("mixtral-8x7b"), "fp8")
    cluster = load_cluster("rtx4090-workstation")
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=m).rows(0, 4)
    with pytest.raises(UserError, match=r"needs 25\.7\d GB: 22\.55 GB for its expert cache .* non-expert "
                                        r"weights 3\.211 GB"):
        simulate(SimConfig(cluster, m, trace, cache_policy="lru", cache_size=4))
    s = simulate(SimConfig(cluster, m, trace, cache_policy="lru", cache_size=3)).summary()
    peak = s["per_device"][0]["peak_memory_bytes"]
    assert 3 * 32 * 3 * 4096 * 14336 + 3.211e9 < peak < 3 * 32 * 3 * 4096 * 14336 + 3.3e9
    assert np.isfinite(peak)


def test_the_run_holds_what_the_plan_reserves():
    """One memory model: a static cache plan for a budget reserves its parts and its pinned experts;
    the run of that plan holds the same parts (the KV cache from the trace's real contexts instead of
    the planner's 4,096-token estimate) and the same expert bytes, and its breakdown adds up to the
    peak it reports."""
    import dataclasses

    from moesim.cost import CostModel
    from moesim.planners.cache_ilp import plan_cache
    from moesim.plans.default import default_plan
    from moesim.sim.config import SimConfig
    from moesim.sim.engine import simulate
    from moesim.traces import RoutingTrace

    m = with_weight_dtype(load_model("mixtral-8x7b"), "fp8")
    cluster = load_cluster("rtx4090-workstation")
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=m).rows(0, 16)
    budget = 20e9
    cp = plan_cache(m, cluster, trace, budget, CostModel(cluster, m), policy="static", miss="fetch",
                    prefetch="none", time_limit_s=5)
    plan = dataclasses.replace(default_plan(m, cluster), cache=cp)
    s = simulate(SimConfig(cluster, m, trace, plan=plan)).summary()
    run = s["memory_breakdown_bytes"]["n0.gpu0"]
    reserved = cp.params["memory_bytes"]
    for part, value in reserved.items():
        if part not in ("kv_cache", "activations"):  # the run's: its own contexts and step size
            assert run[part] == value, part
    slots = cp.params["expert_slots_per_device"][0]
    assert run["experts"] == sum(len(r) for r in cp.resident) * m.expert_bytes() <= slots * m.expert_bytes()
    parts = {k: v for k, v in run.items() if k not in ("total", "capacity")}
    assert sum(parts.values()) == pytest.approx(run["total"])
    assert run["total"] == s["per_device"][0]["peak_memory_bytes"]
    assert sum(reserved.values()) + slots * m.expert_bytes() <= budget


def test_deepep_low_latency_buffer_of_deepseek_v3():
    """DeepEP's LowLatencyLayout (csrc/config.hpp) by hand for 128 tokens per rank, hidden 7168, 256
    experts: dispatch message 16 + 2·7168 = 14,352 B, combine message 56·4 + 2·7168 = 14,560 B; send and
    receive buffers 256·128·14,560 B each, signaling 1,024 B, all twice (odd/even): 1.91 GB."""
    from moesim.comm_buffers import comm_buffer_bytes

    m = load_model("deepseek-v3")
    one = 256 * 128 * 14_560
    assert comm_buffer_bytes(m, "deepep-low-latency", ep=32) == 2 * (one + one + 1024)
    assert comm_buffer_bytes(m, "none", ep=32) == 0.0
    assert 0 < comm_buffer_bytes(m, "deepep-normal", ep=8) < 1e9
    with pytest.raises(UserError):
        comm_buffer_bytes(m, "nvshmem", ep=8)
