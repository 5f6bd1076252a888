"""Drift of a trace as ``moesim trace stats --drift`` and ``trace synth --report`` give it.

The load movement (``moesim.traces.drift``) and what it does to a static placement
(``moesim.planners.decay``) on the same windows; definitions in docs/traces.md §4, "Drift".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.planners.decay import DEFAULT_PLANNER, default_slots, static_plan_imbalance
from moesim.traces.drift import DEFAULT_WINDOWS, Source, movement, window_bounds, window_counts
from moesim.traces.synth_fit import profile_from_trace

DEFAULT_GPUS = 8
COMPARED = ("tv_consecutive", "tv_noise_floor", "drift_ratio", "tv_halves", "next_window_imbalance",
            "same_window_imbalance")
RECORDED = ("windows", "window_rows", "tv_consecutive", "tv_noise_floor", "gpus", "slots_per_gpu",
            "planner", "next_window_imbalance")
"""The real statistics a synthesis profile keeps (``drift.fitted.real``)."""


def drift_stats(source: Source, *, windows: int | None = None, window_rows: int | None = None,
                gpus: int = DEFAULT_GPUS, slots_per_gpu: int | None = None,
                planner: str = DEFAULT_PLANNER) -> dict[str, Any]:
    """The ``drift`` object of ``trace stats`` for ``source``: movement and static-plan decay."""
    if gpus < 1:
        raise UserError(f"expected at least 1 GPU, got {gpus}", field="devices")
    rows = source.num_tokens if hasattr(source, "num_tokens") else source.num_steps
    bounds = window_bounds(rows, windows, window_rows)
    counts = window_counts(source, bounds)
    slots = default_slots(counts.shape[-1], gpus) if slots_per_gpu is None else slots_per_gpu
    nxt, same = static_plan_imbalance(counts, gpus=gpus, slots=slots, planner=planner,
                                      layer_ids=np.asarray(source.layer_ids))
    return {
        **movement(source, bounds, counts),
        "planner": planner,
        "gpus": gpus,
        "slots_per_gpu": slots,
        "next_window_imbalance": float(nxt.mean()),
        "next_window_imbalance_per_window": nxt.tolist(),
        "same_window_imbalance": float(same.mean()),
    }


def recorded(source: Source) -> dict[str, Any]:
    """The real trace's drift statistics a profile records (default windows, GPUs and planner);
    empty for a trace shorter than the windows."""
    try:
        d = drift_stats(source)
    except UserError:
        return {}
    return {k: d[k] for k in RECORDED}


def synthesis_profile(trace: Any, *, drift: bool = True, trial_tokens: int = 4096) -> dict[str, Any]:
    """``moesim trace fit``: the statistics profile of a real trace; with ``drift``, its drift model
    and the real trace's drift statistics (``drift.fitted.real``) that ``trace synth --report``
    compares a synthetic trace with."""
    prof = profile_from_trace(trace, drift=drift, trial_tokens=trial_tokens)
    if drift:
        prof["drift"]["fitted"]["real"] = recorded(trace)
    return prof


def compare_drift(real: Source | Mapping[str, Any], synthetic: Source, *, gpus: int = DEFAULT_GPUS,
                  windows: int = DEFAULT_WINDOWS,
                  planner: str = DEFAULT_PLANNER) -> dict[str, dict[str, float]]:
    """Drift statistics side by side, ``{drift_<key>: {"real", "synthetic"}}``, on windows of the same
    number of rows (the real trace's ``windows``-th part). ``real`` may be the statistics a profile
    recorded (its window size, GPUs and planner then apply). Empty when the synthetic trace is
    shorter than two such windows."""
    r = dict(real) if isinstance(real, Mapping) else drift_stats(real, windows=windows, gpus=gpus,
                                                                 planner=planner)
    try:
        s = drift_stats(synthetic, window_rows=int(r["window_rows"]), gpus=int(r.get("gpus", gpus)),
                        planner=str(r.get("planner", planner)))
    except UserError:
        return {}
    tag = f"_{s['planner']}_{s['gpus']}gpu"
    return {("" if k.startswith("drift") else "drift_") + k + (tag if "imbalance" in k else ""):
            {"real": float(r[k]), "synthetic": float(s[k])} for k in COMPARED if k in r}


def format_drift(d: Mapping[str, Any]) -> str:
    """A few human-readable lines of ``drift_stats`` output."""
    return "\n".join([
        f"  drift over {d['windows']} windows of {d['window_rows']} rows:",
        f"    TV consecutive windows {d['tv_consecutive']:.4f}  noise floor {d['tv_noise_floor']:.4f}  "
        f"ratio {d['drift_ratio']:.2f}",
        f"    TV first vs second half {d['tv_halves']:.4f}  "
        f"interleaved halves {d['tv_halves_interleaved']:.4f}",
        f"    static {d['planner']} plan, {d['gpus']} GPUs x {d['slots_per_gpu']} slots: imbalance "
        f"{d['same_window_imbalance']:.3f} on its window, {d['next_window_imbalance']:.3f} on the next",
    ])


__all__ = ["DEFAULT_GPUS", "compare_drift", "drift_stats", "format_drift", "recorded", "synthesis_profile"]
