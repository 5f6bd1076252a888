"""The count-and-time pass of :mod:`moesim.sim.nodetimes` for steps with few routed entries (decode
at small batches): only the touched table entries, devices and link groups are visited, the same
results as the pass over whole tables; and the per-device helpers both passes share (numba, the
``[fast]`` extra).
"""

from __future__ import annotations

import numpy as np

from moesim.sim.linktimes import COMBINE_SCALED, COMBINE_TRANSPOSED, _link_sparse

try:  # optional: the [fast] extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None


def _tile_shifts_py(tile: np.ndarray) -> np.ndarray:
    """log2 of each power-of-two tile (-1: not one): such tiles pad by shifts, not by divisions."""
    shift = np.full(tile.shape[0], -1, dtype=np.int64)
    for i in range(tile.shape[0]):
        if tile[i] & (tile[i] - 1) == 0:
            shift[i] = 0
            while (1 << shift[i]) < tile[i]:
                shift[i] += 1
    return shift


def _device_key_py(slot_tokens: np.ndarray, s: int, layer: int, g: int, J: int, bits: int, tile: int,
                   shift: int, row: np.ndarray, keys: bool) -> tuple[int, int, int, int, int]:
    """(packed key (0 without ``keys``), tokens, largest count, tokens padded to ``tile`` rows per
    expert (``shift``: its log2, or -1), experts with tokens) of device g's slot counts sorted
    ascending."""
    for j in range(J):  # insertion sort: J is a handful of slots
        v = slot_tokens[s, layer, g, j]
        q = j
        while keys and q > 0 and row[q - 1] > v:
            row[q] = row[q - 1]
            q -= 1
        row[q] = v
    key = 0
    count = 0
    top = 0
    padded = 0
    active = 0
    for j in range(J):
        if keys:
            key += row[j] << (j * bits)
        count += row[j]
        top = max(top, row[j])
        v = row[j] + tile - 1
        padded += (v >> shift) << shift if shift >= 0 else v // tile * tile
        active += row[j] > 0
    return key, count, top, padded, active


