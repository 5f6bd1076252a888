"""Counting the hierarchical all-to-all (DeepEP normal kernels) of routed tokens.

A token on GPU i whose experts are on GPUs D goes once to each other node n of D, to i's rail peer
``peer[i, n]`` (RDMA), and from ``peer[i, node(j)]`` once to each GPU j of D that is not that peer
(NVLink; on i's own node the peer is i). The counts are those copies, as a [G, G] matrix per
(step, layer) on the flat routes (:func:`moesim.cost.a2a.forwarded_matrix` is the same map for
byte matrices), or its node-level aggregates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Forwarding:
    """``node_of`` [G] node index of each device, ``peer`` [G, N] its rail peer on each node."""

    node_of: np.ndarray
    peer: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.peer.shape[1])


def _first_of_sorted(values: np.ndarray) -> np.ndarray:
    """Along the last axis of a sorted array: True at the first entry of each run of equal values."""
    first = np.ones(values.shape, dtype=bool)
    np.not_equal(values[..., 1:], values[..., :-1], out=first[..., 1:])
    return first


def forwarded_pairs(dst: np.ndarray, owner: np.ndarray, G: int, fw: Forwarding) -> np.ndarray:
    """[S, L, G, G] copies from device i to device j of the routed entries ``dst`` [S, B, L, K]
    (device G = none) of tokens on ``owner`` [S, B] (zero diagonal)."""
    S, B, L, K = dst.shape
    N = fw.num_nodes
    d = np.sort(dst, axis=3)  # "none" (G) sorts last
    keep = _first_of_sorted(d) & (d < G)  # each destination GPU once per token
    node_ext = np.r_[fw.node_of, N]
    peer_ext = np.concatenate([fw.peer, np.full((G, 1), G, dtype=np.int64)], axis=1)
    own = owner[:, :, None, None]
    f = peer_ext[own, node_ext[d]]  # the forwarder of each destination
    keep &= f != d
    sl = (np.arange(S, dtype=np.int64)[:, None] * L + np.arange(L, dtype=np.int64)[None, :])[:, None, :, None]
    bins = [((sl * G + f) * G + d)[keep]]
    n = np.sort(node_ext[dst], axis=3)  # "none" (N) sorts last
    rdma = _first_of_sorted(n) & (n < N) & (n != fw.node_of[owner][:, :, None, None])
    bins.append(((sl * G + own) * G + peer_ext[own, n])[rdma])
    flat = np.concatenate(bins)
    del B, K
    return np.bincount(flat, minlength=S * L * G * G).reshape(S, L, G, G)


def node_aggregates(pairs: np.ndarray, node_of: np.ndarray, N: int) -> tuple[np.ndarray, np.ndarray]:
    """``(rows [S, L, G, N], cols [S, L, N, G])`` of pair counts [S, L, G, G] with a zero diagonal:
    what each device sends to each node, what each node sends to each device."""
    onehot = np.eye(N, dtype=pairs.dtype)[node_of]  # [G, N]
    return pairs @ onehot, np.einsum("gn,slgj->slnj", onehot, pairs)
