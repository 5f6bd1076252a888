"""Replica-time tables of the placement optimiser: what one replica of an expert costs, per node.

``tau[W, E, c-1, N]`` is the time of one replica of expert e, in window w, when e has c replicas and
the replica sits on node n: the cost model's expert time for ``load / c`` tokens plus the all-to-all
time of those tokens from where they start (evenly, or where the previous layer's experts ran).
``layer_bound`` is the analytic lower bound on a layer's slowest GPU over every valid placement.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.cost.a2a import planner_terms
from moesim.planners.base import PlanRequest
from moesim.planners.placement_local import link_seconds, local_layer_times, local_tau
from moesim.planners.placement_search import layer_times

# ---- cost tables ------------------------------------------------------------------------------


def _compute_fn(req: PlanRequest, units: str):
    """tokens array -> seconds of one expert's GEMMs on the request's first GPU (or tokens)."""
    if units == "tokens":
        return (lambda t: np.asarray(t, dtype=np.float64)), "tokens"
    cost = req.cost
    if cost is None:
        try:
            from moesim.cost import CostModel

            cost = CostModel(req.cluster, req.model)
        except (ImportError, TypeError):
            cost = None
    if cost is not None and hasattr(cost, "expert_times_s"):
        dev = req.devices[0]
        return (lambda t: np.asarray(cost.expert_times_s(dev, np.asarray(t, dtype=np.float64).ravel()),
                                     dtype=np.float64).reshape(np.shape(t))), "seconds (cost model)"
    spec = req.cluster.device(req.devices[0]).spec
    wbytes = req.model.expert_bytes()
    mem = spec.memory_bandwidth_bytes_per_s * spec.memory_efficiency
    flops = spec.peak_flops(req.model.weight_dtype) * spec.compute_efficiency
    per_tok = req.model.expert_flops_per_token

    def roofline(t):
        t = np.asarray(t, dtype=np.float64)
        return np.where(t > 0, np.maximum(wbytes / mem, t * per_tok / flops), 0.0)

    return roofline, "seconds (roofline: no moesim.cost)"


def _comm_per_token(req: PlanRequest, origin: np.ndarray, units: str, a2a: str = "auto") -> np.ndarray:
    """``[E, N]`` seconds per token a replica on node n spends receiving and returning tokens of e.

    ``origin[e, n]`` is the fraction of e's tokens that start on node n; tokens from the same node
    cross NVLink (except the 1/G_n already on the GPU), the rest the GPU's InfiniBand rail (in the
    hierarchical mode fewer times, once per node, and then NVLink from the rail peer).
    """
    E, N = origin.shape
    if units == "tokens":
        return np.zeros((E, N))
    node_of = req.node_of_device()
    terms = planner_terms(req.model, N, a2a)
    nbytes = terms.bytes_per_token  # dispatch + combine
    out = np.zeros((E, N))
    for n in range(N):
        gpus = [req.devices[g] for g in np.flatnonzero(node_of == n)]
        intra = req.cluster.bottleneck_bandwidth(gpus[0], gpus[1]) if len(gpus) > 1 else np.inf
        others = [req.devices[g] for g in np.flatnonzero(node_of != n)]
        inter = req.cluster.bottleneck_bandwidth(others[0], gpus[0]) if others else np.inf
        same = origin[:, n]
        nvlink = (1 - 1 / len(gpus)) / intra
        cross = terms.fabric_copies / inter + terms.forwarded * nvlink  # forwarded on from the rail peer
        out[:, n] = nbytes * (same * nvlink + (1 - same) * cross)
    return out


def replica_table(w: np.ndarray, comm: np.ndarray, compute, num_devices: int) -> np.ndarray:
    """``tau[W, E, c-1, N]``: time of one replica of e when e has c = 1..G replicas."""
    c = np.arange(1, num_devices + 1, dtype=np.float64)
    tokens = w[:, :, None] / c[None, None, :]  # [W, E, C]
    return compute(tokens)[..., None] + tokens[..., None] * comm[None, :, None, :]


def layer_bound(tau: np.ndarray, num_devices: int, slots: int) -> np.ndarray:
    """``[W]`` analytic lower bound on each window's slowest GPU, for any valid placement.

    For a threshold T each expert needs at least c_e(T) replicas (the fewest whose cheapest replica
    takes <= T); T is feasible only if those fit the G*S slots and their total work fits G*T. The
    work of e with c replicas is ``c * tau(load / c)``; since all G*S slots are filled, each spare
    replica adds at least the smallest one-replica step of any expert's least work (with the cost
    model, at least one weight read). The smallest feasible T is found by bisection over the
    table's values.
    """
    best = tau.min(axis=3)  # [W, E, C] cheapest node
    out = np.zeros(tau.shape[0])
    for w in range(tau.shape[0]):
        b = best[w]
        work = b * np.arange(1, num_devices + 1)[None, :]
        # the cheapest total work of e with at least c replicas, for each c
        work_min = np.minimum.accumulate(work[:, ::-1], axis=1)[:, ::-1]
        values = np.unique(b)
        rows = np.arange(b.shape[0])
        # the least work one more replica of any expert adds (min consecutive step of work_min);
        # with it the test below stays monotone in T, so bisection finds the least feasible T
        step = max(0.0, float(np.diff(work_min, axis=1).min())) if num_devices > 1 else 0.0

        def work_at(T: float, b=b, work_min=work_min, rows=rows, step=step) -> float | None:
            """Least total work when every replica may take T (constant between table values)."""
            fits = b <= T * (1 + 1e-12)
            if not fits.any(axis=1).all():
                return None
            need = fits.argmax(axis=1)
            extra = num_devices * slots - (need + 1).sum()
            if extra < 0:
                return None
            # every slot is filled: each spare replica adds at least `step` work (a weight read)
            return float(work_min[rows, need].sum() + extra * step)

        def ok(k: int, values=values) -> bool:
            work = work_at(values[k])
            return work is not None and work <= num_devices * values[k] * (1 + 1e-12)

        lo, hi = 0, values.size  # smallest k with values[k] feasible; values.size = none is
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid + 1
        # the optimum lies in [values[lo-1], values[lo]]: same replica needs as at values[lo-1]
        T = float(values[lo]) if lo < values.size else np.inf
        if lo > 0:
            work = work_at(values[lo - 1])
            if work is not None:
                T = min(T, max(float(values[lo - 1]), work / num_devices))
        out[w] = T
    return out


# ---- where tokens come from -------------------------------------------------------------------


def _previous_layer_origin(ids_prev: np.ndarray, ids_cur: np.ndarray, prev: np.ndarray, node_of: np.ndarray,
                           E: int, N: int) -> np.ndarray:
    """``[E, N]``: a token starts layer l where its layer l-1 experts ran (replicas split evenly)."""
    counts = np.bincount(prev[prev >= 0], minlength=E)
    share = np.zeros((E, N))  # share[a, n]: fraction of expert a's replicas on node n
    for g in range(prev.shape[0]):
        for a in prev[g][prev[g] >= 0]:
            share[a, node_of[g]] += 1.0 / counts[a]
    tok_node = np.zeros((ids_prev.shape[0], N))
    K = ids_prev.shape[1]
    for k in range(K):
        a = ids_prev[:, k]
        ok = a >= 0
        tok_node[ok] += share[a[ok]] / K
    out = np.zeros((E, N))
    for k in range(ids_cur.shape[1]):
        b = ids_cur[:, k]
        ok = b >= 0
        np.add.at(out, b[ok], tok_node[ok])
    total = out.sum(axis=1, keepdims=True)
    return np.divide(out, total, out=np.full_like(out, 1.0 / N), where=total > 0)


class ReplicaTables:
    """The per-layer replica-time tables of a request (shared by the ILP and ``predict_moe_step``)."""

    def __init__(self, req: PlanRequest, opts: dict[str, Any]):
        self.req = req
        self.E, self.G = req.model.num_experts, req.num_devices
        self.node_of = req.node_of_device()
        self.N = int(self.node_of.max()) + 1
        windows = req.windows()
        # scale each window to one step of `batch_tokens` tokens, so times are per-step times
        per_window = windows.sum(axis=2).max(axis=1) / req.model.top_k
        scale = np.divide(float(opts["batch_tokens"]), per_window, out=np.zeros_like(per_window),
                          where=per_window > 0)
        self.wstep = windows * scale[:, None, None]
        self.compute, self.units = _compute_fn(req, str(opts["units"]))
        mode = str(opts["origin"]) if self.N > 1 else "even"
        self.origin_mode = mode if (mode == "even" or req.trace is not None) else "even"
        # local dispatch (placement_local) is modelled with tokens starting evenly on all GPUs
        self.local = str(opts["dispatch"]) == "local" and self.N > 1
        if self.local:
            self.origin_mode = "even"
            self.nv, self.ib = link_seconds(req, self.units, str(opts["a2a"]))
        self.ids = np.asarray(req.trace.expert_ids) if self.origin_mode == "previous-layer" else None
        self.a2a = str(opts["a2a"])

    def tau(self, layer: int, previous: np.ndarray | None) -> np.ndarray:
        """``[W, E, G, N]`` for ``layer``; ``previous`` is layer-1's ``[G, S]`` placement."""
        E, N = self.E, self.N
        if self.local:
            return local_tau(self.wstep[:, layer], self.compute, self.nv, self.ib, self.node_of)
        if self.ids is not None and layer > 0 and previous is not None:
            origin = _previous_layer_origin(self.ids[:, layer - 1], self.ids[:, layer], previous,
                                            self.node_of, E, N)
        else:
            origin = np.full((E, N), 1.0 / N)
        return replica_table(self.wstep[:, layer], _comm_per_token(self.req, origin, self.units, self.a2a),
                             self.compute, self.G)

    def times(self, layer: int, placement: np.ndarray, tau: np.ndarray) -> np.ndarray:
        """``[W, G]`` each GPU's time for ``layer``'s ``[G, S]`` placement (exact under local dispatch)."""
        if self.local:
            return local_layer_times(placement, self.wstep[:, layer], self.compute, self.nv, self.ib,
                                     self.node_of)
        return layer_times(placement, tau, self.node_of)
