"""Node-level dispatch counting as one compiled pass over the routed entries (numba, optional).

The numpy form (:func:`moesim.sim.dispatch.count_routed` with ``nodes``) makes several passes and
``bincount`` calls over every (step, token, layer, top-k) entry; this loop visits each entry once
and increments four small tables. Same results (integer counts): tests compare the two. Without
numba (the ``[fast]`` extra) :func:`available` is False and the numpy form runs.
"""

from __future__ import annotations

import numpy as np

try:  # optional: the [fast] extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None


def available() -> bool:
    return numba is not None


def _count_py(dst: np.ndarray, dst_slot: np.ndarray, owner: np.ndarray, node_of: np.ndarray, G: int,
              J: int, N: int, head_steps: int, slot_tokens: np.ndarray, rows: np.ndarray, cols: np.ndarray,
              total: np.ndarray, head: np.ndarray) -> None:
    """Add the entries ``dst`` / ``dst_slot`` [S, B, L, K] (device G = none; slot bin g*J+j) of
    tokens on ``owner`` [S, B] into slot_tokens [S, L, G, J], rows [S, L, G, N], cols [S, L, N, G],
    total [G, G] and head [head_steps, L, G, G]; a device's own pairs count in slots only."""
    S, B, L, K = dst.shape
    for s in range(S):  # (step, layer) outermost: the tables one step-layer touches stay in cache
        for layer in range(L):
            for b in range(B):
                i = owner[s, b]
                ni = node_of[i]
                for k in range(K):
                    g = dst[s, b, layer, k]
                    if g >= G:
                        continue
                    code = dst_slot[s, b, layer, k]
                    slot_tokens[s, layer, g, code - g * J] += 1
                    if g == i:
                        continue
                    rows[s, layer, i, node_of[g]] += 1
                    cols[s, layer, ni, g] += 1
                    total[i, g] += 1
                    if s < head_steps:
                        head[s, layer, i, g] += 1


def _count_single_py(ids: np.ndarray, dev_code: np.ndarray, slot_code: np.ndarray, E1: int,
                     owner: np.ndarray, node_of: np.ndarray, G: int, J: int, N: int, head_steps: int,
                     slot_tokens: np.ndarray, rows: np.ndarray, cols: np.ndarray, total: np.ndarray,
                     head: np.ndarray) -> None:
    """:func:`_count_py` straight from expert ids [S, B, L, K] (-1 = none) when every expert has
    one replica: ``dev_code`` / ``slot_code`` [L * E1] give its device and slot (index E1 - 1 of a
    layer is the dummy of -1 ids, on device G)."""
    S, B, L, K = ids.shape
    for s in range(S):
        for layer in range(L):
            base = layer * E1
            for b in range(B):
                i = owner[s, b]
                ni = node_of[i]
                for k in range(K):
                    e = ids[s, b, layer, k]
                    if e < 0:
                        continue
                    g = dev_code[base + e]
                    if g >= G:
                        continue
                    slot_tokens[s, layer, g, slot_code[base + e]] += 1
                    if g == i:
                        continue
                    rows[s, layer, i, node_of[g]] += 1
                    cols[s, layer, ni, g] += 1
                    total[i, g] += 1
                    if s < head_steps:
                        head[s, layer, i, g] += 1


