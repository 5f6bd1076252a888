"""Locality-aware choice of a replica (``SimConfig.dispatch == "local"``).

A token on source GPU s sends its work for expert e to the replica of e on s if there is one, else
splits it over the replicas of e on s's node, else over all replicas of e. This is SGLang's
``static`` dispatch made fair inside a node (sgl-project/sglang
python/sglang/srt/eplb/expert_location_dispatch.py @032b6b86) and what DeepSeek's
hierarchical EPLB assumes: a replica on the token's own node saves the InfiniBand hop.

The choice is table driven: per (layer, expert, source GPU) the candidate replicas and a group
id (the GPU itself, its node, or "everywhere"); a pair picks candidate ``rank % count`` where rank
orders the pairs of one (step, layer, expert, group) in token order (round-robin, an even split),
or a uniform random candidate with an ``rng``. Everything is numpy over a whole chunk of steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.sim.dispatch import Dispatch, NodeCounting, ReplicaTable, count_routed, group_ranks
from moesim.sim.forwarding import Forwarding
from moesim.specs.hardware import Cluster


@dataclass(frozen=True)
class LocalRouting:
    """Candidate replicas of each (layer, expert) for each source GPU under local dispatch."""

    candidates: np.ndarray
    """[L * (E + 1) * G, R] replica indices (into ``ReplicaTable.device``), candidates first."""
    count: np.ndarray
    """[L * (E + 1) * G] number of candidates (>= 1)."""
    group: np.ndarray
    """[L * (E + 1) * G] id of the candidate set: s (own GPU), G + node (own node), G + N (all)."""
    num_groups: int

    @classmethod
    def of(cls, table: ReplicaTable, node_of: np.ndarray) -> LocalRouting:
        """Build from a plan's replica table and the node index of each of its G devices."""
        node_of = np.asarray(node_of, dtype=np.int64)
        G = table.num_devices
        N = int(node_of.max()) + 1 if node_of.size else 1
        dev = table.device  # [L, E1, R]; G = dummy device
        R = dev.shape[2]
        valid = np.arange(R)[None, None, :] < table.counts[:, :, None]  # [L, E1, R]
        dev_node = np.r_[node_of, -1][dev]  # [L, E1, R]; the dummy is on no node
        src = np.arange(G)
        own = valid[:, :, None, :] & (dev[:, :, None, :] == src[None, None, :, None])  # [L, E1, G, R]
        same = valid[:, :, None, :] & (dev_node[:, :, None, :] == node_of[None, None, :, None])
        has_own, has_same = own.any(axis=3), same.any(axis=3)
        mask = np.where(has_own[..., None], own,
                        np.where(has_same[..., None], same, np.broadcast_to(valid[:, :, None, :], own.shape)))
        group = np.where(has_own, src[None, None, :], np.where(has_same, G + node_of[None, None, :], G + N))
        # candidates to the front, in replica order (stable sort on "not a candidate")
        cand = np.argsort(~mask, axis=3, kind="stable").astype(np.int32)
        count = np.maximum(mask.sum(axis=3), 1)
        return cls(candidates=cand.reshape(-1, R), count=count.ravel().astype(np.int64),
                   group=group.ravel().astype(np.int64), num_groups=G + N + 1)

    def choose(self, le: np.ndarray, owner: np.ndarray, num_devices: int,
               rng: np.random.Generator | None = None) -> np.ndarray:
        """Replica index of each pair: ``le`` [S, B, L, K] flat (layer, expert) indices into [L, E+1]
        (the dummy for -1 ids included), ``owner`` [S, B] source GPU of each token."""
        S = le.shape[0]
        idx = le * num_devices + owner[:, :, None, None]
        n = self.count[idx]
        if rng is not None:
            pick = (rng.random(le.shape) * n).astype(np.int64)
        else:
            LE1 = self.count.size // num_devices
            key = ((np.arange(S, dtype=np.int64)[:, None, None, None] * LE1 + le) * self.num_groups
                   + self.group[idx])
            rank = group_ranks(key, S * LE1 * self.num_groups - 1)
            pick = rank.reshape(le.shape) % n
        return self.candidates[idx, pick].astype(np.int64)


def local_dispatch(ids: np.ndarray, owner: np.ndarray, table: ReplicaTable, routing: LocalRouting,
                   rng: np.random.Generator | None = None, nodes: NodeCounting | None = None,
                   forward: Forwarding | None = None) -> Dispatch:
    """:func:`moesim.sim.dispatch.dispatch` with the replica of each pair chosen by ``routing``."""
    _S, _B, L, _K = ids.shape
    G, J = table.num_devices, table.slots_per_device
    E1 = table.counts.shape[1]
    R = table.device.shape[2]
    le = ids.astype(np.int64)
    np.putmask(le, le < 0, E1 - 1)  # -1 -> the dummy expert
    le += (np.arange(L, dtype=np.int64) * E1)[None, None, :, None]
    flat = le * R + routing.choose(le, owner, G, rng)
    dst = table.device.reshape(-1)[flat]
    dst_slot = dst * J + table.slot.reshape(-1)[flat]
    return count_routed(dst, dst_slot, owner, G, J, nodes, forward)


def node_index(cluster: Cluster, devices: tuple[str, ...]) -> np.ndarray:
    """[G] node index (0..N-1, in order of first appearance) of each device."""
    seen: dict[int, int] = {}
    return np.array([seen.setdefault(cluster.device(d).node, len(seen)) for d in devices], dtype=np.int64)
