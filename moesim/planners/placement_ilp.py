"""The OR-Tools placement optimiser: replica counts and placement chosen jointly, per MoE layer.

Per layer, a CP-SAT model picks for every expert e one replica count c from a candidate set and,
for every GPU g, whether g holds one of those c copies (``z[e, c, g]``). Every GPU fills exactly
its ``S`` slots and holds at most one copy of an expert. The time of GPU g in training window w is

    t[w, g] = sum_{e, c} z[e, c, g] * tau[w, e, c, node(g)]

where ``tau`` is what one replica of e costs when e has c replicas: the cost model's expert time
for ``load/c`` tokens (weights read once, plus per-token work) plus the all-to-all time of those
tokens on the real topology (NVLink inside a node, the GPU's InfiniBand rail across nodes, both
ways: dispatch and combine), given where the tokens originate. The objective is the worst window's
slowest GPU (``objective="worst"``) or the mean over windows of the slowest GPU (``"mean"``).
Linear in ``z`` because each candidate count is its own variable. See docs/planners.md.
With ``dispatch="local"`` (tokens use a replica on their own GPU or node first) the tables, the
scoring and extra per-node constraints come from ``placement_local``.

Decomposition: layers are solved one after another, each with an equal share of the remaining
CP-SAT work (deterministic time, so a seed gives one plan); each is warm-started from the best of
the greedy, target-sized and EPLB layouts, and is skipped when that hint already meets the
analytic lower bound or its share is too small for a model of its size. The reported bound is,
per layer, the larger of CP-SAT's bound and the analytic one (``layer_bound``), summed over layers.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from moesim.planners.base import (
    PlanRequest,
    apportion,
    check_request,
    duplicate_slots,
    make_plan,
    repair_duplicates,
)
from moesim.planners.eplb import rebalance_layer
from moesim.planners.greedy import greedy_layer
from moesim.planners.placement_local import local_candidates, local_hint
from moesim.planners.placement_search import aggregate, cost_lpt, layer_times, polish, target_hints
from moesim.planners.placement_tables import ReplicaTables, layer_bound
from moesim.plans.plan import Plan

DEFAULTS: dict[str, Any] = {
    "objective": "worst",  # worst | mean  (over windows)
    "origin": "even",  # even | previous-layer: where a layer's tokens come from
    "dispatch": "even",  # even | local: which replicas a token may use (local: own GPU, node, any)
    "a2a": "auto",  # auto | flat | hierarchical | low-latency: the all-to-all mode (moesim.cost.a2a)
    "units": "auto",  # auto (cost model if available) | tokens (ignore time, balance token counts)
    "batch_tokens": 8192,  # tokens per step the times are predicted for
    "workers": 2,  # CP-SAT workers, interleaved deterministically (fixed: same seed, same plan)
    "gap_limit": 1e-3,  # stop a layer when within this relative gap of its bound
    "work_limit": 1.0,  # CP-SAT deterministic time for all layers together (about CPU seconds)
    "polish_moves": 4,  # swap-search tries per slot of a layer (G * S slots)
    "min_work_per_var": 5e-6,  # CP-SAT only for layers whose work share is at least this per variable
}


# ---- one layer --------------------------------------------------------------------------------


def _candidates(wsum: np.ndarray, hint_counts: np.ndarray, G: int, S: int) -> list[list[int]]:
    """Replica counts the model may choose per expert: around D'Hondt's for the hot ones."""
    jeff = apportion(wsum, G * S, max_per_item=G)
    per_replica = (wsum / jeff).max()
    out = []
    for e in range(wsum.size):
        cands = {int(hint_counts[e])}
        if jeff[e] >= 2 or wsum[e] >= 0.5 * per_replica:
            cands |= {int(jeff[e]) - 1, int(jeff[e]), int(jeff[e]) + 1}
        else:
            cands.add(1)
        out.append(sorted(c for c in cands if 1 <= c <= G))
    return out


def solve_layer(tau: np.ndarray, wsum: np.ndarray, node_of: np.ndarray, slots: int, hint: np.ndarray,
                bound: np.ndarray, *, time_limit_s: float, objective: str, workers: int, seed: int,
                gap_limit: float, cands: list[list[int]] | None = None,
                local: bool = False, work_limit: float = 1.0,
                work: list[float] | None = None) -> tuple[np.ndarray, float, float, str]:
    """CP-SAT for one layer: (placement [G, S], objective, solver bound, status), in the units of tau.

    ``work_limit`` is CP-SAT's deterministic time for this layer (``time_limit_s`` wall seconds
    are a safety net); the deterministic time used is added to ``work[0]``.

    ``local``: the placement structure of ``placement_local`` (a count that is a multiple of the node
    count is spread evenly over the nodes, any other count > 1 sits on one node)."""
    from ortools.sat.python import cp_model

    work = work if work is not None else [0.0]
    W, E = tau.shape[:2]
    G = node_of.size
    hint_counts = np.bincount(hint[hint >= 0], minlength=E)
    cands = cands if cands is not None else _candidates(wsum, hint_counts, G, slots)
    N = int(node_of.max()) + 1
    node_gpus = [np.flatnonzero(node_of == n) for n in range(N)]
    ref = float(max(bound.max(), 1e-30))
    scale = 1e6 / ref
    m = cp_model.CpModel()
    Sum, WeightedSum = cp_model.LinearExpr.sum, cp_model.LinearExpr.weighted_sum
    z: dict[tuple[int, int, int], Any] = {}
    on_gpu: list[list[Any]] = [[] for _ in range(G)]  # per GPU: its z variables ...
    on_gpu_ec: list[list[tuple[int, int]]] = [[] for _ in range(G)]  # ... and their (e, c)
    for e in range(E):
        ys = []
        per_gpu_e: list[list[Any]] = [[] for _ in range(G)]
        for c in cands[e]:
            y = m.new_constant(1) if len(cands[e]) == 1 else m.new_bool_var(f"y{e}_{c}")
            if len(cands[e]) > 1:
                m.add_hint(y, int(c == hint_counts[e]))
            ys.append(y)
            row = [m.new_bool_var(f"z{e}_{c}_{g}") for g in range(G)]
            for g, v in enumerate(row):
                z[e, c, g] = v
                on_gpu[g].append(v)
                on_gpu_ec[g].append((e, c))
                per_gpu_e[g].append(v)
            m.add(Sum(row) == c * y)
            if local and N > 1 and c > 1 and c % N == 0:  # spread: c/N per node
                for idx in node_gpus:
                    m.add(Sum([row[g] for g in idx]) == (c // N) * y)
            elif local and N > 1 and c > 1:  # pinned: all c on one node
                us = [m.new_bool_var(f"u{e}_{c}_{n}") for n in range(N)]
                m.add(Sum(us) == y)
                for u, idx in zip(us, node_gpus, strict=True):
                    m.add(Sum([row[g] for g in idx]) == c * u)
        if len(ys) > 1:
            m.add_exactly_one(ys)
            for g in range(G):
                m.add_at_most_one(per_gpu_e[g])
    for g in range(G):
        m.add(Sum(on_gpu[g]) == slots)
    T = [m.new_int_var(0, 1 << 40, f"T{w}") for w in range(W)]
    coef = np.rint(tau * scale).astype(np.int64)
    loads = []
    for w in range(W):
        per_gpu = []
        for g in range(G):
            ec = np.asarray(on_gpu_ec[g], dtype=np.int64).reshape(-1, 2)
            weights = coef[w, ec[:, 0], ec[:, 1] - 1, int(node_of[g])].tolist()
            expr = WeightedSum(on_gpu[g], weights)
            m.add(expr <= T[w])
            per_gpu.append(expr)
        loads.append(per_gpu)
        m.add(T[w] >= int(np.floor(bound[w] * scale)))
    # GPUs of one node are interchangeable: order them by window-0 time (symmetry breaking)
    for g in range(G - 1):
        if node_of[g] == node_of[g + 1]:
            m.add(loads[0][g] >= loads[0][g + 1])
    if objective == "mean":
        m.minimize(Sum(T))
    else:
        top = m.new_int_var(0, 1 << 40, "Tmax")
        m.add_max_equality(top, T)
        m.minimize(top)
    # hint: the warm start, GPUs of each node sorted by window-0 time like the symmetry breaking
    times0 = layer_times(hint, tau, node_of)[0]
    order = np.arange(G)
    for n in np.unique(node_of):
        idx = np.flatnonzero(node_of == n)
        order[idx] = idx[np.argsort(-times0[idx], kind="stable")]
    hint_sorted = hint[order]
    held = [set(hint_sorted[g][hint_sorted[g] >= 0].tolist()) for g in range(G)]
    hint_vars, hint_values = [], []  # one batched append to the proto, not a call per variable
    for (e, c, g), v in z.items():
        hint_vars.append(v.index)
        hint_values.append(int(c == hint_counts[e] and e in held[g]))
    m.proto.solution_hint.vars.extend(hint_vars)
    m.proto.solution_hint.values.extend(hint_values)
    solver = cp_model.CpSolver()
    # Deterministic: a work budget in CP-SAT's deterministic time and a fixed set of workers
    # interleaved in one thread; the wall-clock limit is only a safety net.
    solver.parameters.max_deterministic_time = max(0.01, float(work_limit))
    solver.parameters.max_time_in_seconds = max(0.05, float(time_limit_s))
    solver.parameters.num_workers = max(1, int(workers))
    solver.parameters.interleave_search = True
    solver.parameters.random_seed = int(seed)
    solver.parameters.relative_gap_limit = float(gap_limit)
    status = solver.solve(m)
    work[0] += solver.deterministic_time
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return hint, float(layer_times(hint, tau, node_of).max()), float(bound.max()), "no-solution"
    out = np.full((G, slots), -1, dtype=np.int64)
    fill = np.zeros(G, dtype=np.int64)
    keys = list(z)
    chosen = solver.boolean_values(list(z.values())).to_numpy() if hasattr(solver, "boolean_values") else \
        np.array([solver.boolean_value(v) for v in z.values()])
    for i in np.flatnonzero(chosen).tolist():
        e, _c, g = keys[i]
        out[g, fill[g]] = e
        fill[g] += 1
    denom = W if objective == "mean" else 1
    name = "optimal" if status == cp_model.OPTIMAL else "feasible"
    return out, solver.objective_value / scale / denom, solver.best_objective_bound / scale / denom, name


# ---- the planner ------------------------------------------------------------------------------


def predict_moe_step(req: PlanRequest, placement: np.ndarray, **params: Any) -> tuple[float, str]:
    """The ILP's model of any plan: sum over layers of the slowest GPU (worst/mean window), and units."""
    opts = {**DEFAULTS, **dict(req.params), **params}
    tables = ReplicaTables(req, opts)
    total = 0.0
    for layer in range(placement.shape[0]):
        tau = tables.tau(layer, placement[layer - 1] if layer else None)
        total += aggregate(tables.times(layer, placement[layer], tau), str(opts["objective"]))
    return total, tables.units


