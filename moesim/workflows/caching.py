"""Expert-cache workflows the offloading studies use: the cache planner's static pin for a cache of C
experts per layer, and its hit rate on a trace (simulated runs: :func:`~moesim.workflows.simulate_run`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim.memory import MemoryModel, staging_experts
from moesim.specs.hardware import Cluster, Device
from moesim.specs.model import MoEModel
from moesim.traces.trace import RoutingTrace
from moesim.workflows.inputs import cluster_of, cost_model, model_of, trace_of


@dataclass(frozen=True)
class StaticPin:
    """The experts the cache planner pins in the memory of ``size`` experts per MoE layer."""

    size: int
    budget_bytes: float
    """The whole-GPU budget the planner was given (:func:`static_budget_bytes`)."""
    resident: tuple[tuple[int, ...], ...]
    hit_rate: float
    """Hits / requests of the pinned sets over the whole trace, tokens one at a time."""
    expected_hit_rate: float | None
    gap: float | None


def static_budget_bytes(model: MoEModel, size: int, num_gpus: int = 1) -> float:
    """GPU memory that holds ``size`` experts per MoE layer next to everything else the cache planner
    counts for batch 1 with fetched misses (:class:`moesim.memory.MemoryModel`; every GPU keeps every
    layer's pinned experts), plus half an expert so that rounding cannot lose one."""
    eb = model.expert_bytes()
    fixed = MemoryModel(model, gpus=num_gpus).device("gpu", float("inf"),
                                                     staging_experts=staging_experts("static", "fetch",
                                                                                     "none", model.top_k))
    return fixed.fixed_bytes + size * model.num_moe_layers * eb + 0.5 * eb


def _roomy(cluster: Cluster, budget: float) -> Cluster:
    """The cluster with every GPU's memory raised to at least ``budget`` (compute and links unchanged)."""

    def grown(d: Device) -> Device:
        spec = dataclasses.replace(d.spec, memory_bytes=max(d.spec.memory_bytes, budget))
        return dataclasses.replace(d, spec=spec) if d.kind == "gpu" else d

    return dataclasses.replace(cluster, devices=tuple(grown(d) for d in cluster.devices))


def static_hit_rate(trace: RoutingTrace, model: MoEModel, resident: Sequence[Sequence[int]]) -> float:
    """Hits / requests of a fixed resident set per MoE layer, tokens one at a time (the trace cache
    semantics: a token's distinct experts at a layer are its requests; -1 is skipped)."""
    cols = {int(x): i for i, x in enumerate(np.asarray(trace.layer_ids))}
    hits = requests = 0
    for li, layer in enumerate(model.moe_layers):
        if layer not in cols:
            continue
        ids = np.asarray(trace.expert_ids[:, cols[layer], :], dtype=np.int64)
        ids = np.sort(ids, axis=1)
        first = np.concatenate([np.ones((ids.shape[0], 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
        distinct = (ids >= 0) & first
        pinned = np.zeros(model.num_experts + 1, bool)
        pinned[list(resident[li])] = True
        hits += int((distinct & pinned[np.where(ids >= 0, ids, model.num_experts)]).sum())
        requests += int(distinct.sum())
    return hits / requests if requests else float("nan")


def static_cache_pin(*, hw: str | Path | Cluster, model: str | Path | MoEModel,
                     trace: str | Path | RoutingTrace, size: int, weight_dtype: str | None = None,
                     time_limit_s: float = 30.0) -> StaticPin:
    """The cache planner's pinned experts (``plan_cache``, fetched misses, no prefetch) for the memory of
    ``size`` experts per layer, planned on the whole trace like Belady, and their hit rate. The GPU's
    capacity is not enforced: the point is the policy's hit rate at that cache size."""
    from moesim.planners.cache_ilp import plan_cache

    spec = model_of(model, weight_dtype=weight_dtype)
    cluster = cluster_of(hw)
    budget = static_budget_bytes(spec, size, max(1, len(cluster.gpus)))
    roomy = _roomy(cluster, budget)
    routing = trace_of(trace, spec)
    plan = plan_cache(spec, roomy, routing, budget, cost_model(roomy, spec), miss="fetch", prefetch="none",
                      time_limit_s=time_limit_s)
    return StaticPin(size=size, budget_bytes=budget, resident=tuple(tuple(r) for r in plan.resident),
                     hit_rate=static_hit_rate(routing, spec, plan.resident),
                     expected_hit_rate=plan.params.get("expected_hit_rate"), gap=plan.params.get("gap"))