def _count_forwarded_py(dst: np.ndarray, owner: np.ndarray, node_of: np.ndarray, peer: np.ndarray, G: int,
                        head_steps: int, rows: np.ndarray, cols: np.ndarray, total: np.ndarray,
                        head: np.ndarray) -> None:
    """The hierarchical all-to-all's copies (:mod:`moesim.sim.forwarding`) of the entries ``dst``
    [S, B, L, K] into rows [S, L, G, N], cols [S, L, N, G], total [G, G] and head: per token, each
    destination GPU j once (forwarded by ``peer[i, node(j)]`` unless that is j) and each other
    destination node n once (RDMA to ``peer[i, n]``); K is small, so duplicates are found by
    looking back over the token's earlier entries."""
    S, B, L, K = dst.shape
    for s in range(S):
        for layer in range(L):
            for b in range(B):
                i = owner[s, b]
                ni = node_of[i]
                for k in range(K):
                    g = dst[s, b, layer, k]
                    if g >= G:
                        continue
                    n = node_of[g]
                    seen_gpu = False
                    seen_node = False
                    for q in range(k):
                        h = dst[s, b, layer, q]
                        if h < G:
                            seen_gpu = seen_gpu or h == g
                            seen_node = seen_node or node_of[h] == n
                    if not seen_gpu:
                        f = peer[i, n]
                        if f != g:
                            rows[s, layer, f, n] += 1
                            cols[s, layer, n, g] += 1
                            total[f, g] += 1
                            if s < head_steps:
                                head[s, layer, f, g] += 1
                    if not seen_node and n != ni:
                        p = peer[i, n]
                        rows[s, layer, i, n] += 1
                        cols[s, layer, ni, p] += 1
                        total[i, p] += 1
                        if s < head_steps:
                            head[s, layer, i, p] += 1


def _count_forwarded_single_py(ids: np.ndarray, dev_code: np.ndarray, slot_code: np.ndarray, E1: int,
                               owner: np.ndarray, node_of: np.ndarray, peer: np.ndarray, G: int,
                               head_steps: int, slot_tokens: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                               total: np.ndarray, head: np.ndarray) -> None:
    """:func:`_count_forwarded_py` and the slot counts in one pass straight from expert ids (one
    replica per expert; ``dev_code`` / ``slot_code`` as in :func:`_count_single_py`)."""
    S, B, L, K = ids.shape
    gpus = np.empty(K, dtype=np.int64)
    for s in range(S):
        for layer in range(L):
            base = layer * E1
            for b in range(B):
                i = owner[s, b]
                ni = node_of[i]
                n_seen = 0
                for k in range(K):
                    e = ids[s, b, layer, k]
                    if e < 0:
                        continue
                    g = dev_code[base + e]
                    if g >= G:
                        continue
                    slot_tokens[s, layer, g, slot_code[base + e]] += 1
                    n = node_of[g]
                    seen_gpu = False
                    seen_node = False
                    for q in range(n_seen):
                        seen_gpu = seen_gpu or gpus[q] == g
                        seen_node = seen_node or node_of[gpus[q]] == n
                    gpus[n_seen] = g
                    n_seen += 1
                    if not seen_gpu:
                        f = peer[i, n]
                        if f != g:
                            rows[s, layer, f, n] += 1
                            cols[s, layer, n, g] += 1
                            total[f, g] += 1
                            if s < head_steps:
                                head[s, layer, f, g] += 1
                    if not seen_node and n != ni:
                        p = peer[i, n]
                        rows[s, layer, i, n] += 1
                        cols[s, layer, ni, p] += 1
                        total[i, p] += 1
                        if s < head_steps:
                            head[s, layer, i, p] += 1


if numba is not None:
    _count = numba.njit(cache=True, nogil=True)(_count_py)
    _count_single = numba.njit(cache=True, nogil=True)(_count_single_py)
    _count_forwarded = numba.njit(cache=True, nogil=True)(_count_forwarded_py)
    _count_forwarded_single = numba.njit(cache=True, nogil=True)(_count_forwarded_single_py)
else:
    _count = _count_single = _count_forwarded = _count_forwarded_single = None


def _outputs(S: int, L: int, G: int, J: int, N: int, head_steps: int) -> tuple[np.ndarray, ...]:
    k = min(S, head_steps)
    return (np.zeros((S, L, G, J), np.int64), np.zeros((S, L, G, N), np.int64),
            np.zeros((S, L, N, G), np.int64), np.zeros((G, G), np.int64), np.zeros((k, L, G, G), np.int64))


