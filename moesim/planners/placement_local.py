"""The placement ILP's model of locality-aware dispatch (``params["dispatch"] == "local"``).

Under local dispatch (``moesim.sim.replica_routing``) a token on GPU s uses the replica of its
expert e on s if any, else splits over e's replicas on s's node, else over all of e's replicas.
Tokens start evenly on all G GPUs (data-parallel attention), w_e/G per GPU. For a replica of e on
GPU g of node m, with ``c_n`` replicas of e on node n (c in total):

    own    = w_e / G                                    stays on g
    same   = (G_m - c_m) / (G c_m) * w_e                from the other GPUs of m, over NVLink
    remote = sum_{n: c_n = 0} G_n / (G c) * w_e         from nodes without a replica, over InfiniBand
    time   = expert_time(own + same + remote) + same * nv_m + remote * ib_m

(``nv``/``ib``: seconds per token there and back on the node's NVLink / InfiniBand rail). So a node
that holds a replica of e sends none of e's tokens across nodes, and the ILP trades balance
against one replica of each hot expert per node. The CP-SAT model (``solve_layer`` with
``local=True``) lets each expert take either c = 1, or c = N*k spread k per node (no InfiniBand
for e at all, every replica ``w_e / c``), or c > 1 pinned to one node (N > 2 only, so that any
slot count can be filled); ``local_layer_times`` scores any placement exactly.
"""

from __future__ import annotations

import numpy as np

from moesim.cost.a2a import planner_terms
from moesim.planners.base import PlanRequest, apportion


