"""Link-model seconds of one node-level all-to-all from its copy counts, inside compiled loops
(numba, the ``[fast]`` extra): :func:`moesim.cost.linkloads._node_times_py`'s arithmetic on one
(step, layer)'s [G, N] / [N, G] tables, or on their nonzero entries only (the same floats), and the
link model those loops read (:class:`NodeTiming`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from moesim.cost.linkloads import NodeBlocks

try:  # optional: the [fast] extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

COMBINE_SAME, COMBINE_SCALED, COMBINE_TRANSPOSED = 0, 1, 2
"""How the combine is timed: as the dispatch (mirrored routes, same copy bytes); on the dispatch's
copy layout with the combine's copy bytes (mirrored routes); on the transposed layout."""


@dataclass(frozen=True)
class NodeTiming:
    """The link model of a node-block all-to-all (:class:`moesim.cost.linkloads.NodeBlocks`, bandwidth
    per link direction) and the bytes of a dispatch and a combine copy."""

    blocks: NodeBlocks
    bandwidth: np.ndarray
    infinite: bool
    dispatch_bytes: float
    combine_bytes: float
    combine: int
    tile_rows: np.ndarray | None = None
    """[G] rows each device's expert GEMMs pad to (:meth:`moesim.cost.CostModel.expert_tile_rows`),
    for the expert-call aggregates; None: the cost object has none."""
    keys: bool = True
    """Whether the counting pass also packs each device's sorted slot counts (the expert-time memo's
    keys; not needed where the calls are priced from aggregates)."""

    @cached_property
    def classes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For :func:`_link_s_py`: each row group's and column group's bandwidth class and each class's
        bandwidth (groups of one bandwidth share a class; where a bandwidth is not positive every group
        is its own class, rows first, which keeps the per-group order of the maxima)."""
        nb = self.blocks
        bw = np.asarray(self.bandwidth, dtype=np.float64)
        r_bw, c_bw = bw[nb.row_links], bw[nb.col_links]
        both = np.r_[r_bw, c_bw]
        if not (both > 0).all():
            ids = np.arange(len(both), dtype=np.int64)
            return ids[:len(r_bw)], ids[len(r_bw):], both
        values, inverse = np.unique(both, return_inverse=True)
        inverse = inverse.astype(np.int64)
        return inverse[:len(r_bw)], inverse[len(r_bw):], values

    @cached_property
    def inverse(self) -> tuple[np.ndarray, ...]:
        """For steps with few copies: per row entry ``i * N + n`` its row groups (CSR: pointers,
        groups), per column entry ``n * G + j`` its column groups, and per row entry its latency
        level's group (-1: none)."""
        nb = self.blocks
        g, n = len(nb.node_of), nb.num_nodes

        def csr(idx: np.ndarray, starts: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
            group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(idx)]))
            order = np.argsort(idx, kind="stable")
            ptr = np.zeros(size + 1, dtype=np.int64)
            np.cumsum(np.bincount(idx, minlength=size), out=ptr[1:])
            return ptr, group[order].astype(np.int64)

        r_ptr, r_grp = csr(nb.row_index, nb.row_starts, g * n)
        c_ptr, c_grp = csr(nb.col_index, nb.col_starts, n * g)
        level = np.full(g * n, -1, dtype=np.int64)
        lat_group = np.repeat(np.arange(len(nb.lat_starts)), np.diff(np.r_[nb.lat_starts, len(nb.lat_index)]))
        level[nb.lat_index] = lat_group
        return r_ptr, r_grp, c_ptr, c_grp, level


def _slowest_py(peak: np.ndarray, class_bw: np.ndarray, scale: float, scale2: float,
                latency: float) -> tuple[float, float]:
    """The slowest link group's seconds at copies of ``scale`` and of ``scale2`` bytes (0: only the
    first) plus ``latency``, from each bandwidth class's most copies ``peak`` (-1: no group): one
    division per class. The same float as per group: ``copies * scale / bandwidth`` never decreases
    as the copies grow."""
    worst = -np.inf
    worst2 = -np.inf
    for c in range(class_bw.shape[0]):
        if peak[c] >= 0:
            worst = max(worst, peak[c] * scale / class_bw[c])
            if scale2 > 0:
                worst2 = max(worst2, peak[c] * scale2 / class_bw[c])
    return max(worst, 0.0) + latency, max(worst2, 0.0) + latency


