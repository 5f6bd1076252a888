"""The simulator's node-level all-to-all accounting equals the [G, G] pair-matrix path it replaces.

On node-block topologies (every link carries whole (GPU, node) blocks) the engine counts a step's
all-to-all per (device, node); the general path is forced here by clearing ``node_blocks``. Every
recorded array, the link bytes and the timeline's pair matrices are compared on the same inputs.
"""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.planners import PlanRequest, plan
from moesim.sim.config import SimConfig
from moesim.sim.engine import Machine
from moesim.specs import load_cluster, load_model
from moesim.traces import RoutingTrace

ARRAYS = ("busy_s", "phase_s", "bytes_sent", "bytes_received", "tokens", "step_start_s", "step_end_s",
          "layer_start_s")


def _trace(model, rows: int, seed: int) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    E, L, K = model.num_experts, model.num_moe_layers, model.top_k
    hot = rng.dirichlet(np.full(E, 0.3), size=L)
    ids = np.stack([[rng.choice(E, size=K, replace=False, p=hot[layer]) for layer in range(L)]
                    for _ in range(rows)])
    ids[rng.random(ids.shape) < 0.02] = -1
    return RoutingTrace.build(ids.astype(np.int16), num_experts=E, layer_ids=list(model.moe_layers))


def _run(cfg: SimConfig, cost, node_level: bool) -> Machine:
    m = Machine(cfg, cost)
    # the engine picks the node-level form only with numba; set it either way to compare
    m.coster.node_blocks = cost.node_blocks(m.devices) if node_level else None
    assert (m.coster.node_blocks is not None) == node_level
    m.run()
    return m


CASES = [
    ("h100x8", None, {}, {}),
    ("h100x8x4", 2, {"batch_size": 96}, {}),
    ("h100x8x4", 2, {"batch_size": 64, "overlap": "chunked", "chunks": 3}, {"replicas": True}),
    ("h100x8x4", 2, {"batch_size": 64, "dispatch": "local"}, {"replicas": True}),
    ("h100x8x4", 2, {"batch_size": 33, "replica_split": "random"}, {"replicas": True}),
    ("h100x8", None, {"batch_size": 16, "a2a": "hierarchical"}, {}),
    ("h100x8x4", 2, {"batch_size": 96, "a2a": "hierarchical"}, {}),
    ("h100x8x4", 2, {"batch_size": 64, "a2a": "hierarchical", "overlap": "chunked", "chunks": 3},
     {"replicas": True}),
    ("h100x8x4", 2, {"batch_size": 40, "a2a": "hierarchical", "dispatch": "local"}, {"replicas": True}),
    ("h100x8x4", 2, {"batch_size": 48, "a2a": "low-latency", "phase": "prefill"}, {}),
]


def _have_numba() -> bool:
    from moesim.sim import counting

    return counting.available()


@pytest.mark.parametrize("path", ["numpy", pytest.param("compiled", marks=pytest.mark.skipif(
    not _have_numba(), reason="numba not installed (the [fast] extra)"))])
@pytest.mark.parametrize(("hw", "nodes", "cfg_kw", "plan_kw"), CASES)
def test_node_level_equals_pair_matrices(hw, nodes, cfg_kw, plan_kw, path, monkeypatch):
    if path == "numpy":  # the numpy node-level counting and link evaluation, even with numba installed
        from moesim.cost import linkloads
        from moesim.sim import counting

        monkeypatch.setattr(counting, "numba", None)
        monkeypatch.setattr(linkloads, "_node_times", None)
    model = load_model("deepseek-v2-lite")
    cluster = load_cluster(hw, nodes=nodes)
    trace = _trace(model, 900, seed=len(cfg_kw))
    p = None
    if plan_kw.get("replicas"):
        gpus = tuple(d.id for d in cluster.gpus)
        load = trace.load_matrix(1)
        p = plan("greedy", PlanRequest(model, cluster, gpus, -(-model.num_experts // len(gpus)) + 2,
                                       np.asarray(load, dtype=float)))
    cost = CostModel(cluster, model)
    cfg = SimConfig(cluster, model, trace, plan=p, steps=12, timeline_steps=5, **cfg_kw)
    fast, slow = _run(cfg, cost, True), _run(cfg, cost, False)
    close = cfg_kw.get("overlap", "none") != "none"  # micro-batch bytes / n: rounding may differ
    for name in ARRAYS:
        a, b = getattr(fast.rec, name), getattr(slow.rec, name)
        if close:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=0, err_msg=name)
        else:
            assert np.array_equal(a, b), name
    assert np.array_equal(fast.total_pairs, slow.total_pairs)
    assert sorted(fast.keep_pairs) == sorted(slow.keep_pairs) == list(range(5))
    for s in fast.keep_pairs:
        assert np.array_equal(fast.keep_pairs[s], slow.keep_pairs[s])
    assert fast.rec.link_bytes == slow.rec.link_bytes


def test_links_that_are_not_node_blocks_keep_the_pair_path():
    """A PCIe-only box whose GPUs share switches in pairs: some link carries part of a node block."""
    from moesim.cost.linkloads import NodeBlocks

    g = 4
    # link 0 carries 0->1 only (a part of row block (0, node 0) = {0->1, 0->2, 0->3})
    pairs = np.array([0 * g + 1, 0 * g + 2, 0 * g + 3], dtype=np.int64)
    links = np.array([0, 1, 1], dtype=np.int64)
    assert NodeBlocks.build(pairs, links, g, 2, np.zeros(g * g), np.zeros(g, dtype=np.int64)) is None
    links = np.array([0, 0, 0], dtype=np.int64)
    assert NodeBlocks.build(pairs, links, g, 1, np.zeros(g * g), np.zeros(g, dtype=np.int64)) is not None


@pytest.mark.parametrize("hw", ["mi300x8", "l4-server"])
def test_point_to_point_and_switch_pair_topologies_use_the_pair_path(hw):
    """Fully connected xGMI (one link per pair) and PCIe switches shared by GPU pairs are not node
    blocks: the engine keeps the [G, G] pair matrices there."""
    model = load_model("mixtral-8x7b")
    cluster = load_cluster(hw)
    cost = CostModel(cluster, model)
    assert cost.node_blocks(tuple(d.id for d in cluster.gpus)) is None
    m = Machine(SimConfig(cluster, model, _trace(model, 40, 0), steps=3), cost)
    assert m.coster.node_blocks is None
