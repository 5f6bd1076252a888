"""Next-layer prefetch: which experts each GPU loads for MoE layer m+1 while layer m runs, and how
well those guesses matched. One class per prefetch mode (``none`` has none)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from moesim.traces.transitions import Transitions
from moesim.vocab import Prefetch


class PrefetchScore:
    """Accuracy of next-layer predictions: recall (share of the requested experts that were
    predicted) and precision (share of the predicted experts that were requested)."""

    def __init__(self) -> None:
        self.predicted = 0
        self.requested = 0
        self.correct = 0

    def add(self, predicted: Sequence[int], requested: Sequence[int]) -> None:
        self.predicted += len(predicted)
        self.requested += len(requested)
        self.correct += len(set(predicted) & set(requested))

    def as_dict(self) -> dict[str, float | None]:
        return {
            "recall": self.correct / self.requested if self.requested else None,
            "precision": self.correct / self.predicted if self.predicted else None,
        }


class Prefetcher(ABC):
    """One prefetch mode."""

    @abstractmethod
    def next_layer(self, layer: int, ids: np.ndarray, requested: Sequence[list[int]],
                   placement: np.ndarray) -> list[list[int]]:
        """Per GPU, the experts to load for MoE layer ``layer + 1``: ``ids`` [B, K] the step's
        experts at ``layer``, ``requested[g]`` what GPU g will request there, ``placement`` [G, S]
        its slots there."""


class OraclePrefetch(Prefetcher):
    """``oracle``: exactly the experts that will be requested (an upper bound)."""

    def next_layer(self, layer: int, ids: np.ndarray, requested: Sequence[list[int]],
                   placement: np.ndarray) -> list[list[int]]:
        return list(requested)


class PredictorPrefetch(Prefetcher):
    """``predictor``: the cross-layer transition model's guess (each token's top-k), on each GPU the
    guessed experts it holds."""

    def __init__(self, transitions: Transitions, top_k: int):
        self.transitions, self.top_k = transitions, top_k
        self._top: dict[tuple[int, tuple[int, ...]], list[int]] = {}
        """A token's predicted experts per (layer, its experts sorted): the score is a sum over them."""

    def _token_top(self, layer: int, row: list[int]) -> list[int]:
        key = (layer, tuple(sorted(row)))
        top = self._top.get(key)
        if top is None:
            top = self._top[key] = [e for e in self.transitions.predict(layer, np.array([row]), self.top_k)[0]
                                    .tolist() if e >= 0]
        return top

    def next_layer(self, layer: int, ids: np.ndarray, requested: Sequence[list[int]],
                   placement: np.ndarray) -> list[list[int]]:
        if layer >= self.transitions.num_pairs:
            return [[] for _ in requested]
        guess = sorted({e for row in ids.tolist() for e in self._token_top(layer, row)})
        held = [set(placement[g].tolist()) for g in range(len(requested))]
        return [[e for e in guess if e in held[g]] for g in range(len(requested))]


Fit = Callable[[], Transitions]
"""Fits the transition model on the run's training rows (called only by modes that use it)."""

PREFETCHERS: dict[Prefetch, Callable[[Fit, int], Prefetcher]] = {
    Prefetch.ORACLE: lambda fit, top_k: OraclePrefetch(),
    Prefetch.PREDICTOR: lambda fit, top_k: PredictorPrefetch(fit(), top_k),
}


def make_prefetcher(mode: Prefetch, fit: Fit, top_k: int) -> Prefetcher | None:
    """The prefetcher of ``mode`` (None for ``none``)."""
    build = PREFETCHERS.get(mode)
    return build(fit, top_k) if build is not None else None