def count_nodes(dst: np.ndarray, dst_slot: np.ndarray, owner: np.ndarray, node_of: np.ndarray, G: int,
                J: int, head_steps: int) -> tuple[np.ndarray, ...]:
    """(slot_tokens, rows, cols, total, head) of routed entries, compiled (see :func:`_count_py`)."""
    S, _B, L, _K = dst.shape
    N = int(node_of.max()) + 1 if node_of.size else 1
    out = _outputs(S, L, G, J, N, head_steps)
    _count(np.ascontiguousarray(dst, dtype=np.int64), np.ascontiguousarray(dst_slot, dtype=np.int64),
           np.ascontiguousarray(owner, dtype=np.int64), np.asarray(node_of, dtype=np.int64), G, J, N,
           min(S, head_steps), *out)
    return out


def count_nodes_single(ids: np.ndarray, device: np.ndarray, slot: np.ndarray, owner: np.ndarray,
                       node_of: np.ndarray, G: int, J: int, head_steps: int) -> tuple[np.ndarray, ...]:
    """:func:`count_nodes` from expert ids with one replica per expert: ``device`` / ``slot``
    [L, E + 1] (column E the dummy of -1 ids)."""
    S, _B, L, _K = ids.shape
    N = int(node_of.max()) + 1 if node_of.size else 1
    E1 = device.shape[1]
    out = _outputs(S, L, G, J, N, head_steps)
    ids = np.ascontiguousarray(ids)
    ids = np.where(ids < 0, E1 - 1, ids) if (ids < 0).any() else ids
    _count_single(ids, np.ascontiguousarray(device, dtype=np.int64).ravel(),
                  np.ascontiguousarray(slot, dtype=np.int64).ravel(), E1,
                  np.ascontiguousarray(owner, dtype=np.int64), np.asarray(node_of, dtype=np.int64), G, J, N,
                  min(S, head_steps), *out)
    return out


def count_forwarded(dst: np.ndarray, owner: np.ndarray, node_of: np.ndarray, peer: np.ndarray, G: int,
                    head_steps: int) -> tuple[np.ndarray, ...]:
    """(rows, cols, total, head) of the hierarchical all-to-all of routed entries, compiled
    (see :func:`_count_forwarded_py`)."""
    S, _B, L, _K = dst.shape
    N = int(peer.shape[1])
    _, rows, cols, total, head = _outputs(S, L, G, 0, N, head_steps)
    _count_forwarded(np.ascontiguousarray(dst, dtype=np.int64), np.ascontiguousarray(owner, dtype=np.int64),
                     np.asarray(node_of, dtype=np.int64), np.ascontiguousarray(peer, dtype=np.int64), G,
                     min(S, head_steps), rows, cols, total, head)
    return rows, cols, total, head


def count_forwarded_single(ids: np.ndarray, device: np.ndarray, slot: np.ndarray, owner: np.ndarray,
                           node_of: np.ndarray, peer: np.ndarray, G: int, J: int,
                           head_steps: int) -> tuple[np.ndarray, ...]:
    """(slot_tokens, rows, cols, total, head) of the hierarchical all-to-all from expert ids with
    one replica per expert (:func:`count_nodes_single`'s inputs plus the rail ``peer`` table)."""
    S, _B, L, _K = ids.shape
    E1 = device.shape[1]
    out = _outputs(S, L, G, J, int(peer.shape[1]), head_steps)
    ids = np.ascontiguousarray(ids)
    _count_forwarded_single(ids, np.ascontiguousarray(device, dtype=np.int64).ravel(),
                            np.ascontiguousarray(slot, dtype=np.int64).ravel(), E1,
                            np.ascontiguousarray(owner, dtype=np.int64), np.asarray(node_of, dtype=np.int64),
                            np.ascontiguousarray(peer, dtype=np.int64), G, min(S, head_steps), *out)
    return out
