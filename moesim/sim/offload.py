"""Offloading state: per-(MoE layer, GPU) expert caches, static pinning, next-layer prefetch prediction.

Cache semantics are those of ``moesim.traces.cache`` (one cache per MoE layer; a step's experts
requested together; the cache starts empty), so a one-GPU run at batch 1 with no prefetch gives
exactly the hit rate of ``moesim trace stats``. Timing (fetches over PCIe, CPU/PIM execution) is
the engine's; this module only decides hits, misses and predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moesim.errors import UserError
from moesim.plans.plan import CachePlan
from moesim.traces.cache import make_cache


class TransitionPredictor:
    """Pre-gated / cross-layer prediction: P(expert e' at layer m+1 | expert e at layer m), counted
    on training rows; a token's next-layer experts are the top-k of the summed rows of its experts."""

    def __init__(self, train_ids: np.ndarray, num_experts: int):
        ids = np.asarray(train_ids, dtype=np.int64)  # [N, L, K]
        n, layers, k = ids.shape
        E = num_experts
        self.num_experts = E
        self.top_k = k
        self.counts = np.zeros((max(layers - 1, 0), E + 1, E + 1), dtype=np.float64)
        if n and layers > 1:
            a = np.where(ids[:, :-1, :] < 0, E, ids[:, :-1, :])  # [N, L-1, K]
            b = np.where(ids[:, 1:, :] < 0, E, ids[:, 1:, :])
            layer = np.arange(layers - 1)[None, :, None, None]
            flat = (layer * (E + 1) + a[:, :, :, None]) * (E + 1) + b[:, :, None, :]
            self.counts = np.bincount(flat.ravel(), minlength=(layers - 1) * (E + 1) ** 2).reshape(
                layers - 1, E + 1, E + 1).astype(np.float64)
        self.counts[:, E, :] = 0.0  # an unrecorded slot predicts nothing
        self.counts[:, :, E] = 0.0

    def predict(self, layer: int, ids: np.ndarray) -> np.ndarray:
        """Sorted unique experts predicted at MoE layer ``layer + 1`` for tokens routed to ``ids`` [B, K]."""
        if layer >= self.counts.shape[0]:
            return np.zeros(0, dtype=np.int64)
        E = self.num_experts
        rows = np.where(ids < 0, E, ids).astype(np.int64)
        scores = self.counts[layer][rows].sum(axis=1)[:, :E]  # [B, E]
        k = min(self.top_k, E)
        # ties: lowest expert id (stable sort of the negated scores)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        keep = np.take_along_axis(scores, top, axis=1) > 0
        return np.unique(top[keep])


class ExpertStore:
    """Which experts each GPU holds per MoE layer, and the hit/miss counts of its accesses."""

    def __init__(self, cache: CachePlan, num_layers: int, num_devices: int,
                 futures: Sequence[Sequence[Sequence[np.ndarray]]] | None = None,
                 static_resident: Sequence[Sequence[int]] | None = None):
        """``futures[m][g]``: the request sequence of layer m on device g (Belady only);
        ``static_resident[m]``: the pinned experts of layer m (static only)."""
        self.policy = cache.policy
        self.hits = 0
        self.requests = 0
        self.caches: list[list] = []
        self.static: list[frozenset[int]] = []
        if self.policy == "static":
            if static_resident is None or len(static_resident) != num_layers:
                raise UserError(f"the static cache needs a resident set for each of the {num_layers} MoE "
                                "layers", field="cache.resident")
            self.static = [frozenset(int(e) for e in r) for r in static_resident]
        elif self.policy != "none":
            for m in range(num_layers):
                row = []
                for g in range(num_devices):
                    future = futures[m][g] if (self.policy == "belady" and futures is not None) else None
                    row.append(make_cache(self.policy, int(cache.capacity_experts[m]), future))
                self.caches.append(row)

    def access(self, layer: int, device: int, experts: np.ndarray) -> np.ndarray:
        """Request ``experts`` (unique ids) together; bool hit mask aligned with them."""
        if self.policy == "none":
            mask = np.ones(len(experts), dtype=bool)
        elif self.policy == "static":
            pinned = self.static[layer]
            mask = np.array([int(e) in pinned for e in experts], dtype=bool)
        else:
            mask = self.caches[layer][device].access(experts)
        self.hits += int(mask.sum())
        self.requests += len(experts)
        return mask

    def prefetch(self, layer: int, device: int, expert: int) -> bool:
        """Load ``expert`` ahead of its request; True if it was not resident (a transfer is needed)."""
        if self.policy in ("none", "static"):
            return False
        cache = self.caches[layer][device]
        if cache.contains(expert):
            return False
        cache.insert(expert)
        return True

    def resident(self, layer: int, device: int, expert: int) -> bool:
        if self.policy == "none":
            return True
        if self.policy == "static":
            return int(expert) in self.static[layer]
        return self.caches[layer][device].contains(expert)

    @property
    def hit_rate(self) -> float | None:
        if self.policy == "none" or self.requests == 0:
            return None
        return self.hits / self.requests


def top_experts(load: np.ndarray, capacity: Sequence[int]) -> list[list[int]]:
    """Static pinning default: the ``capacity[m]`` most requested experts of each layer (ties: lowest id)."""
    order = np.argsort(-np.asarray(load), axis=1, kind="stable")
    return [sorted(order[m, : int(capacity[m])].tolist()) for m in range(order.shape[0])]


class PrefetchScore:
    """Accuracy of next-layer predictions: recall (share of the requested experts that were
    predicted) and precision (share of the predicted experts that were requested)."""

    def __init__(self) -> None:
        self.predicted = 0
        self.requested = 0
        self.correct = 0

    def add(self, predicted: np.ndarray, requested: np.ndarray) -> None:
        self.predicted += len(predicted)
        self.requested += len(requested)
        self.correct += len(np.intersect1d(predicted, requested))

    def as_dict(self) -> dict[str, float | None]:
        return {
            "recall": self.correct / self.requested if self.requested else None,
            "precision": self.correct / self.predicted if self.predicted else None,
        }
