"""LRU hit counts for every cache size in one pass: stack distances from step bitmasks (numpy).

Under the batch-per-step semantics of :mod:`moesim.traces.cache`, LRU is a stack algorithm: after
each step the cache of C experts holds the C experts with the largest key ``(last step requested,
id)`` among those ever requested (requested experts have the newest step, so protecting them and
the lowest-id tie rule both agree with "keep the top C"; proof by induction over steps in
docs/traces.md). A request of expert e at step t that e last requested at step s < t is therefore a
hit for every C greater than e's rank at the end of step t - 1:

    rank = |experts requested in steps s+1 .. t-1|
         + |experts requested at s with a larger id and not requested in s+1 .. t-1|.

Each step's request set is a bitmask (one uint64 per 64 experts); the union over ``s+1 .. t-1``
is two look-ups in a sparse table of ORs (O(1) per request), and the counts are popcounts. A
histogram of the ranks gives the hits of all sizes at once. Steps are taken in chunks (the table
covers one chunk); a request whose previous use is in an earlier chunk reads the carried
"last step of each expert" vector instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.traces.npz import release_pages

if TYPE_CHECKING:
    from moesim.traces.trace import RoutingTrace

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 row ``[..., W]``, summed over the last axis (int64)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)
    as_bytes = np.ascontiguousarray(words).view(np.uint8)
    return _BYTE_POPCOUNT[as_bytes].reshape(*words.shape[:-1], -1).sum(axis=-1, dtype=np.int64)


def _masks(req: np.ndarray) -> np.ndarray:
    """uint64 ``[T, W]`` bitmask of each row of the bool ``req [T, E]`` (bit e of word e // 64)."""
    t, e = req.shape
    w = -(-e // 64)
    padded = np.zeros((t, w * 64), dtype=bool)
    padded[:, :e] = req
    return np.packbits(padded, axis=1, bitorder="little").view("<u8").astype(np.uint64, copy=False)


def _or_table(masks: np.ndarray) -> np.ndarray:
    """Sparse table ``[levels, T, W]``: level j, row i is the OR of ``masks[i : i + 2**j]``."""
    t = masks.shape[0]
    levels = max(1, t.bit_length())
    table = np.zeros((levels, *masks.shape), dtype=np.uint64)
    table[0] = masks
    for j in range(1, levels):
        half = 1 << (j - 1)
        np.bitwise_or(table[j - 1, : t - half], table[j - 1, half:], out=table[j, : t - half])
    return table


def _window_or(table: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """OR of ``masks[first .. last]`` (inclusive) per query; zeros where the window is empty."""
    n = last - first + 1
    empty = n <= 0
    k = np.frexp(np.maximum(n, 1).astype(np.float64))[1].astype(np.int64) - 1  # floor(log2 n)
    _levels, rows, w = table.shape
    flat = table.reshape(-1)
    a = k * rows + first
    b = k * rows + last - (np.int64(1) << k) + 1
    if empty.any():
        a[empty] = b[empty] = 0
    if w == 1:
        out = (flat[a] | flat[b])[:, None]
    else:
        words = np.arange(w, dtype=np.int64)[None, :]
        out = flat[a[:, None] * w + words] | flat[b[:, None] * w + words]
    if empty.any():
        out[empty] = 0
    return out


def _greater_bits(num_experts: int) -> np.ndarray:
    """uint64 ``[E, W]``: bit f set iff f > e."""
    e = np.arange(num_experts)
    return _masks(e[None, :] > e[:, None])


def _layer_ranks(req_et: np.ndarray, t0: int, last: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """LRU ranks of the requests of one layer in one chunk of steps, -1 for a first request.

    ``req_et`` bool [E, T] requests of steps t0 .. t0 + T - 1 (expert-major); ``last`` [E] the
    last step each expert was requested before t0 (-1 never), updated in place to the chunk's end.
    """
    req = np.ascontiguousarray(req_et.T)
    masks = _masks(req)
    table = _or_table(masks)
    e_of, t_of = np.nonzero(req_et)  # by expert, then step
    n = len(t_of)
    ranks = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return ranks
    same = np.r_[False, e_of[1:] == e_of[:-1]]
    prev = np.where(same, np.r_[0, t_of[:-1]], -1)
    inner = np.flatnonzero(same)  # previous use in this chunk
    if len(inner):
        s, t, e = prev[inner], t_of[inner], e_of[inner]
        between = _window_or(table, s + 1, t - 1)
        tie = masks[s] & ~between & gt[e]
        ranks[inner] = popcount(between) + popcount(tie)
    cross = np.flatnonzero(~same & (last[e_of] >= 0))  # previous use before this chunk
    if len(cross):
        t, e = t_of[cross], e_of[cross]
        s = last[e]
        since = _window_or(table, np.zeros_like(t), t - 1)  # steps t0 .. t - 1
        bits = np.unpackbits(since.view(np.uint8), axis=1, bitorder="little")[:, : req.shape[1]]
        fresh = bits == 0
        before = last[None, :]
        later = (before > s[:, None]) & fresh  # requested in s+1 .. t0-1, not counted in `since`
        tie = (before == s[:, None]) & fresh & (np.arange(req.shape[1])[None, :] > e[:, None])
        ranks[cross] = popcount(since) + later.sum(axis=1) + tie.sum(axis=1)
    last_in_chunk = np.flatnonzero(np.r_[e_of[1:] != e_of[:-1], True])
    last[e_of[last_in_chunk]] = t0 + t_of[last_in_chunk]
    return ranks


def lru_hits(
    trace: RoutingTrace,
    capacities: Sequence[int],
    *,
    batch_size: int = 1,
    max_tokens: int | None = None,
    chunk_steps: int = 1 << 13,
) -> tuple[np.ndarray, int]:
    """``(hits [S], requests)`` of LRU summed over layers for each capacity (same contract as
    :func:`moesim.traces.cache.simulate_hits`)."""
    e, layers = trace.num_experts, trace.num_layers
    rows = trace.num_tokens if max_tokens is None else min(trace.num_tokens, max_tokens)
    caps = np.asarray(capacities, dtype=np.int64)
    top = int(caps.max(initial=0))
    hist = np.zeros(top + 1, dtype=np.int64)  # ranks 0 .. top - 1, then "top or more / first use"
    requests = 0
    last = np.full((layers, e), -1, dtype=np.int64)
    gt = _greater_bits(e)
    chunk_rows = max(1, chunk_steps) * batch_size
    for start in range(0, rows, chunk_rows):
        stop = min(rows, start + chunk_rows)
        ids = np.ascontiguousarray(np.asarray(trace.expert_ids[start:stop]).transpose(1, 0, 2))
        release_pages(trace.expert_ids)
        k = ids.shape[2]
        step = np.repeat(np.arange(stop - start, dtype=np.int64) // batch_size, k)
        steps = int(step[-1]) + 1
        for layer in range(layers):
            col = ids[layer].reshape(-1)
            req = np.zeros((e, steps), dtype=bool)
            if (col < 0).any():
                ok = col >= 0
                req[col[ok], step[ok]] = True
            else:
                req[col, step] = True
            ranks = _layer_ranks(req, start // batch_size, last[layer], gt)
            requests += len(ranks)
            hist += np.bincount(np.where((ranks >= 0) & (ranks < top), ranks, top), minlength=top + 1)
    below = np.r_[0, np.cumsum(hist[:-1])]  # below[c] = requests with rank < c
    return below[caps], requests
