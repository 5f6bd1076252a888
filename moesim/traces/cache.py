"""Per-layer expert caches (LRU, LFU, Belady) with one exact semantics, step by step and whole-trace.

Semantics (issue 3): one cache of C experts per MoE layer, starting empty; requests arrive in row
order; a step's experts at a layer (one token's K ids, or the union over a batch) are requested
together; each resident one is a hit, each other a miss that is loaded. When the cache overflows,
the victim is chosen among the experts *not* requested in this step:

- LRU: least recently requested (ties, i.e. last requested in the same step: lowest id);
- LFU: fewest requests so far (ties: least recently requested, then lowest id);
- Belady: next request furthest in the future (never = infinitely far; ties: lowest id).

-1 slots are skipped. If one step requests more than C distinct experts (only possible for a batch)
all of them count as hits or misses as above and the cache then keeps C of them, chosen by the same
rule. Prefetch (``insert``) loads an expert outside any request: it does not count as a request; if
the cache is full, the victim is chosen by the same rule among all residents.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.errors import UserError
from moesim.traces.npz import release_pages
from moesim.vocab import CachePolicy

if TYPE_CHECKING:
    from moesim.traces.trace import RoutingTrace

POLICIES = (CachePolicy.LRU, CachePolicy.LFU, CachePolicy.BELADY)
"""The policies that evict (``static`` pins a fixed set, ``none`` holds everything)."""
_TIER = np.int64(1) << 62  # added to the score of requested experts: they are evicted last


def _check(policy: str, capacity: int) -> None:
    if policy not in POLICIES:
        raise UserError(f"unknown cache policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if capacity < 1:
        raise UserError(f"cache capacity must be >= 1 expert, got {capacity}")


def _unique_valid(requested: np.ndarray | Sequence[int]) -> list[int]:
    """Ids >= 0 without duplicates, in order of first appearance."""
    seen: dict[int, None] = {}
    for x in np.asarray(requested).ravel().tolist():
        if x >= 0:
            seen.setdefault(int(x), None)
    return list(seen)


class ExpertCache:
    """One layer's cache, advanced one step per ``access`` (for the simulator)."""

    def __init__(self, policy: str, capacity: int, future: Sequence[np.ndarray] | None = None):
        _check(policy, capacity)
        if policy == "belady" and future is None:
            raise UserError("the belady cache needs the future request sequence of its layer (future=...)")
        self.policy = policy
        self.capacity = capacity
        self.step = 0
        """Steps completed (index of the next ``access``)."""
        self._resident: set[int] = set()
        self._last: dict[int, int] = {}
        self._count: dict[int, int] = {}
        self._uses: dict[int, list[int]] = {}
        if future is not None:
            for t, req in enumerate(future):
                for e in _unique_valid(req):
                    self._uses.setdefault(e, []).append(t)

    def _next_use(self, expert: int, after: int) -> int:
        uses = self._uses.get(expert, [])
        i = bisect.bisect_right(uses, after)
        return uses[i] if i < len(uses) else 1 << 62  # never again: infinitely far

    def _score(self, expert: int, now: int) -> tuple[int, ...]:
        """Smaller = evicted first."""
        if self.policy == "lru":
            return (self._last.get(expert, -1), expert)
        if self.policy == "lfu":
            return (self._count.get(expert, 0), self._last.get(expert, -1), expert)
        return (-self._next_use(expert, now), expert)

    def _evict_to_capacity(self, protected: set[int], now: int) -> None:
        over = len(self._resident) - self.capacity
        if over <= 0:
            return
        free = sorted(self._resident - protected, key=lambda e: self._score(e, now))
        victims = free[:over]
        if len(victims) < over:  # the request alone exceeds the capacity
            rest = sorted(protected & self._resident, key=lambda e: self._score(e, now))
            victims += rest[: over - len(victims)]
        self._resident.difference_update(victims)

    def access(self, requested: np.ndarray | Sequence[int]) -> np.ndarray:
        """Request experts together; bool hit mask aligned with the unique ids >= 0 in first-seen order."""
        ids = _unique_valid(requested)
        now = self.step
        hits = np.array([e in self._resident for e in ids], dtype=bool)
        for e in ids:
            self._last[e] = now
            self._count[e] = self._count.get(e, 0) + 1
        self._resident.update(ids)
        self._evict_to_capacity(set(ids), now)
        self.step += 1
        return hits

    def insert(self, expert: int) -> None:
        """Prefetch ``expert`` (not a request); evicts by the policy among all residents if full."""
        if expert < 0 or expert in self._resident:
            return
        self._resident.add(int(expert))
        self._evict_to_capacity({int(expert)}, self.step - 1)

    def contains(self, expert: int) -> bool:
        return int(expert) in self._resident

    def resident(self) -> np.ndarray:
        """Sorted resident expert ids."""
        return np.array(sorted(self._resident), dtype=np.int64)


def make_cache(policy: str, capacity: int, future: Sequence[np.ndarray] | None = None) -> ExpertCache:
    """A step-by-step cache for one layer; Belady needs ``future`` (that layer's requests per step)."""
    return ExpertCache(policy, capacity, future)


# --------------------------------------------------------------------------------- whole-trace path
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


def simulate_hits(
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
    for c in capacities:
        _check(policy, c)
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


def hit_rates(
    trace: RoutingTrace,
    sizes: Sequence[int],
    policies: Sequence[str] = POLICIES,
    *,
    batch_size: int = 1,
    max_tokens: int | None = None,
) -> dict[str, dict[int, float]]:
    """``{policy: {capacity: hit rate}}``, hits and requests summed over layers (NaN if no requests)."""
    out: dict[str, dict[int, float]] = {}
    for policy in policies:
        h, r = simulate_hits(trace, list(sizes), policy, batch_size=batch_size, max_tokens=max_tokens)
        out[str(policy)] = {int(c): (float(h[i]) / r if r else float("nan")) for i, c in enumerate(sizes)}
    return out
