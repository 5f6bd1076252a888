"""The heap-based LPT packings equal the numpy loops they replaced (kept here as references)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.planners.base import duplicate_slots, lpt_pack
from moesim.planners.placement_search import cost_lpt


def lpt_pack_reference(items, sizes, num_devices, slots, *, forbid_duplicates=True):
    order = np.lexsort((items, -np.asarray(sizes, dtype=np.float64)))
    load = np.zeros(num_devices)
    fill = np.zeros(num_devices, dtype=np.int64)
    out = np.full((num_devices, slots), -1, dtype=np.int64)
    held = np.zeros((num_devices, int(np.max(items, initial=0)) + 1), dtype=bool)
    for i in order:
        e = int(items[i])
        ok = fill < slots
        if forbid_duplicates and (ok & ~held[:, e]).any():
            ok &= ~held[:, e]
        cand = np.flatnonzero(ok)
        g = int(cand[np.argmin(load[cand])])
        out[g, fill[g]] = e
        fill[g] += 1
        load[g] += sizes[i]
        held[g, e] = True
    return out


def cost_lpt_reference(counts, tau, node_of, slots):
    G = node_of.size
    E = counts.size
    per = tau.mean(axis=0)[np.arange(E), np.maximum(counts, 1) - 1]
    items = np.repeat(np.arange(E), counts)
    order = np.argsort(-per[items].min(axis=1), kind="stable")
    busy = np.zeros(G)
    fill = np.zeros(G, dtype=np.int64)
    held = np.zeros((G, E), dtype=bool)
    out = np.full((G, slots), -1, dtype=np.int64)
    for i in order:
        e = items[i]
        ok = (fill < slots) & ~held[:, e]
        if not ok.any():
            ok = fill < slots
        cand = np.flatnonzero(ok)
        g = int(cand[np.argmin(busy[cand] + per[e, node_of[cand]])])
        out[g, fill[g]] = e
        fill[g] += 1
        busy[g] += per[e, node_of[g]]
        held[g, e] = True
    return out


def _counts(rng, E, G, S):
    counts = np.ones(E, dtype=np.int64)
    for _ in range(G * S - E):
        e = rng.integers(E)
        if counts[e] < G:
            counts[e] += 1
    return counts


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), G=st.integers(1, 9), S=st.integers(1, 5), ties=st.booleans(),
       forbid=st.booleans())
def test_lpt_pack_matches_reference(seed, G, S, ties, forbid):
    rng = np.random.default_rng(seed)
    E = max(1, G * S - rng.integers(0, G * S))
    counts = _counts(rng, E, G, S)
    items = np.repeat(np.arange(E), counts)
    sizes = rng.integers(1, 4, items.size).astype(float) if ties else rng.random(items.size)
    got = lpt_pack(items, sizes, G, S, forbid_duplicates=forbid)
    assert got.tolist() == lpt_pack_reference(items, sizes, G, S, forbid_duplicates=forbid).tolist()


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), nodes=st.integers(1, 4), per_node=st.integers(1, 4), S=st.integers(1, 4),
       ties=st.booleans())
def test_cost_lpt_matches_reference(seed, nodes, per_node, S, ties):
    rng = np.random.default_rng(seed)
    G = nodes * per_node
    node_of = np.repeat(np.arange(nodes), per_node)
    E = max(1, G * S - rng.integers(0, G * S))
    counts = _counts(rng, E, G, S)
    shape = (2, E, G, nodes)
    tau = rng.integers(1, 4, shape) * 0.25 if ties else rng.random(shape)
    got = cost_lpt(counts, tau, node_of, S)
    assert got.tolist() == cost_lpt_reference(counts, tau, node_of, S).tolist()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_duplicate_slots_counts_second_copies(seed):
    rng = np.random.default_rng(seed)
    p = rng.integers(-1, 5, (3, 4, 5))
    want = sum(int(r[r >= 0].size - np.unique(r[r >= 0]).size) for r in p.reshape(-1, 5))
    assert duplicate_slots(p) == want


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), W=st.integers(1, 3), G=st.integers(2, 7), objective=st.sampled_from(
    ["worst", "mean"]), ties=st.booleans())
def test_swap_values_equal_aggregate_of_each_swapped_matrix(seed, W, G, objective, ties):
    """The vectorised swap scores equal the per-candidate loop they replaced."""
    from moesim.planners.placement_search import _swap_values, aggregate

    rng = np.random.default_rng(seed)
    times = rng.integers(0, 4, (W, G)).astype(float) if ties else rng.random((W, G))
    a = int(rng.integers(G))
    bs = np.array([b for b in range(G) if b != a] * 2)
    new_a = rng.random((W, bs.size))
    new_b = rng.integers(0, 4, (W, bs.size)).astype(float) if ties else rng.random((W, bs.size))
    want = []
    for i, b in enumerate(bs):
        m = times.copy()
        m[:, a], m[:, b] = new_a[:, i], new_b[:, i]
        want.append(aggregate(m, objective))
    assert _swap_values(times, a, bs, new_a, new_b, objective).tolist() == want
