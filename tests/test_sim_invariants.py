"""The simulator's numbered invariants (docs/invariants.md), each with the test named there."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.errors import UserError
from moesim.sim import SimConfig, default_plan, simulate
from moesim.specs import load_cluster, load_model
from moesim.traces import RoutingTrace


@pytest.fixture(scope="module")
def mixtral():
    return load_model("mixtral-8x7b")


@pytest.fixture(scope="module")
def mixtral_trace(mixtral):
    return RoutingTrace.load("mixtral-8x7b-synth", model=mixtral).rows(0, 256)


@pytest.fixture(scope="module")
def h100x8():
    return load_cluster("h100x8")


def test_inv1_token_conservation(h100x8, mixtral, mixtral_trace):
    """INV-1: per (step, MoE layer), pairs computed over all devices = valid ids of the step's tokens."""
    r = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=16))
    got = r.rec.tokens.sum(axis=2)[:, list(mixtral.moe_layers)]
    ids = np.asarray(mixtral_trace.expert_ids)
    want = np.stack([(ids[s * 16:(s + 1) * 16] >= 0).sum(axis=(0, 2)) for s in range(16)])
    assert np.array_equal(got, want)
    assert r.summary()["tokens"] == 256


def test_inv1_token_conservation_offloaded(mixtral_trace):
    """INV-1 with offloading and CPU execution of misses: GPU + CPU pairs = valid ids."""
    model = load_model("mixtral-8x7b")
    r = simulate(SimConfig(load_cluster("rtx4090-workstation"), model, mixtral_trace.rows(0, 40),
                           batch_size=4, cache_policy="static", cache_size=1, miss="cpu"))
    ids = np.asarray(mixtral_trace.expert_ids[:40])
    assert r.rec.tokens.sum() == int((ids >= 0).sum())
    assert "n0.cpu0" in r.rec.devices


def test_inv2_memory_refused(mixtral):
    """INV-2: a plan that does not fit is refused, naming device, need and capacity."""
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=mixtral).rows(0, 8)
    with pytest.raises(UserError) as err:
        simulate(SimConfig(load_cluster("rtx4090-workstation"), mixtral, trace, cache_policy="lru",
                           cache_size=4))
    msg = str(err.value)
    assert "n0.gpu0" in msg and re.search(r"needs 45\.\d\d GB", msg) and "24.00 GB" in msg


def test_inv2_resident_bytes_within_capacity(h100x8, mixtral, mixtral_trace):
    """INV-2: every device's reported peak memory is at most its capacity."""
    s = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=64)).summary()
    for d in s["per_device"]:
        assert 0 < d["peak_memory_bytes"] <= h100x8.device(d["id"]).spec.memory_bytes


def test_inv3_time_never_decreases(h100x8, mixtral, mixtral_trace):
    """INV-3: step and layer start times are non-decreasing; every step ends after it starts."""
    for overlap in ("none", "layer", "chunked"):
        r = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=32, overlap=overlap))
        starts = r.rec.layer_start_s.ravel()
        assert np.all(np.diff(starts) >= 0)
        assert np.all(r.rec.step_end_s >= r.rec.step_start_s)
        assert np.all(r.rec.step_start_s[1:] >= r.rec.step_end_s[:-1])


def test_inv3_no_expert_before_its_weights(tmp_path):
    """INV-3: with offloading, no GPU expert call starts before its experts' weights arrived."""
    spec = tmp_path / "fp8.yaml"
    spec.write_text("extends: mixtral-8x7b\nname: mixtral-8x7b-fp8\nweight_dtype: fp8\n")
    model = load_model(str(spec))
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=model).rows(0, 60)
    for miss, prefetch in (("fetch", "oracle"), ("lowbit", "predictor"), ("cpu", "none")):
        r = simulate(SimConfig(load_cluster("rtx4090-workstation"), model, trace, batch_size=1,
                               cache_policy="lru", cache_size=3, miss=miss, prefetch=prefetch))
        assert r.causality
        assert all(start >= arrived for start, arrived in r.causality)


