"""All-to-all on the real topology, from per-pair bytes.

Every (src, dst) pair's bytes follow ``cluster.path(src, dst)``; the bytes on each link *direction*
are summed (links are full duplex), and the all-to-all finishes when the most loaded link direction
has drained:

    t = max_l (bytes_l / effective_bandwidth_l) + max over pairs with bytes of path_latency

so two flows through one NIC (or one NVSwitch port) take twice as long as one. The pair->link
incidence is built once per device list (:class:`AllToAllRoutes`); evaluating a bytes matrix is a
``bincount`` over the (pair, hop) entries, with no Python loop over pairs.

Hierarchical (DeepEP internode style): a cross-node pair (i -> j, j on node b) first goes from i to
its *rail peer* on node b (the GPU with i's local index, over i's NIC and the fabric), then over the
node's NVLink to j. With ``node_bytes`` ([G, nodes], bytes i sends to each node once, after
de-duplicating tokens bound for several GPUs of one node) the fabric leg carries those bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.specs.hardware import Cluster


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


def rail_peer(cluster: Cluster, device_id: str, node: int) -> str:
    """The GPU on ``node`` with ``device_id``'s local GPU index (modulo that node's GPU count)."""
    dev = cluster.device(device_id)
    local = [d.id for d in cluster.devices_of(dev.kind, dev.node)].index(device_id)
    peers = cluster.devices_of(dev.kind, node)
    return peers[local % len(peers)].id


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
    hierarchical: bool = False
    node_of: np.ndarray | None = None
    """[G] node index of each device (hierarchical only)."""
    fabric_pair_of_hop: np.ndarray | None = None
    """Hierarchical: flat (src * nodes + node) index of each fabric-leg entry."""
    fabric_link_of_hop: np.ndarray | None = None
    num_nodes: int = 0

    @classmethod
    def build(
        cls, cluster: Cluster, device_ids: tuple[str, ...], *, hierarchical: bool = False
    ) -> AllToAllRoutes:
        index, bw, _ = link_tables(cluster)
        g = len(device_ids)
        pairs: list[int] = []
        links: list[int] = []
        latency = np.zeros(g * g)
        nodes = np.array([cluster.device(d).node for d in device_ids])
        node_ids = sorted(set(nodes.tolist()))
        node_pos = {n: i for i, n in enumerate(node_ids)}
        f_pairs: list[int] = []
        f_links: list[int] = []
        for i, src in enumerate(device_ids):
            for j, dst in enumerate(device_ids):
                if i == j:
                    continue
                if hierarchical and nodes[i] != nodes[j]:
                    peer = rail_peer(cluster, src, int(nodes[j]))
                    hops = directed_hops(cluster, peer, dst, index) if peer != dst else []
                    latency[i * g + j] = cluster.path_latency(src, peer) + (
                        cluster.path_latency(peer, dst) if peer != dst else 0.0
                    )
                else:
                    hops = directed_hops(cluster, src, dst, index)
                    latency[i * g + j] = cluster.path_latency(src, dst)
                pairs += [i * g + j] * len(hops)
                links += hops
            if hierarchical:
                for n in node_ids:
                    if n == nodes[i]:
                        continue
                    hops = directed_hops(cluster, src, rail_peer(cluster, src, n), index)
                    f_pairs += [i * len(node_ids) + node_pos[n]] * len(hops)
                    f_links += hops
        return cls(
            device_ids=tuple(device_ids),
            pair_of_hop=np.array(pairs, dtype=np.int64),
            link_of_hop=np.array(links, dtype=np.int64),
            pair_latency_s=latency,
            num_links=len(bw),
            hierarchical=hierarchical,
            node_of=np.array([node_pos[int(n)] for n in nodes]) if hierarchical else None,
            fabric_pair_of_hop=np.array(f_pairs, dtype=np.int64) if hierarchical else None,
            fabric_link_of_hop=np.array(f_links, dtype=np.int64) if hierarchical else None,
            num_nodes=len(node_ids),
        )

    def link_loads(self, bytes_matrix: np.ndarray, node_bytes: np.ndarray | None = None) -> np.ndarray:
        """Bytes on each directed link; ``bytes_matrix`` is [G, G] or a batch [S, G, G] -> [S, L]."""
        b = np.asarray(bytes_matrix, dtype=float)
        g = len(self.device_ids)
        batched = b.ndim == 3
        flat = b.reshape(-1, g * g)
        s = flat.shape[0]
        offsets = (np.arange(s) * self.num_links)[:, None]
        loads = np.bincount(
            (self.link_of_hop[None, :] + offsets).ravel(),
            weights=flat[:, self.pair_of_hop].ravel(),
            minlength=s * self.num_links,
        ).reshape(s, self.num_links)
        if self.hierarchical:
            assert self.fabric_pair_of_hop is not None and self.fabric_link_of_hop is not None
            assert self.node_of is not None
            if node_bytes is None:
                # No de-duplication known: the fabric leg carries every cross-node pair's bytes.
                onehot = np.eye(self.num_nodes)[self.node_of]  # [G, nodes]
                nb = b.reshape(s, g, g) @ onehot
            else:
                nb = np.asarray(node_bytes, dtype=float).reshape(s, g, self.num_nodes)
            nb = nb.reshape(s, -1)
            loads += np.bincount(
                (self.fabric_link_of_hop[None, :] + offsets).ravel(),
                weights=nb[:, self.fabric_pair_of_hop].ravel(),
                minlength=s * self.num_links,
            ).reshape(s, self.num_links)
        return loads if batched else loads[0]

    def latency_s(self, bytes_matrix: np.ndarray) -> np.ndarray:
        """Longest path latency among pairs that send anything ([S] for a batch, else scalar)."""
        b = np.asarray(bytes_matrix, dtype=float)
        flat = b.reshape(-1, len(self.device_ids) ** 2)
        return np.max(np.where(flat > 0, self.pair_latency_s[None, :], 0.0), axis=1)