def plan_ilp(req: PlanRequest) -> Plan:
    """Joint replica counts and placement by CP-SAT, layer by layer.

    The search is bounded by work, not wall time: ``work_limit`` CP-SAT deterministic seconds in
    all (an equal share per layer still to solve) and ``polish_moves`` swap-search tries per slot,
    with fixed interleaved workers, so a seed gives the same plan on any machine; the wall-clock
    ``req.time_limit_s`` is a safety net that only cuts a run short when the machine is very slow.
    """
    check_request(req)
    opts = {**DEFAULTS, **dict(req.params)}
    start = time.perf_counter()
    E, G, S = req.model.num_experts, req.num_devices, req.slots_per_device
    tables = ReplicaTables(req, opts)
    node_of, N, units = tables.node_of, tables.N, tables.units
    total = req.total_load()
    L = total.shape[0]
    placement = np.zeros((L, G, S), dtype=np.int64)
    objs, bounds, statuses = [], [], []
    work = [0.0]  # CP-SAT deterministic time used so far
    deadline = start + 0.98 * req.time_limit_s  # wall-clock safety net only
    for layer in range(L):
        tau = tables.tau(layer, placement[layer - 1] if layer else None)
        lb = layer_bound(tau, G, S)
        hints = [greedy_layer(total[layer], G, S), *target_hints(total[layer], G, S)]
        if N > 1:  # the same replica counts packed on the model's own per-node times
            hints += [cost_lpt(np.bincount(h.ravel(), minlength=E), tau, node_of, S) for h in list(hints)]
        raw = rebalance_layer(total[layer], G * S, 1, 1, G)
        raw = repair_duplicates(raw, total[layer])[0] if duplicate_slots(raw) else raw
        if not duplicate_slots(raw):
            hints.append(raw)
        hints = [h for h in hints if not duplicate_slots(h)]
        if tables.local:
            hints += [h for h in [local_hint(total[layer], node_of, S, tau)] if h is not None]
        scores = [aggregate(tables.times(layer, h, tau), opts["objective"]) for h in hints]
        best = hints[int(np.argmin(scores))]
        best_score = min(scores)
        lb_agg = float(lb.mean() if opts["objective"] == "mean" else lb.max())
        now = time.perf_counter()
        # each layer gets an equal share of the work (deterministic) and of the wall time left
        work_share = (float(opts["work_limit"]) - work[0]) / (L - layer)
        wall_share = (deadline - now) / (L - layer)
        best_counts = np.bincount(best[best >= 0], minlength=E)
        cands = (local_candidates(total[layer], best_counts, G, S, N) if tables.local
                 else _candidates(total[layer], best_counts, G, S))
        # too little work for a model this size: CP-SAT would not get past its presolve
        starved = work_share < float(opts["min_work_per_var"]) * G * sum(len(c) for c in cands)
        if best_score <= lb_agg * (1 + float(opts["gap_limit"])) or starved or wall_share <= 0:
            placement[layer], status, solver_bound = best, "hint", lb_agg
        else:
            p, _, solver_bound, status = solve_layer(
                tau, total[layer], node_of, S, best, lb,
                time_limit_s=wall_share * 0.6, work_limit=work_share, work=work,
                objective=str(opts["objective"]), workers=int(opts["workers"]), seed=req.seed,
                gap_limit=float(opts["gap_limit"]), local=tables.local, cands=cands)
            if aggregate(tables.times(layer, p, tau), opts["objective"]) > best_score:
                p = best
            # the swap search scores the even-dispatch table; under local dispatch CP-SAT has the time
            placement[layer] = p if tables.local else polish(
                p, tau, node_of, str(opts["objective"]), now + wall_share * 0.95, seed=req.seed + layer,
                max_steps=int(opts["polish_moves"]) * G * S)
        objs.append(aggregate(tables.times(layer, placement[layer], tau), opts["objective"]))
        bounds.append(min(objs[-1], max(lb_agg, solver_bound)))
        statuses.append(status)
    obj, bnd = float(np.sum(objs)), float(np.sum(bounds))
    solve_s = time.perf_counter() - start
    return make_plan(
        req, "ilp", placement, objective=obj, bound=bnd, gap=(obj - bnd) / obj if obj > 0 else 0.0,
        solve_s=solve_s,
        params={"objective": opts["objective"], "origin": tables.origin_mode, "units": units,
                "dispatch": "local" if tables.local else "even",
                "batch_tokens": opts["batch_tokens"], "windows": int(tables.wstep.shape[0]),
                "time_limit_s": req.time_limit_s, "workers": int(opts["workers"]),
                "work_limit": float(opts["work_limit"]), "work_used": round(work[0], 3),
                "layers_solved": int(sum(s != "hint" for s in statuses)),
                "layers_optimal": int(sum(s == "optimal" for s in statuses))},
        predicted={"moe_step_s" if units.startswith("seconds") else "moe_step_tokens": obj,
                   "moe_step_bound": bnd},
    )
