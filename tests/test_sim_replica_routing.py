"""Locality-aware dispatch (``SimConfig.dispatch == "local"``): own GPU, else own node, else all."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import UserError
from moesim.plans.plan import Plan
from moesim.sim.dispatch import ReplicaTable, dispatch, owners
from moesim.sim.replica_routing import LocalRouting, local_dispatch

# 4 GPUs on 2 nodes (0, 1 | 2, 3), 3 experts, 2 slots each
NODES = np.array([0, 0, 1, 1])


def _plan(placement: np.ndarray, experts: int) -> Plan:
    L, G, _ = placement.shape
    return Plan(planner="test", model="m", devices=tuple(f"g{i}" for i in range(G)),
                moe_layers=tuple(range(L)), num_experts=experts, placement=placement.astype(np.int32))


def _route(placement: list[list[int]], ids: np.ndarray, rng=None):
    table = ReplicaTable.of(_plan(np.array([placement]), 3))
    routing = LocalRouting.of(table, NODES)
    B = ids.shape[0]
    return local_dispatch(ids.reshape(1, B, 1, -1), owners(B, 4)[None], table, routing, rng)


def test_own_gpu_replica_keeps_the_token():
    # expert 0 on every GPU: every pair stays on its source GPU
    d = _route([[0, 1], [0, 2], [0, 1], [0, 2]], np.zeros((8, 1), dtype=np.int16))
    pairs = d.pair_tokens[0, 0]
    assert np.array_equal(pairs, np.diag([2, 2, 2, 2]))


def test_node_replica_saves_the_cross_node_hop():
    # expert 1 on GPU 0 (node 0) and GPU 2 (node 1): GPU 1 -> 0 and GPU 3 -> 2, never across nodes
    d = _route([[0, 1], [0, 2], [1, 2], [0, 2]], np.ones((8, 1), dtype=np.int16))
    pairs = d.pair_tokens[0, 0]
    assert pairs[1, 0] == 2 and pairs[3, 2] == 2
    assert pairs[NODES[:, None] != NODES[None, :]].sum() == 0
    # the even dispatch sends half of GPU 1's and GPU 3's pairs across nodes
    table = ReplicaTable.of(_plan(np.array([[[0, 1], [0, 2], [1, 2], [0, 2]]]), 3))
    even = dispatch(np.ones((1, 8, 1, 1), dtype=np.int16), owners(8, 4)[None], table).pair_tokens[0, 0]
    assert even[NODES[:, None] != NODES[None, :]].sum() > 0


def test_no_replica_on_the_node_splits_evenly_over_all():
    # expert 1 only on GPUs 0 and 1 (node 0): node 1's 8 pairs split 4 / 4 over them
    ids = np.ones((16, 1), dtype=np.int16)
    d = _route([[0, 1], [1, 2], [0, 2], [0, 2]], ids)
    pairs = d.pair_tokens[0, 0]
    assert pairs[2:, 0].sum() == 4 and pairs[2:, 1].sum() == 4
    assert pairs[0, 0] == 4 and pairs[1, 1] == 4  # own replicas


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 20), random_split=st.booleans())
def test_conserved_and_local(seed, batch, random_split):
    """Pairs are conserved; a pair crosses nodes only when its node holds no replica of the expert."""
    rng = np.random.default_rng(seed)
    placement = [[0, 1], [2, 0], [1, 2], [0, 2]]
    ids = rng.integers(-1, 3, size=(batch, 2)).astype(np.int16)
    d = _route(placement, ids, np.random.default_rng(seed) if random_split else None)
    assert d.slot_tokens.sum() == (ids >= 0).sum() == d.pair_tokens.sum()
    held = np.zeros((2, 3), dtype=bool)  # held[node, expert]
    for g, row in enumerate(placement):
        held[NODES[g], row] = True
    for e in range(3):
        one = _route(placement, np.where(ids == e, ids, -1).astype(np.int16), None)
        cross = one.pair_tokens[0, 0][NODES[:, None] != NODES[None, :]].sum()
        if held[:, e].all():
            assert cross == 0


def test_sim_config_checks_dispatch():
    from moesim.sim.config import SimConfig

    with pytest.raises(UserError, match="even, local"):
        SimConfig(cluster=None, model=None, trace=None, dispatch="nearest").check()  # type: ignore[arg-type]
    assert SimConfig(cluster=None, model=None, trace=None).dispatch == "even"  # type: ignore[arg-type]
