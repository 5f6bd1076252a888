"""Moving expert weights from one placement to the next: which copies, from where, how long, which links.

Every (MoE layer, GPU, expert) the new plan holds and the old one does not is one copy of the
expert's weights (``MoEModel.expert_bytes``) into that GPU; experts a GPU drops cost nothing.
Each copy comes from the source with the shortest uncongested transfer (``cost.transfer_s``): a GPU
that holds the expert in the old plan (NVLink on a node, the NIC rails and InfiniBand across
nodes), or, with ``source == "host"``, also the destination's host CPU over PCIe (a pinned copy of
every expert in host memory). All copies of a re-balance run at once: each directed link carries
the bytes of the copies whose path (``cost.path_links``) crosses it, so the copy takes

    copy_s = max over links (bytes on the link / its bandwidth) + the longest path latency used

(``cost.directed_links``' effective bandwidths). Before counting, the new plan's GPUs are renumbered
inside each node so that each keeps as many of its old experts as possible (GPUs of one node are
alike, so the plan's balance is unchanged; the engines move whatever their planner's numbering
says, which can be everything).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.vocab import MigrationSource


def align_devices(old: np.ndarray, new: np.ndarray, node_of: np.ndarray) -> np.ndarray:
    """``new`` ``[L, G, S]`` with its GPU rows permuted inside each node, per layer, so that each GPU
    keeps as many of ``old``'s experts as the greedy matching finds (largest overlap first, ties to
    the lowest indices); slots ordered so kept experts stay in their old slots where possible."""
    out = new.copy()
    for m in range(new.shape[0]):
        for n in np.unique(node_of):
            gpus = np.flatnonzero(node_of == n)
            old_sets = [set(old[m, g][old[m, g] >= 0].tolist()) for g in gpus]
            new_sets = [set(new[m, g][new[m, g] >= 0].tolist()) for g in gpus]
            overlap = np.array([[len(a & b) for b in old_sets] for a in new_sets])
            free_rows, free_cols = set(range(len(gpus))), set(range(len(gpus)))
            pairs: dict[int, int] = {}
            for flat in np.argsort(-overlap, axis=None, kind="stable").tolist():
                i, j = divmod(flat, len(gpus))
                if i in free_rows and j in free_cols:
                    pairs[i] = j
                    free_rows.discard(i)
                    free_cols.discard(j)
            for i, j in pairs.items():
                out[m, gpus[j]] = _keep_slots(old[m, gpus[j]], new[m, gpus[i]])
    return out


def _keep_slots(old_row: np.ndarray, new_row: np.ndarray) -> np.ndarray:
    """``new_row``'s experts arranged so that those also in ``old_row`` keep their old slots."""
    old_set, new_set = set(old_row.tolist()), set(new_row.tolist())
    row = np.full_like(new_row, -1)
    for s, e in enumerate(old_row.tolist()):
        if e >= 0 and e in new_set:
            row[s] = e
    rest = [e for e in new_row.tolist() if e >= 0 and e not in old_set]
    free = np.flatnonzero(row < 0)
    row[free[:len(rest)]] = rest
    return row


@dataclass(frozen=True)
class MigrationCost:
    """The copies from one placement to the next and what they cost."""

    moves: np.ndarray
    """``[n, 3]`` int64: (MoE layer row, expert, destination GPU index) of each copy."""
    sources: tuple[str, ...]
    """The device each copy is read from (a GPU id, or a host CPU id)."""
    bytes: float
    """Weight bytes moved: copies x one expert's bytes."""
    copy_s: float
    """Seconds for all copies, run together on otherwise idle links."""
    link_bytes: dict[tuple[str, str], float] = field(default_factory=dict)
    """Bytes the copies put on each link direction."""

    @property
    def layers_changed(self) -> int:
        return int(np.unique(self.moves[:, 0]).size) if len(self.moves) else 0

    @property
    def experts_moved(self) -> int:
        return len(self.moves)


def migration_cost(old: np.ndarray, new: np.ndarray, devices: tuple[str, ...], cost: Any,
                   expert_bytes: float, source: MigrationSource = MigrationSource.GPU) -> MigrationCost:
    """The copies that turn placement ``old`` into ``new`` (both ``[L, G, S]``) on ``devices``."""
    L, G, _S = new.shape
    moves, sources = [], []
    memo: dict[tuple[str, str], float] = {}

    def seconds(src: str, dst: str) -> float:
        if (src, dst) not in memo:
            memo[src, dst] = float(cost.transfer_s(src, dst, expert_bytes))
        return memo[src, dst]

    hosts: dict[str, str] = {}
    if source == MigrationSource.HOST:
        from moesim.cost.transfers import host_of

        hosts = {d: host_of(cost.cluster, d) for d in devices}
    for m in range(L):
        holders: dict[int, list[int]] = {}
        for g in range(G):
            for e in old[m, g][old[m, g] >= 0].tolist():
                holders.setdefault(e, []).append(g)
        for g in range(G):
            had = set(old[m, g].tolist())
            for e in new[m, g].tolist():
                if e < 0 or e in had:
                    continue
                cands = [devices[h] for h in holders.get(e, [])] + ([hosts[devices[g]]] if hosts else [])
                # the nearest source; ties to the first (GPUs in index order, then the host)
                moves.append((m, e, g))
                sources.append(min(cands, key=lambda s, d=devices[g]: seconds(s, d)))
    link_bytes: dict[tuple[str, str], float] = {}
    latency = 0.0
    for (_m, _e, g), src in zip(moves, sources, strict=True):
        path = cost.path_links(src, devices[g])
        for ln in path:
            link_bytes[ln] = link_bytes.get(ln, 0.0) + expert_bytes
        latency = max(latency, float(cost.cluster.path_latency(src, devices[g])))
    bandwidth = {ln: bw for ln, bw, _lat in cost.directed_links()}
    busiest = max((b / bandwidth[ln] for ln, b in link_bytes.items()), default=0.0)
    return MigrationCost(moves=np.asarray(moves, dtype=np.int64).reshape(-1, 3), sources=tuple(sources),
                         bytes=len(moves) * float(expert_bytes), copy_s=busiest + latency if moves else 0.0,
                         link_bytes=link_bytes)
