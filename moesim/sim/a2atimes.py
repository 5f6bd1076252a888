"""Seconds of all-to-all calls from token-copy counts: the link model of the cost model plus the
mode's overheads (:class:`moesim.cost.a2a.AllToAllSpec`). One code path for the simulator's steps
and ``moesim bench a2a``."""

from __future__ import annotations

from typing import Any

import numpy as np

from moesim.cost.a2a import AllToAllSpec


def mirrored_routes(cost: Any, devices: tuple[str, ...]) -> bool:
    """True when every link direction has a reverse of equal bandwidth and latency and every route
    ``j -> i`` is route ``i -> j`` reversed: then an all-to-all with the transposed byte matrix
    (the combine) loads the reversed links exactly as the dispatch loads the forward ones, and
    takes the same time, so it need not be evaluated twice."""
    links = {name: (bw, lat) for name, bw, lat in cost.directed_links()}
    if any(links.get((b, a)) != spec for (a, b), spec in links.items()):
        return False
    if hasattr(cost, "routes_mirrored"):  # the same check on the routes' hop arrays, vectorised
        return bool(cost.routes_mirrored(devices))
    for i, src in enumerate(devices):
        for dst in devices[i + 1:]:
            forward = cost.path_links(src, dst)
            if [(b, a) for a, b in reversed(forward)] != cost.path_links(dst, src):
                return False
    return True


class AllToAllTimer:
    """All-to-all seconds among ``devices`` for token copies counted per pair or per node."""

    def __init__(self, cost: Any, devices: tuple[str, ...], spec: AllToAllSpec):
        self.cost, self.devices, self.spec = cost, devices, spec
        # the combine sends the dispatch's copies back: over mirrored routes it loads the reversed
        # links with the dispatch's copy counts; the same time too when a copy weighs the same both ways
        self.routes_mirrored = len(devices) > 1 and mirrored_routes(cost, devices)
        self.mirrored = self.routes_mirrored and spec.dispatch_bytes == spec.combine_bytes

    def pairs(self, pair_copies: np.ndarray, copy_bytes: float, chunks: int = 1) -> np.ndarray:
        """[S, L] seconds of calls sending ``pair_copies / chunks`` [S, L, G, G] token copies of
        ``copy_bytes`` each (zero diagonal)."""
        S, L, G, _ = pair_copies.shape
        if G == 1:
            return np.zeros((S, L))
        b = pair_copies.reshape(S * L, G, G) * copy_bytes
        link = np.asarray(self.cost.all_to_all_s(self.devices, b / chunks if chunks > 1 else b)).reshape(S, L)
        return self.spec.seconds(link, self._busiest(pair_copies, chunks))

    def nodes(self, rows: np.ndarray, cols: np.ndarray, copy_bytes: float, chunks: int = 1) -> np.ndarray:
        """[S, L] seconds of calls given per node: ``rows / chunks`` [S, L, G, N] and ``cols /
        chunks`` [S, L, N, G] token copies of ``copy_bytes`` each."""
        link = self._node_link_s(rows, cols, copy_bytes, chunks)
        return self.spec.seconds(link, self._busiest(rows, chunks))

    def combine_nodes(self, rows: np.ndarray, cols: np.ndarray, chunks: int = 1) -> np.ndarray:
        """[S, L] seconds of the combine of the dispatch ``rows``, ``cols`` (:meth:`nodes`): the
        transposed counts, each copy of ``combine_bytes``."""
        rows_t, cols_t = cols.transpose(0, 1, 3, 2), rows.transpose(0, 1, 3, 2)
        if self.routes_mirrored and chunks == 1 and rows.dtype.kind in "iu" and cols.dtype.kind in "iu":
            # integer counts over mirrored routes: each link's reversed link carries the same exact
            # total and a pair's latency is the same both ways, so the dispatch's layout gives the
            # same floats without copying the transposed counts
            link = self._node_link_s(rows, cols, self.spec.combine_bytes, 1)
        else:
            link = self._node_link_s(rows_t, cols_t, self.spec.combine_bytes, chunks)
        return self.spec.seconds(link, self._busiest(rows_t, chunks))

    def seconds(self, link_s: np.ndarray, copies: np.ndarray) -> np.ndarray:
        """[S, L] call seconds from link-model seconds and the token copies each device sends
        [S, L, G] (what :meth:`nodes` adds to its link model)."""
        return self.spec.seconds(link_s, copies.max(axis=2) / 1 if self.spec.message_s else 0.0)

    def _node_link_s(self, rows: np.ndarray, cols: np.ndarray, copy_bytes: float, chunks: int) -> np.ndarray:
        """[S, L] link-model seconds of :meth:`nodes` (no per-call overheads)."""
        S, L, G, N = rows.shape
        if chunks > 1:  # bytes, then the micro-batch share (as the pair path divides)
            r, c, scale = rows * copy_bytes / chunks, cols * copy_bytes / chunks, 1.0
        else:
            r, c, scale = rows, cols, copy_bytes
        return np.asarray(self.cost.all_to_all_node_s(self.devices, r.reshape(S * L, G, N),
                                                      c.reshape(S * L, N, G), scale)).reshape(S, L)

    def _busiest(self, copies: np.ndarray, chunks: int) -> np.ndarray | float:
        """[S, L] token copies sent by the busiest device, from [S, L, G, X] copies per device and
        destination (summed only when messages cost something)."""
        return copies.sum(axis=3).max(axis=2) / chunks if self.spec.message_s else 0.0
