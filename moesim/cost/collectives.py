"""All-to-all on the real topology, from per-pair bytes.

Every (src, dst) pair's bytes follow ``cluster.path(src, dst)``; the bytes on each link *direction*
are summed (links are full duplex), and the all-to-all finishes when the most loaded link direction
has drained:

    t = max_l (bytes_l / effective_bandwidth_l) + max over pairs with bytes of path_latency

so two flows through one NIC (or one NVSwitch port) take twice as long as one. The pair->link
incidence is built once per device list (:class:`AllToAllRoutes`); evaluating a batch of bytes
matrices is two small set products (:mod:`moesim.cost.linkloads`), with a ``bincount`` over the
(pair, hop) entries of any link whose pairs are not a rectangle; no Python loop over pairs.

The all-to-all modes (flat, hierarchical, low-latency: :mod:`moesim.cost.a2a`) are byte matrices on
these same routes: the hierarchical one holds the RDMA copies to each node's rail peer and the
NVLink forwards inside the node (:func:`moesim.cost.a2a.forwarded_matrix`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.cost.a2a import forwarded_matrix, forwarding
from moesim.cost.linkloads import LinkAggregation, NodeBlocks
from moesim.errors import UserError
from moesim.specs.hardware import Cluster, Device


def directed_hops(cluster: Cluster, src: str, dst: str, link_index: dict[tuple[str, str], int]) -> list[int]:
    """Directed link ids (2*link + 0 forward / 1 reverse) that a transfer src -> dst crosses."""
    hops: list[int] = []
    here = src
    for link in cluster.path(src, dst):
        idx = link_index[(link.src, link.dst)]
        if link.src == here:
            hops.append(2 * idx)
            here = link.dst
        else:
            hops.append(2 * idx + 1)
            here = link.src
    return hops


def link_tables(cluster: Cluster) -> tuple[dict[tuple[str, str], int], np.ndarray, list[tuple[str, str]]]:
    """(link index by endpoints, effective bytes/s per directed link, (from, to) per directed link)."""
    index = {(ln.src, ln.dst): i for i, ln in enumerate(cluster.links)}
    bw = np.repeat([ln.spec.effective_bandwidth_bytes_per_s for ln in cluster.links], 2).astype(float)
    names: list[tuple[str, str]] = []
    for ln in cluster.links:
        names += [(ln.src, ln.dst), (ln.dst, ln.src)]
    return index, bw, names


@dataclass(frozen=True)
class AllToAllRoutes:
    """Pair -> directed-link incidence for one ordered device list (built once, evaluated often)."""

    device_ids: tuple[str, ...]
    pair_of_hop: np.ndarray
    """Flat pair index (src * G + dst) of each (pair, hop) entry."""
    link_of_hop: np.ndarray
    """Directed link id of each entry."""
    pair_latency_s: np.ndarray
    """[G*G] path latency of each pair (0 on the diagonal)."""
    num_links: int
    aggregation: LinkAggregation | None = None
    _diag: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @classmethod
    def build(cls, cluster: Cluster, device_ids: tuple[str, ...]) -> AllToAllRoutes:
        index, bw, _ = link_tables(cluster)
        g = len(device_ids)
        pairs: list[int] = []
        links: list[int] = []
        latency = np.zeros(g * g)
        for i, src in enumerate(device_ids):
            for j, dst in enumerate(device_ids):
                if i == j:
                    continue
                hops = directed_hops(cluster, src, dst, index)
                latency[i * g + j] = cluster.path_latency(src, dst)
                pairs += [i * g + j] * len(hops)
                links += hops
        pair_arr = np.array(pairs, dtype=np.int64)
        link_arr = np.array(links, dtype=np.int64)
        return cls(
            device_ids=tuple(device_ids),
            pair_of_hop=pair_arr,
            link_of_hop=link_arr,
            pair_latency_s=latency,
            num_links=len(bw),
            aggregation=LinkAggregation.build(pair_arr, link_arr, g, len(bw), latency),
            _diag=np.arange(g),
        )

    def _zero_diagonal(self, bytes_matrix: np.ndarray) -> np.ndarray:
        """[S, G, G] float batch with a zero diagonal (copied only when the diagonal is not zero)."""
        g = len(self.device_ids)
        b3 = np.asarray(bytes_matrix, dtype=float).reshape(-1, g, g)
        if b3.reshape(len(b3), g * g)[:, :: g + 1].any():  # the diagonal, as a strided view
            b3 = b3.copy()
            b3[:, self._diag, self._diag] = 0.0
        return b3

    def loads_and_latency(self, bytes_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([S, L] bytes per directed link, [S] latency term) of a batch (or one matrix, S = 1),
        sharing the set products of :class:`LinkAggregation`."""
        assert self.aggregation is not None
        b3 = self._zero_diagonal(bytes_matrix)
        products = self.aggregation.products(b3)
        loads = self.aggregation.loads(b3, products)
        if b3.size and b3.min() < 0:  # the "sum > 0 means used" shortcut needs non-negative bytes
            return loads, self.latency_general_s(bytes_matrix)
        return loads, self.aggregation.latency_s(products[0])

    def link_loads(self, bytes_matrix: np.ndarray) -> np.ndarray:
        """Bytes on each directed link; ``bytes_matrix`` is [G, G] or a batch [S, G, G] -> [S, L]."""
        assert self.aggregation is not None
        b3 = self._zero_diagonal(bytes_matrix)
        loads = self.aggregation.loads(b3)
        return loads if np.ndim(bytes_matrix) == 3 else loads[0]

    def latency_s(self, bytes_matrix: np.ndarray) -> np.ndarray:
        """Longest path latency among pairs that send anything ([S]; one entry for a single matrix)."""
        return self.loads_and_latency(bytes_matrix)[1]

    def latency_general_s(self, bytes_matrix: np.ndarray) -> np.ndarray:
        """Reference for :meth:`latency_s`: the maximum of the path latency over pairs with bytes."""
        flat = np.asarray(bytes_matrix, dtype=float).reshape(-1, len(self.device_ids) ** 2)
        lat = np.where(flat > 0, self.pair_latency_s[None, :], 0.0)
        return lat.max(axis=1) if lat.shape[1] else np.zeros(flat.shape[0])


