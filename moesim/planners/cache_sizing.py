"""Per-layer sizes of dynamic (LRU/LFU) expert caches for a GPU memory budget, by MIP.

Layers differ in how much a bigger cache helps (their routing locality differs), so an even split of
the memory is rarely best. For each MoE layer the trace is replayed through
``moesim.traces.cache.simulate_hits`` (the exact cache semantics the simulator uses) at a grid of
capacities ``K..E``; a multiple-choice knapsack MIP then picks one capacity per layer within the
expert slots every GPU has (each GPU holds a cache of every layer, :mod:`moesim.memory`), minimising
the expected fetch stall per decode step (same stall and prefetch model as
:mod:`moesim.planners.cache_ilp`). Misses are fetched (``fetch`` or ``lowbit``): a dynamic cache
fills from its fetches, so there is no staging buffer, but every layer needs at least K experts.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.memory import MemoryModel, device_capacities, memory_params
from moesim.parallel import Parallelism
from moesim.planners.cache_stats import prefetch_accuracy, prefetch_window_s, trace_columns
from moesim.plans.plan import CachePlan
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.specs.runtime import Runtime
from moesim.vocab import AUTO, CachePolicy, MissMode, Prefetch, choices

SIZED_POLICIES = (CachePolicy.LRU, CachePolicy.LFU)
FETCHED_MISSES = (MissMode.FETCH, MissMode.LOWBIT)
"""A dynamic cache fills from the misses it fetches; the other miss modes never load an expert."""


def capacity_grid(top_k: int, num_experts: int, points: int = 12) -> list[int]:
    """Capacities K..E tried per layer (all of them for small E, an even grid otherwise)."""
    grid = np.linspace(top_k, num_experts, min(points, num_experts - top_k + 1))
    return sorted({round(float(c)) for c in grid})


def layer_hit_curves(trace: Any, model: MoEModel, policy: str, capacities: list[int], *, batch_size: int = 1,
                     max_tokens: int = 8192) -> tuple[np.ndarray, np.ndarray, int]:
    """``(hits [L, C], requests [L], steps)`` replayed per MoE layer over the first ``max_tokens`` rows;
    layers the trace lacks get the uniform-routing estimate ``C / E`` of their requests."""
    from moesim.traces.cache import simulate_hits

    L, E = model.num_moe_layers, model.num_experts
    cols = trace_columns(trace, model)
    rows = min(trace.num_tokens, max_tokens)
    steps = -(-rows // batch_size)
    hits = np.zeros((L, len(capacities)))
    requests = np.zeros(L)
    for i, col in enumerate(cols):
        if col is None:
            continue
        h, r = simulate_hits(trace.layers([col]), capacities, policy, batch_size=batch_size, max_tokens=rows)
        hits[i], requests[i] = h, r
    known = [i for i, c in enumerate(cols) if c is not None]
    mean_req = float(requests[known].mean()) if known else float(steps * min(E, batch_size * model.top_k))
    for i, col in enumerate(cols):
        if col is None:
            requests[i] = mean_req
            hits[i] = mean_req * np.asarray(capacities) / E
    return hits, requests, steps


def size_dynamic_cache(model: MoEModel, cluster: Cluster, trace: Any, gpu_memory_bytes: float | None,
                       cost: Any,
                       *, policy: str = "lru", miss: str = "fetch", prefetch: str = "none",
                       time_limit_s: float = 60, batch_size: int = 1, context_tokens: int = 4096,
                       devices: tuple[str, ...] | None = None, lowbit_dtype: str = "int4",
                       max_tokens: int = 8192, parallel: Parallelism | None = None,
                       runtime: Runtime | None = None) -> CachePlan:
    """``CachePlan(policy=lru|lfu)`` with per-layer ``capacity_experts`` chosen by the MIP (every GPU
    holds a cache of each layer, :mod:`moesim.memory`)."""
    if policy not in SIZED_POLICIES:
        raise UserError(f"expected one of {', '.join(SIZED_POLICIES)}, got {policy!r}", field="policy")
    if miss not in FETCHED_MISSES:
        raise UserError(f"a {policy} cache fills from fetched misses: expected miss "
                        f"{' or '.join(FETCHED_MISSES)}, got {miss!r}", field="miss")
    if prefetch not in choices(Prefetch, AUTO):
        raise UserError(f"expected one of {', '.join(choices(Prefetch, AUTO))}, got {prefetch!r}",
                        field="prefetch")
    if getattr(trace, "expert_ids", None) is None:
        raise UserError(f"sizing {policy} caches replays the routing: expected a token-level trace, "
                        "got a load matrix", field="trace")
    t0 = time.perf_counter()
    gpus = tuple(devices) if devices else tuple(d.id for d in cluster.gpus)
    if not gpus:
        raise UserError(f"cluster {cluster.name} has no GPU", field="hw")
    L, E, K = model.num_moe_layers, model.num_experts, model.top_k
    stage = [0] * L  # one slot pool: every GPU holds a cache of every MoE layer
    eb = model.expert_bytes()
    layout = MemoryModel.for_run(model, cluster, gpus, batch_size=batch_size, context_tokens=context_tokens,
                                 parallel=parallel, runtime=runtime)
    # a dynamic cache loads its fetches itself: no staging, but every layer needs K experts
    common, memory = layout.common_slots(device_capacities(cluster, gpus, gpu_memory_bytes),
                                         least_per_layer=K)
    slots = [common]

    caps = capacity_grid(K, E)
    hits, requests, steps = layer_hit_curves(trace, model, policy, caps, batch_size=batch_size,
                                             max_tokens=max_tokens)
    fetch_s = np.array([float(cost.weight_fetch_s(gpus[stage[i]], eb,
                                                  lowbit_dtype=lowbit_dtype if miss == "lowbit" else None))
                        for i in range(L)])
    window_s = np.array([prefetch_window_s(cost, gpus[stage[i]], model, batch_size, context_tokens)
                         for i in range(L)])
    pred_acc, _ = prefetch_accuracy(trace, model)
    # expected fetch seconds per step at each (layer, capacity)
    miss_s = (requests[:, None] - hits) / steps * fetch_s[:, None]
    candidates = ["none", "predictor"] if prefetch == "auto" else [prefetch]
    results = {pf: _solve(miss_s, hits / steps, caps, window_s,
                          {"none": np.zeros(L), "oracle": np.ones(L), "predictor": pred_acc}[pf],
                          pf != "none", stage, slots, time_limit_s) for pf in candidates}
    chosen = min(results, key=lambda k: (results[k]["objective"], candidates.index(k)))
    r = results[chosen]
    pick = r["pick"]
    sizes = tuple(int(caps[j]) for j in pick)
    hit_rate = float(hits[np.arange(L), pick].sum() / requests.sum()) if requests.sum() else float("nan")
    # the even split of the same experts, for comparison
    even = min(caps, key=lambda c: abs(c - sum(sizes) / L))
    even_rate = float(hits[:, caps.index(even)].sum() / requests.sum()) if requests.sum() else float("nan")
    params = {
        "planner": f"cache-sizing-{policy}", "solver": r["solver"], "status": r["status"],
        "objective": r["objective"], "objective_unit": "expected stall seconds per decode step",
        "bound": r["bound"], "gap": r["gap"], "solve_s": time.perf_counter() - t0,
        "expected_hit_rate": hit_rate, "even_split_capacity": int(even), "even_split_hit_rate": even_rate,
        "replayed_tokens": int(min(trace.num_tokens, max_tokens)), "capacity_grid": caps,
        "batch_size": batch_size, "context_tokens": context_tokens, "devices": list(gpus),
        "expert_slots_per_device": slots * len(gpus), "expert_bytes": eb,
        **memory_params(layout, memory, sum(sizes) * eb), "miss_fetch_s": fetch_s.tolist(),
        "prefetch_window_s": window_s.tolist(), "prefetch_requested": prefetch,
        "prefetch_objectives": {k: v["objective"] for k, v in results.items()},
        "prefetch_accuracy": float(pred_acc[1:].mean()) if L > 1 else None,
    }
    return CachePlan(policy=policy, capacity_experts=sizes, resident=(), miss=miss, prefetch=chosen,
                     params=MappingProxyType(params))


def choose_policy(plan_static: Any, model: MoEModel, cluster: Cluster, trace: Any,
                  gpu_memory_bytes: float | None, cost: Any, **kw: Any) -> CachePlan:
    """``policy="auto"``: plan static pinning and sized LRU caches on the first half of the trace,
    replay both on the second half, and re-plan on the whole trace with the one that stalled less.

    In-sample, static pinning always looks at least as good (it is fitted to those very tokens);
    routing drifts, which LRU follows and a fixed resident set does not, so the choice is made on
    held-out tokens. Without a token-level trace, or with misses that do not fetch, only static applies.
    """
    from moesim.planners.cache_stats import request_stats
    from moesim.traces.cache import simulate_hits

    def static() -> CachePlan:
        return plan_static(model, cluster, trace, gpu_memory_bytes, cost, **kw)

    if kw.get("miss", MissMode.FETCH) not in FETCHED_MISSES or getattr(trace, "expert_ids", None) is None:
        return static()
    train, held = trace.split(0.5)
    B = int(kw.get("batch_size", 1))
    try:
        lru = size_dynamic_cache(model, cluster, train, gpu_memory_bytes, cost, policy="lru", **kw)
    except UserError:  # K experts per layer do not fit: only static pinning does
        return static()
    pinned = plan_static(model, cluster, train, gpu_memory_bytes, cost, **kw)
    fetch = np.asarray(lru.params["miss_fetch_s"])
    cols = trace_columns(held, model)
    q, _, _ = request_stats(held, model, B)
    x = np.zeros_like(q)
    for i, r in enumerate(pinned.resident):
        x[i, list(r)] = 1.0
    stall = {"static": float((q * (1 - x)).sum(axis=1) @ fetch)}
    rate = {"static": float((q * x).sum() / q.sum())}
    steps = -(-held.num_tokens // B)
    miss_per_layer, hit_sum, req_sum = np.zeros(model.num_moe_layers), 0.0, 0.0
    for i, col in enumerate(cols):
        if col is None:
            continue
        h, r = simulate_hits(held.layers([col]), [lru.capacity_experts[i]], "lru", batch_size=B)
        miss_per_layer[i] = (r - h[0]) / steps
        hit_sum, req_sum = hit_sum + h[0], req_sum + r
    stall["lru"] = float(miss_per_layer @ fetch)
    rate["lru"] = float(hit_sum / req_sum) if req_sum else float("nan")
    best = min(stall, key=lambda k: (stall[k], k != "static"))
    final = static() if best == "static" else size_dynamic_cache(
        model, cluster, trace, gpu_memory_bytes, cost, policy="lru", **kw)
    params = {**final.params, "policy_selection": {
        "held_out_stall_s": stall, "held_out_hit_rate": rate, "chosen": best,
        "note": "planned on the first half of the trace, replayed on the second (no prefetch)"}}
    return CachePlan(policy=final.policy, capacity_experts=final.capacity_experts, resident=final.resident,
                     miss=final.miss, prefetch=final.prefetch, params=MappingProxyType(params))


def _solve(miss_s: np.ndarray, hits_per_step: np.ndarray, caps: list[int], window_s: np.ndarray,
           acc: np.ndarray, prefetching: bool, stage: list[int], slots: list[int],
           time_limit_s: float) -> dict[str, Any]:
    from ortools.linear_solver import pywraplp

    L, C = miss_s.shape
    solver = pywraplp.Solver.CreateSolver("SCIP") or pywraplp.Solver.CreateSolver("CBC")
    solver.SetTimeLimit(int(max(time_limit_s, 0.1) * 1000))
    y = [[solver.BoolVar(f"y{i}_{j}") for j in range(C)] for i in range(L)]
    tie = 1e-7 * float(max(miss_s.max(), 1e-12)) / max(float(hits_per_step.sum()), 1.0)
    terms = []
    for i in range(L):
        solver.Add(solver.Sum(y[i]) == 1)
        m = solver.Sum([float(miss_s[i, j]) * y[i][j] for j in range(C)])
        terms += [-tie * float(hits_per_step[i, j]) * y[i][j] for j in range(C)]
        if prefetching:
            s = solver.NumVar(0.0, solver.infinity(), f"s{i}")
            solver.Add(s >= m - float(window_s[i]))
            terms += [s, (1.0 - float(acc[i])) * m]
        else:
            terms.append(m)
    for g, cap in enumerate(slots):
        here = [caps[j] * y[i][j] for i in range(L) if stage[i] == g for j in range(C)]
        solver.Add(solver.Sum(here) <= cap)
    solver.Minimize(solver.Sum(terms))
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        raise RuntimeError(f"cache-sizing MIP ended with status {status}")
    pick = np.array([max(range(C), key=lambda j: y[i][j].solution_value()) for i in range(L)])
    hit_term = tie * float(hits_per_step[np.arange(L), pick].sum())
    value = solver.Objective().Value() + hit_term
    bound = min(solver.Objective().BestBound() + hit_term, value)
    return {"pick": pick, "objective": value, "bound": bound,
            "gap": (value - bound) / value if value > 1e-15 else 0.0,
            "status": "optimal" if status == pywraplp.Solver.OPTIMAL else "feasible (time limit)",
            "solver": solver.SolverVersion()}
