"""Node-level dispatch counting and the all-to-all's link-model seconds of every (step, layer) of a
chunk in one compiled pass (numba, the ``[fast]`` extra).

:func:`moesim.sim.counting.count_nodes_single` fills [S, L, G, N] and [S, L, N, G] copy tables that
:class:`moesim.sim.a2atimes.AllToAllTimer` then reads twice (dispatch, combine) and the engine sums
per device. Here each (step, layer)'s tables live in two small buffers: counted, summed per device,
timed for the dispatch and the combine (:func:`moesim.cost.linkloads._node_times_py`'s arithmetic,
the same floats) and cleared, so the chunk's output is [S, L, G] and [S, L]. The numpy path (and the
compiled one without this module) is what tests compare it with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.sim.linktimes import (
    COMBINE_SAME,
    COMBINE_SCALED,
    COMBINE_TRANSPOSED,
    NodeTiming,
    _link_s,
)
from moesim.sim.nodesparse import _count_sparse, _device_key, _tile_shifts

try:  # optional: the [fast] extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None

def _count_timed_py(ids: np.ndarray, dev_code: np.ndarray, slot_code: np.ndarray, E1: int, owner: np.ndarray,
                    node_of: np.ndarray, G: int, J: int, N: int, head_steps: int, r_idx: np.ndarray,
                    r_bounds: np.ndarray, r_class: np.ndarray, c_idx: np.ndarray, c_bounds: np.ndarray,
                    c_class: np.ndarray, l_idx: np.ndarray, l_bounds: np.ndarray, l_values: np.ndarray,
                    class_bw: np.ndarray, infinite: bool, d_scale: float, c_scale: float, combine: int,
                    slot_tokens: np.ndarray, sent: np.ndarray, received: np.ndarray, total: np.ndarray,
                    head: np.ndarray, link_d: np.ndarray, link_c: np.ndarray, keys: np.ndarray,
                    tokens: np.ndarray, tile: np.ndarray, want_keys: bool, keep_slots: bool) -> int:
    """:func:`moesim.sim.counting._count_single_py`'s counts of expert ids [S, B, L, K] (one replica
    per expert), with each (step, layer)'s node tables kept in buffers: ``sent`` / ``received``
    [S, L, G] the copies each device sends / receives (its own excluded), ``link_d`` / ``link_c``
    [S, L] the dispatch's and the combine's link-model seconds, ``tokens`` [S, L, G] each device's
    (token, expert) pairs and ``keys`` [S, L, G] its slot counts sorted and packed ``62 // J`` bits
    each (:meth:`moesim.sim.stepcost.StepCoster.expert_times_keyed`), or without ``want_keys`` its
    expert call's aggregates packed (:attr:`TimedCounts.aggregate_keys`). Returns the largest slot
    count (the keys hold only if it fits in the bits)."""
    S, B, L, K = ids.shape
    bits = 62 // max(J, 1)
    top = 0
    row = np.zeros(max(J, 1), dtype=np.int64)
    rows = np.zeros(G * N, dtype=np.int64)
    cols = np.zeros(N * G, dtype=np.int64)
    rows_t = np.zeros(G * N, dtype=np.int64)
    cols_t = np.zeros(N * G, dtype=np.int64)
    # each entry adds one to its slot and one to its (source, destination) pair; the pairs are folded
    # into the node tables per (step, layer): contiguous sums where nodes are equal blocks of GPUs
    pair = np.zeros(G * G, dtype=np.int32)
    peak = np.zeros(max(class_bw.shape[0], 1), dtype=np.int64)
    code = np.empty(dev_code.shape[0], dtype=np.int64)  # device | slot bin << 16 (G = no device)
    for x in range(dev_code.shape[0]):
        g = dev_code[x]
        code[x] = G if g >= G else g | ((g * J + slot_code[x]) << 16)
    per = G // max(N, 1)
    blocks = per * N == G
    for g in range(G):
        blocks = blocks and node_of[g] == g // per
    shift = _tile_shifts(tile)
    flat_total = total.reshape(-1)
    for s in range(S):
        for layer in range(L):
            base = layer * E1
            ss, sl = (s, layer) if keep_slots else (0, 0)  # else one (step, layer)'s slots, reused
            st = slot_tokens[ss, sl].reshape(-1)
            st[:] = 0  # the outputs come uninitialised (the rest is written whole below)
            for b in range(B):
                ti = owner[s, b] * G
                for k in range(K):
                    e = ids[s, b, layer, k]
                    c = code[base + e] if e >= 0 else G
                    g = c & 0xFFFF
                    if g >= G:
                        continue
                    st[c >> 16] += 1
                    pair[ti + g] += 1
            for i in range(G):  # a device's own tokens are not copied
                pair[i * G + i] = 0
            if s < head_steps:
                for i in range(G):
                    for g in range(G):
                        head[s, layer, i, g] = pair[i * G + g]
            if blocks:
                for i in range(G):
                    out = 0
                    for n in range(N):
                        acc = 0
                        for q in range(per):
                            acc += pair[i * G + n * per + q]
                        rows[i * N + n] = acc
                        out += acc
                    sent[s, layer, i] = out
                cols[:] = 0
                for n in range(N):
                    for q in range(per):
                        for g in range(G):
                            cols[n * G + g] += pair[(n * per + q) * G + g]
            else:
                rows[:] = 0
                cols[:] = 0
                for i in range(G):
                    for g in range(G):
                        v = pair[i * G + g]
                        rows[i * N + node_of[g]] += v
                        cols[node_of[i] * G + g] += v
                for i in range(G):
                    out = 0
                    for n in range(N):
                        out += rows[i * N + n]
                    sent[s, layer, i] = out
            for x in range(G * G):
                flat_total[x] += pair[x]
                pair[x] = 0
            for i in range(G):
                into = 0
                for n in range(N):
                    into += cols[n * G + i]
                received[s, layer, i] = into
                if want_keys:
                    key, count, most, rows_padded, used = _device_key(slot_tokens, ss, sl, i, J, bits,
                                                                      tile[i], shift[i], row, want_keys)
                    keys[s, layer, i] = key
                else:  # inline (a call per device cost as much as the fold)
                    count = most = rows_padded = used = 0
                    tl, sh = tile[i], shift[i]
                    for j in range(J):
                        v = st[i * J + j]
                        count += v
                        most = max(most, v)
                        rows_padded += ((v + tl - 1) >> sh) << sh if sh >= 0 else (v + tl - 1) // tl * tl
                        used += v > 0
                    keys[s, layer, i] = (rows_padded << 31) | (used << 21) | count
                tokens[s, layer, i] = count
                top = max(top, most)
            scale2 = c_scale if combine == COMBINE_SCALED else 0.0
            both = _link_s(rows, cols, d_scale, scale2, r_idx, r_bounds, r_class, c_idx, c_bounds, c_class,
                           l_idx, l_bounds, l_values, class_bw, peak, infinite)
            link_d[s, layer] = both[0]
            if combine == COMBINE_SCALED:
                link_c[s, layer] = both[1]
            elif combine == COMBINE_TRANSPOSED:
                for g in range(G):
                    for n in range(N):
                        rows_t[g * N + n] = cols[n * G + g]
                        cols_t[n * G + g] = rows[g * N + n]
                back = _link_s(rows_t, cols_t, c_scale, 0.0, r_idx, r_bounds, r_class, c_idx, c_bounds,
                               c_class, l_idx, l_bounds, l_values, class_bw, peak, infinite)
                link_c[s, layer] = back[0]
    return top


# the helpers (nodesparse, linktimes) are compiled first: the kernel finds them compiled
_count_timed = numba.njit(cache=True, nogil=True)(_count_timed_py) if numba is not None else None

__all__ = ["COMBINE_SAME", "COMBINE_SCALED", "COMBINE_TRANSPOSED", "NodeTiming", "TimedCounts", "available",
           "count_timed", "sparse"]


def available() -> bool:
    return _count_timed is not None


@dataclass(frozen=True)
class TimedCounts:
    """What :func:`count_timed` gives for a chunk of S steps (copy counts exclude a device's own)."""

    slot_tokens: np.ndarray | None
    """[S, L, G, J] (token, expert) pairs per device slot (None: not kept)."""
    tokens: np.ndarray
    """[S, L, G] (token, expert) pairs per device."""
    expert_keys: np.ndarray | None
    """[S, L, G] each device's slot counts sorted and packed (None: a count does not fit)."""
    sent: np.ndarray
    received: np.ndarray
    """[S, L, G] token copies each device sends / receives."""
    total: np.ndarray
    """[G, G] copies from device i to j, summed over the chunk."""
    head: np.ndarray | None
    """[k, L, G, G] the first ``head_steps`` steps' copies per pair (the timeline's)."""
    link_s: tuple[np.ndarray, np.ndarray | None]
    """[S, L] link-model seconds of the dispatch and of the combine (None: the dispatch's)."""
    aggregate_keys: np.ndarray | None = None
    """[S, L, G] each device's expert call as ``padded << 31 | active << 21 | tokens``: its expert
    tokens padded to its tile rows per expert and summed, its experts with tokens, its tokens (None:
    packed slot counts were asked for instead, or an aggregate does not fit its bits)."""


def sparse(entries: int, G: int, N: int) -> bool:
    """Whether a (step, layer) of ``entries`` routed entries is counted and timed sparsely (touched
    entries only) rather than over whole [G, N] tables: the same results, whichever is faster."""
    return 4 * entries < G * N


def _empty(scratch: dict[str, np.ndarray] | None, name: str, shape: tuple[int, ...],
           dtype: type = np.int64) -> np.ndarray:
    """An uninitialised array of ``shape``: in ``scratch``'s buffer ``name`` (grown as needed) when
    given, so that each chunk writes memory already mapped rather than fresh pages."""
    if scratch is None:
        return np.empty(shape, dtype)
    size = int(np.prod(shape))
    buf = scratch.get(name)
    if buf is None or buf.size < size:
        buf = scratch[name] = np.empty(size, dtype)
    return buf[:size].reshape(shape)


def count_timed(ids: np.ndarray, device: np.ndarray, slot: np.ndarray, owner: np.ndarray, node_of: np.ndarray,
                G: int, J: int, head_steps: int, timing: NodeTiming, keep_slots: bool = True,
                scratch: dict[str, np.ndarray] | None = None) -> TimedCounts:
    """The counts and link times of expert ids ``ids`` [S, B, L, K] with one replica per expert
    (``device`` / ``slot`` [L, E + 1], column E the dummy of -1 ids)."""
    assert _count_timed is not None
    S, _B, L, _K = ids.shape
    nb = timing.blocks
    N = nb.num_nodes
    k = min(S, head_steps)
    # the passes zero or write every (step, layer)'s outputs as they go: memory touched once
    slot_tokens = np.empty((S, L, G, J), np.int64) if keep_slots else _empty(scratch, "slots", (1, 1, G, J))
    sent, received = _empty(scratch, "sent", (S, L, G)), _empty(scratch, "received", (S, L, G))
    total, head = np.zeros((G, G), np.int64), np.zeros((k, L, G, G), np.int64)
    link_d, link_c = (_empty(scratch, name, (S, L), np.float64) for name in ("link_d", "link_c"))
    keys, tokens = _empty(scratch, "keys", (S, L, G)), _empty(scratch, "tokens", (S, L, G))
    tile = (np.ones(G, np.int64) if timing.tile_rows is None
            else np.maximum(np.asarray(timing.tile_rows, dtype=np.int64), 1))
    levels = nb.levels_s[nb.lat_levels] if len(nb.lat_levels) else np.zeros(0)
    head_in = (np.ascontiguousarray(ids), np.ascontiguousarray(device, dtype=np.int64).ravel(),
               np.ascontiguousarray(slot, dtype=np.int64).ravel(), device.shape[1],
               np.ascontiguousarray(owner, dtype=np.int64), np.asarray(node_of, dtype=np.int64), G, J, N, k)
    tail = (np.asarray(timing.bandwidth, dtype=np.float64), bool(timing.infinite),
            float(timing.dispatch_bytes), float(timing.combine_bytes), int(timing.combine), slot_tokens, sent,
            received, total, head, link_d, link_c, keys, tokens, tile, bool(timing.keys), keep_slots)
    if sparse(ids.shape[1] * ids.shape[3], G, N):
        r_ptr, r_grp, c_ptr, c_grp, level = timing.inverse
        r_class, c_class, class_bw = timing.classes
        top = _count_sparse(*head_in, r_ptr, r_grp, r_class, c_ptr, c_grp, c_class, level, levels, class_bw,
                            *tail[1:])
    else:
        r_class, c_class, class_bw = timing.classes
        top = _count_timed(*head_in, nb.row_index, np.r_[nb.row_starts, len(nb.row_index)], r_class,
                           nb.col_index, np.r_[nb.col_starts, len(nb.col_index)], c_class,
                           nb.lat_index, np.r_[nb.lat_starts, len(nb.lat_index)], levels, class_bw, *tail[1:])
    fits = timing.keys and J > 0 and top < (1 << (62 // J))
    # a device's tokens <= J * top, its padded rows <= J * (top + tile - 1), its active experts <= J
    packed = (not timing.keys and J * top < 1 << 21 and J < 1 << 10
              and J * (top + int(tile.max(initial=1)) - 1) < 1 << 32)
    link = (link_d, None if timing.combine == COMBINE_SAME else link_c)
    return TimedCounts(slot_tokens if keep_slots else None, tokens, keys if fits else None, sent, received,
                       total, head if k else None, link, keys if packed else None)