def _count_sparse_py(ids: np.ndarray, dev_code: np.ndarray, slot_code: np.ndarray, E1: int, owner: np.ndarray,
                     node_of: np.ndarray, G: int, J: int, N: int, head_steps: int, r_ptr: np.ndarray,
                     r_grp: np.ndarray, r_cls: np.ndarray, c_ptr: np.ndarray, c_grp: np.ndarray,
                     c_cls: np.ndarray, level: np.ndarray, l_values: np.ndarray, class_bw: np.ndarray,
                     infinite: bool, d_scale: float, c_scale: float, combine: int, slot_tokens: np.ndarray,
                     sent: np.ndarray, received: np.ndarray, total: np.ndarray, head: np.ndarray,
                      link_d: np.ndarray, link_c: np.ndarray, keys: np.ndarray, tokens: np.ndarray,
                     tile: np.ndarray, want_keys: bool, keep_slots: bool) -> int:
    """:func:`moesim.sim.nodetimes._count_timed_py` for steps with few routed entries: only the touched
    table entries, devices and link groups are visited (each (step, layer)'s outputs zeroed first)."""
    S, B, L, K = ids.shape
    bits = 62 // max(J, 1)
    top = 0
    row = np.zeros(max(J, 1), dtype=np.int64)
    rows = np.zeros(G * N, dtype=np.int64)
    cols = np.zeros(N * G, dtype=np.int64)
    cap = B * K + 1
    r_entry = np.zeros(cap, dtype=np.int64)
    c_entry = np.zeros(cap, dtype=np.int64)
    r_value = np.zeros(cap, dtype=np.int64)
    c_value = np.zeros(cap, dtype=np.int64)
    rt_entry = np.zeros(cap, dtype=np.int64)
    ct_entry = np.zeros(cap, dtype=np.int64)
    touched = np.zeros(cap, dtype=np.int64)
    on = np.zeros(G, dtype=np.bool_)
    acc_r = np.zeros(max(r_cls.shape[0], 1), dtype=np.int64)
    acc_c = np.zeros(max(c_cls.shape[0], 1), dtype=np.int64)
    seen = np.zeros(max(r_cls.shape[0], c_cls.shape[0], 1), dtype=np.int64)
    peak = np.zeros(max(class_bw.shape[0], 1), dtype=np.int64)
    shift = _tile_shifts(tile)
    for s in range(S):
        for layer in range(L):
            base = layer * E1
            nr = 0
            nc = 0
            ss, sl = (s, layer) if keep_slots else (0, 0)  # else one (step, layer)'s slots, reused
            for g in range(G):  # the outputs come uninitialised: zero this (step, layer)'s, once
                sent[s, layer, g] = 0
                received[s, layer, g] = 0
                keys[s, layer, g] = 0
                tokens[s, layer, g] = 0
                for j in range(J):
                    slot_tokens[ss, sl, g, j] = 0
            nd = 0
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
                    slot_tokens[ss, sl, g, slot_code[base + e]] += 1
                    if not on[g]:
                        on[g] = True
                        touched[nd] = g
                        nd += 1
                    if g == i:
                        continue
                    x = i * N + node_of[g]
                    if rows[x] == 0:
                        r_entry[nr] = x
                        nr += 1
                    rows[x] += 1
                    y = ni * G + g
                    if cols[y] == 0:
                        c_entry[nc] = y
                        nc += 1
                    cols[y] += 1
                    sent[s, layer, i] += 1
                    received[s, layer, g] += 1
                    total[i, g] += 1
                    if s < head_steps:
                        head[s, layer, i, g] += 1
            for t in range(nd):
                g = touched[t]
                on[g] = False
                if want_keys:
                    key, count, most, rows_padded, used = _device_key(slot_tokens, ss, sl, g, J, bits,
                                                                      tile[g], shift[g], row, want_keys)
                    keys[s, layer, g] = key
                else:  # inline (as in the dense pass)
                    count = most = rows_padded = used = 0
                    tl, sh = tile[g], shift[g]
                    for j in range(J):
                        v = slot_tokens[ss, sl, g, j]
                        count += v
                        most = max(most, v)
                        rows_padded += ((v + tl - 1) >> sh) << sh if sh >= 0 else (v + tl - 1) // tl * tl
                        used += v > 0
                    keys[s, layer, g] = (rows_padded << 31) | (used << 21) | count
                tokens[s, layer, g] = count
                top = max(top, most)
            for t in range(nr):
                r_value[t] = rows[r_entry[t]]
            for t in range(nc):
                c_value[t] = cols[c_entry[t]]
            scale2 = c_scale if combine == COMBINE_SCALED else 0.0
            both = _link_sparse(r_entry, r_value, nr, c_entry, c_value, nc, d_scale, scale2, r_ptr, r_grp,
                                r_cls, c_ptr, c_grp, c_cls, level, l_values, class_bw, infinite, acc_r, acc_c,
                                seen, peak)
            link_d[s, layer] = both[0]
            if combine == COMBINE_SCALED:
                link_c[s, layer] = both[1]
            elif combine == COMBINE_TRANSPOSED:  # rows' = cols transposed, cols' = rows transposed
                for t in range(nc):
                    rt_entry[t] = (c_entry[t] % G) * N + c_entry[t] // G
                for t in range(nr):
                    ct_entry[t] = (r_entry[t] % N) * G + r_entry[t] // N
                back = _link_sparse(rt_entry, c_value, nc, ct_entry, r_value, nr, c_scale, 0.0, r_ptr, r_grp,
                                    r_cls, c_ptr, c_grp, c_cls, level, l_values, class_bw, infinite, acc_r,
                                    acc_c, seen, peak)
                link_c[s, layer] = back[0]
            for t in range(nr):
                rows[r_entry[t]] = 0
            for t in range(nc):
                cols[c_entry[t]] = 0
    return top


if numba is not None:  # helpers first: the kernel finds them compiled
    _tile_shifts = numba.njit(cache=True, nogil=True)(_tile_shifts_py)
    _device_key = numba.njit(cache=True, nogil=True)(_device_key_py)
    _count_sparse = numba.njit(cache=True, nogil=True)(_count_sparse_py)
else:
    _tile_shifts, _device_key = _tile_shifts_py, _device_key_py
    _count_sparse = None
