"""Cache and offload planner: which experts stay resident in GPU memory, where misses run, prefetch.

For an offloading setup (one or a few GPUs, experts in host memory) and a GPU memory budget, an
OR-Tools MIP (SCIP through ``pywraplp``) picks the static resident set of each MoE layer - and so the
per-layer cache sizes - minimising the expected stall per decode step the misses cause:

- ``x[l,e] = 1``: expert e of layer l is pinned; otherwise a miss costs, when requested in a step
  (probability ``q[l,e]`` from the trace), the PCIe fetch time (``CostModel.weight_fetch_s``, in
  ``lowbit_dtype`` for ``lowbit``) or the CPU/PIM execution time of its tokens
  (``cpu_expert_s``/``pim_expert_s``); with ``miss="auto"`` a binary ``c[l,e]`` chooses per expert.
- Prefetch of layer l's experts during layer l-1 (window ``O_l`` from the cost model) with
  predictor accuracy ``a_l`` turns the fetch time ``M_l`` of a layer into a stall of
  ``(1 - a_l) M_l + max(0, M_l - O_l)`` (mispredicted fetches wait in full; the rest only where the
  window is too short). ``prefetch="none"`` gives ``M_l``: the objective is then exactly "expected
  hits weighted by the per-layer miss cost".
- Bytes (:meth:`moesim.memory.MemoryModel.for_run`, the layout ``moesim simulate`` checks): each GPU
  holds the non-expert weights in the run's parallelism (every layer, 1/tp shards), the KV cache of its
  share of the batch, the activations of a layer, all-to-all buffers, the runtime's reserve, a staging
  buffer of K experts for fetched misses (2K with prefetch: double buffering) and the pinned experts:
  every GPU keeps the resident set of every MoE layer (the simulator's caches are per layer and GPU),
  so the pinned experts of all layers share the slots the tightest GPU has.

The result is a ``CachePlan(policy="static")`` whose ``params`` hold the objective, bound, gap,
expected hit rate, the memory breakdown and the prefetch predictor's measured accuracy.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.memory import MemoryBreakdown, MemoryModel, device_capacities, memory_params, staging_experts
from moesim.parallel import Parallelism
from moesim.planners.cache_stats import prefetch_accuracy, prefetch_window_s, request_stats
from moesim.plans.plan import CachePlan
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.specs.runtime import Runtime
from moesim.vocab import AUTO, CachePolicy, MissMode, Prefetch, choices

MISS_CHOICES = choices(MissMode)  # auto (cheapest per expert) is a miss mode
PREFETCH_CHOICES = choices(Prefetch, AUTO)
POLICY_CHOICES = (*map(str, (CachePolicy.STATIC, CachePolicy.LRU, CachePolicy.LFU)), AUTO)
"""The policies this planner sizes (``belady`` needs the future; ``none`` has nothing to plan)."""


# ---- the planner -----------------------------------------------------------------------------------


def plan_cache(model: MoEModel, cluster: Cluster, trace_or_load: Any, gpu_memory_bytes: float | None,
               cost: Any,
               *, miss: str = "fetch", prefetch: str = "none", time_limit_s: float = 60,
               batch_size: int = 1, context_tokens: int = 4096, devices: tuple[str, ...] | None = None,
               lowbit_dtype: str = "int4", policy: str = "static", parallel: Parallelism | None = None,
               runtime: Runtime | None = None) -> CachePlan:
    """Choose resident experts per MoE layer for ``gpu_memory_bytes`` per GPU (None: the device's
    memory); see the module docstring for the model. ``prefetch="auto"`` solves with and without the
    predictor and keeps the better; ``miss="auto"`` decides fetch vs CPU (PIM if the cluster has
    one and no CPU) per expert. ``policy="lru"|"lfu"`` sizes dynamic caches per layer instead
    (:mod:`moesim.planners.cache_sizing`); ``"auto"`` solves static and LRU and keeps the lower stall.
    ``parallel`` / ``runtime``: the run's degrees and serving framework (its memory reserve)."""
    if policy not in POLICY_CHOICES:
        raise UserError(f"expected one of {', '.join(POLICY_CHOICES)}, got {policy!r}", field="policy")
    if policy != "static":
        from moesim.planners.cache_sizing import choose_policy, size_dynamic_cache

        kw = dict(miss=miss, prefetch=prefetch, time_limit_s=time_limit_s, batch_size=batch_size,
                  context_tokens=context_tokens, devices=devices, lowbit_dtype=lowbit_dtype,
                  parallel=parallel, runtime=runtime)
        if policy == "auto":
            return choose_policy(plan_cache, model, cluster, trace_or_load, gpu_memory_bytes, cost, **kw)
        return size_dynamic_cache(model, cluster, trace_or_load, gpu_memory_bytes, cost, policy=policy,
                                  **kw)
    if miss not in MISS_CHOICES:
        raise UserError(f"expected one of {', '.join(MISS_CHOICES)}, got {miss!r}", field="miss")
    if prefetch not in PREFETCH_CHOICES:
        raise UserError(f"expected one of {', '.join(PREFETCH_CHOICES)}, got {prefetch!r}", field="prefetch")
    if batch_size < 1:
        raise UserError(f"expected a batch of at least 1 token, got {batch_size}", field="batch_size")
    t0 = time.perf_counter()
    gpus = tuple(devices) if devices else tuple(d.id for d in cluster.gpus)
    if not gpus:
        raise UserError(f"cluster {cluster.name} has no GPU", field="hw")
    L, E, K = model.num_moe_layers, model.num_experts, model.top_k
    stage = [0] * L  # one slot pool: every GPU keeps every layer's resident set (moesim.memory)
    eb = model.expert_bytes()

    token_level = getattr(trace_or_load, "expert_ids", None) is not None
    if prefetch == "predictor" and not token_level:
        raise UserError("prefetch 'predictor' needs a token-level trace, got a load matrix", field="prefetch")
    pred_acc, freq_acc = (prefetch_accuracy(trace_or_load, model) if token_level
                          else (np.zeros(L), np.zeros(L)))

    layout = MemoryModel.for_run(model, cluster, gpus, batch_size=batch_size, context_tokens=context_tokens,
                                 parallel=parallel, runtime=runtime)
    capacities = device_capacities(cluster, gpus, gpu_memory_bytes)
    stage_dtype = lowbit_dtype if miss == "lowbit" else None

    def staging_of(pf: str) -> int:
        return staging_experts("static", miss, pf, K)

    candidates = ["none", "predictor"] if prefetch == "auto" and token_level else \
        ["none"] if prefetch == "auto" else [prefetch]
    slots_of: dict[str, list[int]] = {}
    memory_of: dict[str, dict[str, MemoryBreakdown]] = {}
    for pf in candidates:
        try:
            slots, memory_of[pf] = layout.common_slots(capacities, staging_experts=staging_of(pf),
                                                       staging_dtype=stage_dtype)
            slots_of[pf] = [min(L * E, slots)]
        except UserError:
            if prefetch != "auto" or pf == "none":
                raise  # "auto" only drops prefetch when its double buffer does not fit
    candidates = [pf for pf in candidates if pf in slots_of]

    q, n, info = request_stats(trace_or_load, model, batch_size)

    # Miss costs (seconds per step when requested) and prefetch windows, per layer.
    fetch_s = np.zeros(L)
    window_s = np.zeros(L)
    for i in range(L):
        gpu = gpus[stage[i]]
        if miss in ("fetch", "auto"):
            fetch_s[i] = float(cost.weight_fetch_s(gpu, eb))
        elif miss == "lowbit":
            fetch_s[i] = float(cost.weight_fetch_s(gpu, eb, lowbit_dtype=lowbit_dtype))
        window_s[i] = prefetch_window_s(cost, gpu, model, batch_size, context_tokens)
    # Executing misses: the named device kind, or for "auto" whichever of CPU / PIM costs less.
    exec_s = np.full((L, E), np.inf)
    exec_kind = None
    kinds = (miss,) if miss in ("cpu", "pim") else ("cpu", "pim") if miss == "auto" else ()
    for kind in kinds:
        if miss == "auto" and not cluster.devices_of(kind):
            continue
        mat = _exec_times(cluster, cost, gpus, stage, n, kind)
        if exec_kind is None or float((q * mat).sum()) < float((q * exec_s).sum()):
            exec_s, exec_kind = mat, kind
    if miss in ("cpu", "pim"):
        fetch_s[:] = np.inf

    results = {}
    for pf in candidates:
        acc = {"none": np.zeros(L), "oracle": np.ones(L), "predictor": pred_acc}[pf]
        results[pf] = _solve(q, fetch_s, exec_s, window_s, acc, pf != "none", stage, slots_of[pf],
                             time_limit_s)
    chosen = min(results, key=lambda k: (results[k]["objective"], candidates.index(k)))
    r = results[chosen]
    x, c = r["x"], r["c"]
    resident = tuple(tuple(int(e) for e in np.flatnonzero(x[i])) for i in range(L))
    on_exec = [[int(e) for e in np.flatnonzero(c[i])] for i in range(L)]
    n_exec = int(sum(map(len, on_exec)))
    n_miss = int(L * E - x.sum())
    mode = ((exec_kind or "cpu") if n_exec * 2 > n_miss else "fetch") if miss == "auto" else miss
    hits = float((q * x).sum())
    params: dict[str, Any] = {
        "planner": "cache-ilp",
        "solver": r["solver"],
        "status": r["status"],
        "objective": r["objective"],
        "objective_unit": "expected stall seconds per decode step",
        "bound": r["bound"],
        "gap": r["gap"],
        "solve_s": time.perf_counter() - t0,
        "expected_hit_rate": hits / float(q.sum()) if q.sum() > 0 else float("nan"),
        "expected_hits_per_step": hits,
        "expected_requests_per_step": float(q.sum()),
        "batch_size": batch_size,
        "context_tokens": context_tokens,
        "devices": list(gpus),
        "expert_slots_per_device": slots_of[chosen] * len(gpus),
        "expert_bytes": eb,
        "staging_experts": staging_of(chosen),
        **memory_params(layout, memory_of[chosen], sum(map(len, resident)) * eb),
        "miss_requested": miss,
        "miss_fetch_s": [None if not np.isfinite(v) else float(v) for v in fetch_s],
        "prefetch_window_s": window_s.tolist(),
        "prefetch_requested": prefetch,
        "prefetch_objectives": {k: v["objective"] for k, v in results.items()},
        "prefetch_accuracy": float(pred_acc[1:].mean()) if L > 1 and token_level else None,
        "prefetch_accuracy_per_layer": pred_acc.tolist() if token_level else None,
        "frequency_accuracy": float(freq_acc[1:].mean()) if L > 1 and token_level else None,
        **info,
    }
    plan = CachePlan(policy="static", capacity_experts=tuple(len(r_) for r_ in resident), resident=resident,
                     miss=mode, prefetch=chosen, params=MappingProxyType(params))
    if miss != "auto" or exec_kind is None:  # no CPU/PIM in the cluster: every miss is fetched
        return plan
    params["miss_executor"] = exec_kind
    params["misses_executed"] = on_exec  # per layer: experts whose misses run on the executor
    # Without any fetch the staging buffer is free memory: compare with pure CPU/PIM execution.
    pure = plan_cache(model, cluster, trace_or_load, gpu_memory_bytes, cost, miss=exec_kind or "cpu",
                      prefetch="none", time_limit_s=time_limit_s, batch_size=batch_size,
                      context_tokens=context_tokens, devices=devices, lowbit_dtype=lowbit_dtype,
                      parallel=parallel, runtime=runtime)
    if pure.params["objective"] < params["objective"]:
        return CachePlan(policy="static", capacity_experts=pure.capacity_experts, resident=pure.resident,
                         miss=pure.miss, prefetch=pure.prefetch, params=MappingProxyType(
                             {**pure.params, "miss_requested": "auto", "miss_executor": exec_kind,
                              "misses_executed": [list(r_) for r_ in _complement(pure.resident, E)],
                              "auto_fetch_objective": params["objective"],
                              "solve_s": time.perf_counter() - t0}))
    return CachePlan(policy="static", capacity_experts=plan.capacity_experts, resident=plan.resident,
                     miss=plan.miss, prefetch=plan.prefetch, params=MappingProxyType(params))


