"""How routing load moves along a stream: window shares, total variation and its noise floor.

The statistics (definitions in docs/traces.md §4, "Drift"):

- ``tv_consecutive``: total variation ``0.5 * sum_e |p_w(e) - p_{w+1}(e)|`` between the load shares
  of consecutive windows, per layer, averaged over layers and window pairs;
- ``tv_noise_floor``: the same between two interleaved halves of one window (its sequences, or runs
  of 32 rows when it holds fewer than 8 sequences, dealt at random, seed 0, into two halves), scaled
  by ``1/sqrt(2)`` to a full window's size: what sampling alone gives. ``drift_ratio`` is
  consecutive / floor (about 1 for stationary traffic of short requests);
- ``tv_halves`` vs ``tv_halves_interleaved``: first half of the stream against the second, and its
  two interleaved halves against each other (same sizes, directly comparable).

What that movement does to a static placement (its next-window imbalance) is
``moesim.planners.decay``; both together are ``moesim.workflows.drift.drift_stats``. Sources are a
:class:`RoutingTrace` (rows = tokens) or a :class:`LoadCounts` (rows = steps).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.traces.counts import LoadCounts
from moesim.traces.trace import RoutingTrace

DEFAULT_WINDOWS = 8
INTERLEAVE_ROWS = 32
"""Rows per interleaving unit when a window holds too few sequences to alternate them."""
MIN_SEQUENCES = 8
"""Sequences a window needs for its noise-floor halves to alternate whole sequences."""

Source = RoutingTrace | LoadCounts


def shares(counts: np.ndarray) -> np.ndarray:
    """Load shares along the last axis; NaN where a row has no load."""
    c = np.asarray(counts, np.float64)
    tot = c.sum(-1, keepdims=True)
    return np.divide(c, tot, out=np.full_like(c, np.nan), where=tot > 0)


def total_variation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-row total variation between the shares of two count arrays ``[..., E]`` (NaN if one is empty)."""
    return 0.5 * np.abs(shares(a) - shares(b)).sum(-1)


def _rows(source: Source) -> int:
    return source.num_tokens if isinstance(source, RoutingTrace) else source.num_steps


def range_counts(source: Source, start: int, stop: int, mask: np.ndarray | None = None) -> np.ndarray:
    """int64 ``[L, E]`` selections of rows ``start:stop`` (only where ``mask``, aligned with them)."""
    if isinstance(source, LoadCounts):
        c = np.asarray(source.counts[start:stop], np.int64)
        return (c if mask is None else c[mask]).sum(0)
    part = source.rows(start, stop)
    if mask is not None:
        part = part.select(mask)
    return part.load_matrix(1)[0]


def window_counts(source: Source, bounds: np.ndarray) -> np.ndarray:
    """int64 ``[W, L, E]`` selections of each window ``bounds[w]:bounds[w + 1]``."""
    return np.stack([range_counts(source, int(a), int(b)) for a, b in itertools.pairwise(bounds)])


def window_bounds(num_rows: int, windows: int | None, window_rows: int | None) -> np.ndarray:
    """Row boundaries of equal windows: ``windows`` of the stream, or full windows of ``window_rows``."""
    if window_rows is not None:
        if window_rows < 1:
            raise UserError(f"expected a window of at least 1 row, got {window_rows}", field="window_rows")
        count = num_rows // window_rows
        bounds = np.arange(count + 1, dtype=np.int64) * window_rows
    else:
        count = DEFAULT_WINDOWS if windows is None else windows
        bounds = np.linspace(0, num_rows, count + 1).round().astype(np.int64)
    if count < 2 or np.any(np.diff(bounds) < 1):
        raise UserError(f"drift needs at least 2 non-empty windows; {num_rows} rows give {count}",
                        field="windows")
    return bounds


def interleaved_halves(source: Source, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """``[L, E]`` counts of the two interleaved halves of rows ``start:stop`` (the noise floor's samples)."""
    n = stop - start
    unit = np.arange(n) // INTERLEAVE_ROWS
    if isinstance(source, LoadCounts):
        unit = np.arange(n)  # steps are batches of their own
    else:
        seq = np.asarray(source.seq_id[start:stop])
        new = np.r_[True, seq[1:] != seq[:-1]] if n else np.zeros(0, bool)
        if int(new.sum()) >= MIN_SEQUENCES:
            unit = np.cumsum(new) - 1
    # dealt at random, not alternately: neighbouring prompts of a dataset are often related in turn
    # (Puffin's even and odd prompts differ twice as much as a random split of them)
    units = int(unit[-1]) + 1 if n else 0
    first = np.random.default_rng(0).permutation(units) < (units + 1) // 2
    mask = first[unit]
    return range_counts(source, start, stop, mask), range_counts(source, start, stop, ~mask)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def movement(source: Source, bounds: np.ndarray, counts: np.ndarray | None = None) -> dict[str, Any]:
    """The load-movement part of the drift statistics on windows ``bounds`` (keys in docs/traces.md §4)."""
    counts = window_counts(source, bounds) if counts is None else counts
    n, w = int(bounds[-1]), len(bounds) - 1
    tv_cons = total_variation(counts[:-1], counts[1:])  # [W-1, L]
    floor = np.stack([total_variation(*interleaved_halves(source, int(a), int(b)))
                      for a, b in itertools.pairwise(bounds)]) / np.sqrt(2.0)
    rows = _rows(source)
    half = rows // 2
    tv_c, tv_f = _nanmean(tv_cons), _nanmean(floor)
    return {
        "windows": w,
        "window_rows": int(bounds[1] - bounds[0]),
        "rows_used": n,
        "tv_consecutive": tv_c,
        "tv_consecutive_per_window": [_nanmean(x) for x in tv_cons],
        "tv_noise_floor": tv_f,
        "drift_ratio": tv_c / tv_f if tv_f > 0 else float("nan"),
        "tv_halves": _nanmean(total_variation(range_counts(source, 0, half),
                                              range_counts(source, half, rows))),
        "tv_halves_interleaved": _nanmean(total_variation(*interleaved_halves(source, 0, rows))),
    }


__all__ = [
    "DEFAULT_WINDOWS",
    "Source",
    "interleaved_halves",
    "movement",
    "range_counts",
    "shares",
    "total_variation",
    "window_bounds",
    "window_counts",
]
