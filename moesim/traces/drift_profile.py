"""The ``drift`` object of a synthesis profile: a DriftModel written, checked and read back.

Arrays ``[L][E]`` are stored in each layer's descending order of the overall popularity (like the
profile's ``popularity_sorted``), so that they rescale to any expert count the same way. Field
reference: docs/traces.md §7, "Profile drift object".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.limits import EXPERTS, TRACE_ROWS
from moesim.traces.regimes import MAX_REGIMES, DriftModel

MAX_LOG_ROWS = 45.0
"""Largest log row count a length quantile may hold (about 3.5e19 rows)."""


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / x.sum(-1, keepdims=True)


def _number(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and bool(np.isfinite(v))


def _count(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, int) and v >= 1


def check_drift(drift: Any, *, layers: int, experts: int, file: str | None = None) -> None:
    """UserError naming the field (``drift.<...>``) unless ``drift`` is a drift object that reads
    back for a profile of ``layers`` x ``experts`` popularity curves."""

    def bad(field: str, expected: str, got: Any) -> UserError:
        text = repr(got)
        return UserError(f"expected {expected}, got {text if len(text) <= 60 else text[:57] + '...'}",
                         file=file, field=f"drift.{field}" if field else "drift")

    if not isinstance(drift, dict):
        raise bad("", "an object (the fitted drift model)", drift)
    for key, limit in (("block_rows", TRACE_ROWS), ("request_rows", TRACE_ROWS), ("request_set", EXPERTS)):
        if not _count(drift.get(key)):
            raise bad(key, "a whole number >= 1", drift.get(key))
        limit.check(drift[key], file=file, field=f"drift.{key}")
    if not _number(drift.get("request_affinity", 0.0)) or not 0 <= drift.get("request_affinity", 0.0) <= 1:
        raise bad("request_affinity", "a probability from 0 to 1", drift.get("request_affinity"))
    regimes = drift.get("regimes")
    if not isinstance(regimes, list) or not 1 <= len(regimes) <= MAX_REGIMES:
        raise bad("regimes", f"a list of 1 to {MAX_REGIMES} regimes", regimes)
    for r, reg in enumerate(regimes):
        at = f"regimes[{r}]"
        if not isinstance(reg, dict):
            raise bad(at, "an object", reg)
        pop = reg.get("popularity")
        if (not isinstance(pop, list) or len(pop) != layers
                or not all(isinstance(c, list) and len(c) == experts for c in pop)
                or not all(_number(v) and 0 <= v <= 1 for c in pop for v in c)):
            raise bad(f"{at}.popularity", f"{layers} lists of {experts} shares from 0 to 1", pop)
        runs = reg.get("durations_rows")
        if not isinstance(runs, list) or not all(_count(d) and d <= TRACE_ROWS.value() for d in runs):
            raise bad(f"{at}.durations_rows",
                      f"a list of whole numbers from 1 to {TRACE_ROWS.value()} (rows)", runs)
        nxt = reg.get("next")
        if (not isinstance(nxt, list) or len(nxt) != len(regimes)
                or not all(_number(v) and 0 <= v <= 1 for v in nxt) or sum(nxt) > 1 + 1e-6):
            raise bad(f"{at}.next", f"{len(regimes)} probabilities summing to at most 1", nxt)
        if not _number(reg.get("initial")) or not 0 <= reg["initial"] <= 1:
            raise bad(f"{at}.initial", "a probability from 0 to 1", reg.get("initial"))
        q = reg.get("length_log_quantiles")
        if q is not None and (not isinstance(q, list) or len(q) < 2
                              or not all(_number(v) and 0 <= v <= MAX_LOG_ROWS for v in q)
                              or any(b < a for a, b in itertools.pairwise(q))):
            raise bad(f"{at}.length_log_quantiles",
                      f"at least 2 ascending numbers from 0 to {MAX_LOG_ROWS:g} (log rows)", q)
    if sum(reg["initial"] for reg in regimes) <= 0:
        raise bad("regimes", "at least one regime with initial > 0", [reg["initial"] for reg in regimes])
    fitted = drift.get("fitted", {})
    if not isinstance(fitted, dict):
        raise bad("fitted", "an object", fitted)
    real = fitted.get("real")
    if real is not None and (not isinstance(real, dict) or not _count(real.get("window_rows"))
                             or not _count(real.get("gpus")) or not isinstance(real.get("planner"), str)
                             or not all(_number(real.get(k)) for k in ("tv_consecutive", "tv_noise_floor",
                                                                        "next_window_imbalance"))):
        raise bad("fitted.real", "the real trace's drift statistics (window_rows, gpus, planner, "
                  "tv_consecutive, tv_noise_floor, next_window_imbalance)", real)


def to_profile(model: DriftModel, base: np.ndarray) -> dict[str, Any]:
    """The ``drift`` object of a synthesis profile: arrays in each layer's descending-popularity order."""
    order = np.argsort(-base, axis=1, kind="stable")
    return {
        "block_rows": model.block_rows,
        "request_rows": model.request_rows,
        "request_set": model.request_set,
        "request_affinity": round(model.request_affinity, 6),
        "regimes": [
            {
                "popularity": np.round(np.take_along_axis(pop, order, axis=1), 6).tolist(),
                **({"length_log_quantiles": np.round(model.length_quantiles[r], 6).tolist()}
                   if model.length_quantiles is not None else {}),
                "durations_rows": list(model.durations_rows[r]),
                "next": np.round(model.transitions[r], 6).tolist(),
                "initial": round(float(model.initial[r]), 6),
            }
            for r, pop in enumerate(model.regime_popularity)
        ],
        "fitted": dict(model.fitted),
    }


def from_profile(drift: Mapping[str, Any], *, depth_map: np.ndarray,
                 place: Callable[[np.ndarray], np.ndarray], top_k: int, source_top_k: int) -> DriftModel:
    """A DriftModel from a profile's ``drift`` object; ``place`` maps a ``[L, E_src]`` array in
    descending-popularity order to the output experts (rescaled and permuted like the popularity)."""
    m = np.asarray(depth_map, np.int64)
    regimes = list(drift["regimes"])
    pops = [_normalise(np.maximum(place(np.asarray(reg["popularity"], np.float64)[m]), 1e-12))
            for reg in regimes]
    return DriftModel(
        regime_popularity=np.stack(pops),
        durations_rows=tuple(tuple(int(d) for d in reg["durations_rows"]) for reg in regimes),
        transitions=np.array([reg["next"] for reg in regimes], np.float64).reshape(len(regimes), -1),
        initial=_normalise(np.array([float(reg["initial"]) for reg in regimes])),
        block_rows=int(drift["block_rows"]),
        request_rows=int(drift["request_rows"]),
        request_set=max(1, round(int(drift["request_set"]) * top_k / max(1, source_top_k))),  # scales with k
        request_affinity=float(drift.get("request_affinity", 0.0)),
        length_quantiles=(np.array([reg["length_log_quantiles"] for reg in regimes], np.float64)
                          if all(reg.get("length_log_quantiles") for reg in regimes) else None),
        fitted=dict(drift.get("fitted", {})),
    )


__all__ = ["check_drift", "from_profile", "to_profile"]