def _complement(resident: tuple[tuple[int, ...], ...], num_experts: int) -> list[list[int]]:
    return [[e for e in range(num_experts) if e not in set(r)] for r in resident]


def _exec_times(cluster: Cluster, cost: Any, gpus: tuple[str, ...], stage: list[int], n: np.ndarray,
                kind: str) -> np.ndarray:
    """``[L, E]`` seconds to run each expert's ``n[l, e]`` tokens on the CPU/PIM serving its layer's GPU."""
    call = cost.cpu_expert_s if kind == "cpu" else cost.pim_expert_s
    out = np.zeros(n.shape)
    memo: dict[tuple[str, float], float] = {}
    for i in range(n.shape[0]):
        executor = _executor(cluster, gpus[stage[i]], kind)
        for e in range(n.shape[1]):
            key = (executor, round(float(n[i, e]), 2))
            if key not in memo:
                memo[key] = float(call(executor, np.array([key[1]])))
            out[i, e] = memo[key]
    return out


def _executor(cluster: Cluster, gpu: str, kind: str) -> str:
    """The CPU or PIM device that runs a GPU's missed experts: one linked to it, else one on its node."""
    node = cluster.device(gpu).node
    near = [v for v in cluster.graph.neighbors(gpu) if cluster.graph.nodes[v].get("kind") == kind]
    devs = near or [d.id for d in cluster.devices_of(kind, node)]
    if not devs:
        raise UserError(f"cluster {cluster.name} has no {kind} device on node {node} to run missed experts "
                        f"of {gpu}", field="miss")
    return sorted(devs)[0]