def _canonical(summary: dict) -> str:
    summary = dict(summary)
    summary.pop("timing")
    return json.dumps(summary, sort_keys=True)


def test_inv4_determinism(h100x8, mixtral, mixtral_trace):
    """INV-4: same inputs and seed give a byte-identical summary (wall time excluded)."""
    cfg = SimConfig(h100x8, mixtral, mixtral_trace, batch_size=8, replica_split="random", seed=3,
                    plan=default_plan(mixtral, h100x8))
    assert _canonical(simulate(cfg).summary()) == _canonical(simulate(cfg).summary())
    a = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=8))
    b = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=8))
    assert _canonical(a.summary()) == _canonical(b.summary())
    assert a.frame.equals(b.frame)


def test_inv5_invalid_plan_refused(h100x8, mixtral, mixtral_trace):
    """INV-5: a plan with an expert that has no replica is refused."""
    plan = default_plan(mixtral, h100x8)
    placement = plan.placement.copy()
    placement[0, 0, 0] = 1  # expert 0 gone from layer 0, expert 1 twice (on two devices)
    from dataclasses import replace

    with pytest.raises(UserError, match="expert 0 has no replica"):
        simulate(SimConfig(h100x8, mixtral, mixtral_trace, plan=replace(plan, placement=placement)))


def test_inv6_one_device_equals_sum_of_op_times():
    """INV-6: one GPU, no contention -> simulated time = the sum of the cost model's op times."""
    model = load_model("deepseek-v2-lite")
    cluster = load_cluster("h100x8")
    trace = RoutingTrace.load("deepseek-v2-lite-synth", model=model).rows(0, 24)
    from moesim.planners.base import PlanRequest
    from moesim.planners.contiguous import plan_contiguous

    plan = plan_contiguous(PlanRequest(model, cluster, ("n0.gpu0",), model.num_experts,
                                       np.zeros((1, model.num_moe_layers, model.num_experts))))
    cost = CostModel(cluster, model)
    r = simulate(SimConfig(cluster, model, trace, plan=plan, batch_size=8), cost)
    want = 0.0
    gpu = "n0.gpu0"
    ids = np.asarray(trace.expert_ids)
    for s in range(3):
        rows = ids[s * 8:(s + 1) * 8]
        context = max(1, round(float(np.asarray(trace.pos[s * 8:(s + 1) * 8]).mean()) + 1))
        for layer in range(model.num_layers):
            want += cost.attention_s(gpu, 8, context, "decode")
            if layer not in model.moe_layers:
                want += cost.dense_ffn_s(gpu, 8)
                continue
            col = model.moe_layers.index(layer)
            tokens = np.bincount(rows[:, col][rows[:, col] >= 0], minlength=model.num_experts)
            want += cost.router_s(gpu, 8) + cost.permute_combine_s(gpu, 8) + cost.shared_expert_s(gpu, 8)
            want += cost.expert_compute_s(gpu, tokens)
    assert r.simulated_seconds == pytest.approx(want, rel=1e-9)


def test_inv6_infinite_bandwidth_costs_only_latency(h100x8, mixtral, mixtral_trace):
    """INV-6: with infinite link bandwidth every all-to-all takes exactly a path latency."""
    cost = CostModel(h100x8, mixtral).with_infinite_bandwidth()
    r = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=64), cost)
    gpus = [d.id for d in h100x8.gpus]
    latencies = {0.0} | {h100x8.path_latency(a, b) for a in gpus for b in gpus if a != b}
    comm = r.rec.phase_s[:, list(mixtral.moe_layers)][:, :, [1, 3]].ravel()
    assert all(min(abs(c - la) for la in latencies) < 1e-15 for c in comm)
    finite = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=64))
    assert finite.summary()["time_breakdown_s"]["dispatch"] > r.summary()["time_breakdown_s"]["dispatch"]
