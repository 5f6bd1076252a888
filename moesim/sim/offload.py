"""Next-layer prefetch prediction."""

from __future__ import annotations

import numpy as np


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
