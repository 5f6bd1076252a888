"""The fast paths of the simulator's hot loop equal the general methods they replace.

Link loads from set products (moesim.cost.linkloads) against a bincount over every (pair, hop)
entry, the latency term against a max over pairs, and the one-replica dispatch against the
general (replica-aware) path, on random inputs over several built-in clusters.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.cost.collectives import CollectiveCosts
from moesim.plans.plan import Plan
from moesim.sim.dispatch import ReplicaTable, _dispatch_single, dispatch
from moesim.specs import load_cluster

CLUSTERS = [("h100x8", None), ("h100x8x4", 2), ("h100x8x4", 8), ("a100x8", None), ("rtx3090-desktop", None)]


def _matrices(rng: np.random.Generator, s: int, g: int) -> np.ndarray:
    """Random batches with sparse, dense, integer-valued and fractional entries, some all-zero."""
    b = rng.random((s, g, g)) * 1e6
    b[rng.random((s, g, g)) < 0.6] = 0.0
    b[: s // 3] = np.round(b[: s // 3])
    b[-1] = 0.0
    if s > 2:
        b[1] = 0.0
        b[1, 0, g - 1] = 3.0  # a single pair
    return b


def link_loads_general(routes, bytes_matrix: np.ndarray) -> np.ndarray:
    """What ``routes.link_loads`` must give (non-hierarchical): a ``bincount`` over every (pair, hop)
    entry, diagonal ignored, [S, L]."""
    g = len(routes.device_ids)
    flat = np.asarray(bytes_matrix, dtype=float).reshape(-1, g, g).copy()
    flat[:, np.arange(g), np.arange(g)] = 0.0
    flat = flat.reshape(-1, g * g)
    s = flat.shape[0]
    offsets = (np.arange(s) * routes.num_links)[:, None]
    return np.bincount((routes.link_of_hop[None, :] + offsets).ravel(),
                       weights=flat[:, routes.pair_of_hop].ravel(),
                       minlength=s * routes.num_links).reshape(s, routes.num_links)


@pytest.mark.parametrize(("name", "nodes"), CLUSTERS)
def test_link_loads_and_latency_match_general_method(name: str, nodes: int | None) -> None:
    cluster = load_cluster(name, nodes=nodes)
    cc = CollectiveCosts(cluster)
    devices = tuple(d.id for d in cluster.gpus)
    if len(devices) < 2:  # one GPU: exchange with the host instead (GPU <-> CPU over PCIe)
        devices = tuple(d.id for d in cluster.devices)
    g = len(devices)
    routes = cc.routes(devices)
    rng = np.random.default_rng(g)
    b = _matrices(rng, 7, g)
    fast = routes.link_loads(b)
    slow = link_loads_general(routes, b)
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=0.0)
    assert fast.shape == (7, routes.num_links)
    loads, latency = routes.loads_and_latency(b)
    np.testing.assert_allclose(loads, slow, rtol=1e-12, atol=0.0)
    assert np.array_equal(latency, routes.latency_general_s(b))
    assert latency[-1] == 0.0 and latency[1] == routes.pair_latency_s[g - 1]
    # a non-zero diagonal is ignored by the loads and never raises the latency
    with_diag = b.copy()
    with_diag[:, np.arange(g), np.arange(g)] = 5.0
    np.testing.assert_allclose(routes.link_loads(with_diag), slow, rtol=1e-12, atol=0.0)
    assert np.array_equal(routes.latency_s(with_diag), routes.latency_general_s(with_diag))
    # one matrix at a time gives the same as the batch
    for k in range(len(b)):
        assert np.allclose(routes.link_loads(b[k]), fast[k], rtol=1e-12, atol=0.0)
        assert cc.all_to_all_s(devices, b[k]) == pytest.approx(cc.all_to_all_s(devices, b)[k], rel=1e-12)


def test_negative_bytes_take_the_general_latency() -> None:
    cluster = load_cluster("h100x8x4", nodes=2)
    routes = CollectiveCosts(cluster).routes(tuple(d.id for d in cluster.gpus))
    b = np.zeros((2, 16, 16))
    b[0, 0, 9] = 4.0
    b[0, 0, 1] = -4.0  # sums to zero over the node sets: the shortcut alone would miss the pair
    assert np.array_equal(routes.loads_and_latency(b)[1], routes.latency_general_s(b))
    assert routes.latency_general_s(b)[0] > 0.0


def test_a_link_that_is_not_a_rectangle_falls_back_to_bincount() -> None:
    from moesim.cost.linkloads import LinkAggregation

    g = 3
    # link 0 carries (0 -> 1) and (1 -> 2): neither one source nor one destination set
    pairs = np.array([0 * g + 1, 1 * g + 2, 2 * g + 0], dtype=np.int64)
    links = np.array([0, 0, 1], dtype=np.int64)
    agg = LinkAggregation.build(pairs, links, g, 2, np.zeros(g * g))
    assert agg.rest_link.tolist() == [0, 0]
    b = np.arange(9, dtype=float).reshape(1, 3, 3)
    b[0, np.arange(3), np.arange(3)] = 0.0
    assert agg.loads(b).tolist() == [[b[0, 0, 1] + b[0, 1, 2], b[0, 2, 0]]]


@pytest.mark.parametrize("missing", [False, True])
def test_single_replica_dispatch_matches_general_path(missing: bool) -> None:
    rng = np.random.default_rng(3)
    L, G, J, E, S, B, K = 3, 4, 3, 12, 5, 16, 2
    placement = np.stack([rng.permutation(E).reshape(G, J) for _ in range(L)])
    plan = Plan(planner="test", model="test", devices=tuple(f"n0.gpu{i}" for i in range(G)),
                moe_layers=tuple(range(L)), num_experts=E, placement=placement)
    table = ReplicaTable.of(plan)
    assert not table.has_replicas
    ids = rng.integers(0, E, size=(S, B, L, K)).astype(np.int16)
    if missing:
        ids[rng.random(ids.shape) < 0.2] = -1
    owner = rng.integers(0, G, size=(S, B))
    fast = _dispatch_single(ids, owner, table)
    via_public = dispatch(ids, owner, table)
    # the general path: every expert counted per (step, layer, device, slot) by hand
    slot = np.zeros((S, L, G, J), dtype=np.int64)
    pair = np.zeros((S, L, G, G), dtype=np.int64)
    where = {(layer, int(e)): (g, j) for layer in range(L) for g in range(G) for j, e in
             enumerate(placement[layer, g])}
    for s, b, layer, k in np.ndindex(ids.shape):
        e = int(ids[s, b, layer, k])
        if e >= 0:
            g, j = where[(layer, e)]
            slot[s, layer, g, j] += 1
            pair[s, layer, owner[s, b], g] += 1
    for d in (fast, via_public):
        assert np.array_equal(d.slot_tokens, slot)
        assert np.array_equal(d.pair_tokens, pair)


def test_unique_rows_inverts_and_matches_numpy() -> None:
    from moesim.sim.expert_memo import unique_rows

    rng = np.random.default_rng(5)
    for top, j in ((3, 4), (40, 4), (2**20, 4)):  # the last does not pack into 62 bits
        rows = np.sort(rng.integers(0, top + 1, size=(500, j)), axis=1)
        uniq, inverse = unique_rows(rows)
        assert np.array_equal(uniq[inverse], rows)
        assert len(uniq) == len(np.unique(rows, axis=0))
    # a micro-batch's share of a step (tokens / micro-batches) is fractional: kept exact, not truncated
    halves = np.array([[0.5, 1.5], [0.5, 1.5], [0.0, 1.0], [0.5, 1.0]])
    uniq, inverse = unique_rows(halves)
    assert np.array_equal(uniq[inverse], halves) and len(uniq) == 3


def test_packed_expert_memo_matches_the_cost_model() -> None:
    from moesim.cost import CostModel
    from moesim.sim.stepcost import StepCoster
    from moesim.specs import load_model

    cluster, model = load_cluster("h100x8"), load_model("mixtral-8x7b")
    cost = CostModel(cluster, model)
    devices = tuple(d.id for d in cluster.gpus)
    coster = StepCoster(cost, devices, phase="decode")
    rng = np.random.default_rng(2)
    for _ in range(3):  # later calls mix remembered and new rows
        rows = np.sort(rng.integers(0, 9, size=(60, 2)), axis=1)
        got = coster._expert_rows(0, rows)
        want = cost.expert_compute_batch_s([devices[0]] * len(rows), rows)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0.0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 3000), bits=st.sampled_from([1, 5, 16, 17, 31, 40]))
def test_group_ranks_match_the_argsort_reference(seed: int, n: int, bits: int) -> None:
    """The O(n) running counter per key (radix passes) equals the int64 stable-argsort ranks it replaced."""
    from moesim.sim.dispatch import group_ranks

    rng = np.random.default_rng(seed)
    key_max = (1 << bits) - 1
    # few distinct values per 16-bit digit, so distinct keys share digits (each radix pass matters)
    key = np.zeros(n, dtype=np.int64)
    for shift in range(0, bits, 16):
        digit = rng.integers(0, 3, n) * (((1 << min(16, bits - shift)) - 1) // 2)
        key |= digit << shift
    key = np.minimum(key, key_max)
    order = np.argsort(key, kind="stable")
    sorted_keys = key[order]
    start = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
    idx = np.arange(n)
    want = np.empty_like(idx)
    want[order] = idx - np.maximum.accumulate(np.where(start, idx, 0))
    assert group_ranks(key, key_max).tolist() == want.tolist()


def _replica_table_reference(placement: np.ndarray, E: int) -> tuple[np.ndarray, np.ndarray]:
    """Device and slot of each replica by the definition: walk devices, then slots, in order."""
    L, G, S = placement.shape
    R = max(1, max(int((placement[layer] == e).sum()) for layer in range(L) for e in range(E)))
    device, slot = np.full((L, E + 1, R), G), np.zeros((L, E + 1, R), dtype=np.int64)
    for layer in range(L):
        seen = np.zeros(E, dtype=np.int64)
        for g in range(G):
            for s in range(S):
                e = int(placement[layer, g, s])
                if e >= 0:
                    device[layer, e, seen[e]], slot[layer, e, seen[e]] = g, s
                    seen[e] += 1
    return device, slot


@pytest.mark.parametrize("seed", range(4))
def test_replica_table_ranks_copies_in_device_order(seed: int) -> None:
    """The vectorised table equals the walk over devices and slots, with replicas and empty slots."""
    rng = np.random.default_rng(seed)
    L, G, S, E = 3, 5, 4, 9
    placement = np.full((L, G, S), -1, dtype=np.int64)
    for layer in range(L):
        experts = np.r_[np.arange(E), rng.integers(0, E, G * S - E - 3)]  # every expert, some twice
        flat = np.r_[rng.permutation(experts), [-1, -1, -1]]
        placement[layer] = rng.permutation(flat).reshape(G, S)
    plan = Plan(planner="test", model="test", devices=tuple(f"n0.gpu{i}" for i in range(G)),
                moe_layers=tuple(range(L)), num_experts=E, placement=placement)
    table = ReplicaTable.of(plan)
    device, slot = _replica_table_reference(placement, E)
    assert np.array_equal(table.device, device) and np.array_equal(table.slot, slot)


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_decode_contexts_equal_the_rounded_mean_position(batch: int) -> None:
    """Decode steps' contexts from one reduceat equal round(mean position + 1) per step, ties too."""
    from moesim.sim.workload import build_workload
    from moesim.traces import RoutingTrace

    rng = np.random.default_rng(batch)
    n = 200
    pos = rng.integers(0, 5_000_000, n)
    pos[:2] = (0, 1)  # a step of mean 0.5: round half to even
    trace = RoutingTrace.build(np.zeros((n, 2, 2), dtype=np.int16), num_experts=4, pos=pos)
    wl = build_workload(trace, phase="decode", batch_size=batch, steps=None)
    expect = [max(1, round(float(pos[r].mean()) + 1)) for r in wl.steps]
    assert wl.context_tokens.tolist() == expect


