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
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from moesim.errors import UserError
from moesim.vocab import CachePolicy

if TYPE_CHECKING:
    from moesim.traces.trace import RoutingTrace

POLICIES = (CachePolicy.LRU, CachePolicy.LFU, CachePolicy.BELADY)
"""The policies that evict (``static`` pins a fixed set, ``none`` holds everything)."""


def _check(policy: str, capacity: int) -> None:
    if policy not in POLICIES:
        raise UserError(f"unknown cache policy {policy!r}; expected one of {', '.join(POLICIES)}")
    if capacity < 1:
        raise UserError(f"cache capacity must be >= 1 expert, got {capacity}")


def _unique_valid(requested: np.ndarray | Sequence[int]) -> list[int]:
    """Ids >= 0 without duplicates, in order of first appearance."""
    seen: dict[int, None] = {}
    for x in requested if isinstance(requested, list) else np.asarray(requested).ravel().tolist():
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

    def access(self, requested: np.ndarray | Sequence[int], protect: frozenset[int] | set[int] = frozenset()
               ) -> np.ndarray:
        """Request experts together; bool hit mask aligned with the unique ids >= 0 in first-seen order.
        ``protect``: residents not to evict either (a simulator's experts held for later use)."""
        return np.array(self.request(_unique_valid(requested), protect), dtype=bool)

    def request(self, ids: list[int], protect: frozenset[int] | set[int] = frozenset()) -> list[bool]:
        """:meth:`access` of ``ids`` already unique and >= 0 (a list): the hit of each."""
        now = self.step
        resident = self._resident
        hits = [e in resident for e in ids]
        last, count = self._last, self._count
        for e in ids:
            last[e] = now
            count[e] = count.get(e, 0) + 1
        resident.update(ids)
        if len(resident) > self.capacity:
            self._evict_to_capacity(set(ids) | set(protect), now)
        self.step += 1
        return hits

    def insert(self, expert: int, protect: frozenset[int] | set[int] = frozenset()) -> bool:
        """Prefetch ``expert`` (not a request); evicts by the policy among the residents not in
        ``protect`` if full. False (nothing loaded) when it is resident or every resident is protected."""
        if expert < 0 or expert in self._resident:
            return False
        if len(self._resident) >= self.capacity and self._resident <= set(protect):
            return False
        self._resident.add(int(expert))
        self._evict_to_capacity({int(expert)} | set(protect), self.step - 1)
        return True

    def clear(self) -> None:
        """Empty the cache and forget its history (a cold start); the step clock goes on."""
        self._resident.clear()
        self._last.clear()
        self._count.clear()

    def contains(self, expert: int) -> bool:
        return int(expert) in self._resident

    def resident(self) -> np.ndarray:
        """Sorted resident expert ids."""
        return np.array(sorted(self._resident), dtype=np.int64)


def make_cache(policy: str, capacity: int, future: Sequence[np.ndarray] | None = None) -> ExpertCache:
    """A step-by-step cache for one layer; Belady needs ``future`` (that layer's requests per step)."""
    return ExpertCache(policy, capacity, future)


# --------------------------------------------------------------------------------- whole-trace path
METHODS = ("auto", "compiled", "stack", "steps")
"""Whole-trace algorithms, all exact: ``compiled`` (numba loop, the ``[fast]`` extra), ``stack``
(LRU only: stack distances in numpy), ``steps`` (numpy, one Python iteration per step: the
reference). ``auto`` takes ``compiled`` when numba is installed, else ``stack`` for LRU and
``steps`` for the others."""


def resolve_method(policy: str, method: str = "auto") -> str:
    """The algorithm ``method`` means for ``policy`` here (``auto`` resolved)."""
    from moesim.traces import cache_compiled

    if method not in METHODS:
        raise UserError(f"unknown cache simulation method {method!r}; expected one of {', '.join(METHODS)}")
    if method == "stack" and policy != "lru":
        raise UserError(f"the stack-distance method is exact for LRU only, not {policy!r}")
    if method == "auto":
        if cache_compiled.available():
            return "compiled"
        return "stack" if policy == "lru" else "steps"
    return method


def simulate_hits(
    trace: RoutingTrace,
    capacities: Sequence[int],
    policy: str,
    *,
    batch_size: int = 1,
    max_tokens: int | None = None,
    method: str = "auto",
) -> tuple[np.ndarray, int]:
    """``(hits [S], requests)`` summed over layers, for each capacity, over the first ``max_tokens``
    rows (all rows if None), by the algorithm ``method`` (see :data:`METHODS`; all give the same
    counts)."""
    for c in capacities:
        _check(policy, c)
    how = resolve_method(policy, method)
    if how == "compiled":
        from moesim.traces.cache_compiled import compiled_hits

        return compiled_hits(trace, capacities, policy, batch_size=batch_size, max_tokens=max_tokens)
    if how == "stack":
        from moesim.traces.cache_lru import lru_hits

        return lru_hits(trace, capacities, batch_size=batch_size, max_tokens=max_tokens)
    from moesim.traces.cache_steps import simulate_hits_steps

    return simulate_hits_steps(trace, capacities, policy, batch_size=batch_size, max_tokens=max_tokens)


def hit_rates(
    trace: RoutingTrace,
    sizes: Sequence[int],
    policies: Sequence[str] = POLICIES,
    *,
    batch_size: int = 1,
    max_tokens: int | None = None,
    method: str = "auto",
) -> dict[str, dict[int, float]]:
    """``{policy: {capacity: hit rate}}``, hits and requests summed over layers (NaN if no requests)."""
    out: dict[str, dict[int, float]] = {}
    for policy in policies:
        h, r = simulate_hits(trace, list(sizes), policy, batch_size=batch_size, max_tokens=max_tokens,
                             method=method)
        out[str(policy)] = {int(c): (float(h[i]) / r if r else float("nan")) for i, c in enumerate(sizes)}
    return out
