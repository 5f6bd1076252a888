"""Cross-layer transitions: how often a token routed to expert e at one MoE layer is routed to e'
at the next. One model for ``moesim trace stats`` (affinity), the cache planner (predictor
accuracy) and the simulator's ``--prefetch predictor``.

Counting (padding rule): for each token and each pair of consecutive layer columns, every pair of
its K x K (this layer, next layer) selections in which both ids are recorded (>= 0) counts once; a
-1 slot contributes no pair, the token's other slots still count.

Prediction (tie rule): a token's score for e' at the next layer is the sum of ``counts[e, e']``
over its recorded experts e at this layer. Its top-k experts are taken by score, ties broken by
the next layer's *prior* (how many training pairs ended at e', ``counts.sum(axis=0)``), then by
the lowest id. An expert with score 0 is never predicted (no evidence): a token with no recorded
expert at this layer predicts nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moesim.traces import stats_compiled
from moesim.traces.npz import release_pages
from moesim.traces.trace import row_chunks


class Transitions:
    """``counts[p, e, e']``: pairs of consecutive layer columns ``p -> p + 1`` (int64)."""

    def __init__(self, counts: np.ndarray):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.num_experts = int(self.counts.shape[-1]) if self.counts.ndim == 3 else 0
        # Tie rule: the rank of each next-layer expert by (prior descending, id ascending).
        prior = self.counts.sum(axis=1)  # [P, E]
        order = np.argsort(-prior, axis=1, kind="stable")
        self._tie_rank = np.empty_like(order)
        np.put_along_axis(self._tie_rank, order, np.arange(order.shape[1])[None, :], axis=1)

    @property
    def num_pairs(self) -> int:
        return int(self.counts.shape[0])

    @classmethod
    def fit(cls, expert_ids: np.ndarray, num_experts: int, *, start: int = 0, stop: int | None = None,
            columns: Sequence[int | None] | None = None, compiled: bool | None = None) -> Transitions:
        """Count rows ``start:stop`` of ``expert_ids`` [N, columns, K] (read in bounded chunks).
        ``columns`` picks the chain of layer columns (default: all, in order); a ``None`` entry is a
        layer without data (no pair touching it counts). ``compiled``: count with the numba loop
        (default: when installed) or the numpy one (the same counts)."""
        E = num_experts
        n, width, k = expert_ids.shape
        chain = list(range(width)) if columns is None else list(columns)
        pairs = max(len(chain) - 1, 0)
        present = np.array([c is not None for c in chain], dtype=bool)
        take = np.array([c if c is not None else 0 for c in chain], dtype=np.int64)
        stop = n if stop is None else min(n, stop)
        counts = np.zeros(pairs * E * E, np.int64)
        if pairs and stop > start:
            offset = (np.arange(pairs, dtype=np.int64) * E * E)[None, :, None, None]
            # ~64 MB of int64 pair keys per chunk
            fast = stats_compiled.available() if compiled is None else compiled
            for a, b in row_chunks(stop - start, max(1, pairs * k * k * 8), 64 << 20):
                if fast:  # counted in place, no [rows, pairs, K, K] keys
                    chunk = np.asarray(expert_ids[start + a:start + b])
                    stats_compiled.pair_counts(chunk, take, present, counts.reshape(pairs, E, E))
                    release_pages(expert_ids)
                    continue
                ids = np.asarray(expert_ids[start + a:start + b], np.int64)[:, take, :]
                release_pages(expert_ids)
                ids[:, ~present, :] = -1
                x, y = ids[:, :-1, :, None], ids[:, 1:, None, :]
                ok = (x >= 0) & (y >= 0)
                counts += np.bincount((offset + x * E + y)[ok], minlength=pairs * E * E)
        return cls(counts.reshape(pairs, E, E))

    def scores(self, pair: int, ids: np.ndarray) -> np.ndarray:
        """[B, E] next-layer scores of tokens routed to ``ids`` [B, K] at the pair's first layer."""
        ids = np.asarray(ids, dtype=np.int64)
        E = self.num_experts
        padded = np.vstack([self.counts[pair], np.zeros((1, E), np.int64)])  # row E: an unrecorded slot
        return padded[np.where(ids < 0, E, ids)].sum(axis=1)

    def predict(self, pair: int, ids: np.ndarray, k: int) -> np.ndarray:
        """[B, k] each token's predicted next-layer experts, best first; -1 where fewer than k
        experts have a positive score."""
        E = self.num_experts
        k = min(k, E)
        score = self.scores(pair, ids)
        # one integer key: score first, then the tie rank (exact: scores are counts, E < 2**16)
        key = score * E + (E - 1 - self._tie_rank[pair])[None, :]
        top = np.argsort(-key, axis=1, kind="stable")[:, :k]
        return np.where(np.take_along_axis(score, top, axis=1) > 0, top, -1)

    def predict_set(self, pair: int, ids: np.ndarray, k: int) -> np.ndarray:
        """Sorted unique experts predicted for any of the tokens (what a GPU would prefetch)."""
        if pair >= self.num_pairs:
            return np.zeros(0, dtype=np.int64)
        top = self.predict(pair, ids, k)
        return np.unique(top[top >= 0])

    def frequent(self, pair: int, k: int) -> np.ndarray:
        """The k most frequent next-layer experts (the predictor's baseline), by the tie rule."""
        return np.argsort(self._tie_rank[pair], kind="stable")[: min(k, self.num_experts)]

    def recall(self, pair: int, ids: np.ndarray, next_ids: np.ndarray, k: int) -> tuple[int, int]:
        """(hits, recorded): of the recorded next-layer selections ``next_ids`` [B, K] of tokens
        routed to ``ids`` at this layer, how many are among the token's top-k prediction."""
        top = self.predict(pair, ids, k)
        nxt = np.asarray(next_ids, dtype=np.int64)
        recorded = nxt >= 0
        hit = (nxt[:, :, None] == top[:, None, :]).any(axis=2) & recorded
        return int(hit.sum()), int(recorded.sum())