class CollectiveCosts:
    """All-to-all times and link loads on one cluster (the communication half of ``CostModel``).

    Routes are built once per device list and memoised; ``infinite_bandwidth`` makes every link
    cost only its latency."""

    def __init__(self, cluster: Cluster, *, infinite_bandwidth: bool = False):
        self.cluster = cluster
        self.infinite_bandwidth = infinite_bandwidth
        self._link_index, self._link_bw, self._link_names = link_tables(cluster)
        self._routes: dict[tuple[str, ...], AllToAllRoutes] = {}

    def routes(self, device_ids: Sequence[str]) -> AllToAllRoutes:
        """The (memoised) pair->link incidence of an all-to-all among ``device_ids``."""
        key = tuple(device_ids)
        r = self._routes.get(key)
        if r is None:
            for d in key:
                self._device(d)  # a UserError for unknown ids
            r = AllToAllRoutes.build(self.cluster, key)
            self._routes[key] = r
        return r

    def forwarding(self, device_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(node_of [G], rail peer [G, N])`` of the hierarchical all-to-all among ``device_ids``
        (memoised; :func:`moesim.cost.a2a.forwarding`)."""
        memo: dict[tuple[str, ...], tuple[np.ndarray, np.ndarray]]
        memo = self.__dict__.setdefault("_forwarding", {})
        key = tuple(device_ids)
        if key not in memo:
            for d in key:
                self._device(d)
            memo[key] = forwarding(self.cluster, key)
        return memo[key]

    def hierarchical_matrix(self, device_ids: Sequence[str], gpu_bytes: np.ndarray,
                            node_bytes: np.ndarray | None = None) -> np.ndarray:
        """The byte matrix of a hierarchical all-to-all (DeepEP normal kernels) whose tokens need
        ``gpu_bytes[i, j]`` at GPU j (once per token and GPU) and ``node_bytes[i, n]`` on node n
        (once per token and node; default: the sum over the node's GPUs, no de-duplication); pass
        it to :meth:`all_to_all_s` or :meth:`link_bytes`."""
        node_of, peer = self.forwarding(device_ids)
        gpu_bytes = np.asarray(gpu_bytes, dtype=float)
        if node_bytes is None:
            node_bytes = gpu_bytes @ np.eye(peer.shape[1])[node_of]
        return forwarded_matrix(gpu_bytes, np.asarray(node_bytes, dtype=float), node_of, peer)

    def all_to_all_s(
        self,
        device_ids: Sequence[str],
        bytes_matrix: np.ndarray,
    ) -> Any:
        """All-to-all with ``bytes_matrix[i, j]`` bytes from ``device_ids[i]`` to ``device_ids[j]``:
        max over link directions of load / bandwidth + the longest path latency used. A batch
        [S, G, G] gives [S] seconds. (Link model only: the modes' overheads are in
        :class:`moesim.cost.a2a.AllToAllSpec`.)"""
        r = self.routes(device_ids)
        b = np.asarray(bytes_matrix, dtype=float)
        self._note("all_to_all", "roofline")
        loads, latency = r.loads_and_latency(b)
        t = latency if self.infinite_bandwidth else np.max(loads / self._link_bw[None, :], axis=1) + latency
        return t if b.ndim == 3 else float(t[0])

    def node_blocks(self, device_ids: Sequence[str]) -> NodeBlocks | None:
        """The node-level form of the flat all-to-all among ``device_ids`` (memoised), or None when
        some link's pairs are not whole node blocks (then only :meth:`all_to_all_s` applies)."""
        memo: dict[tuple[str, ...], NodeBlocks | None] = self.__dict__.setdefault("_node_blocks", {})
        key = tuple(device_ids)
        if key not in memo:
            r = self.routes(key)
            seen: dict[int, int] = {}
            node_of = np.array([seen.setdefault(self.cluster.device(d).node, len(seen)) for d in key])
            memo[key] = NodeBlocks.build(r.pair_of_hop, r.link_of_hop, len(key), r.num_links,
                                         r.pair_latency_s, node_of)
        return memo[key]

    def all_to_all_node_s(self, device_ids: Sequence[str], rows: np.ndarray, cols: np.ndarray,
                          scale: float = 1.0) -> np.ndarray:
        """:meth:`all_to_all_s` of a batch given as node-level aggregates: ``rows * scale`` [S, G, N]
        bytes from each device to each node, ``cols * scale`` [S, N, G] from each node to each
        device (a device's bytes to itself excluded); needs :meth:`node_blocks` to be not None."""
        nb = self.node_blocks(device_ids)
        if nb is None:
            raise ValueError("the links of these devices are not node blocks; use all_to_all_s")
        self._note("all_to_all", "roofline")
        return nb.times_s(rows, cols, self._link_bw, self.infinite_bandwidth, scale)

    def all_to_all_node_tables(self, device_ids: Sequence[str],
                               calls: int = 1) -> tuple[NodeBlocks, np.ndarray, bool] | None:
        """What :meth:`all_to_all_node_s` evaluates (node blocks, bandwidth per link, infinite
        bandwidth), for a compiled caller that evaluates ``calls`` batches itself (counted as that
        many calls); None where the links are not node blocks."""
        nb = self.node_blocks(device_ids)
        if nb is None:
            return None
        if calls:
            self._note("all_to_all", "roofline", calls)
        return nb, self._link_bw, self.infinite_bandwidth

    def link_bytes(
        self,
        device_ids: Sequence[str],
        bytes_matrix: np.ndarray,
    ) -> dict[tuple[str, str], float]:
        """Bytes on each link direction ``(from, to)`` that an all-to-all puts there (nonzero only)."""
        r = self.routes(device_ids)
        loads = r.link_loads(np.asarray(bytes_matrix, dtype=float))
        if loads.ndim == 2:
            loads = loads.sum(axis=0)
        return {self._link_names[i]: float(loads[i]) for i in np.flatnonzero(loads)}

    def link_loads_each(
        self, device_ids: Sequence[str], bytes_matrices: np.ndarray
    ) -> tuple[list[tuple[str, str]], np.ndarray]:
        """Every link direction ``(from, to)`` and the bytes each matrix of a batch [N, G, G] puts
        on it ([N, links]; what :meth:`link_bytes` gives one matrix), from one batched product."""
        g = len(device_ids)
        loads = self.routes(device_ids).link_loads(np.asarray(bytes_matrices, dtype=float).reshape(-1, g, g))
        return list(self._link_names), loads

    def directed_links(self) -> list[tuple[tuple[str, str], float, float]]:
        """Every link direction as ``((from, to), effective bytes/s, latency s)``, for simulators
        that model links as resources."""
        lat = np.repeat([ln.spec.latency_s for ln in self.cluster.links], 2)
        return [
            (n, float(bw), float(la)) for n, bw, la in zip(self._link_names, self._link_bw, lat, strict=True)
        ]

    def routes_mirrored(self, device_ids: Sequence[str]) -> bool:
        """Whether every route ``j -> i`` among ``device_ids`` is route ``i -> j`` reversed, link for
        link (directed link ``d`` reversed is ``d ^ 1``), from the memoised routes' hop arrays."""
        r, g = self.routes(device_ids), len(device_ids)
        pair, link = r.pair_of_hop, r.link_of_hop
        length = np.bincount(pair, minlength=g * g)
        start = np.r_[0, np.cumsum(length)[:-1]]
        back = (np.arange(g * g) % g) * g + np.arange(g * g) // g  # the pair j -> i of pair i -> j
        if not np.array_equal(length, length[back]):
            return False
        pos = np.arange(len(pair)) - start[pair]  # each hop's place on its route
        partner = start[back[pair]] + length[pair] - 1 - pos
        return bool(np.array_equal(link[partner], link ^ 1))

    def path_links(self, src: str, dst: str) -> list[tuple[str, str]]:
        """The link directions a transfer ``src -> dst`` crosses, in order."""
        return [self._link_names[h] for h in directed_hops(self.cluster, src, dst, self._link_index)]

    def _device(self, device_id: str, kind: str | None = None) -> Device:
        try:
            dev = self.cluster.device(device_id)
        except KeyError:
            raise UserError(f"no device {device_id!r} in cluster {self.cluster.name}") from None
        if kind is not None and dev.kind != kind:
            raise UserError(f"expected a {kind} device, got {device_id!r} ({dev.kind})")
        return dev

    def _note(self, op: str, source: str, n: int = 1) -> None:
        """Overridden by CostModel to count sources; a bare CollectiveCosts keeps no log."""
