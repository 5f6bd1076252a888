"""One memory layout on several GPUs: what ``moesim plan --gpu-memory`` reserves per GPU is what
``moesim simulate`` checks per GPU for the same plan, batch, context, parallelism and runtime, part by
part; a plan fits per the one exactly when it fits per the other; one budget gives one slot count."""

from __future__ import annotations

import dataclasses

import pytest

from moesim.cost import CostModel
from moesim.errors import UserError
from moesim.memory import MemoryModel
from moesim.parallel import Parallelism
from moesim.planners.cache_ilp import plan_cache
from moesim.plans.default import default_plan
from moesim.plans.plan import CachePlan, Plan
from moesim.sim.config import SimConfig
from moesim.sim.engine import simulate
from moesim.sim.workload import build_workload
from moesim.specs import load_cluster, load_model, with_weight_dtype
from moesim.specs.runtime import load_runtime
from moesim.traces import RoutingTrace

BATCH = 16  # sequences per decode step: 2 per GPU on 8 GPUs


@pytest.fixture(scope="module")
def setup():
    model = with_weight_dtype(load_model("mixtral-8x7b"), "fp8")
    cluster = load_cluster("l4-server")  # 8 x L4, 23034 MiB each
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=model).rows(0, 4 * BATCH)
    runtime = load_runtime("vllm")
    # the context the simulated step attends: the planner is told the same
    context = int(build_workload(trace, phase="decode", batch_size=BATCH, steps=1).context_tokens[0])
    return model, cluster, trace, runtime, context


def _run(setup, plan: Plan, tp: int):
    model, cluster, trace, runtime, _ = setup
    cfg = SimConfig(cluster, model, trace, plan=plan, batch_size=BATCH, steps=1, tp=tp, runtime=runtime)
    return simulate(cfg, CostModel(cluster, model, runtime=runtime)).summary()


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_the_run_checks_what_the_plan_reserves_part_by_part(setup, tp):
    """Static cache plan for the whole L4 on 8 GPUs (TP 1, 2, 8 attention; vLLM's 10% reserve): every
    GPU's simulated breakdown equals the plan's ``memory_bytes_per_device``, experts included."""
    model, cluster, trace, runtime, context = setup
    par = Parallelism.of(8, tp=tp)
    cp = plan_cache(model, cluster, trace, None, CostModel(cluster, model, runtime=runtime), batch_size=BATCH,
                    context_tokens=context, parallel=par, runtime=runtime, time_limit_s=5)
    reserved = cp.params["memory_bytes_per_device"]
    assert cp.params["memory_layout"] == {"tp": tp, "dp": 8 // tp, "ep": 8, "runtime": "vllm",
                                          "batch_size": BATCH, "context_tokens": context,
                                          "comm_buffer_bytes": 0.0}
    plan = dataclasses.replace(default_plan(model, cluster), cache=cp)
    run = _run(setup, plan, tp)["memory_breakdown_bytes"]
    assert set(run) == set(reserved) == {d.id for d in cluster.gpus}
    for d, parts in reserved.items():
        for part, value in parts.items():
            assert run[d][part] == pytest.approx(value, rel=1e-12), (d, part)
        assert parts["experts"] == plan.resident_expert_bytes(model)[d]
        assert parts["experts"] == cp.params["resident_expert_bytes"][d]
        assert parts["total"] <= parts["capacity"]
    # the plan file states what each GPU keeps resident
    assert plan.to_dict()["resident_experts"] == dict.fromkeys(reserved, sum(map(len, cp.resident)))


def _static(model, n: int) -> CachePlan:
    """A static cache pinning ``n`` experts in all, spread over the layers (at most all of a layer)."""
    L, E = model.num_moe_layers, model.num_experts
    sizes = [n // L + (i < n % L) for i in range(L)]
    assert max(sizes) <= E
    return CachePlan(policy="static", capacity_experts=tuple(sizes),
                     resident=tuple(tuple(range(k)) for k in sizes))


@pytest.mark.parametrize("tp", [1, 8])
def test_fits_per_plan_exactly_when_it_fits_per_simulate(setup, tp):
    """The slots the planner's layout leaves: a plan pinning that many experts runs; one more is refused
    by the simulator's check, naming the device and its expert cache."""
    model, cluster, _, runtime, context = setup
    layout = MemoryModel.for_run(model, cluster, [d.id for d in cluster.gpus], batch_size=BATCH,
                                 context_tokens=context, parallel=Parallelism.of(8, tp=tp), runtime=runtime)
    capacities = {d.id: d.spec.memory_bytes for d in cluster.gpus}
    slots, _ = layout.common_slots(capacities, staging_experts=model.top_k)  # a static cache that fetches
    base = default_plan(model, cluster)
    for n, fits in ((slots, True), (slots + 1, False)):
        plan = dataclasses.replace(base, cache=_static(model, n))
        if fits:
            layout.fit(capacities, plan.resident_expert_bytes(model), cached=True,
                       staging_experts=model.top_k)
            s = _run(setup, plan, tp)
            assert s["per_device"][0]["peak_memory_bytes"] <= capacities[cluster.gpus[0].id]
        else:
            with pytest.raises(UserError, match="for its expert cache"):
                layout.fit(capacities, plan.resident_expert_bytes(model), cached=True,
                           staging_experts=model.top_k)
            with pytest.raises(UserError, match=r"device n0\.gpu0 needs .* for its expert cache"):
                _run(setup, plan, tp)


@pytest.mark.parametrize("tp", [1, 2])
def test_one_budget_one_slot_count_on_eight_gpus(setup, tp):
    """``plan --gpu-memory B --tp N --runtime vllm`` and ``simulate --gpu-memory B --tp N --runtime vllm``
    give every layer the same experts (an LRU cache: the simulator's slots split evenly per layer)."""
    model, cluster, trace, runtime, _ = setup
    budget = 18e9
    cp = plan_cache(model, cluster, trace, budget, CostModel(cluster, model, runtime=runtime), policy="lru",
                    batch_size=BATCH, parallel=Parallelism.of(8, tp=tp), runtime=runtime, time_limit_s=5)
    cfg = SimConfig(cluster, model, trace, batch_size=BATCH, cache_policy="lru", gpu_memory_bytes=budget,
                    tp=tp, runtime=runtime)
    per_layer = cfg.cache_plan(default_plan(model, cluster)).capacity_experts
    slots = cp.params["expert_slots_per_device"]
    assert len(set(slots)) == 1 and set(per_layer) == {slots[0] // model.num_moe_layers}
    assert sum(cp.capacity_experts) <= slots[0]
