"""Link loads and the latency term of an all-to-all as two small matrix products.

In the switched topologies of moesim (GPU - NVSwitch, GPU - NIC - fabric) the pairs that cross a
link direction form a *rectangle*: sources ``S`` on one side of the link, destinations ``D`` on the
other, every ``(i, j)`` in ``S x D`` with ``i != j``. With a zero-diagonal bytes matrix ``B`` the
load is then ``sum_{i in S} (B @ Q)[i, D]`` where column ``D`` of the 0/1 matrix ``Q`` marks the
set; links that share a destination set share a column, so one ``[S*G, G] @ [G, U]`` product (``U``
about ``G + 2 * nodes`` here) serves every link of a whole batch of matrices, followed by a gather
and a per-link sum over the (few) sources. When ``|S| > |D|`` the transposed product is used
(source sets), so each link needs ``min(|S|, |D|)`` gathered entries. Links whose pairs are not a
rectangle fall back to a ``bincount`` over their (pair, hop) entries.

The latency term needs, per distinct path latency, whether any pair at that latency sends bytes;
for non-negative bytes that is "the sum over those pairs is positive", again a gather from
``B @ Q`` (the sets of destinations at each latency from each source are extra columns of ``Q``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _choose_sets(entries: list[tuple[int, tuple[frozenset[int], ...]]]) -> list[frozenset[int]]:
    """For entries (owner, candidate sets, all equivalent for that owner), pick one set each,
    preferring the candidate most entries could share (fewer distinct columns of Q)."""
    count: dict[frozenset[int], int] = {}
    for _, cands in entries:
        for c in set(cands):
            count[c] = count.get(c, 0) + 1
    return [max(cands, key=lambda c: (count[c], len(c))) for _, cands in entries]


def _sum_groups(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of ``values[:, starts[k]:starts[k+1]]`` along axis 1 (one column per group)."""
    if values.shape[1] == len(starts):
        return values
    return np.add.reduceat(values, starts, axis=1)


