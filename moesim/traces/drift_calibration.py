"""Calibration of a drift model's request spread: synthetic windows of a regime move as the real ones.

The real target is ``DriftModel.fitted["tv_block"]`` (``regimes.fit_drift``): the mean total
variation between consecutive windows of ``block_rows`` rows inside one regime. Trial traces are
generated with the candidate parameters and the same seed; docs/traces.md §7 ("Calibration").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from moesim.traces.drift import total_variation
from moesim.traces.regimes import DriftModel, fit_drift, restricted
from moesim.traces.trace import RoutingTrace

AFFINITY_MAX = 0.95
TOLERANCE = 0.05
"""Excess over the real movement that the segment locality is lowered for (few real blocks: noisy)."""


def block_tv(ids: np.ndarray, num_experts: int, block_rows: int) -> float:
    """Mean total variation between the load shares of consecutive blocks of ``ids [N, L, K]``."""
    nb = len(ids) // block_rows
    if nb < 2:
        return float("nan")
    layers = ids.shape[1]
    x = np.asarray(ids[: nb * block_rows], np.int64).reshape(nb, block_rows, layers, -1)
    cell = np.arange(nb)[:, None, None, None] * layers + np.arange(layers)[None, None, :, None]
    flat = x + cell * num_experts
    counts = np.bincount(flat[x >= 0], minlength=nb * layers * num_experts).reshape(nb, layers, num_experts)
    return float(np.nanmean(total_variation(counts[:-1], counts[1:])))


def calibrate_movement(model: DriftModel, measure: Callable[[DriftModel, int, float], float], *,
                       locality: float, trial_blocks: int = 4, steps: int = 6) -> tuple[DriftModel, float]:
    """``(model, locality)`` such that synthetic blocks of a regime move as far as the real ones.

    ``measure(model, rows, locality)`` generates ``rows`` rows and returns the mean total variation
    between consecutive blocks of ``model.block_rows`` rows. Too little movement: bisection on
    ``request_affinity``, which raises it. Too much (segment working sets drawn at random move the
    load more than the real trace's do): bisection on ``locality``, lowered from the value fitted
    to SRP(16): movement wins over segment consistency.
    """
    target = float(model.fitted.get("tv_block", float("nan")))
    if not np.isfinite(target):
        return model, locality
    rows = model.block_rows * trial_blocks
    # regimes weigh as in the target: by their pairs of windows (a short regime may have none)
    pairs = np.asarray(model.fitted.get("tv_pairs", model.initial), np.float64)
    weight = pairs / pairs.sum() if pairs.sum() > 0 else model.initial

    def tv(affinity: float, loc: float) -> float:
        return float(sum(weight[r] * measure(replace(restricted(model, r), request_affinity=affinity),
                                             rows, loc) for r in range(model.num_regimes) if weight[r] > 0))

    def bisect(lo: float, hi: float, low: Callable[[float], bool]) -> float:
        for _ in range(steps):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if low(mid) else (lo, mid)
        return (lo + hi) / 2

    model = replace(model, request_affinity=0.0)
    now = tv(0.0, locality)
    if now < target:
        if tv(AFFINITY_MAX, locality) < target:
            return replace(model, request_affinity=AFFINITY_MAX), locality
        return replace(model, request_affinity=bisect(0.0, AFFINITY_MAX,
                                                      lambda a: tv(a, locality) < target)), locality
    if now <= (1 + TOLERANCE) * target or locality <= 0:
        return model, locality  # within what the few real blocks can tell: keep SRP(16)'s locality
    if tv(0.0, 0.0) >= target:
        return model, 0.0
    return model, bisect(0.0, locality, lambda loc: tv(0.0, loc) < target)


def fit_params(trace: RoutingTrace, params: Any, depth_map: np.ndarray, *,
               generate: Callable[..., tuple[np.ndarray, Iterator[np.ndarray]]],
               recalibrate: Callable[[Any], Any] | None = None, num_regimes: int | None = None,
               scale: float = 1.0, seed: int = 0) -> Any:
    """``params`` (a stationary ``SynthParams``) with the drift model of ``trace``, calibrated on
    trials made by ``generate`` (``synth.generate``).

    Request sets add within-sequence consistency that ``params``' reuse and locality were fitted
    to, so ``recalibrate(params)`` (those fits again) runs once between two movement calibrations.
    """
    model = fit_drift(trace, depth_map, regimes=num_regimes, seed=seed)

    def measure(m: DriftModel, rows: int, locality: float) -> float:
        _, chunks = generate(replace(params, drift=m, locality=locality), rows, seed=seed)
        return block_tv(np.concatenate(list(chunks)), params.num_experts, m.block_rows)

    for round_ in range(2):
        model, locality = calibrate_movement(model, measure, locality=params.locality)
        params = replace(params, locality=locality)
        if round_ or recalibrate is None or model.request_affinity == 0:
            break
        params = recalibrate(replace(params, drift=model))
    return replace(params, drift=replace(model, scale=scale))


__all__ = ["block_tv", "calibrate_movement", "fit_params"]
