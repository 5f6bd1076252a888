"""Heuristics around the placement ILP: warm starts, swap local search, and scoring a layout.

``tau[W, E, c-1, N]`` (see ``placement_tables.replica_table``) is the time of one replica of expert e
when e has c replicas, on a GPU of node n, in window w.
"""

from __future__ import annotations

import heapq
import time

import numpy as np

from moesim.planners.base import duplicate_slots, lpt_pack


def layer_times(placement: np.ndarray, tau: np.ndarray, node_of: np.ndarray) -> np.ndarray:
    """``[W, G]`` time of each GPU in each window for one layer's ``[G, S]`` placement."""
    E = tau.shape[1]
    counts = np.bincount(placement[placement >= 0], minlength=E)
    e = np.maximum(placement, 0)
    per = tau[:, e, np.maximum(counts[e], 1) - 1, node_of[:, None]]  # [W, G, S]
    return np.where(placement[None] >= 0, per, 0.0).sum(axis=2)


def aggregate(times: np.ndarray, objective: str) -> float:
    """``[W, G]`` -> the layer's objective: worst window's slowest GPU, or the mean over windows."""
    slowest = times.max(axis=1)
    return float(slowest.mean() if objective == "mean" else slowest.max())


TARGET_FRACTIONS = tuple(round(1.0 - 0.025 * i, 3) for i in range(21))  # 1.0, 0.975, ... 0.5


def target_hints(weights: np.ndarray, num_devices: int, slots: int) -> list[np.ndarray]:
    """Layouts whose hot replicas are sized to fill a GPU: c_e = ceil(w_e / (f * mean GPU load)).

    D'Hondt spends every spare slot on the hottest experts, which with few slots per GPU leaves
    replicas of ~0.6 of a GPU that pack badly (two overfill a GPU). Sizing hot replicas near a
    fraction f of a GPU and giving the leftover slots to the coldest experts (whose extra copies
    carry almost nothing) packs far better: on Zipf(1.2), 256 experts, 64 GPUs x 5 slots, LPT
    goes from 1.10 to ~1.01 max/mean. One layout per f, each packed by LPT without duplicates.
    """
    w = np.asarray(weights, dtype=np.float64)
    G, total = num_devices, num_devices * slots
    mean = w.sum() / G
    if mean <= 0:
        return []
    out = []
    coldest = np.argsort(w, kind="stable")
    for f in TARGET_FRACTIONS:
        counts = np.minimum(G, np.maximum(1, np.ceil(w / (f * mean) - 1e-9))).astype(np.int64)
        spare = total - counts.sum()
        if spare < 0:
            continue
        while spare > 0 and (counts < G).any():
            for e in coldest:
                if spare == 0:
                    break
                if counts[e] < G:
                    counts[e] += 1
                    spare -= 1
        items = np.repeat(np.arange(w.size), counts)
        layer = lpt_pack(items, (w / counts)[items], G, slots)
        if not duplicate_slots(layer):
            out.append(layer)
    return out


def cost_lpt(counts: np.ndarray, tau: np.ndarray, node_of: np.ndarray, slots: int) -> np.ndarray:
    """LPT on the model's times: each replica (costliest first) to the GPU it finishes earliest on.

    Unlike token LPT this sees that a replica costs less on the node its tokens come from, so with
    several nodes it keeps experts near their tokens while balancing.
    """
    G = node_of.size
    E = counts.size
    per = tau.mean(axis=0)[np.arange(E), np.maximum(counts, 1) - 1]  # [E, N]
    items = np.repeat(np.arange(E), counts)
    order = np.argsort(-per[items].min(axis=1), kind="stable")
    nodes = node_of.tolist()
    N = max(nodes) + 1 if nodes else 0
    busy = [0.0] * G
    fill = [0] * G
    held: list[set[int]] = [set() for _ in range(G)]
    out = np.full((G, slots), -1, dtype=np.int64)
    # per node, its GPUs with a free slot by (busy, index); a node adds the same per[e, n] to all
    heaps: list[list[tuple[float, int]]] = [[] for _ in range(N)]
    if slots > 0:
        for g in range(G):
            heaps[nodes[g]].append((0.0, g))
    per_list, item_list = per.tolist(), items.tolist()
    for i in order.tolist():
        e = item_list[i]
        g = _cheapest_gpu(heaps, per_list[e], held, e, avoid=True)
        if g < 0:  # every free GPU holds e already
            g = _cheapest_gpu(heaps, per_list[e], held, e, avoid=False)
        n = nodes[g]
        heaps[n].remove((busy[g], g))
        heapq.heapify(heaps[n])
        out[g, fill[g]] = e
        fill[g] += 1
        busy[g] += per_list[e][n]
        held[g].add(e)
        if fill[g] < slots:
            heapq.heappush(heaps[n], (busy[g], g))
    return out


