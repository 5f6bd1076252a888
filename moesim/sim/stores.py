"""Expert stores: which experts each GPU holds per MoE layer, one class per cache policy.

Cache semantics are those of ``moesim.traces.cache`` (a step's experts requested together; the
cache starts empty), so a one-GPU run at batch 1 with no prefetch gives exactly the hit rate of
``moesim trace stats``. Scope (``moesim.vocab.CacheScope``): one cache of C experts per MoE layer
and GPU (``layer``), or one cache per GPU of the layers' capacities summed, over (layer, expert)
keys (``global``), its clock advancing once per (step, layer). Experts a step requested or
prefetched are *held* until the step has used them (requested: until its layer's experts ran;
prefetched: until its layer's request): no eviction takes them, and a prefetch that would have to
is not made. ``reset`` empties the caches (a new sequence). Timing is the engine's; a store only
decides hits, misses and what a prefetch loads.

A new policy is one :class:`ExpertStore` subclass plus one entry in :data:`STORES`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from moesim.errors import UserError
from moesim.plans.plan import CachePlan
from moesim.traces.cache import ExpertCache, make_cache
from moesim.vocab import CachePolicy, CacheScope


@dataclass(frozen=True)
class StoreInputs:
    """What a store may know before the run: its shape, the plan's placement and every step's
    requests (Belady reads the future), and the rows static pinning defaults to."""

    num_layers: int
    num_devices: int
    placement: np.ndarray
    """[MoE layers, devices, slots] logical expert per slot."""
    slot_tokens: Sequence[np.ndarray]
    """Per step, [MoE layers, devices, slots] tokens per slot (> 0: requested)."""
    warmup_load: Callable[[], np.ndarray]
    """[MoE layers, experts] requests of the rows static pinning defaults to (asked only then)."""
    scope: CacheScope = CacheScope.LAYER
    num_experts: int = 0
    """Experts per layer (the global scope's key is ``layer * num_experts + expert``)."""

    def future(self, layer: int, device: int) -> list[np.ndarray]:
        """The experts ``device`` requests at ``layer``, step by step."""
        row = self.placement[layer, device]
        return [row[np.flatnonzero(st[layer, device] > 0)] for st in self.slot_tokens]

    def future_keys(self, device: int) -> list[np.ndarray]:
        """The global scope's requests of ``device``: (layer, expert) keys per (step, layer) in order."""
        rows = self.placement[:, device]
        return [rows[m, np.flatnonzero(st[m, device] > 0)] + m * self.num_experts
                for st in self.slot_tokens for m in range(self.num_layers)]


class ExpertStore(ABC):
    """Hit/miss bookkeeping shared by every policy; subclasses say what is resident."""

    keeps_misses: ClassVar[bool] = True
    """A missed expert's weights stay once copied (False: they go to a scratch buffer)."""

    def __init__(self) -> None:
        self.hits = 0
        self.requests = 0
        self.audit = False
        """Check the capacity after every access and prefetch (``SimConfig.check_invariants``)."""
        self.overfull: list[tuple[int, int, int, int]] = []
        """Audit findings: ``(layer, device, resident experts, capacity)`` whenever a cache held too many."""

    @classmethod
    @abstractmethod
    def build(cls, cache: CachePlan, inputs: StoreInputs) -> ExpertStore:
        """The store for ``cache`` on a run shaped like ``inputs``."""

    @abstractmethod
    def _lookup(self, layer: int, device: int, experts: list[int]) -> list[bool]:
        """Hit of each of ``experts`` (unique ids, requested together); updates the cache."""

    @abstractmethod
    def resident(self, layer: int, device: int, expert: int) -> bool:
        """Whether ``expert``'s weights are (or are being copied) in ``device``'s memory."""

    def access(self, layer: int, device: int, experts: list[int]) -> list[bool]:
        """Request ``experts`` (unique ids) together; the hit of each."""
        mask = self._lookup(layer, device, experts)
        self.hits += sum(mask)
        self.requests += len(experts)
        if self.audit:
            self._audit(layer, device)
        return mask

    def prefetch(self, layer: int, device: int, experts: list[int]) -> list[bool]:
        """Hold ``experts`` for ``layer``'s next request and load those not resident; whether each
        needs a transfer (none for stores that never load ahead)."""
        return [False] * len(experts)

    def release(self, layer: int, device: int) -> None:  # noqa: B027 (nothing held by default)
        """``device`` has run ``layer``'s requested experts: they may be evicted again."""

    def reset(self) -> None:  # noqa: B027 (fixed sets have nothing to forget)
        """A new sequence starts: the caches empty."""

    def _audit(self, layer: int, device: int) -> None:  # noqa: B027 (a fixed set cannot overflow)
        """Record in :attr:`overfull` a cache holding more experts than its capacity."""

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.requests if self.requests else None


class AllResident(ExpertStore):
    """``none``: every expert is in GPU memory; every request hits."""

    @classmethod
    def build(cls, cache: CachePlan, inputs: StoreInputs) -> ExpertStore:
        return cls()

    def _lookup(self, layer: int, device: int, experts: list[int]) -> list[bool]:
        return [True] * len(experts)

    def resident(self, layer: int, device: int, expert: int) -> bool:
        return True

    @property
    def hit_rate(self) -> float | None:
        return None  # nothing is cached, so there is no rate to report


def top_experts(load: np.ndarray, capacity: Sequence[int]) -> list[list[int]]:
    """Static pinning default: the ``capacity[m]`` most requested experts of each layer (ties: lowest id)."""
    order = np.argsort(-np.asarray(load), axis=1, kind="stable")
    return [sorted(order[m, : int(capacity[m])].tolist()) for m in range(order.shape[0])]


class PinnedStore(ExpertStore):
    """``static``: a fixed resident set per layer (the plan's, else the most requested experts of
    the warm-up rows); misses never evict, their weights go to a scratch buffer."""

    keeps_misses = False

    def __init__(self, pinned: Sequence[Sequence[int]]):
        super().__init__()
        self.pinned = [frozenset(int(e) for e in r) for r in pinned]

    @classmethod
    def build(cls, cache: CachePlan, inputs: StoreInputs) -> ExpertStore:
        resident = [list(r) for r in cache.resident]
        if not resident and inputs.scope == CacheScope.GLOBAL:  # the most requested (layer, expert) keys
            load = np.asarray(inputs.warmup_load())
            L, E = load.shape
            top = top_experts(load.reshape(1, -1), [sum(cache.capacity_experts)])[0]
            resident = [[k % E for k in top if k // E == m] for m in range(L)]
        resident = resident or top_experts(inputs.warmup_load(), cache.capacity_experts)
        if len(resident) != inputs.num_layers:
            raise UserError(f"the static cache needs a resident set for each of the {inputs.num_layers} MoE "
                            "layers", field="cache.resident")
        return cls(resident)

    def _lookup(self, layer: int, device: int, experts: list[int]) -> list[bool]:
        pinned = self.pinned[layer]
        return [int(e) in pinned for e in experts]

    def resident(self, layer: int, device: int, expert: int) -> bool:
        return int(expert) in self.pinned[layer]


class EvictingStore(ExpertStore):
    """``lru``/``lfu``: ``moesim.traces.cache`` caches, one per (layer, GPU) or one per GPU over
    (layer, expert) keys; misses are loaded and evict by the policy; prefetches load too."""

    needs_future: ClassVar[bool] = False

    def __init__(self, caches: list[list[ExpertCache]], *, scope: CacheScope = CacheScope.LAYER,
                 num_experts: int = 0):
        super().__init__()
        self.caches = caches
        """[layer][device] (layer scope) or [0][device] (global scope)."""
        self.scope, self.num_experts = scope, num_experts
        self.held: dict[tuple[int, int], set[int]] = {}
        """Keys held per (layer, device): requested until released, prefetched until requested."""

    @classmethod
    def build(cls, cache: CachePlan, inputs: StoreInputs) -> ExpertStore:
        G = inputs.num_devices
        if inputs.scope == CacheScope.GLOBAL:
            total = int(sum(cache.capacity_experts))
            caches = [[make_cache(cache.policy, total, inputs.future_keys(g) if cls.needs_future else None)
                       for g in range(G)]]
        else:
            caches = [[make_cache(cache.policy, int(cache.capacity_experts[m]),
                                  inputs.future(m, g) if cls.needs_future else None)
                       for g in range(G)] for m in range(inputs.num_layers)]
        return cls(caches, scope=inputs.scope, num_experts=inputs.num_experts)

    def _cache(self, layer: int, device: int) -> ExpertCache:
        return self.caches[0 if self.scope == CacheScope.GLOBAL else layer][device]

    def _keys(self, layer: int, experts: np.ndarray | list[int]) -> list[int]:
        ids = experts if isinstance(experts, list) else np.asarray(experts).tolist()
        if self.scope != CacheScope.GLOBAL:
            return [int(e) for e in ids]
        offset = layer * self.num_experts
        return [int(e) + offset for e in ids]

    def _protected(self, layer: int, device: int) -> set[int]:
        """Keys no eviction in ``layer``'s cache may take now."""
        if self.scope != CacheScope.GLOBAL:
            return self.held.get((layer, device), set())
        out: set[int] = set()
        for (_, g), keys in self.held.items():
            if g == device:
                out |= keys
        return out

    def _lookup(self, layer: int, device: int, experts: list[int]) -> list[bool]:
        keys = self._keys(layer, experts)
        self.held.pop((layer, device), None)  # the prefetches for this request are used (or wasted)
        mask = self._cache(layer, device).request(keys, protect=self._protected(layer, device))
        if keys:
            self.held[(layer, device)] = set(keys)  # in use until the layer's experts have run
        return mask

    def release(self, layer: int, device: int) -> None:
        self.held.pop((layer, device), None)

    def resident(self, layer: int, device: int, expert: int) -> bool:
        offset = layer * self.num_experts if self.scope == CacheScope.GLOBAL else 0
        return self._cache(layer, device).contains(int(expert) + offset)

    def prefetch(self, layer: int, device: int, experts: list[int]) -> list[bool]:
        keys = self._keys(layer, experts)
        self.held.setdefault((layer, device), set()).update(keys)  # all held before any is loaded
        protect = self._protected(layer, device)
        cache = self._cache(layer, device)
        loads = [cache.insert(k, protect) for k in keys]
        if self.audit:
            self._audit(layer, device)
        return loads

    def reset(self) -> None:
        for row in self.caches:
            for cache in row:
                cache.clear()
        self.held.clear()

    def _audit(self, layer: int, device: int) -> None:
        cache = self._cache(layer, device)
        held = len(cache.resident())
        if held > cache.capacity:
            self.overfull.append((layer, device, held, cache.capacity))


class BeladyStore(EvictingStore):
    """``belady``: evicts the expert requested furthest in the future (each cache is given its
    layer's and GPU's request sequence up front)."""

    needs_future = True


STORES: dict[CachePolicy, type[ExpertStore]] = {
    CachePolicy.NONE: AllResident,
    CachePolicy.STATIC: PinnedStore,
    CachePolicy.LRU: EvictingStore,
    CachePolicy.LFU: EvictingStore,
    CachePolicy.BELADY: BeladyStore,
}


def make_store(cache: CachePlan, inputs: StoreInputs) -> ExpertStore:
    """The store of ``cache.policy``."""
    return STORES[cache.policy].build(cache, inputs)