def link_seconds(req: PlanRequest, units: str, a2a: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """``(nv[N], ib[N])`` seconds per token sent there and back over NVLink / the InfiniBand rail
    (the rail's share once per node and then NVLink in the hierarchical all-to-all mode)."""
    node_of = req.node_of_device()
    N = int(node_of.max()) + 1
    nv, ib = np.zeros(N), np.zeros(N)
    if units == "tokens":
        return nv, ib
    terms = planner_terms(req.model, N, a2a)
    nbytes = terms.bytes_per_token  # dispatch + combine
    for n in range(N):
        gpus = [req.devices[g] for g in np.flatnonzero(node_of == n)]
        others = [req.devices[g] for g in np.flatnonzero(node_of != n)]
        nv[n] = nbytes / req.cluster.bottleneck_bandwidth(gpus[0], gpus[1]) if len(gpus) > 1 else 0.0
        if others:  # hierarchical: forwarded on from the rail peer unless the replica is there
            ib[n] = (nbytes * terms.fabric_copies / req.cluster.bottleneck_bandwidth(others[0], gpus[0])
                     + terms.forwarded * nv[n] * (1 - 1 / len(gpus)))
    return nv, ib


def local_tau(w: np.ndarray, compute, nv: np.ndarray, ib: np.ndarray, node_of: np.ndarray) -> np.ndarray:
    """``tau[W, E, c-1, N]`` under local dispatch: c a multiple of N spread evenly over the nodes,
    any other c pinned to one node (equal-sized nodes assumed for the spread case)."""
    G = node_of.size
    N = nv.size
    Gn = np.bincount(node_of, minlength=N).astype(np.float64)  # [N]
    c = np.arange(1, G + 1, dtype=np.float64)
    tokens = w[:, :, None] / c[None, None, :]  # [W, E, C] every replica's load is w / c either way
    own = w[:, :, None] / G
    spread = (np.arange(1, G + 1) % N == 0)[None, None, :, None] if N > 1 else np.ones((1, 1, G, 1), bool)
    # spread: everything but the own share comes over NVLink; pinned on node n: own node's non-holders
    # over NVLink, the other nodes' tokens over InfiniBand
    same_spread = (tokens - own)[..., None]
    cc = c[None, None, :, None]
    per = w[:, :, None, None] / (G * cc)  # [W, E, C, 1] a source GPU's tokens per replica
    same_pinned = np.maximum(Gn[None, None, None, :] - cc, 0.0) * per
    remote_pinned = (G - Gn)[None, None, None, :] * per
    same = np.where(spread, same_spread, same_pinned)
    remote = np.where(spread, 0.0, remote_pinned)
    return compute(tokens)[..., None] + same * nv + remote * ib


def local_layer_times(placement: np.ndarray, w: np.ndarray, compute, nv: np.ndarray, ib: np.ndarray,
                      node_of: np.ndarray) -> np.ndarray:
    """``[W, G]`` exact time of each GPU under local dispatch for one layer's ``[G, S]`` placement;
    ``w`` is ``[W, E]`` tokens per expert."""
    G = node_of.size
    N = nv.size
    E = w.shape[1]
    Gn = np.bincount(node_of, minlength=N).astype(np.float64)
    ok = placement >= 0
    e = np.maximum(placement, 0)
    cn = np.zeros((E, N))
    np.add.at(cn, (e[ok], np.broadcast_to(node_of[:, None], placement.shape)[ok]), 1.0)
    c = cn.sum(axis=1)  # [E]
    m = np.broadcast_to(node_of[:, None], placement.shape)  # [G, S] node of each slot
    c_here = np.maximum(cn[e, m], 1.0)
    frac_same = (Gn[m] - c_here) / (G * c_here)  # [G, S]
    empty_nodes = (cn == 0).astype(np.float64) @ Gn  # [E] GPUs on nodes without a replica
    frac_remote = empty_nodes[e] / (G * np.maximum(c[e], 1.0))
    ws = w[:, e]  # [W, G, S]
    same, remote = ws * frac_same, ws * frac_remote
    t = compute(ws / G + same + remote) + same * nv[m] + remote * ib[m]
    return np.where(ok[None], t, 0.0).sum(axis=2)


def local_candidates(wsum: np.ndarray, hint_counts: np.ndarray, G: int, S: int, N: int) -> list[list[int]]:
    """Counts per expert: 1, spread multiples of N around D'Hondt's count for the hot experts (and
    for as many more as there are spare slots), 2 pinned where N > 2, and the hint's count."""
    E = wsum.size
    jeff = apportion(wsum, G * S, max_per_item=G)
    spare = G * S - E
    hot = set(np.argsort(-wsum, kind="stable")[:min(E, spare + max(1, E // 8))].tolist())
    out = []
    for e in range(E):
        cands = {1, int(hint_counts[e])}
        if e in hot or jeff[e] >= 2:
            top = int(np.ceil(jeff[e] / N)) + 1
            cands |= {N * k for k in range(1, top + 1)}
            if N > 2:
                cands.add(2)
        out.append(sorted(c for c in cands if 1 <= c <= G))
    return out


def local_hint(w: np.ndarray, node_of: np.ndarray, S: int, tau: np.ndarray) -> np.ndarray | None:
    """A layout valid for the local model: D'Hondt-like steps to the next multiple of N (the hottest
    per-replica load first), spread replicas packed per node, then the rest by LPT on ``tau``."""
    G = node_of.size
    N = int(node_of.max()) + 1
    E = w.size
    counts = np.ones(E, dtype=np.int64)
    spare = G * S - E
    while spare > 0:
        step = np.where(counts == 1, N - 1, N) if N > 1 else np.ones(E, dtype=np.int64)
        fits = (step <= spare) & (counts + step <= G) & (step > 0)
        if not fits.any():
            return None
        e = int(np.argmax(np.where(fits, w / counts, -1.0)))
        counts[e] += step[e]
        spare -= step[e]
    per = tau.mean(axis=0)[np.arange(E), counts - 1]  # [E, N]
    busy, fill = np.zeros(G), np.zeros(G, dtype=np.int64)
    out = np.full((G, S), -1, dtype=np.int64)
    spread = [e for e in np.argsort(-per.max(axis=1), kind="stable") if counts[e] > 1]
    single = [e for e in np.argsort(-per.max(axis=1), kind="stable") if counts[e] == 1]
    for e in spread:
        for n in range(N):
            gpus = np.flatnonzero((node_of == n) & (fill < S))
            k = counts[e] // N
            if gpus.size < k:
                return None
            for g in gpus[np.argsort(busy[gpus], kind="stable")[:k]]:
                out[g, fill[g]] = e
                fill[g] += 1
                busy[g] += per[e, n]
    for e in single:
        gpus = np.flatnonzero(fill < S)
        g = int(gpus[np.argmin(busy[gpus] + per[e, node_of[gpus]])])
        out[g, fill[g]] = e
        fill[g] += 1
        busy[g] += per[e, node_of[g]]
    return out
