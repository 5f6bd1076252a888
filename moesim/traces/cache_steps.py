"""The per-step whole-trace cache simulation: the reference path of :mod:`moesim.traces.cache`.

Every layer and capacity advances together as numpy arrays, one step per Python iteration. It is
exact for the three policies but slow (one Python iteration per step); the default paths are the
LRU stack distances (:mod:`moesim.traces.cache_lru`) and the compiled loop
(:mod:`moesim.traces.cache_compiled`), which tests compare against this one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.traces.npz import release_pages

if TYPE_CHECKING:
    from moesim.traces.trace import RoutingTrace

_TIER = np.int64(1) << 62  # added to the score of requested experts: they are evicted last


def _flat_steps(trace: RoutingTrace, batch_size: int, start: int, stop: int) -> np.ndarray:
    """int32 ``[steps, batch*L*K]`` flat ids ``layer*E + expert`` of rows start:stop; -1 -> L*E (dummy)."""
    e, layers = trace.num_experts, trace.num_layers
    ids = np.asarray(trace.expert_ids[start:stop], dtype=np.int32)
    release_pages(trace.expert_ids)
    flat = ids + (np.arange(layers, dtype=np.int32) * e)[None, :, None]
    flat[ids < 0] = layers * e
    rows = stop - start
    steps = -(-rows // batch_size)
    pad = steps * batch_size - rows
    flat = flat.reshape(rows, -1)
    if pad:
        flat = np.concatenate([flat, np.full((pad, flat.shape[1]), layers * e, np.int32)])
    return flat.reshape(steps, -1)


def _next_step(ids: np.ndarray, step_of_row: np.ndarray, steps: int) -> np.ndarray:
    """int32 like ``ids [R, K]`` (one layer): the next step after each entry's own requesting that expert."""
    k = ids.shape[1]
    keys = ids.ravel()
    order = np.argsort(keys, kind="stable")  # radix sort on int16: by expert, then by row
    k_sorted = keys[order]
    s_sorted = step_of_row[order // k]
    new_block = np.r_[True, (k_sorted[1:] != k_sorted[:-1]) | (s_sorted[1:] != s_sorted[:-1])]
    block_start = np.flatnonzero(new_block)
    block_key, block_step = k_sorted[block_start], s_sorted[block_start]
    block_next = np.full(len(block_start), steps, np.int32)
    same = block_key[1:] == block_key[:-1]
    block_next[:-1][same] = block_step[1:][same]
    nxt = np.empty(keys.shape, np.int32)
    nxt[order] = block_next[np.cumsum(new_block) - 1]
    nxt[keys < 0] = steps
    return nxt.reshape(ids.shape)


def _belady_next(trace: RoutingTrace, batch_size: int, rows: int) -> np.ndarray:
    """int32 ``[steps, batch*L*K]`` aligned with ``_flat_steps``: next step using each entry's expert.

    Computed layer by layer (a layer's ids never meet another's), so the extra memory is this int32
    array, O(rows x L x K).
    """
    layers, k = trace.num_layers, trace.top_k
    steps = -(-rows // batch_size)
    nxt = np.full((steps * batch_size, layers, k), steps, np.int32)
    step_of_row = (np.arange(rows) // batch_size).astype(np.int32)
    for layer in range(layers):
        ids = np.array(trace.expert_ids[:rows, layer, :])
        release_pages(trace.expert_ids)
        nxt[:rows, layer, :] = _next_step(ids, step_of_row, steps)
    return nxt.reshape(steps, -1)


def _chunks(
    trace: RoutingTrace, batch_size: int, max_rows: int, policy: str, chunk_rows: int
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    chunk_rows = max(batch_size, chunk_rows - chunk_rows % batch_size)
    nxt = _belady_next(trace, batch_size, max_rows) if policy == "belady" else None
    for start in range(0, max_rows, chunk_rows):
        flat = _flat_steps(trace, batch_size, start, min(max_rows, start + chunk_rows))
        s0 = start // batch_size
        yield flat, None if nxt is None else nxt[s0 : s0 + flat.shape[0]]


def simulate_hits_steps(
    trace: RoutingTrace,
    capacities: Sequence[int],
    policy: str,
    *,
    batch_size: int = 1,
    max_tokens: int | None = None,
    chunk_rows: int = 16384,
) -> tuple[np.ndarray, int]:
    """``(hits [S], requests)`` summed over layers, for each capacity, over the first ``max_tokens`` rows.

    All layers and capacities advance together as numpy arrays, one step per Python iteration; the
    eviction order of the candidates is the same for every capacity, so it is sorted once per step.
    """
    e, layers = trace.num_experts, trace.num_layers
    rows = trace.num_tokens if max_tokens is None else min(trace.num_tokens, max_tokens)
    total_steps = -(-rows // batch_size)
    caps = np.asarray(capacities, np.int64)[:, None]
    size = layers * e + 1  # + dummy slot for -1
    resident = np.zeros((len(caps), size), bool)
    last = np.full(size, -1, np.int64)
    count = np.zeros(size, np.int64)
    nextuse = np.full(size, total_steps, np.int64)
    idx = np.arange(size, dtype=np.int64) % max(e, 1)
    hits = np.zeros(len(caps), np.int64)
    requests = 0
    req = np.zeros(size, bool)
    step0 = 0
    for flat, nxt in _chunks(trace, batch_size, rows, policy, chunk_rows):
        for j in range(flat.shape[0]):
            t = step0 + j
            f = flat[j]
            req[:] = False
            req[f] = True
            req[-1] = False
            requests += int(req.sum())
            hits += (resident & req).sum(axis=1)
            last[f] = t
            if policy == "lfu":
                count += req
            elif policy == "belady":
                nextuse[f] = nxt[j]
            resident |= req
            n_res = resident[:, :-1].reshape(len(caps), layers, e).sum(axis=2)
            over = n_res - caps
            if over.max() <= 0:
                continue
            if policy == "lru":
                score = last * e + idx
            elif policy == "lfu":
                score = (count * (total_steps + 1) + last) * e + idx
            else:
                score = (total_steps - nextuse) * e + idx
            score = score + req * _TIER
            order = np.argsort(score[:-1].reshape(layers, e), axis=1)
            res3 = resident[:, :-1].reshape(len(caps), layers, e)
            res_sorted = np.take_along_axis(res3, order[None], axis=2)
            evict_sorted = res_sorted & (np.cumsum(res_sorted, axis=2) <= over[:, :, None])
            evict = np.zeros_like(res3)
            np.put_along_axis(evict, np.broadcast_to(order[None], evict.shape), evict_sorted, axis=2)
            resident[:, :-1] &= ~evict.reshape(len(caps), -1)
        step0 += flat.shape[0]
    return hits, requests
