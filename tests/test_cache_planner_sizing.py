"""Per-layer LRU/LFU cache sizing (moesim.planners.cache_sizing) and the held-out policy choice."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import UserError
from moesim.planners.cache_ilp import non_expert_bytes, plan_cache
from moesim.planners.cache_sizing import capacity_grid, layer_hit_curves
from moesim.specs import load_cluster, load_model


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
    experts = experts_per_layer * model.num_moe_layers
    return sum(non_expert_bytes(model).values()) + experts * model.expert_bytes()


def test_grid():
    assert capacity_grid(2, 8) == [2, 3, 4, 5, 6, 7, 8]
    g = capacity_grid(8, 256)
    assert g[0] == 8 and g[-1] == 256 and len(g) == 12


def test_curves_match_the_whole_trace_replay(setup):
    from moesim.traces.cache import hit_rates

    model, _, trace, _ = setup
    hits, requests, _ = layer_hit_curves(trace, model, "lru", [2, 4], max_tokens=trace.num_tokens)
    whole = hit_rates(trace, [2, 4], ["lru"])["lru"]
    assert hits[:, 0].sum() / requests.sum() == pytest.approx(whole[2])
    assert hits[:, 1].sum() / requests.sum() == pytest.approx(whole[4])


def test_sized_lru_at_least_as_good_as_even_split_in_sample(setup):
    model, cluster, trace, cost = setup
    cp = plan_cache(model, cluster, trace, _budget(model, 3), cost, devices=("n0.gpu0",), policy="lru")
    p = cp.params
    assert cp.policy == "lru" and cp.resident == ()
    assert sum(cp.capacity_experts) <= 3 * model.num_moe_layers
    assert min(cp.capacity_experts) >= model.top_k
    assert p["even_split_capacity"] == 3
    assert p["expected_hit_rate"] >= p["even_split_hit_rate"] - 1e-12
    assert p["gap"] == pytest.approx(0.0, abs=1e-6) and p["bound"] <= p["objective"] + 1e-12
    more = plan_cache(model, cluster, trace, _budget(model, 5), cost, devices=("n0.gpu0",), policy="lru")
    assert more.params["objective"] <= p["objective"] + 1e-12


def test_sizing_refusals(setup):
    model, cluster, trace, cost = setup
    with pytest.raises(UserError, match=r"device n0\.gpu0 needs .* \+ 2 experts for each of its 32 layers"):
        plan_cache(model, cluster, trace, _budget(model, 1.9), cost, devices=("n0.gpu0",), policy="lru")
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
