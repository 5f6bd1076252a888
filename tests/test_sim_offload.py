"""Offloading in the simulator: cache semantics equal to the traces' caches, miss modes, prefetch."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moesim.sim import SimConfig, simulate
from moesim.specs import load_cluster, load_model
from moesim.traces import RoutingTrace
from moesim.traces.cache import hit_rates
from tests.conftest import shared_trace

MIXTRAL_TRACE = "mixtral-8x7b-instruct-vllm/mixtral_gsm8k_humaneval_decode.npz"


@pytest.fixture(scope="module")
def fp8_model(tmp_path_factory):
    """Mixtral with FP8 weights, as the shared trace was served: a 4-expert-per-layer cache fits 24 GB."""
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
    r = simulate(SimConfig(rtx4090, fp8_model, trace, batch_size=1, cache_policy=policy, cache_size=4))
    assert r.summary()["cache_hit_rate"] == hit_rates(trace, [4], [policy])[policy][4]


def test_hit_rate_equals_trace_caches_batched(fp8_model, rtx4090):
    """A batch's request is the union of its tokens' experts, in both implementations."""
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 400)
    r = simulate(SimConfig(rtx4090, fp8_model, trace, batch_size=4, cache_policy="lru", cache_size=3))
    assert r.summary()["cache_hit_rate"] == hit_rates(trace, [3], ["lru"], batch_size=4)["lru"][3]


def test_bigger_cache_never_lowers_belady(fp8_model, rtx4090):
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 200)
    rates = [simulate(SimConfig(rtx4090, fp8_model, trace, cache_policy="belady", cache_size=c)).summary()
             ["cache_hit_rate"] for c in (2, 3, 4)]
    assert all(b >= a for a, b in itertools.pairwise(rates))
    assert rates[-1] > rates[0]


def test_cpu_execution_beats_pcie_fetch_at_batch_1(rtx4090):
    """Fiddler's observation: at batch 1 running a missed Mixtral expert on the CPU beats copying it."""
    model = load_model("mixtral-8x7b")
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=model).rows(0, 30)
    tps = {miss: simulate(SimConfig(rtx4090, model, trace, batch_size=1, cache_policy="static", cache_size=1,
                                    miss=miss)).summary()["tokens_per_s"] for miss in ("fetch", "cpu")}
    assert tps["cpu"] > 2 * tps["fetch"]


def test_lowbit_fetch_moves_fewer_bytes(fp8_model, rtx4090):
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 40)
    runs = {miss: simulate(SimConfig(rtx4090, fp8_model, trace, cache_policy="lru", cache_size=3, miss=miss))
            for miss in ("fetch", "lowbit")}
    assert runs["lowbit"].rec.fetch_bytes.sum() < runs["fetch"].rec.fetch_bytes.sum()
    assert runs["lowbit"].simulated_seconds < runs["fetch"].simulated_seconds


def test_prefetch_accuracy_reported(fp8_model, rtx4090):
    trace = RoutingTrace.load(shared_trace(MIXTRAL_TRACE), model=fp8_model)
    oracle = simulate(SimConfig(rtx4090, fp8_model, trace, steps=100, cache_policy="lru", cache_size=4,
                                prefetch="oracle")).summary()["cache"]["prefetch_accuracy"]
    assert oracle == {"recall": 1.0, "precision": 1.0}
    learned = simulate(SimConfig(rtx4090, fp8_model, trace, cache_policy="lru", cache_size=4,
                                 prefetch="predictor")).summary()["cache"]["prefetch_accuracy"]
    # better than guessing 2 of 8 experts at random (0.25), short of perfect
    assert 0.25 < learned["recall"] < 1.0


def test_gpu_memory_budget_sets_cache_size(fp8_model, rtx4090):
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 10)
    s = simulate(SimConfig(rtx4090, fp8_model, trace, gpu_memory_bytes=20 * 2**30)).summary()
    per_layer = int(20 * 2**30 // (fp8_model.expert_bytes() * fp8_model.num_moe_layers))
    assert s["cache"]["policy"] == "lru" and s["cache"]["capacity_experts"] == [per_layer]
    assert s["per_device"][0]["peak_memory_bytes"] >= per_layer * 32 * fp8_model.expert_bytes()


def test_fetches_recorded_on_pcie_link(fp8_model, rtx4090):
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8_model).rows(0, 20)
    r = simulate(SimConfig(rtx4090, fp8_model, trace, cache_policy="lru", cache_size=2))
    links = {(x["src"], x["dst"]): x["bytes"] for x in r.summary()["per_link"]}
    assert links[("n0.cpu0", "n0.gpu0")] == pytest.approx(float(np.sum(r.rec.fetch_bytes)))


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
