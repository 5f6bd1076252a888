"""Expert-cache hit rates against a brute-force reference, and Belady's optimality properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import UserError
from moesim.traces import RoutingTrace, cache_compiled
from moesim.traces.cache import hit_rates, make_cache, simulate_hits

METHODS = ["steps", "stack", pytest.param("compiled", marks=pytest.mark.skipif(
    not cache_compiled.available(), reason="numba not installed (the [fast] extra)"))]


def brute_force(ids: np.ndarray, capacity: int, policy: str, batch: int = 1) -> tuple[int, int]:
    """Plain-Python reference of the issue-3 semantics: (hits, requests) summed over layers."""
    n, layers, _ = ids.shape
    steps = [ids[i : i + batch] for i in range(0, n, batch)]
    hits = reqs = 0
    for layer in range(layers):
        reqsets = [sorted({int(x) for x in s[:, layer].ravel() if x >= 0}) for s in steps]
        cache: list[int] = []
        last: dict[int, int] = {}
        count: dict[int, int] = {}
        for t, req in enumerate(reqsets):
            for e in req:
                reqs += 1
                if e in cache:
                    hits += 1
                last[e] = t
                count[e] = count.get(e, 0) + 1
            for e in req:
                if e not in cache:
                    cache.append(e)

            while len(cache) > capacity:
                others = [e for e in cache if e not in req] or list(cache)
                keys = {}
                for e in others:
                    if policy == "lru":
                        keys[e] = (last[e], e)
                    elif policy == "lfu":
                        keys[e] = (count[e], last[e], e)
                    else:
                        future = [u for u in range(t + 1, len(reqsets)) if e in reqsets[u]]
                        keys[e] = (-(future[0] if future else 10**18), e)
                cache.remove(min(others, key=keys.__getitem__))
    return hits, reqs


def random_trace(
    rng: np.random.Generator, n: int, layers: int, k: int, e: int, missing: float
) -> RoutingTrace:
    ids = np.stack([[rng.choice(e, size=k, replace=False) for _ in range(layers)] for _ in range(n)])
    ids = np.where(rng.random(ids.shape) < missing, -1, ids)
    return RoutingTrace.build(ids.reshape(n, layers, k), num_experts=e)


trace_params = st.tuples(
    st.integers(1, 40),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(3, 9),
    st.sampled_from([0.0, 0.1]),
    st.integers(0, 2**31 - 1),
)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=40, deadline=None)
@given(params=trace_params, extra=st.integers(0, 6), batch=st.sampled_from([1, 1, 3]))
def test_fast_path_matches_brute_force(method, params, extra, batch):
    n, layers, k, e, missing, seed = params
    trace = random_trace(np.random.default_rng(seed), n, layers, min(k, e), e, missing)
    sizes = sorted({min(trace.top_k + extra, e), trace.top_k, e})
    policies = ["lru"] if method == "stack" else ["lru", "lfu", "belady"]
    for policy in policies:
        hits, r = simulate_hits(trace, sizes, policy, batch_size=batch, method=method)
        for c, h in zip(sizes, hits.tolist(), strict=True):
            assert (h, r) == brute_force(trace.expert_ids, c, policy, batch), (policy, c)


@settings(max_examples=25, deadline=None)
@given(trace_params, st.sampled_from([1, 2, 5]), st.sampled_from([1, 2, 7]))
def test_lru_stack_chunks_match_steps(params, batch, chunk_steps):
    """The stack-distance LRU carries state across chunks of steps: any chunking, same counts."""
    from moesim.traces.cache_lru import lru_hits

    n, layers, k, e, missing, seed = params
    trace = random_trace(np.random.default_rng(seed), n, layers, min(k, e), e, missing)
    sizes = list(range(1, e + 1))
    h, r = lru_hits(trace, sizes, batch_size=batch, chunk_steps=chunk_steps)
    h2, r2 = simulate_hits(trace, sizes, "lru", batch_size=batch, method="steps")
    assert r == r2 and h.tolist() == h2.tolist()


def test_methods_identical_on_wide_real_shaped_trace(shared_traces):
    """All methods give the same counts on the first 3,000 rows of a real trace (64 experts: the
    bitmask path's word boundary), for batch 1 and 16."""
    path = shared_traces / "deepseek-v2-lite-chat-prefill" / "deepseek_v2_lite_puffin_prefill.npz"
    if not path.exists():
        pytest.skip(f"shared trace {path} not found")
    trace = RoutingTrace.load(path).rows(0, 3000)
    for batch in (1, 16):
        for policy in ("lru", "lfu", "belady"):
            ref = simulate_hits(trace, [6, 12, 24, 64], policy, batch_size=batch, method="steps")
            methods = (["stack"] if policy == "lru" else []) + (
                ["compiled"] if cache_compiled.available() else [])
            for method in methods:
                got = simulate_hits(trace, [6, 12, 24, 64], policy, batch_size=batch, method=method)
                assert got[1] == ref[1] and got[0].tolist() == ref[0].tolist(), (policy, batch, method)


def test_wide_layers_over_64_experts():
    """Experts 64 and above use the bitmask's second word: stack LRU still equals the steps path."""
    rng = np.random.default_rng(3)
    trace = random_trace(rng, 300, 2, 4, 130, 0.05)
    for batch in (1, 4):
        sizes = [4, 9, 33, 65, 130]
        a = simulate_hits(trace, sizes, "lru", batch_size=batch, method="stack")
        b = simulate_hits(trace, sizes, "lru", batch_size=batch, method="steps")
        assert a[1] == b[1] and a[0].tolist() == b[0].tolist()


def test_unknown_method_refused():
    trace = random_trace(np.random.default_rng(0), 5, 1, 2, 4, 0.0)
    with pytest.raises(UserError):
        simulate_hits(trace, [2], "lru", method="magic")
    with pytest.raises(UserError):
        simulate_hits(trace, [2], "lfu", method="stack")


@settings(max_examples=40, deadline=None)
@given(trace_params, st.integers(0, 5))
def test_belady_dominates_and_grows_with_size(params, extra):
    n, layers, k, e, missing, seed = params
    trace = random_trace(np.random.default_rng(seed), n, layers, min(k, e), e, missing)
    c = min(trace.top_k + extra, e)
    sizes = sorted({c, min(c + 1, e)})
    rates = hit_rates(trace, sizes)
    if np.isnan(rates["belady"][sizes[0]]):  # every id missing: no requests, no rate to compare
        return
    for s in sizes:
        assert rates["belady"][s] >= rates["lru"][s] - 1e-12
        assert rates["belady"][s] >= rates["lfu"][s] - 1e-12
    assert rates["belady"][sizes[-1]] >= rates["belady"][sizes[0]] - 1e-12


@settings(max_examples=30, deadline=None)
@given(trace_params, st.integers(0, 4), st.sampled_from(["lru", "lfu", "belady"]))
def test_step_cache_matches_fast_path(params, extra, policy):
    n, layers, k, e, missing, seed = params
    trace = random_trace(np.random.default_rng(seed), n, layers, min(k, e), e, missing)
    c = min(trace.top_k + extra, e)
    hits = reqs = 0
    for col in range(layers):
        stream = trace.layer_stream(col)
        cache = make_cache(policy, c, future=list(stream) if policy == "belady" else None)
        for row in stream:
            mask = cache.access(row)
            hits += int(mask.sum())
            reqs += len(mask)
            assert len(cache.resident()) <= c
    fast = hit_rates(trace, [c], [policy])[policy][c]
    assert reqs == 0 or fast == pytest.approx(hits / reqs)


def test_known_sequence_lru_vs_belady():
    # one layer, k=1, capacity 2: requests 0 1 2 0 1 2 -> LRU never hits, Belady hits twice
    ids = np.array([0, 1, 2, 0, 1, 2], np.int16).reshape(6, 1, 1)
    trace = RoutingTrace.build(ids, num_experts=3)
    rates = hit_rates(trace, [2])
    assert rates["lru"][2] == 0.0
    assert rates["belady"][2] == pytest.approx(2 / 6)
    # LFU: counts tie at 1 until t3; every request then evicts the next one needed -> no hits
    assert rates["lfu"][2] == 0.0
    assert brute_force(ids, 2, "lfu") == (0, 6)


def test_step_cache_prefetch_and_contains():
    cache = make_cache("lru", 2)
    assert not cache.access(np.array([3, -1])).any()
    cache.insert(5)
    assert cache.contains(5) and cache.contains(3)
    assert cache.access(np.array([5, 3])).all()
    cache.insert(7)  # full: evicts the least recently requested (3 and 5 tie at step 1 -> lowest id 3)
    assert cache.resident().tolist() == [5, 7]


def test_bad_policy_and_capacity():
    with pytest.raises(UserError):
        make_cache("fifo", 2)
    with pytest.raises(UserError):
        make_cache("lru", 0)
    with pytest.raises(UserError):
        make_cache("belady", 2)