@pytest.mark.parametrize("hw", ["h100x8", "h100x8x4", "mi300x8", "l4-server"])
def test_mirrored_routes_from_hop_arrays_equal_the_pair_walk(hw: str) -> None:
    """The vectorised check on the routes' hop arrays says what comparing every pair's path does."""
    from moesim.sim.a2atimes import mirrored_routes

    cost = CollectiveCosts(load_cluster(hw, nodes=2) if hw == "h100x8x4" else load_cluster(hw))
    devices = tuple(d.id for d in cost.cluster.devices if d.kind == "gpu")

    class PairWalk:  # the same cost without the vectorised method
        directed_links, path_links = cost.directed_links, cost.path_links

    assert mirrored_routes(cost, devices) == mirrored_routes(PairWalk(), devices)
    assert mirrored_routes(cost, devices[::-1]) == mirrored_routes(PairWalk(), devices[::-1])


@pytest.mark.parametrize(("back", "expect"), [([3, 1], True), ([1, 3], False), ([5, 1], False), ([3], False)])
def test_routes_mirrored_compares_hops_reversed(back: list[int], expect: bool) -> None:
    """Routes 0 -> 1 over directed links [0, 2] and 1 -> 0 over ``back``: mirrored only when the way
    back is the way there reversed, link for link (directed link d reversed is d ^ 1)."""
    from moesim.cost.collectives import AllToAllRoutes

    cost = CollectiveCosts(load_cluster("h100x8"))
    pairs = np.array([1, 1] + [2] * len(back), dtype=np.int64)
    links = np.array([0, 2, *back], dtype=np.int64)
    routes = AllToAllRoutes(device_ids=("a", "b"), pair_of_hop=pairs, link_of_hop=links,
                            pair_latency_s=np.zeros(4), num_links=6)
    cost._routes[("a", "b")] = routes
    assert cost.routes_mirrored(("a", "b")) is expect