@dataclass(frozen=True)
class LinkAggregation:
    """Precomputed sets and gathers that turn a batch of [G, G] bytes matrices into link loads and
    per-latency "sends anything" flags (see the module docstring)."""

    row_q: np.ndarray
    """[G, Ur] 0/1 destination sets (row side: M = B @ row_q, index i * Ur + u)."""
    col_q_t: np.ndarray
    """[Uc, G] 0/1 source sets (column side: M = col_q_t @ B, index u * G + j)."""
    row_index: np.ndarray
    row_starts: np.ndarray
    row_links: np.ndarray
    """Gather indices into the row-side product, grouped by link (group starts, link of each group)."""
    col_index: np.ndarray
    col_starts: np.ndarray
    col_links: np.ndarray
    rest_pair: np.ndarray
    rest_link: np.ndarray
    lat_index: np.ndarray
    """Gather indices into the row-side product, grouped by latency level (descending levels)."""
    lat_starts: np.ndarray
    lat_levels: np.ndarray
    """Level index (into ``levels_s``) of each latency group; levels no pair has are absent."""
    levels_s: np.ndarray
    num_links: int
    g: int

    @classmethod
    def build(cls, pairs: np.ndarray, links: np.ndarray, g: int, num_links: int,
              pair_latency_s: np.ndarray) -> LinkAggregation:
        by_link: dict[int, list[int]] = {}
        for p, ln in zip(pairs.tolist(), links.tolist(), strict=True):
            by_link.setdefault(ln, []).append(p)
        row: list[tuple[int, tuple[frozenset[int], ...]]] = []  # (source i, candidate sets)
        row_meta: list[tuple[int, int]] = []  # (kind 0 = link / 1 = latency level, id)
        col: list[tuple[int, tuple[frozenset[int], ...]]] = []
        col_links: list[int] = []
        rest: set[int] = set()
        for ln in sorted(by_link):
            plist = by_link[ln]
            srcs = frozenset(p // g for p in plist)
            dsts = frozenset(p % g for p in plist)
            rect = len(plist) == len(set(plist)) == len(srcs) * len(dsts) - len(srcs & dsts)
            if not rect:
                rest.add(ln)
            elif len(srcs) <= len(dsts):
                # B's diagonal is zero, so the set may also hold the fixed end itself.
                for i in sorted(srcs):
                    row.append((i, (dsts, dsts | {i})))
                    row_meta.append((0, ln))
            else:
                for j in sorted(dsts):
                    col.append((j, (srcs, srcs | {j})))
                    col_links.append(ln)
        latency = pair_latency_s.reshape(g, g)
        levels = np.unique(latency)[::-1].copy()
        for k, level in enumerate(levels.tolist()):
            for i in range(g):
                members = frozenset(int(j) for j in np.flatnonzero(latency[i] == level) if j != i)
                if members:
                    row.append((i, (members, members | {i})))
                    row_meta.append((1, k))
        row_sets, col_sets = _choose_sets(row), _choose_sets(col)
        row_cols = {s: u for u, s in enumerate(dict.fromkeys(row_sets))}
        col_cols = {s: u for u, s in enumerate(dict.fromkeys(col_sets))}
        row_q = np.zeros((g, max(1, len(row_cols))))
        for s, u in row_cols.items():
            row_q[sorted(s), u] = 1.0
        col_q = np.zeros((max(1, len(col_cols)), g))
        for s, u in col_cols.items():
            col_q[u, sorted(s)] = 1.0
        ur = row_q.shape[1]
        link_rows = [(ln, i * ur + row_cols[s]) for (i, _), s, (kind, ln) in zip(row, row_sets, row_meta,
                                                                                strict=True) if kind == 0]
        lat_rows = [(k, i * ur + row_cols[s]) for (i, _), s, (kind, k) in zip(row, row_sets, row_meta,
                                                                             strict=True) if kind == 1]
        col_rows = [(ln, row_cols_u * g + j) for ln, (j, _), row_cols_u in
                    zip(col_links, col, (col_cols[s] for s in col_sets), strict=True)]
        r_idx, r_starts, r_links = cls._groups(link_rows)
        c_idx, c_starts, c_links = cls._groups(col_rows)
        l_idx, l_starts, l_levels = cls._groups(lat_rows)
        keep = np.array([ln in rest for ln in links.tolist()], dtype=bool)
        return cls(
            row_q=row_q, col_q_t=col_q, row_index=r_idx, row_starts=r_starts, row_links=r_links,
            col_index=c_idx, col_starts=c_starts, col_links=c_links,
            rest_pair=pairs[keep] if keep.size else np.zeros(0, dtype=np.int64),
            rest_link=links[keep] if keep.size else np.zeros(0, dtype=np.int64),
            lat_index=l_idx, lat_starts=l_starts, lat_levels=l_levels,
            levels_s=levels, num_links=num_links, g=g,
        )

    @staticmethod
    def _groups(items: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gather indices sorted by group, start of each group, group id of each group)."""
        items = sorted(items)
        keys = np.array([k for k, _ in items], dtype=np.int64)
        index = np.array([v for _, v in items], dtype=np.int64)
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else keys
        return index, starts, keys[starts] if len(keys) else keys

    def products(self, b3: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row-side [S, G * Ur] and column-side [S, Uc * G] products of a zero-diagonal batch."""
        s = b3.shape[0]
        # A stack of small [G, G] products: one big [S*G, G] gemm makes OpenBLAS spawn threads,
        # which is slower on a busy 2-core machine than the single-threaded small gemms.
        rows = np.matmul(b3, self.row_q).reshape(s, -1)
        cols = np.matmul(self.col_q_t, b3).reshape(s, -1) if len(self.col_index) else np.zeros((s, 0))
        return rows, cols

    def loads(self, b3: np.ndarray, products: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """[S, num_links] bytes per directed link for a batch ``b3`` [S, G, G] with a zero diagonal."""
        s = b3.shape[0]
        rows, cols = products if products is not None else self.products(b3)
        out = np.zeros((s, self.num_links))
        if len(self.row_index):
            out[:, self.row_links] = _sum_groups(rows[:, self.row_index], self.row_starts)
        if len(self.col_index):
            out[:, self.col_links] = _sum_groups(cols[:, self.col_index], self.col_starts)
        if len(self.rest_link):
            offsets = (np.arange(s) * self.num_links)[:, None]
            out += np.bincount(
                (self.rest_link[None, :] + offsets).ravel(),
                weights=b3.reshape(s, -1)[:, self.rest_pair].ravel(),
                minlength=s * self.num_links,
            ).reshape(s, self.num_links)
        return out

    def latency_s(self, rows: np.ndarray) -> np.ndarray:
        """[S] longest path latency among pairs with bytes, from the row-side product of a
        zero-diagonal, non-negative batch (a pair's own diagonal has latency 0 and never matters)."""
        s = rows.shape[0]
        if not len(self.lat_index):
            return np.zeros(s)
        used = _sum_groups(rows[:, self.lat_index], self.lat_starts) > 0  # [S, levels present]
        levels = self.levels_s[self.lat_levels]
        first = np.argmax(used, axis=1)  # levels are descending: the first used is the longest
        return np.where(used.any(axis=1), levels[first], 0.0)


@dataclass(frozen=True)
class NodeBlocks:
    """All-to-all link loads and latency from node-level aggregates, for topologies where every
    link direction carries whole *node blocks*: a row block (i, n) is the pairs from GPU i to the
    GPUs of node n, a column block (n, j) the pairs from node n's GPUs to GPU j (the pair (i, i)
    excluded). Then, with ``R[i, n]`` the bytes GPU i sends to node n and ``C[n, j]`` the bytes
    node n sends to GPU j, a link's load is a sum of a few R or C entries: [G, N] numbers per
    matrix instead of [G, G] (64 GPUs on 8 nodes: 8x fewer), and no [G, G] matrix is ever built.
    ``build`` returns None when some link is neither (the general :class:`LinkAggregation` path)."""

    node_of: np.ndarray
    """[G] node index 0..N-1 of each device."""
    num_nodes: int
    row_index: np.ndarray
    """Gathers into R flattened as ``i * N + n``, grouped by link (starts, link of each group)."""
    row_starts: np.ndarray
    row_links: np.ndarray
    col_index: np.ndarray
    """Gathers into C flattened as ``n * G + j``, grouped by link."""
    col_starts: np.ndarray
    col_links: np.ndarray
    lat_index: np.ndarray
    """Gathers into R grouped by latency level (descending), as in :class:`LinkAggregation`."""
    lat_starts: np.ndarray
    lat_levels: np.ndarray
    levels_s: np.ndarray
    num_links: int

    @classmethod
    def build(cls, pairs: np.ndarray, links: np.ndarray, g: int, num_links: int,
              pair_latency_s: np.ndarray, node_of: np.ndarray) -> NodeBlocks | None:
        node_of = np.asarray(node_of, dtype=np.int64)
        n_nodes = int(node_of.max()) + 1 if node_of.size else 1
        members = [np.flatnonzero(node_of == n) for n in range(n_nodes)]
        by_link: dict[int, set[int]] = {}
        for p, ln in zip(pairs.tolist(), links.tolist(), strict=True):
            by_link.setdefault(ln, set()).add(p)

        def row_block(i: int, n: int) -> set[int]:
            return {i * g + int(j) for j in members[n] if j != i}

        def col_block(n: int, j: int) -> set[int]:
            return {int(i) * g + j for i in members[n] if i != j}

        row_items: list[tuple[int, int]] = []
        col_items: list[tuple[int, int]] = []
        for ln in sorted(by_link):
            plist = by_link[ln]
            rows = sorted({(p // g, int(node_of[p % g])) for p in plist})
            if set().union(*(row_block(i, n) for i, n in rows)) == plist:
                row_items += [(ln, i * n_nodes + n) for i, n in rows]
                continue
            cols = sorted({(int(node_of[p // g]), p % g) for p in plist})
            if set().union(*(col_block(n, j) for n, j in cols)) == plist:
                col_items += [(ln, n * g + j) for n, j in cols]
                continue
            return None
        latency = np.asarray(pair_latency_s, dtype=np.float64).reshape(g, g)
        lat_items: list[tuple[int, int]] = []
        levels = np.unique(latency)[::-1].copy()
        level_of = {float(v): k for k, v in enumerate(levels.tolist())}
        for i in range(g):
            for n in range(n_nodes):
                block = [int(j) for j in members[n] if j != i]
                if not block:
                    continue
                values = set(latency[i, block].tolist())
                if len(values) != 1:
                    return None  # a block whose pairs differ in latency: not node-level
                lat_items.append((level_of[values.pop()], i * n_nodes + n))
        r_idx, r_starts, r_links = LinkAggregation._groups(row_items)
        c_idx, c_starts, c_links = LinkAggregation._groups(col_items)
        l_idx, l_starts, l_levels = LinkAggregation._groups(lat_items)
        return cls(node_of=node_of, num_nodes=n_nodes, row_index=r_idx, row_starts=r_starts,
                   row_links=r_links, col_index=c_idx, col_starts=c_starts, col_links=c_links,
                   lat_index=l_idx, lat_starts=l_starts, lat_levels=l_levels, levels_s=levels,
                   num_links=num_links)

    def loads(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """[S, num_links] bytes per directed link from ``rows`` R [S, G, N] and ``cols`` C [S, N, G]
        (non-negative, the pairs (i, i) not counted)."""
        s = rows.shape[0]
        out = np.zeros((s, self.num_links))
        if len(self.row_index):
            out[:, self.row_links] = _sum_groups(rows.reshape(s, -1)[:, self.row_index], self.row_starts)
        if len(self.col_index):
            out[:, self.col_links] = _sum_groups(cols.reshape(s, -1)[:, self.col_index], self.col_starts)
        return out

    def latency_s(self, rows: np.ndarray) -> np.ndarray:
        """[S] longest path latency among the blocks that send bytes (R > 0)."""
        s = rows.shape[0]
        if not len(self.lat_index):
            return np.zeros(s)
        used = _sum_groups(rows.reshape(s, -1)[:, self.lat_index], self.lat_starts) > 0
        levels = self.levels_s[self.lat_levels]
        first = np.argmax(used, axis=1)
        return np.where(used.any(axis=1), levels[first], 0.0)

    def times_s(self, rows: np.ndarray, cols: np.ndarray, bandwidth: np.ndarray,
                infinite: bool, scale: float = 1.0) -> np.ndarray:
        """[S] all-to-all seconds of ``rows * scale``, ``cols * scale`` bytes: max over links of
        load / bandwidth, plus the latency term (only the latency with ``infinite`` bandwidth).
        Compiled when numba is installed (one pass, no [S, links] temporaries; integer counts are
        summed before scaling, which for integer bytes gives the same floats), else numpy."""
        s = rows.shape[0]
        if _node_times is None or (scale != 1.0 and rows.dtype.kind == "f"):
            rows, cols = rows * scale, cols * scale
            latency = self.latency_s(rows)
            if infinite:
                return latency
            return np.max(self.loads(rows, cols) / bandwidth[None, :], axis=1) + latency
        out = np.empty(s)
        if rows.dtype.kind != "f":
            rows, cols = rows.astype(np.int64, copy=False), cols.astype(np.int64, copy=False)
        _node_times(np.ascontiguousarray(rows).reshape(s, -1), np.ascontiguousarray(cols).reshape(s, -1),
                    float(scale) if rows.dtype.kind != "f" else 1.0,
                    self.row_index, np.r_[self.row_starts, len(self.row_index)], self.row_links,
                    self.col_index, np.r_[self.col_starts, len(self.col_index)], self.col_links,
                    self.lat_index, np.r_[self.lat_starts, len(self.lat_index)],
                    self.levels_s[self.lat_levels] if len(self.lat_levels) else np.zeros(0),
                    np.asarray(bandwidth, dtype=np.float64), bool(infinite), out)
        return out


def _node_times_py(rows: np.ndarray, cols: np.ndarray, scale: float, r_idx: np.ndarray, r_bounds: np.ndarray,
                   r_links: np.ndarray, c_idx: np.ndarray, c_bounds: np.ndarray, c_links: np.ndarray,
                   l_idx: np.ndarray, l_bounds: np.ndarray, l_values: np.ndarray, bandwidth: np.ndarray,
                   infinite: bool, out: np.ndarray) -> None:
    """:meth:`NodeBlocks.times_s` for each row: group sums (a link's blocks, a latency level's
    blocks) in the order numpy's ``reduceat`` adds them."""
    for s in range(rows.shape[0]):
        latency = 0.0
        for q in range(l_bounds.shape[0] - 1):  # levels descending: the first used is the longest
            used = False
            for p in range(l_bounds[q], l_bounds[q + 1]):
                if rows[s, l_idx[p]] > 0:  # non-negative: "the sum is positive" = "one is"
                    used = True
            if used:
                latency = l_values[q]
                break
        worst = 0.0
        if not infinite:
            worst = -np.inf
            for q in range(r_bounds.shape[0] - 1):
                total = rows[s, 0] * 0  # the input's type: integer counts sum exactly
                for p in range(r_bounds[q], r_bounds[q + 1]):
                    total += rows[s, r_idx[p]]
                worst = max(worst, total * scale / bandwidth[r_links[q]])
            for q in range(c_bounds.shape[0] - 1):
                total = cols[s, 0] * 0
                for p in range(c_bounds[q], c_bounds[q + 1]):
                    total += cols[s, c_idx[p]]
                worst = max(worst, total * scale / bandwidth[c_links[q]])
            worst = max(worst, 0.0)  # links no block crosses carry nothing
        out[s] = latency if infinite else worst + latency


try:  # optional: the [fast] extra
    import numba

    _node_times = numba.njit(cache=True, nogil=True)(_node_times_py)
except ImportError:  # pragma: no cover - exercised where numba is absent
    _node_times = None
