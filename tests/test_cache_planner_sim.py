"""Cache plans replayed in the simulator: static ILP vs sized LRU on the shared Mixtral trace.

Planned on the first half of the trace, simulated on the second; the simulator's hit rates must equal
the planner's own held-out accounting (same cache semantics), and the comparison is printed."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.planners.cache_ilp import plan_cache
from moesim.plans.plan import Plan
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
    cluster = load_cluster("h100x8")  # one of its GPUs, so that 3 experts per layer fit beside the rest
    return model, cluster, trace, CostModel(cluster, model)


def _simulate(model, cluster, trace, cost, cache):
    from moesim.sim.config import SimConfig
    from moesim.sim.engine import simulate

    L, E = model.num_moe_layers, model.num_experts
    plan = Plan(planner="cache", model=model.name, devices=("n0.gpu0",), moe_layers=model.moe_layers,
                num_experts=E, placement=np.tile(np.arange(E), (L, 1, 1)).astype(np.int32), cache=cache)
    cfg = SimConfig(cluster=cluster, model=model, trace=trace, plan=plan, batch_size=1)
    return simulate(cfg, cost).summary()


def test_static_ilp_vs_sized_lru_in_the_simulator(setup):
    from moesim.traces.cache import simulate_hits

    model, cluster, trace, cost = setup
    train, test = trace.split(0.5)
    eb = model.expert_bytes()
    budget = MIXTRAL_FIXED_BYTES + 3 * model.num_moe_layers * eb
    static = plan_cache(model, cluster, train, budget + 2 * eb, cost, devices=("n0.gpu0",))  # + staging
    lru = plan_cache(model, cluster, train, budget, cost, devices=("n0.gpu0",), policy="lru")
    assert sum(static.capacity_experts) == sum(lru.capacity_experts) == 3 * model.num_moe_layers

    s_static = _simulate(model, cluster, test, cost, static)
    s_lru = _simulate(model, cluster, test, cost, lru)

    ids = np.asarray(test.expert_ids)
    realised = sum(np.isin(ids[:, i, :], static.resident[i]).sum() for i in range(model.num_moe_layers))
    assert s_static["cache_hit_rate"] == pytest.approx(realised / (ids >= 0).sum())
    hits = reqs = 0
    for i in range(model.num_moe_layers):
        h, r = simulate_hits(test.layers([i]), [lru.capacity_experts[i]], "lru")
        hits, reqs = hits + h[0], reqs + r
    assert s_lru["cache_hit_rate"] == pytest.approx(hits / reqs)
    # fewer misses, fewer PCIe fetches: the better hit rate is the faster plan
    faster = max((s_static, s_lru), key=lambda s: s["tokens_per_s"])
    assert faster["cache_hit_rate"] == max(s_static["cache_hit_rate"], s_lru["cache_hit_rate"])
    print(f"held-out hit rate: static-ILP {s_static['cache_hit_rate']:.3f} "
          f"({s_static['tokens_per_s']:.2f} tok/s), "
          f"sized LRU {s_lru['cache_hit_rate']:.3f} ({s_lru['tokens_per_s']:.2f} tok/s); planner's in-sample "
          f"{static.params['expected_hit_rate']:.3f} / {lru.params['expected_hit_rate']:.3f}")
