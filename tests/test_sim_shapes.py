"""Shape checks a user would do: batch scaling, EP across nodes, overlap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from moesim.planners.base import PlanRequest
from moesim.planners.contiguous import plan_contiguous
from moesim.sim import SimConfig, simulate
from moesim.specs import load_cluster, load_model
from moesim.traces import RoutingTrace


def test_tokens_per_s_rises_with_batch():
    model, cluster = load_model("mixtral-8x7b"), load_cluster("h100x8")
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=model)
    tps = [simulate(SimConfig(cluster, model, trace, batch_size=b, steps=4)).summary()["tokens_per_s"]
           for b in (1, 4, 16, 64, 256, 1024)]
    assert all(b >= a for a, b in itertools.pairwise(tps))
    assert tps[2] > 4 * tps[0]  # weight-bound at small batch: more tokens ride the same weight reads
    # and it flattens once compute-bound: the last step gains less than the first
    assert tps[5] / tps[4] < tps[1] / tps[0]


def test_ep_across_nodes_slower_than_inside_one():
    model, cluster = load_model("deepseek-v2-lite"), load_cluster("h100x8x4", nodes=2)
    trace = RoutingTrace.load("deepseek-v2-lite-synth", model=model).rows(0, 1024)
    load = np.zeros((1, model.num_moe_layers, model.num_experts))
    inside = tuple(f"n0.gpu{i}" for i in range(8))
    across = tuple(f"n0.gpu{i}" for i in range(4)) + tuple(f"n1.gpu{i}" for i in range(4))
    runs = {}
    for name, devices in (("inside", inside), ("across", across)):
        plan = plan_contiguous(PlanRequest(model, cluster, devices, 8, load))
        runs[name] = simulate(SimConfig(cluster, model, trace, plan=plan, batch_size=256)).summary()
    assert runs["across"]["simulated_seconds"] > runs["inside"]["simulated_seconds"]
    assert runs["across"]["time_breakdown_s"]["dispatch"] > 2 * runs["inside"]["time_breakdown_s"]["dispatch"]
    assert any("nic" in x["src"] or "nic" in x["dst"] for x in runs["across"]["per_link"])


@pytest.mark.parametrize("overlap", ["layer", "chunked"])
def test_overlap_hides_communication(overlap):
    """With large batches across two nodes the all-to-alls are long enough for micro-batches to hide
    them (at small batches each micro-batch re-reads the expert weights, and overlap can lose; so
    can the low-latency kernels' fixed cost per call, paid once per micro-batch: flat here)."""
    model, cluster = load_model("deepseek-v2-lite"), load_cluster("h100x8x4", nodes=2)
    trace = RoutingTrace.load("deepseek-v2-lite-synth", model=model).rows(0, 8192)
    base = simulate(SimConfig(cluster, model, trace, batch_size=4096, a2a="flat")).summary()
    over = simulate(SimConfig(cluster, model, trace, batch_size=4096, overlap=overlap, a2a="flat")).summary()
    assert over["simulated_seconds"] < base["simulated_seconds"]
    moe_part = sum(base["time_breakdown_s"][k] for k in ("dispatch", "experts", "combine"))
    assert over["time_breakdown_s"]["experts"] < moe_part


def test_combine_shortcut_matches_evaluated_combine():
    """On mirrored topologies the combine (transposed bytes) takes exactly the dispatch's time."""
    from moesim.cost import CostModel
    from moesim.sim.a2atimes import mirrored_routes

    model, cluster = load_model("deepseek-v2-lite"), load_cluster("h100x8x4", nodes=2)
    cost = CostModel(cluster, model)
    devices = tuple(d.id for d in cluster.gpus)
    assert mirrored_routes(cost, devices)
    rng = np.random.default_rng(0)
    sparse = rng.random((20, 16, 16)) < 0.3
    b = rng.integers(0, 50, size=(20, 16, 16)) * model.activation_bytes_per_token * sparse
    forward = cost.all_to_all_s(devices, b)
    assert np.allclose(forward, cost.all_to_all_s(devices, b.transpose(0, 2, 1)), rtol=1e-12, atol=0)


@pytest.mark.parametrize("mode,message_s", [("flat", 0.0), ("low-latency", 0.0), ("low-latency", 1e-7)])
def test_combine_from_dispatch_counts_equals_transposed_counts(mode, message_s):
    """Over mirrored routes the combine of integer node-level counts is timed on the dispatch's own
    [G, N] / [N, G] arrays (no transposed copies) and gives exactly the floats of the transposed
    counts, also when the dispatch (FP8) and the combine (BF16) weigh differently per copy."""
    from dataclasses import replace

    from moesim.cost import CostModel
    from moesim.cost.a2a import AllToAllSpec
    from moesim.sim.a2atimes import AllToAllTimer

    model, cluster = load_model("deepseek-v3"), load_cluster("h100x8x4", nodes=4)
    cost = CostModel(cluster, model)
    devices = tuple(d.id for d in cluster.gpus)
    spec = replace(AllToAllSpec.for_model(model, mode), message_s=message_s)  # per copy of the busiest GPU
    assert spec.dispatch_bytes != spec.combine_bytes
    timer = AllToAllTimer(cost, devices, spec)
    assert timer.routes_mirrored and not timer.mirrored
    node_of, _ = cost.forwarding(devices)
    G, N = len(devices), int(node_of.max()) + 1
    onehot = np.eye(N, dtype=np.int64)[node_of]  # [G, N]
    rng = np.random.default_rng(3)
    pairs = rng.integers(0, 40, size=(3, 5, G, G)) * (rng.random((3, 5, G, G)) < 0.2)
    pairs[0, 0] = 0  # a call that sends nothing
    pairs[0, 1] = 0
    pairs[0, 1, 0, 1] = 7  # one copy inside a node
    pairs[..., np.arange(G), np.arange(G)] = 0
    rows = pairs @ onehot  # [S, L, G, N]: copies from each GPU to each node
    cols = np.swapaxes(np.swapaxes(pairs, 2, 3) @ onehot, 2, 3)  # [S, L, N, G]: into each GPU
    rows_t, cols_t = cols.transpose(0, 1, 3, 2), rows.transpose(0, 1, 3, 2)  # the combine's counts
    got = timer.combine_nodes(rows, cols)
    assert np.array_equal(got, timer.nodes(rows_t, cols_t, spec.combine_bytes))
    assert np.allclose(got, timer.pairs(pairs.transpose(0, 1, 3, 2), spec.combine_bytes), rtol=1e-12, atol=0)
    # micro-batch shares (float bytes) keep the transposed layout: still the same call times
    chunked = timer.nodes(rows_t, cols_t, spec.combine_bytes, 4)
    assert np.array_equal(timer.combine_nodes(rows, cols, 4), chunked)