def _link_s_py(rows: np.ndarray, cols: np.ndarray, scale: float, scale2: float, r_idx: np.ndarray,
               r_bounds: np.ndarray, r_class: np.ndarray, c_idx: np.ndarray, c_bounds: np.ndarray,
               c_class: np.ndarray, l_idx: np.ndarray, l_bounds: np.ndarray, l_values: np.ndarray,
               class_bw: np.ndarray, peak: np.ndarray, infinite: bool) -> tuple[float, float]:
    """One row of :func:`moesim.cost.linkloads._node_times_py` (integer ``rows`` [G * N], ``cols``
    [N * G]) for copies of ``scale`` and of ``scale2`` bytes (0: only the first), with the link
    groups in bandwidth classes (:attr:`NodeTiming.classes`; ``peak`` [classes] scratch): the most
    copies per class, then one division per class. The same float: ``copies * scale / bandwidth``
    never decreases as the copies grow, so the largest total of a class gives its slowest group."""
    latency = 0.0
    for q in range(l_bounds.shape[0] - 1):
        used = False
        for p in range(l_bounds[q], l_bounds[q + 1]):
            if rows[l_idx[p]] > 0:
                used = True
                break
        if used:
            latency = l_values[q]
            break
    if infinite:
        return latency, latency
    peak[:] = -1
    for q in range(r_bounds.shape[0] - 1):
        total = rows[0] * 0
        for p in range(r_bounds[q], r_bounds[q + 1]):
            total += rows[r_idx[p]]
        peak[r_class[q]] = max(peak[r_class[q]], total)
    for q in range(c_bounds.shape[0] - 1):
        total = cols[0] * 0
        for p in range(c_bounds[q], c_bounds[q + 1]):
            total += cols[c_idx[p]]
        peak[c_class[q]] = max(peak[c_class[q]], total)
    return _slowest(peak, class_bw, scale, scale2, latency)


def _touched_max_py(entry: np.ndarray, value: np.ndarray, n: int, ptr: np.ndarray, grp: np.ndarray,
                    cls: np.ndarray, acc: np.ndarray, seen: np.ndarray, peak: np.ndarray) -> None:
    """One direction of :func:`_link_sparse_py`: the link groups ``entry[:n]`` touch, their totals in
    ``acc`` (zeroed again on the way out), each folded into its bandwidth class's ``peak``."""
    m = 0
    for t in range(n):
        e = entry[t]
        for p in range(ptr[e], ptr[e + 1]):
            q = grp[p]
            if acc[q] == 0:
                seen[m] = q
                m += 1
            acc[q] += value[t]
    for u in range(m):
        q = seen[u]
        peak[cls[q]] = max(peak[cls[q]], acc[q])
        acc[q] = 0


def _link_sparse_py(r_entry: np.ndarray, r_value: np.ndarray, nr: int, c_entry: np.ndarray,
                    c_value: np.ndarray, nc: int, scale: float, scale2: float, r_ptr: np.ndarray,
                    r_grp: np.ndarray, r_cls: np.ndarray, c_ptr: np.ndarray, c_grp: np.ndarray,
                    c_cls: np.ndarray, level: np.ndarray, l_values: np.ndarray, class_bw: np.ndarray,
                    infinite: bool, acc_r: np.ndarray, acc_c: np.ndarray, seen: np.ndarray,
                    peak: np.ndarray) -> tuple[float, float]:
    """:func:`_link_s_py` (both copy sizes) from the nonzero entries only (``r_value[:nr]`` copies at
    row entries ``r_entry[:nr]``, likewise the columns): the groups they touch get the same totals,
    the others total 0 and can only tie the final ``max(worst, 0.0)``; the latency is the first
    level (descending) any sending block is on. The same float (a class's largest total gives its
    slowest group, as there)."""
    first = l_values.shape[0]
    for t in range(nr):
        q = level[r_entry[t]]
        if q >= 0 and q < first:
            first = q
    latency = l_values[first] if first < l_values.shape[0] else 0.0
    if infinite:
        return latency, latency
    peak[:] = -1
    _touched_max(r_entry, r_value, nr, r_ptr, r_grp, r_cls, acc_r, seen, peak)
    _touched_max(c_entry, c_value, nc, c_ptr, c_grp, c_cls, acc_c, seen, peak)
    return _slowest(peak, class_bw, scale, scale2, latency)


if numba is not None:
    # compiled first: the kernels call them by these names, which numba resolves when it compiles
    _slowest = numba.njit(cache=True, nogil=True)(_slowest_py)
    _touched_max = numba.njit(cache=True, nogil=True)(_touched_max_py)
    _link_s = numba.njit(cache=True, nogil=True)(_link_s_py)
    _link_sparse = numba.njit(cache=True, nogil=True)(_link_sparse_py)
else:
    _slowest, _touched_max, _link_s, _link_sparse = _slowest_py, _touched_max_py, _link_s_py, _link_sparse_py