def _cheapest_gpu(heaps: list[list[tuple[float, int]]], cost: list[float], held: list[set[int]], e: int,
                  *, avoid: bool) -> int:
    """numpy's ``argmin(busy[cand] + cost[node[cand]])`` over the free GPUs (lowest index on ties),
    from per-node heaps: within a node the sum is monotone in busy, so only each heap's front
    (the GPUs whose sum equals the front's, after rounding) can win. -1 when none qualifies."""
    best_v, best_g = np.inf, -1
    for n, heap in enumerate(heaps):
        if not heap:
            continue
        c = cost[n]
        b, g = heap[0]
        v = b + c
        size = len(heap)
        if (not (avoid and e in held[g]) and (size < 2 or heap[1][0] + c > v)
                and (size < 3 or heap[2][0] + c > v)):
            # the usual case, without popping: the front is free of e and nothing ties with it
            # (heap[1], heap[2] are the next smallest)
            if v < best_v or (v == best_v and g < best_g):
                best_v, best_g = v, g
            continue
        popped = []
        v_node = None
        while heap:
            b, g = heap[0]
            v = b + c
            if v_node is not None and v > v_node:
                break
            popped.append(heapq.heappop(heap))
            if avoid and e in held[g]:
                continue
            if v_node is None:
                v_node = v
            if v < best_v or (v == best_v and g < best_g):
                best_v, best_g = v, g
        for entry in popped:
            heapq.heappush(heap, entry)
    return best_g


def _recount_move(p: np.ndarray, counts: np.ndarray, tau: np.ndarray, node_of: np.ndarray, times: np.ndarray,
                  per: np.ndarray, a: int, s: int, objective: str) -> tuple[float, int] | None:
    """Best expert f to take slot (a, s) from e: e loses a replica, f gains one (counts change).

    Every replica of e gets heavier and every replica of f lighter; all candidates f are scored at
    once. Returns (objective, f) or None when e has a single replica or nothing fits.
    """
    e = int(p[a, s])
    G = p.shape[0]
    E = tau.shape[1]
    if e < 0 or counts[e] < 2:
        return None
    holds = np.zeros((E, G), dtype=bool)
    rows = np.broadcast_to(np.arange(G)[:, None], p.shape)
    holds[np.maximum(p, 0)[p >= 0], rows[p >= 0]] = True
    cand = np.flatnonzero(~holds[:, a] & (counts < G) & (np.arange(E) != e))
    if cand.size == 0:
        return None
    new = np.repeat(times[None], cand.size, axis=0)  # [F, W, G]
    ce = counts[e]
    d_e = np.where(holds[e][None], tau[:, e, ce - 2, node_of] - tau[:, e, ce - 1, node_of], 0.0)  # [W, G]
    d_e[:, a] = 0.0
    new += d_e[None]
    cf = counts[cand]
    d_f = tau[:, cand[:, None], cf[:, None], node_of[None, :]] - tau[:, cand[:, None], cf[:, None] - 1,
                                                                    node_of[None, :]]  # [W, F, G]
    new += np.where(holds[cand][None], d_f, 0.0).transpose(1, 0, 2)
    new[:, :, a] = times[None, :, a] - per[None, :, a, s] + tau[:, cand, cf, node_of[a]].T
    slowest = new.max(axis=2)  # [F, W]
    vals = slowest.mean(axis=1) if objective == "mean" else slowest.max(axis=1)
    k = int(np.argmin(vals))
    return float(vals[k]), int(cand[k])


