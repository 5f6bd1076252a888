"""Offloading in the simulator: cache semantics equal to the traces' caches, miss modes, prefetch."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.plans.plan import CachePlan
from moesim.sim import SimConfig, default_plan, simulate
from moesim.specs import load_cluster, load_model
from moesim.traces import RoutingTrace
from moesim.traces.cache import hit_rates, simulate_hits
from tests.conftest import shared_trace

MIXTRAL_TRACE = "mixtral-8x7b-instruct-vllm/mixtral_gsm8k_humaneval_decode.npz"


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory):
    """Mixtral with FP8 weights, as the shared trace was served: a 3-expert-per-layer cache fits 24 GB beside
    the attention and embeddings (16.9 + 1.6 GB; 4 per layer would need 22.5 + 1.6 GB)."""
    path = tmp_path_factory.mktemp("model") / "mixtral-fp8.yaml"
    path.write_text("extends: mixtral-8x7b\nname: mixtral-8x7b-fp8\nweight_dtype: fp8\n")
    return load_model(str(path))


@pytest.fixture(scope="module")
def rtx4090():
    return load_cluster("rtx4090-workstation")


@pytest.mark.parametrize("policy", ["lru", "lfu", "belady"])
def test_hit_rate_equals_trace_caches(policy, fp8_model, rtx4090):
    """One GPU, batch 1, no prefetch: the simulated hit rate is exactly the traces' cache hit rate."""
    trace = RoutingTrace.load(shared_trace(MIXTRAL_TRACE), model=fp8_model)
    r = simulate(SimConfig(rtx4090, fp8_model, trace, batch_size=1, cache_policy=policy, cache_size=3))
    assert r.summary()["cache_hit_rate"] == hit_rates(trace, [3], [policy])[policy][3]


def test_hit_rate_equals_trace_caches_batched(fp8_model, rtx4090):
    """A batch's request is the union of its tokens' experts, in both implementations."""
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 400)
    r = simulate(SimConfig(rtx4090, fp8_model, trace, batch_size=4, cache_policy="lru", cache_size=3))
    assert r.summary()["cache_hit_rate"] == hit_rates(trace, [3], ["lru"], batch_size=4)["lru"][3]


def test_bigger_cache_never_lowers_belady(fp8_model, rtx4090):
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 200)
    rates = [simulate(SimConfig(rtx4090, fp8_model, trace, cache_policy="belady", cache_size=c)).summary()
             ["cache_hit_rate"] for c in (2, 3)]
    assert all(b >= a for a, b in itertools.pairwise(rates))
    assert rates[-1] > rates[0]


def test_cpu_execution_beats_pcie_fetch_at_batch_1(rtx4090):
    """Fiddler's observation: at batch 1 running a missed Mixtral expert on the CPU beats copying it."""
    model = load_model("mixtral-8x7b")
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=model).rows(0, 30)
    tps = {miss: simulate(SimConfig(rtx4090, model, trace, batch_size=1, cache_policy="static", cache_size=1,
                                    miss=miss)).summary()["tokens_per_s"] for miss in ("fetch", "cpu")}
    assert tps["cpu"] > 2 * tps["fetch"]


# Mixtral-8x7B expert weights: 3 matrices of 4096 x 14336 = 176,160,768 parameters.
FP8_EXPERT_B = 176_160_768  # 1 byte each
INT4_EXPERT_B = 88_080_384  # half a byte each (HOBBIT's low-bit copies)


def _misses(trace, capacity: int, batch: int = 1) -> int:
    """Misses of the LRU cache, from the whole-trace implementation (not the simulator's caches)."""
    hits, requests = simulate_hits(trace, [capacity], "lru", batch_size=batch)
    return requests - int(hits[0])


def test_lowbit_fetch_moves_fewer_bytes(fp8_model, rtx4090):
    """Every miss copies one expert once (batch 1, no prefetch: the GPU waits for each copy):
    FP8 copies move 176,160,768 B each, int4 copies half that, and finish sooner."""
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 40)
    runs = {miss: simulate(SimConfig(rtx4090, fp8_model, trace, cache_policy="lru", cache_size=3, miss=miss))
            for miss in ("fetch", "lowbit")}
    misses = _misses(trace, 3)
    assert misses > 0
    assert runs["fetch"].rec.fetch_bytes.sum() == misses * FP8_EXPERT_B
    assert runs["lowbit"].rec.fetch_bytes.sum() == misses * INT4_EXPERT_B
    assert runs["lowbit"].simulated_seconds < runs["fetch"].simulated_seconds


def test_prefetch_accuracy_reported(fp8_model, rtx4090):
    trace = RoutingTrace.load(shared_trace(MIXTRAL_TRACE), model=fp8_model)
    oracle = simulate(SimConfig(rtx4090, fp8_model, trace, steps=100, cache_policy="lru", cache_size=3,
                                prefetch="oracle")).summary()["cache"]["prefetch_accuracy"]
    assert oracle == {"recall": 1.0, "precision": 1.0}
    learned = simulate(SimConfig(rtx4090, fp8_model, trace, cache_policy="lru", cache_size=3,
                                 prefetch="predictor")).summary()["cache"]["prefetch_accuracy"]
    # better than guessing 2 of 8 experts at random (0.25), short of perfect
    assert 0.25 < learned["recall"] < 1.0


