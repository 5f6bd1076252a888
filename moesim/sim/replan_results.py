"""Realised load balance of a run, per step and between re-placements (docs/results.md, docs/replan.md).

The realised imbalance of a (step, MoE layer) is the largest GPU's token copies over the mean GPU's,
as the dispatch sent them (replicas split as ``--replica-split`` says); a step's is the mean over its
MoE layers with tokens. A segment (the steps one plan served) gets the same measure on its steps'
tokens summed, the step time's mean (blocking stalls included) and the plan it ran.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def layer_imbalance(tokens: np.ndarray) -> np.ndarray:
    """``[..., L]`` max/mean over the last axis (GPUs) of ``tokens`` ``[..., L, G]``; NaN without tokens."""
    t = np.asarray(tokens, dtype=np.float64)
    mean = t.mean(axis=-1)
    return np.divide(t.max(axis=-1), mean, out=np.full_like(mean, np.nan), where=mean > 0)


def _nanmean(x: np.ndarray, axis: int | None = None) -> Any:
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    n = ok.sum(axis=axis)
    total = np.where(ok, x, 0.0).sum(axis=axis)
    return np.divide(total, n, out=np.full(np.shape(total), np.nan), where=n > 0)


def step_imbalance(tokens: np.ndarray) -> np.ndarray:
    """``[S]`` realised imbalance per step from ``tokens`` ``[S, L, G]`` (MoE layers, GPUs)."""
    return _nanmean(layer_imbalance(tokens), axis=1)


def segments(tokens: np.ndarray, latency_s: np.ndarray, plan_index: np.ndarray) -> list[dict[str, Any]]:
    """One entry per run of steps served by one plan: ``plan``, ``first_step``, ``steps``, ``imbalance``
    (on the segment's tokens summed), ``imbalance_step_mean`` and ``step_time_mean_s``."""
    out = []
    cuts = np.flatnonzero(np.diff(plan_index)) + 1
    per_step = step_imbalance(tokens)
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(plan_index)], strict=True):
        if b <= a:
            continue
        whole = float(_nanmean(layer_imbalance(tokens[a:b].sum(axis=0))))
        out.append({"plan": int(plan_index[a]), "first_step": int(a), "steps": int(b - a),
                    "imbalance": whole, "imbalance_step_mean": float(_nanmean(per_step[a:b])),
                    "step_time_mean_s": float(latency_s[a:b].mean())})
    return out


def replan_summary(block: dict[str, Any], tokens: np.ndarray, latency_s: np.ndarray,
                   plan_index: np.ndarray) -> dict[str, Any]:
    """``block`` (the run's re-placement description and events) with the realised figures added:
    ``imbalance_mean`` (per-step imbalance, mean over steps), ``step_time_mean_s`` and ``segments``."""
    return {**block, "imbalance_mean": float(_nanmean(step_imbalance(tokens))),
            "step_time_mean_s": float(latency_s.mean()) if latency_s.size else None,
            "segments": segments(tokens, latency_s, plan_index)}
