"""The ``auto`` miss mode's choice: which lane each missed expert of one GPU call goes to.

A GPU call with missed experts runs on *lanes* that work side by side: lane 0 copies weights over
the GPU's host link one after another and then runs them with the hits on the GPU (a missed
expert costs its copy plus its own GPU time there; the hits cost ``base``); each other lane is a
device beside the GPU (its CPU, a PIM device) running its experts one after another. The call
ends with its slowest lane, so experts are assigned to minimise that makespan — few-token experts
to the CPU, many-token ones to the GPU, as Fiddler (arXiv 2402.07033) decides by token count.

The assignments tried are: everything on one lane (each single mode), for each side lane every
split of the experts ordered by how much cheaper that lane is for them (the best two-lane split),
and a greedy longest-first list schedule over all lanes. The best single-lane one is kept unless a
mixed one is predicted :data:`MIX_MARGIN` faster, so the predicted time is never above any single
mode's.
"""

from __future__ import annotations

import numpy as np

MIX_MARGIN = 0.1
"""A mixed assignment replaces the best single-lane one only when predicted at least this much
faster: a copy on the host link also delays the cache's background copies of experts run beside
the GPU (misses later), which one call's makespan does not see."""


def makespan(lanes: np.ndarray, link_s: np.ndarray, side_s: np.ndarray, base: float,
             backlog: float = 0.0) -> float:
    """Seconds until the slowest lane of an assignment (``lanes[i]``: 0 link, q + 1 side lane q)
    ends; copies start after the link's ``backlog``."""
    copies = link_s[lanes == 0]
    t = base + float(copies.sum()) + (backlog if copies.size else 0.0)
    for q in range(side_s.shape[0]):
        t = max(t, float(side_s[q, lanes == q + 1].sum()))
    return t


def _greedy(link_s: np.ndarray, side_s: np.ndarray, base: float, backlog: float) -> np.ndarray:
    """Longest first, each expert to the lane where it would finish soonest."""
    ends = np.r_[base + backlog, np.zeros(side_s.shape[0])]
    lanes = np.zeros(len(link_s), dtype=np.int64)
    costs = np.vstack([link_s, side_s])  # [lanes, M]
    for i in np.argsort(-costs.min(axis=0), kind="stable").tolist():
        lane = int(np.argmin(ends + costs[:, i]))
        lanes[i] = lane
        ends[lane] += costs[lane, i]
    return lanes


def assign(link_s: np.ndarray, side_s: np.ndarray, base: float = 0.0, backlog: float = 0.0) -> np.ndarray:
    """``[M]`` lane of each missed expert: ``link_s[i]`` its seconds on lane 0 (copy + GPU run),
    ``side_s[q, i]`` on side lane q; ``base`` the GPU's own work on lane 0 (the hits), ``backlog``
    how long the link is still busy before any copy can start."""
    M, Q = len(link_s), side_s.shape[0]
    candidates = [np.zeros(M, dtype=np.int64)]
    candidates += [np.full(M, q + 1, dtype=np.int64) for q in range(Q)]
    for q in range(Q):
        order = np.argsort(side_s[q] - link_s, kind="stable")  # most side-favourable first
        for k in range(1, M):
            lanes = np.zeros(M, dtype=np.int64)
            lanes[order[:k]] = q + 1
            candidates.append(lanes)
    if Q > 1:
        candidates.append(_greedy(link_s, side_s, base, backlog))
    spans = [makespan(c, link_s, side_s, base, backlog) for c in candidates]
    single = int(np.argmin(spans[: Q + 1]))
    best = int(np.argmin(spans))
    return candidates[best if spans[best] < (1 - MIX_MARGIN) * spans[single] else single]
