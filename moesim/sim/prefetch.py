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

    def add(self, predicted: np.ndarray, requested: np.ndarray) -> None:
        self.predicted += len(predicted)
        self.requested += len(requested)
        self.correct += len(np.intersect1d(predicted, requested))

    def as_dict(self) -> dict[str, float | None]:
        return {
            "recall": self.correct / self.requested if self.requested else None,
            "precision": self.correct / self.predicted if self.predicted else None,
        }


class Prefetcher(ABC):
    """One prefetch mode."""

    @abstractmethod
    def next_layer(self, layer: int, ids: np.ndarray, requested: Sequence[np.ndarray],
                   placement: np.ndarray) -> list[np.ndarray]:
        """Per GPU, the experts to load for MoE layer ``layer + 1``: ``ids`` [B, K] the step's
        experts at ``layer``, ``requested[g]`` what GPU g will request there, ``placement`` [G, S]
        its slots there."""


class OraclePrefetch(Prefetcher):
    """``oracle``: exactly the experts that will be requested (an upper bound)."""

    def next_layer(self, layer: int, ids: np.ndarray, requested: Sequence[np.ndarray],
                   placement: np.ndarray) -> list[np.ndarray]:
        return list(requested)


class PredictorPrefetch(Prefetcher):
    """``predictor``: the cross-layer transition model's guess (each token's top-k), on each GPU the
    guessed experts it holds."""

    def __init__(self, transitions: Transitions, top_k: int):
        self.transitions, self.top_k = transitions, top_k

    def next_layer(self, layer: int, ids: np.ndarray, requested: Sequence[np.ndarray],
                   placement: np.ndarray) -> list[np.ndarray]:
        guess = self.transitions.predict_set(layer, ids, self.top_k)
        return [np.intersect1d(guess, placement[g]) for g in range(len(requested))]


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
