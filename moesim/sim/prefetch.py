"""Next-layer prefetch: which experts each GPU loads for MoE layer m+1 while layer m runs, and how
well those guesses matched. One class per prefetch mode (``none`` has none)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from moesim.sim.offload import TransitionPredictor
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
    """``predictor``: the cross-layer transition model's guess, on each GPU the guessed experts it holds."""

    def __init__(self, predictor: TransitionPredictor):
        self.predictor = predictor

    def next_layer(self, layer: int, ids: np.ndarray, requested: Sequence[np.ndarray],
                   placement: np.ndarray) -> list[np.ndarray]:
        guess = self.predictor.predict(layer, np.asarray(ids, dtype=np.int64))
        return [np.intersect1d(guess, placement[g]) for g in range(len(requested))]


PREFETCHERS: dict[Prefetch, Callable[[Callable[[], TransitionPredictor]], Prefetcher]] = {
    Prefetch.ORACLE: lambda fit: OraclePrefetch(),
    Prefetch.PREDICTOR: lambda fit: PredictorPrefetch(fit()),
}
"""Mode -> builder, given a function fitting the transition model (called only by modes that use it)."""


def make_prefetcher(mode: Prefetch, fit: Callable[[], TransitionPredictor]) -> Prefetcher | None:
    """The prefetcher of ``mode`` (None for ``none``)."""
    build = PREFETCHERS.get(mode)
    return build(fit) if build is not None else None
