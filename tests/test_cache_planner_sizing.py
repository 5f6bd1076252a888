"""Per-layer LRU/LFU cache sizing (moesim.planners.cache_sizing) and the held-out policy choice, checked
against a plain LRU replay and an exhaustive multiple-choice knapsack written here."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import UserError
from moesim.planners.cache_ilp import plan_cache
from moesim.planners.cache_sizing import capacity_grid, layer_hit_curves
from moesim.specs import load_cluster, load_model
from tests.conftest import MIXTRAL_FIXED_BYTES


@pytest.fixture(scope="module")
def setup():
    from moesim.cost import CostModel
    from moesim.traces import RoutingTrace
    from tests.conftest import shared_trace

    model = load_model("mixtral-8x7b")
    trace = RoutingTrace.load(shared_trace("mixtral-8x7b-instruct-vllm/mixtral_gsm8k_humaneval_decode.npz"),
                              model=model)
    cluster = load_cluster("h100x8")
    return model, cluster, trace, CostModel(cluster, model)


def _budget(model, experts_per_layer: float) -> float:
    """A whole-GPU budget holding ``experts_per_layer`` bf16 experts per layer beside the rest (a dynamic
    cache has no staging buffer)."""
    return MIXTRAL_FIXED_BYTES + experts_per_layer * model.num_moe_layers * model.expert_bytes()


def _lru_hits(ids: np.ndarray, capacity: int) -> tuple[int, int]:
    """(hits, requests) of one layer's LRU cache, tokens one at a time, written out longhand: a token's
    distinct experts are requested together; the least recently used of the others is evicted."""
    last: dict[int, int] = {}
    hits = requests = 0
    for t, row in enumerate(ids):
        want = sorted({int(e) for e in row if e >= 0})
        hits += sum(e in last for e in want)
        requests += len(want)
        for e in want:
            last[e] = t
        while len(last) > capacity:
            del last[min((e for e in last if e not in want), key=lambda e: (last[e], e))]
    return hits, requests


@pytest.fixture(scope="module")
def lru_table(setup):
    """``hits[layer][capacity]`` and requests per layer by the longhand replay (capacities 2..8)."""
    model, _, trace, _ = setup
    ids = np.asarray(trace.expert_ids)
    hits = [{c: _lru_hits(ids[:, i, :], c)[0] for c in range(2, 9)} for i in range(model.num_moe_layers)]
    requests = [_lru_hits(ids[:, i, :], 8)[1] for i in range(model.num_moe_layers)]
    return hits, requests


def test_grid():
    assert capacity_grid(2, 8) == [2, 3, 4, 5, 6, 7, 8]
    g = capacity_grid(8, 256)
    assert g[0] == 8 and g[-1] == 256 and len(g) == 12


def test_curves_equal_a_longhand_lru_replay(setup, lru_table):
    model, _, trace, _ = setup
    hits, requests, _ = layer_hit_curves(trace, model, "lru", [2, 4, 8], max_tokens=trace.num_tokens)
    want_hits, want_requests = lru_table
    assert requests.tolist() == want_requests
    assert hits.tolist() == [[h[2], h[4], h[8]] for h in want_hits]
    # all 8 experts cached: only the first use of each of the 8 misses
    assert hits[:, 2].tolist() == [r - 8 for r in want_requests]


def _best_split(hits: list[dict[int, int]], total: int) -> int:
    """Most hits over all per-layer capacities in 2..8 whose sum is at most ``total`` (exhaustive DP)."""
    best = {0: 0}
    for layer in hits:
        nxt: dict[int, int] = {}
        for used, h in best.items():
            for c, hc in layer.items():
                if used + c <= total and nxt.get(used + c, -1) < h + hc:
                    nxt[used + c] = h + hc
        best = nxt
    return max(best.values())


def test_sized_lru_is_the_exhaustive_optimum(setup, lru_table):
    """One GPU, no prefetch: every layer's miss costs the same fetch, so the least stall is the most hits
    over all splits of the memory; the planner's split must reach the optimum the DP finds."""
    model, cluster, trace, cost = setup
    hits, requests = lru_table
    for per_layer in (3, 5):
        cp = plan_cache(model, cluster, trace, _budget(model, per_layer), cost, devices=("n0.gpu0",),
                        policy="lru")
        assert cp.policy == "lru" and cp.resident == ()
        assert sum(cp.capacity_experts) <= per_layer * model.num_moe_layers
        assert min(cp.capacity_experts) >= model.top_k
        got = sum(hits[i][c] for i, c in enumerate(cp.capacity_experts))
        assert got == _best_split(hits, per_layer * model.num_moe_layers)
        assert cp.params["expected_hit_rate"] == pytest.approx(got / sum(requests))
        even = sum(h[per_layer] for h in hits)
        assert cp.params["even_split_capacity"] == per_layer
        assert cp.params["even_split_hit_rate"] == pytest.approx(even / sum(requests))
        assert got >= even
        assert cp.params["gap"] == pytest.approx(0.0, abs=1e-6)


def test_sizing_refusals(setup):
    model, cluster, trace, cost = setup
    with pytest.raises(UserError, match=r"device n0\.gpu0 needs .* \+ 2 experts for each of its 32 layers"):
        plan_cache(model, cluster, trace, _budget(model, 1.9), cost, devices=("n0.gpu0",), policy="lru")
    plan_cache(model, cluster, trace, _budget(model, 2), cost, devices=("n0.gpu0",), policy="lru")
    with pytest.raises(UserError, match="expected a token-level trace"):
        plan_cache(model, cluster, trace.load_matrix(), _budget(model, 3), cost, devices=("n0.gpu0",),
                   policy="lfu")
    with pytest.raises(UserError, match="fills from fetched misses"):
        plan_cache(model, cluster, trace, _budget(model, 3), cost, devices=("n0.gpu0",), policy="lru",
                   miss="cpu")


def test_auto_policy_chooses_on_held_out_tokens(setup):
    model, cluster, trace, cost = setup
    cp = plan_cache(model, cluster, trace, _budget(model, 3) + 2 * model.expert_bytes(), cost,
                    devices=("n0.gpu0",), policy="auto")
    sel = cp.params["policy_selection"]
    stall = sel["held_out_stall_s"]
    assert set(stall) == {"static", "lru"}
    assert sel["chosen"] == min(stall, key=stall.get)
    assert cp.policy == ("lru" if sel["chosen"] == "lru" else "static")
    assert all(np.isfinite(v) for v in sel["held_out_hit_rate"].values())
