"""Dispatch math: token conservation, even replica split, all-to-all pair counts (invariants 1, 5)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.plans.plan import Plan
from moesim.sim.dispatch import ReplicaTable, dispatch, owners
from moesim.sim.workload import decode_steps, key_steps, prefill_steps


def _plan(placement: np.ndarray, experts: int) -> Plan:
    L, G, _ = placement.shape
    return Plan(planner="test", model="m", devices=tuple(f"g{i}" for i in range(G)),
                moe_layers=tuple(range(L)), num_experts=experts, placement=placement.astype(np.int32))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.integers(1, 3), batch=st.integers(1, 12),
       devices=st.integers(1, 4), replicas=st.booleans(), random_split=st.booleans())
def test_tokens_conserved_per_layer(seed, steps, batch, devices, replicas, random_split):
    """INV-1: per (step, layer) pairs computed = pairs dispatched = valid (token, top-k) ids."""
    rng = np.random.default_rng(seed)
    E, L, K = 6, 3, 2
    slots = -(-E // devices) + (1 if replicas else 0)
    slots = min(slots, E)
    placement = np.full((L, devices, slots), -1)
    for layer in range(L):
        order = list(range(E)) + list(rng.permutation(E))  # every expert once, then replicas
        cells = [(g, s) for s in range(slots) for g in range(devices)]
        used: list[set[int]] = [set() for _ in range(devices)]
        i = 0
        for g, s in cells:
            while i < len(order) and order[i] in used[g]:
                i += 1
            if i >= len(order):
                break
            placement[layer, g, s] = order[i]
            used[g].add(order[i])
            i += 1
    plan = _plan(placement, E)
    assert (plan.replica_counts() >= 1).all()
    ids = rng.integers(-1, E, size=(steps, batch, L, K))
    owner = np.stack([owners(batch, devices)] * steps)
    d = dispatch(ids, owner, ReplicaTable.of(plan), rng if random_split else None)
    valid = (ids >= 0).sum(axis=(1, 3))  # [S, L]
    assert np.array_equal(d.slot_tokens.sum(axis=(2, 3)), valid)
    assert np.array_equal(d.pair_tokens.sum(axis=(2, 3)), valid)
    # what leaves a device is the valid ids of the tokens it owns
    sent = np.stack([np.stack([((ids[s, :, layer] >= 0).sum(axis=1) * (owner[s] == g)).sum()
                               for g in range(devices)]) for s in range(steps) for layer in range(L)])
    assert np.array_equal(d.pair_tokens.sum(axis=3).reshape(steps * L, devices), sent)
    # what arrives at a device is what it computes
    assert np.array_equal(d.pair_tokens.sum(axis=2), d.device_tokens)
    # per expert: the tokens its replicas compute = the tokens that chose it
    for s in range(steps):
        for layer in range(L):
            want = np.bincount(ids[s, :, layer][ids[s, :, layer] >= 0], minlength=E)
            got = np.zeros(E, dtype=np.int64)
            held = placement[layer] >= 0
            np.add.at(got, placement[layer][held], d.slot_tokens[s, layer][held])
            assert np.array_equal(got, want)


def test_even_split_over_replicas():
    """A replicated expert's pairs split over its replicas evenly (difference at most 1)."""
    placement = np.array([[[0, 1], [0, 2], [0, 3]]])  # expert 0 on all three devices
    plan = _plan(placement, 4)
    ids = np.zeros((1, 10, 1, 1), dtype=np.int64)  # ten tokens, all to expert 0
    d = dispatch(ids, owners(10, 3)[None], ReplicaTable.of(plan))
    per_device = d.slot_tokens[0, 0, :, 0]
    assert per_device.sum() == 10 and per_device.max() - per_device.min() <= 1


def test_pairs_follow_token_owners():
    """Pairs leave the device that owns the token (contiguous blocks) for the expert's device."""
    placement = np.array([[[0], [1]]])
    plan = _plan(placement, 2)
    ids = np.array([[0], [1], [1], [0]])[None, :, None, :]  # [1, 4, 1, 1]
    d = dispatch(ids, owners(4, 2)[None], ReplicaTable.of(plan))
    assert d.pair_tokens[0, 0].tolist() == [[1, 1], [1, 1]]


def test_workload_cuts():
    assert [r.tolist() for r in decode_steps(5, 2)] == [[0, 1], [2, 3], [4]]
    assert [r.tolist() for r in prefill_steps(np.array([0, 0, 1, 2, 2, 2]), 2)] == [[0, 1, 2], [3, 4, 5]]
    assert [r.tolist() for r in key_steps(np.array([7, 3, 7, 3, 9]))] == [[0, 2], [1, 3], [4]]


def test_decode_steps_builds_only_the_simulated_steps():
    assert [r.tolist() for r in decode_steps(5, 2, 2)] == [[0, 1], [2, 3]]
    assert [r.tolist() for r in decode_steps(5, 2, 9)] == [[0, 1], [2, 3], [4]]
    full = decode_steps(10_000, 3)
    assert [r.tolist() for r in decode_steps(10_000, 3, 40)] == [r.tolist() for r in full[:40]]