def test_expert_cache_budget_sets_cache_size(fp8_model, rtx4090):
    """20 GiB = 21,474,836,480 B over 32 MoE layers of 176,160,768 B experts: 3.8, so 3 per layer."""
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 10)
    s = simulate(SimConfig(rtx4090, fp8_model, trace, expert_cache_bytes=20 * 2**30)).summary()
    assert s["cache"]["policy"] == "lru" and s["cache"]["capacity_experts"] == [3]
    assert s["per_device"][0]["peak_memory_bytes"] >= 3 * 32 * FP8_EXPERT_B  # 16.9 GB of cached experts


def test_fetches_recorded_on_pcie_link(fp8_model, rtx4090):
    """The host -> GPU link carries one FP8 expert per miss of the trace's own LRU replay."""
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 20)
    r = simulate(SimConfig(rtx4090, fp8_model, trace, cache_policy="lru", cache_size=2))
    links = {(x["src"], x["dst"]): x["bytes"] for x in r.summary()["per_link"]}
    assert links[("n0.cpu0", "n0.gpu0")] == _misses(trace, 2) * FP8_EXPERT_B


def test_offload_timeline_has_fetches_on_the_pcie_track(fp8_model, rtx4090, tmp_path):
    import json

    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 6)
    r = simulate(SimConfig(rtx4090, fp8_model, trace, cache_policy="lru", cache_size=2))
    path = tmp_path / "t.json"
    r.write_timeline(path)
    events = json.loads(path.read_text())["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    names = {(tracks[e["tid"]], e["name"].split(" ")[0]) for e in events if e["ph"] == "X"}
    assert {("n0.cpu0->n0.gpu0", "fetch"), ("n0.gpu0", "experts"), ("n0.gpu0", "attention")} <= names


def _pinned_plan(model, cluster, miss: str):
    """Everything on the one GPU, expert 0 of every MoE layer pinned, every other expert a miss."""
    plan = default_plan(model, cluster)
    L = model.num_moe_layers
    cache = CachePlan("static", capacity_experts=(1,) * L, resident=((0,),) * L, miss=miss)
    return replace(plan, cache=cache)


def _step_layers(model, trace):
    """Per (step, layer) at batch 1: the token's context and its distinct recorded experts."""
    ids, pos = np.asarray(trace.expert_ids), np.asarray(trace.pos)
    for s in range(trace.num_tokens):
        for col in range(model.num_moe_layers):
            yield int(pos[s]) + 1, sorted({int(e) for e in ids[s, col] if e >= 0})


@pytest.mark.parametrize("miss", ["fetch", "cpu"])
def test_offloaded_time_equals_hand_composed_op_times(miss, fp8_model, rtx4090):
    """One GPU, batch 1, expert 0 pinned (all-MoE Mixtral: one MoE layer per layer). Per layer:
    attention, router, permute/combine and shared experts (per step also the embedding and the LM
    head of its token), then
    fetch: the misses copied one after another over PCIe, then one grouped call of all the experts;
    cpu: the hits on the GPU while the host CPU runs the misses (activations in and out over PCIe).
    The simulated time is the sum of those op times, composed here by hand from the cost model."""
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 6)
    cost = CostModel(rtx4090, fp8_model)
    gpu, cpu = "n0.gpu0", "n0.cpu0"
    act = fp8_model.activation_bytes_per_token
    want = trace.num_tokens * float(cost.embedding_s(gpu, 1) + cost.lm_head_s(gpu, 1))
    for context, experts in _step_layers(fp8_model, trace):
        want += float(cost.attention_s(gpu, 1, context, "decode")) + float(
            cost.router_s(gpu, 1) + cost.permute_combine_s(gpu, 1) + cost.shared_expert_s(gpu, 1))
        missed = [e for e in experts if e != 0]
        if miss == "fetch":
            want += len(missed) * cost.weight_fetch_s(gpu, FP8_EXPERT_B)
            want += cost.expert_compute_s(gpu, np.ones(len(experts)))
        else:
            on_gpu = cost.expert_compute_s(gpu, np.ones(1)) if 0 in experts else 0.0
            beside = 0.0
            if missed:
                nbytes = len(missed) * act
                beside = (cost.transfer_s(gpu, cpu, nbytes) + cost.cpu_expert_s(cpu, np.ones(len(missed)))
                          + cost.transfer_s(cpu, gpu, nbytes))
            want += max(on_gpu, beside)
    r = simulate(SimConfig(rtx4090, fp8_model, trace, plan=_pinned_plan(fp8_model, rtx4090, miss)), cost)
    assert r.simulated_seconds == pytest.approx(want, rel=1e-9)
    hits = sum(0 in experts for _, experts in _step_layers(fp8_model, trace))
    assert r.summary()["cache"]["hits"] == hits and r.summary()["cache"]["requests"] == 6 * 32 * 2
