"""Re-planning with few moves: a new plan's replica counts, placed keeping the old placement where it can.

A planner run on a new window returns a placement whose GPU assignment may share little with the
serving one even when the replica counts barely changed (LPT and EPLB's packing reorder everything
on a small change of load), and every changed slot is an expert's weights to copy. :func:`keep_layer`
keeps each expert on the GPUs that already hold it, up to its new count, and packs only the
remaining replicas (heaviest first, onto the lightest GPU with a free slot and no copy, as
:func:`moesim.planners.base.lpt_pack`). When the slowest GPU then carries more than ``1 + tolerance``
times the planner's own slowest GPU on the window, replicas of the slowest GPU are swapped with
lighter ones elsewhere (the swap that lowers the pair's larger load most, two slots copied per swap)
until it does; only if no swap helps is the planner's layer used as it is.
"""

from __future__ import annotations

import numpy as np

from moesim.planners.base import layer_device_load
from moesim.plans.plan import Plan


def keep_layer(old: np.ndarray, new: np.ndarray, weights: np.ndarray, tolerance: float) -> np.ndarray:
    """``[G, S]``: ``new``'s replica counts with ``old``'s slots kept where possible (or ``new``)."""
    E = weights.size
    counts = np.bincount(new[new >= 0], minlength=E)
    out = np.full_like(new, -1)
    kept = np.zeros(E, dtype=np.int64)
    for g in range(old.shape[0]):
        for s, e in enumerate(old[g].tolist()):
            if e >= 0 and kept[e] < counts[e]:
                out[g, s] = e
                kept[e] += 1
    per = np.divide(weights, counts, out=np.zeros(E), where=counts > 0)
    items = np.repeat(np.arange(E), counts - kept)
    # the per-replica load of a kept expert is its new share (w / new count)
    load = np.array([per[out[g][out[g] >= 0]].sum() for g in range(out.shape[0])])
    for e in sorted(items.tolist(), key=lambda x: (-per[x], x)):
        free = [g for g in range(out.shape[0]) if (out[g] < 0).any() and e not in out[g]]
        if not free:
            return new
        g = min(free, key=lambda i: (load[i], i))
        out[g, int(np.argmax(out[g] < 0))] = e
        load[g] += per[e]
    target = layer_device_load(new, weights).max(initial=0.0) * (1.0 + tolerance) + 1e-12
    return out if _swap_down(out, load, per, target, max_swaps=out.size) else new


def _swap_down(out: np.ndarray, load: np.ndarray, per: np.ndarray, target: float, max_swaps: int) -> bool:
    """Swap replicas off the slowest GPU (in place) until it carries at most ``target``; False if stuck.

    Each swap lowers the larger load of its pair below the current maximum, so the sorted loads fall
    lexicographically and the search ends; ``max_swaps`` bounds the slots it may change."""
    rows = [list(map(int, r)) for r in out]
    for _ in range(max_swaps):
        h = int(np.argmax(load))
        if load[h] <= target:
            break
        best: tuple[float, int, int, int] | None = None
        for i, e in enumerate(rows[h]):
            if e < 0:
                continue
            for g, row in enumerate(rows):
                if g == h or e in row:
                    continue
                for j, f in enumerate(row):
                    pf = per[f] if f >= 0 else 0.0
                    if pf >= per[e] or (f >= 0 and f in rows[h]):
                        continue
                    worst = max(load[h] - per[e] + pf, load[g] - pf + per[e])
                    if worst < load[h] - 1e-12 and (best is None or worst < best[0]):
                        best = (worst, i, g, j)
        if best is None:
            return False
        _, i, g, j = best
        e, f = rows[h][i], rows[g][j]
        pf = per[f] if f >= 0 else 0.0
        rows[h][i], rows[g][j] = f, e
        load[h] += pf - per[e]
        load[g] += per[e] - pf
    out[:] = np.asarray(rows, dtype=out.dtype)
    return bool(load.max(initial=0.0) <= target)


def keep_placement(old: Plan, new: Plan, load: np.ndarray, tolerance: float = 0.01) -> np.ndarray:
    """``[L, G, S]`` :func:`keep_layer` for every MoE layer; ``load`` ``[L, E]`` is the window planned on."""
    w = np.asarray(load, dtype=np.float64)
    return np.stack([keep_layer(old.placement[m], new.placement[m], w[m], tolerance)
                     for m in range(new.placement.shape[0])]).astype(new.placement.dtype)
