"""Draw banks of a drift model's regimes: popularity and transitions tilted to each regime.

A bank row holds ``size`` pre-sampled, stratified ids of one distribution, so that a draw is one
random integer and a gather (as the stationary generator's banks in ``synth``).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def tilt_conditionals(cond: np.ndarray, popularity: np.ndarray, iters: int = 60) -> np.ndarray:
    """``[R, L, E, E]``: each layer's transition rows reweighted per regime so that the regime's
    popularity at layer l - 1 flows into its popularity at layer l (iterative scaling)."""
    t_n, layers, e = popularity.shape
    out = np.broadcast_to(cond, (t_n, *cond.shape)).copy()
    out[:, 0] = 1.0 / e  # layer 0 draws from the popularity: its row is never used
    for layer in range(1, layers):
        c = cond[layer][None]
        prev, target = popularity[:, layer - 1], np.maximum(popularity[:, layer], 1e-12)
        w = np.ones((t_n, 1, e))
        for _ in range(iters):
            q = c * w
            q /= q.sum(-1, keepdims=True)
            flow = np.einsum("ti,tij->tj", prev, q)
            w *= np.sqrt(target / np.maximum(flow, 1e-12))[:, None, :]  # damped update
            w = np.maximum(w / w.max(-1, keepdims=True), 1e-30)  # only ratios matter: keep w in range
        q = c * w
        out[:, layer] = q / q.sum(-1, keepdims=True)
    return out


def fast_bank(rng: np.random.Generator, probs: np.ndarray, size: int) -> np.ndarray:
    """int16 ``[..., size]`` stratified draws from each row of ``probs [..., E]`` (one sorted search)."""
    shape, e = probs.shape[:-1], probs.shape[-1]
    flat = probs.reshape(-1, e)
    out = np.empty((len(flat), size), np.int16)
    step = max(1, 2**22 // max(size, e))
    for a in range(0, len(flat), step):
        cdf = np.cumsum(flat[a : a + step], axis=1)
        cdf /= cdf[:, -1:]
        n = len(cdf)
        off = np.arange(n, dtype=np.float64)[:, None]  # row r's values lie in [r, r + 1]
        u = (np.arange(size) + rng.random((n, size))) / size
        idx = np.searchsorted((cdf + off).ravel(), (u + off).ravel(), side="right").reshape(n, size)
        out[a : a + n] = np.clip(idx - np.arange(n)[:, None] * e, 0, e - 1)
    return out.reshape(*shape, size)


def regime_banks(rng: np.random.Generator, params: Any, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-regime draw banks of ``params`` (with a drift model): popularity ``[R, L, size]`` and, in
    fitted mode, the transitions tilted to each regime ``[R, L, E, size]``."""
    pop = params.drift.popularity(params.popularity)
    cond = None
    if params.conditional is not None:
        cond = fast_bank(rng, tilt_conditionals(params.conditional, pop), size)
    return fast_bank(rng, pop, size), cond


__all__ = ["fast_bank", "regime_banks", "tilt_conditionals"]