def _swap_values(times: np.ndarray, a: int, bs: np.ndarray, new_a: np.ndarray, new_b: np.ndarray,
                 objective: str) -> np.ndarray:
    """The layer objective after each candidate swap: GPU a's times become ``new_a[:, i]`` and GPU
    ``bs[i]``'s ``new_b[:, i]`` (``[W, n]``); every other GPU keeps ``times`` [W, G]. Equal to
    ``aggregate`` of each modified matrix: the other GPUs' maximum is the largest, second or
    third largest of ``times`` per window, whichever is neither a nor b."""
    W, G = times.shape
    k = min(3, G)
    top = np.argsort(-times, axis=1, kind="stable")[:, :k]  # [W, k]
    rest = np.full((W, bs.size), -np.inf)
    for j in range(k - 1, -1, -1):  # the first top entry that is neither a nor b wins
        g = top[:, j][:, None]
        use = (g != a) & (g != bs[None, :])
        rest = np.where(use, times[np.arange(W)[:, None], g], rest)
    slowest = np.maximum(np.maximum(new_a, new_b), rest)  # [W, n]
    if objective == "mean":
        total = slowest[0].copy()
        for w in range(1, W):  # in window order, like np.mean of a short vector
            total += slowest[w]
        return total / W
    return slowest.max(axis=0)


def polish(placement: np.ndarray, tau: np.ndarray, node_of: np.ndarray, objective: str,
           deadline: float, seed: int = 0, max_steps: int | None = None) -> np.ndarray:
    """Local search on the model's own objective, moving slots off a slowest GPU.

    Two moves: swap a slot with a slot of another GPU (counts fixed), or hand the slot to another
    expert (its old expert keeps at least one replica). Neither creates a duplicate. Each move scores
    all its candidates at once in numpy, so this refines CP-SAT's answer cheaply. It stops after
    ``4 * G * S`` tries in a row without improvement, after ``max_steps`` tries in all
    (deterministic), or at the wall-clock ``deadline`` (a safety net).
    """
    p = placement.copy()
    G, S = p.shape
    E = tau.shape[1]
    counts = np.bincount(p[p >= 0], minlength=E)
    rng = np.random.default_rng(seed)

    def slot_times(p: np.ndarray) -> np.ndarray:  # [W, G, S]
        e = np.maximum(p, 0)
        return np.where(p[None] >= 0, tau[:, e, np.maximum(counts[e], 1) - 1, node_of[:, None]], 0.0)

    per = slot_times(p)
    times = per.sum(axis=2)
    cur = aggregate(times, objective)
    stale = steps = 0
    while time.perf_counter() < deadline and stale < 4 * G * S and (max_steps is None or steps < max_steps):
        steps += 1
        slowest = times.argmax(axis=1)
        a = int(slowest[times.max(axis=1).argmax()] if objective != "mean" else rng.choice(slowest))
        s = int(rng.integers(S))
        e = p[a, s]
        # every (b, t): move e to b's slot t and b's expert f to a
        f = p  # [G, S]
        ok = (f != e) & ~(p == e).any(axis=1)[:, None] & ~np.isin(f, p[a])
        ok[a] = False
        swap_val, best_bt = cur, None
        if e >= 0 and ok.any():
            fe = np.maximum(f, 0)
            cf = np.maximum(counts[fe], 1) - 1
            in_a = np.where(f >= 0, tau[:, fe, cf, node_of[a]], 0.0)  # [W, G, S] f's cost on a
            e_on_b = tau[:, e, counts[e] - 1, node_of][:, :, None]  # [W, G, 1]
            new_a = times[:, a][:, None, None] - per[:, a, s][:, None, None] + in_a
            new_b = times[:, :, None] - per + e_on_b
            bs, ts = np.nonzero(ok)
            vals = _swap_values(times, a, bs, new_a[:, bs, ts], new_b[:, bs, ts], objective)
            for i, val in enumerate(vals.tolist()):  # the first strictly better, then better still
                if val < swap_val * (1 - 1e-12):
                    swap_val, best_bt = val, (int(bs[i]), int(ts[i]))
        recount = _recount_move(p, counts, tau, node_of, times, per, a, s, objective)
        if recount is not None and recount[0] < swap_val * (1 - 1e-12):
            counts[e] -= 1
            counts[recount[1]] += 1
            p[a, s] = recount[1]
            cur = recount[0]
        elif best_bt is not None:
            b, t = best_bt
            p[a, s], p[b, t] = p[b, t], p[a, s]
            cur = swap_val
        else:
            stale += 1
            continue
        per = slot_times(p)
        times = per.sum(axis=2)
        stale = 0
    return p
