"""The ILP under locality-aware dispatch: on two nodes it beats EPLB in the simulator (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.planners import PlanRequest, plan
from moesim.planners.placement_ilp import predict_moe_step
from moesim.planners.placement_local import local_layer_times, local_tau
from moesim.planners.placement_tables import ReplicaTables, replica_table


@pytest.fixture(scope="module")
def setup():
    from moesim.specs import load_cluster, load_model
    from moesim.traces import RoutingTrace

    cluster = load_cluster("h100x8x4", nodes=2)
    model = load_model("deepseek-v2-lite")
    trace = RoutingTrace.load("deepseek-v2-lite-synth", model=model)
    half = trace.num_tokens // 2
    train, evaluation = trace.rows(0, half), trace.rows(half, trace.num_tokens)
    gpus = tuple(d.id for d in cluster.gpus)
    return cluster, model, train, evaluation, gpus


def _request(setup, **params):
    cluster, model, train, _, gpus = setup
    return PlanRequest(model=model, cluster=cluster, devices=gpus, slots_per_device=5,
                       load=train.load_matrix(1), trace=train, time_limit_s=8.0, seed=0, params=params)


def _step_s(setup, p, dispatch: str) -> float:
    from moesim.sim.config import SimConfig
    from moesim.sim.engine import simulate

    cluster, model, _, evaluation, _ = setup
    cfg = SimConfig(cluster=cluster, model=model, trace=evaluation, plan=p, batch_size=2048, phase="decode",
                    dispatch=dispatch)
    return float(simulate(cfg).summary()["step_latency_s"]["mean"])


def test_ilp_beats_eplb_with_local_dispatch_on_two_nodes(setup):
    req = _request(setup, dispatch="local")
    ilp = plan("ilp", req)
    assert ilp.params["dispatch"] == "local"
    ilp_s = _step_s(setup, ilp, "local")
    for name in ("eplb", "eplb-hierarchical"):
        other = _step_s(setup, plan(name, req), "local")
        print(name, other, "ilp", ilp_s)
        assert ilp_s < 0.95 * other, (name, ilp_s, other)
    # every expert the ILP replicates has a replica on both nodes (no InfiniBand for its tokens)
    counts = ilp.replica_counts()  # [L, E]
    on_node = np.stack([(ilp.placement[:, n * 8:(n + 1) * 8, :, None] == np.arange(64)).any(axis=(1, 2))
                        for n in range(2)])  # [2, L, E]
    assert (counts > 1).any() and on_node.all(axis=0)[counts > 1].all()


def test_even_dispatch_model_unchanged(setup):
    """Without ``dispatch`` (or with ``even``) the ILP's tables and predictions are the old ones."""
    req_default, req_even = _request(setup), _request(setup, dispatch="even")
    from moesim.planners.placement_ilp import DEFAULTS

    opts = {**DEFAULTS}
    tables = ReplicaTables(req_default, opts)
    assert not tables.local
    origin = np.full((64, 2), 0.5)
    from moesim.planners.placement_tables import _comm_per_token

    expected = replica_table(tables.wstep[:, 0], _comm_per_token(req_default, origin, tables.units),
                             tables.compute, tables.G)
    assert np.array_equal(tables.tau(0, None), expected)
    eplb = plan("eplb", req_default)
    assert predict_moe_step(req_default, eplb.placement) == predict_moe_step(req_even, eplb.placement)
    local, _ = predict_moe_step(req_default, eplb.placement, dispatch="local")
    assert local != predict_moe_step(req_default, eplb.placement)[0]


def test_local_table_matches_exact_times(setup):
    """For spread layouts (k replicas of e on each node) the table equals the exact evaluator."""
    G, N = 16, 2
    node_of = np.repeat(np.arange(N), G // N)
    rng = np.random.default_rng(0)
    w = rng.integers(10, 1000, size=(1, 20)).astype(float)
    compute = lambda t: 3.0 * np.asarray(t, dtype=float) + (np.asarray(t) > 0)  # noqa: E731
    nv, ib = np.array([0.5, 0.5]), np.array([7.0, 7.0])
    # experts 0..15 once on GPU e; expert 16 spread 1+1 (GPUs 0, 8); expert 17 spread 2+2
    placement = np.full((G, 3), -1)
    placement[:, 0] = np.arange(16)
    placement[[0, 8], 1] = 16
    placement[[1, 2, 9, 10], 1] = 17
    times = local_layer_times(placement, w, compute, nv, ib, node_of)
    tau = local_tau(w, compute, nv, ib, node_of)
    table = np.zeros((1, G))
    counts = np.bincount(placement[placement >= 0], minlength=20)
    for g in range(G):
        for e in placement[g][placement[g] >= 0]:
            table[0, g] += tau[0, e, counts[e] - 1, node_of[g]]
    assert np.allclose(times, table)
