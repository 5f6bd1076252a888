"""Points drawn over parameter ranges: uniform random, or a Latin hypercube (each range cut into ``n``
equal strata, each stratum used exactly once per parameter), from a seeded numpy generator."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("random", "lhs")


@dataclass(frozen=True)
class Range:
    """Where a sampled parameter's values lie: ``[low, high]`` (on a log scale when ``log``) for numbers,
    rounded for integers; or one of ``choices``."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def value(self, u: float) -> Any:
        """The value at ``u`` in [0, 1)."""
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        assert self.low is not None and self.high is not None
        if self.log:
            x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        else:
            x = self.low + u * (self.high - self.low)
        if self.integer:
            return int(min(max(round(x), math.ceil(self.low)), math.floor(self.high)))
        return float(min(max(x, self.low), self.high))


def unit_points(method: str, n: int, dims: int, seed: int) -> np.ndarray:
    """``[n, dims]`` points in [0, 1): independent uniforms, or a Latin hypercube."""
    rng = np.random.default_rng(seed)
    if method == "random":
        return rng.random((n, dims))
    if method != "lhs":
        raise ValueError(f"unknown sampling method {method!r}")
    strata = np.stack([rng.permutation(n) for _ in range(dims)], axis=1) if dims else np.zeros((n, 0))
    return (strata + rng.random((n, dims))) / n


def sample(method: str, n: int, seed: int, ranges: Mapping[str, Range]) -> list[dict[str, Any]]:
    """``n`` parameter points over ``ranges`` (in the mapping's order)."""
    names = list(ranges)
    u = unit_points(method, n, len(names), seed)
    return [{name: ranges[name].value(float(u[i, j])) for j, name in enumerate(names)} for i in range(n)]