def _solve(q: np.ndarray, fetch_s: np.ndarray, exec_s: np.ndarray, window_s: np.ndarray, acc: np.ndarray,
           prefetching: bool, stage: list[int], slots: list[int], time_limit_s: float) -> dict[str, Any]:
    """The MIP; returns x (pinned), c (miss executed on CPU/PIM), objective, bound, gap."""
    from ortools.linear_solver import pywraplp

    L, E = q.shape
    solver = pywraplp.Solver.CreateSolver("SCIP") or pywraplp.Solver.CreateSolver("CBC")
    if solver is None:  # pragma: no cover - ortools wheels ship both
        raise RuntimeError("OR-Tools has no MIP solver (SCIP/CBC)")
    solver.SetTimeLimit(int(max(time_limit_s, 0.1) * 1000))
    can_fetch = np.isfinite(fetch_s)
    can_exec = np.isfinite(exec_s)
    x = [[solver.BoolVar(f"x{i}_{e}") for e in range(E)] for i in range(L)]
    c = [[solver.BoolVar(f"c{i}_{e}") if can_exec[i, e] and can_fetch[i] else None for e in range(E)]
         for i in range(L)]
    obj = solver.Objective()
    scale = float(max(np.where(can_fetch, fetch_s, 0).max(), np.where(can_exec, exec_s, 0).max(), 1e-12))
    # tie-break among equal stalls: more hits (weight far below any stall difference that matters)
    tie = 1e-7 * scale / max(float(q.sum()), 1.0)
    hint_vars, hint_vals = [], []
    for i in range(L):
        fetch_terms = []
        for e in range(E):
            obj.SetCoefficient(x[i][e], -tie * q[i, e])
            cv = c[i][e]
            if can_fetch[i]:
                miss_f = q[i, e] * fetch_s[i]
                # fetch share f = 1 - x - c; its time enters M_l
                fetch_terms.append((x[i][e], cv, miss_f))
                if cv is not None:
                    solver.Add(x[i][e] + cv <= 1)
                    obj.SetCoefficient(cv, obj.GetCoefficient(cv) + q[i, e] * exec_s[i, e])
            else:
                # no fetch path: every miss runs on the executor
                obj.SetOffset(obj.offset() + q[i, e] * exec_s[i, e])
                obj.SetCoefficient(x[i][e], obj.GetCoefficient(x[i][e]) - q[i, e] * exec_s[i, e])
        if not fetch_terms:
            continue
        total = sum(t[2] for t in fetch_terms)
        # M_l = total - sum(miss_f * (x + c))
        saved = [w * v for xv, cv, w in fetch_terms for v in (xv, cv) if v is not None]
        m_expr = total - solver.Sum(saved)
        if prefetching:
            s = solver.NumVar(0.0, solver.infinity(), f"s{i}")
            solver.Add(s >= m_expr - float(window_s[i]))
            obj.SetCoefficient(s, 1.0)
            coef = 1.0 - float(acc[i])
        else:
            coef = 1.0
        obj.SetOffset(obj.offset() + coef * total)
        for xv, cv, w in fetch_terms:
            obj.SetCoefficient(xv, obj.GetCoefficient(xv) - coef * w)
            if cv is not None:
                obj.SetCoefficient(cv, obj.GetCoefficient(cv) - coef * w)
    for g, cap in enumerate(slots):
        layer_rows = [i for i in range(L) if stage[i] == g]
        solver.Add(solver.Sum([x[i][e] for i in layer_rows for e in range(E)]) <= cap)
        # warm start: the most requested experts of this stage
        order = sorted(((i, e) for i in layer_rows for e in range(E)), key=lambda t: -q[t[0], t[1]])
        pinned = set(order[:cap])
        for i in layer_rows:
            for e in range(E):
                hint_vars.append(x[i][e])
                hint_vals.append(1.0 if (i, e) in pinned else 0.0)
    obj.SetMinimization()
    solver.SetHint(hint_vars, hint_vals)
    status = solver.Solve()
    if status not in (pywraplp.Solver.OPTIMAL, pywraplp.Solver.FEASIBLE):
        raise RuntimeError(f"cache MIP ended with status {status} (no plan within {time_limit_s} s)")
    xs = np.array([[x[i][e].solution_value() > 0.5 for e in range(E)] for i in range(L)])
    cs = np.array([[c[i][e] is not None and c[i][e].solution_value() > 0.5 for e in range(E)]
                   for i in range(L)])
    if not can_fetch.all():
        cs |= ~can_fetch[:, None] & ~xs
    hit_term = tie * float((q * xs).sum())
    value = solver.Objective().Value() + hit_term
    bound = min(solver.Objective().BestBound() + hit_term, value)
    return {
        "x": xs, "c": cs, "objective": value, "bound": bound,
        "gap": (value - bound) / value if value > 1e-15 else 0.0,
        "status": "optimal" if status == pywraplp.Solver.OPTIMAL else "feasible (time limit)",
        "solver": solver.SolverVersion(),
    }
