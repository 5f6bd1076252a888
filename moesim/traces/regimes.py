"""Non-stationary synthesis: regimes of popularity over time, and the spread between requests.

Fitted to a real trace (:func:`fit_params`), the drift model has two parts (docs/traces.md §7):

- **regimes**: the stream is cut into about ``BLOCKS`` blocks of whole requests (a longer request
  is a block of its own). Binary segmentation cuts a run of blocks around the sub-run that differs
  most from the rest (Hellinger features: square roots of each layer's load shares) if that
  difference beats the same statistic of the blocks in random order (a permutation test at level
  ``ALPHA``): sampling noise and request-to-request spread are exchangeable in time, a change of
  subject is not, so a stationary trace keeps one regime. Runs the test cannot tell apart are one
  regime. A regime has its popularity (its blocks' pooled load), the lengths of its runs (rows),
  the regimes that follow it and the lengths of its requests.
- **request spread**: requests differ from each other far more than sampling does (on DeepSeek-V2-Lite
  Puffin prompts, windows of 6,000 tokens move 3.5 times more than with the tokens shuffled). Each
  synthetic sequence (cut every ``request_rows`` rows) gets a *request set* of ``request_set``
  experts per layer, drawn like tokens are; a slot takes one of them with probability
  ``request_affinity``, calibrated so that consecutive windows of one regime move as far (total
  variation) as the real ones. When even the stationary generator moves more than the real trace,
  the segment ``locality`` is lowered instead.

``scale`` (``--drift-scale``) moves the regimes between the overall popularity (0: stationary; the
request spread stays) and the fitted ones (1), or beyond (> 1).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from moesim.traces.drift import range_counts, total_variation
from moesim.traces.trace import RoutingTrace

BLOCKS = 32
"""Blocks the real stream is cut into to find regimes and measure block-to-block movement."""
MAX_REGIMES = 6
MIN_RUN = 2
"""Fewest blocks in a regime's run."""
PERMUTATIONS = 199
ALPHA = 0.01
"""Level of the permutation tests that accept a change of regime."""
QUANTILES = 65
REQUEST_SET_PER_K = 1
MOVE_WINDOWS = 8
MIN_PAIRS = 4
"""Fewest same-regime window pairs the movement target is measured on."""
BANK_BUDGET = 2**26
"""Entries the per-regime transition banks may hold together (int16); fewer regimes beyond it."""


@dataclass(frozen=True, eq=False)
class DriftModel:
    """Regimes over time and request-to-request spread (arrays ``[R, L, E]`` in output layers)."""

    regime_popularity: np.ndarray
    """float64 ``[R, L, E]``, each row sums to 1."""
    durations_rows: tuple[tuple[int, ...], ...]
    """Observed run lengths of each regime, in rows (tokens)."""
    transitions: np.ndarray
    """``[R, R]`` probability of the next regime (zero diagonal when R > 1)."""
    initial: np.ndarray
    """``[R]`` probability of the first regime (its share of the rows)."""
    block_rows: int
    """Rows per block of the movement target (two of the blocks regimes are found on)."""
    request_rows: int
    """A sequence gets a fresh request set every ``request_rows`` rows (whole sequences up to that)."""
    request_set: int
    """Experts per request set and layer."""
    request_affinity: float = 0.0
    """Probability that a slot draws from its request set (calibrated)."""
    scale: float = 1.0
    length_quantiles: np.ndarray | None = None
    """``[R, Q]`` quantiles (0 to 1) of the logarithm of the lengths of the real sequences that start
    in each regime: synthetic lengths follow them (a log-normal misses the long tail that carries
    much of the request spread, and subjects differ in length)."""
    fitted: Mapping[str, Any] = field(default_factory=dict)
    """Figures of the real trace: ``tv_block`` (the movement target), ``blocks``, and in profiles
    its drift statistics (``real``)."""

    @property
    def num_regimes(self) -> int:
        return int(self.regime_popularity.shape[0])

    def popularity(self, base: np.ndarray) -> np.ndarray:
        """``[R, L, E]`` regime popularity in use: moved by ``scale`` from ``base`` ``[L, E]``."""
        logb = np.log(np.maximum(base, 1e-12))[None]
        logr = np.log(np.maximum(self.regime_popularity, 1e-12))
        return _normalise(np.exp(logb + self.scale * (logr - logb)))

    def schedule(self, rows: int, rng: np.random.Generator) -> np.ndarray:
        """int16 ``[rows]``: the regime of each row (runs drawn from the fitted durations and transitions)."""
        out = np.empty(rows, np.int16)
        r = int(rng.choice(self.num_regimes, p=self.initial))
        pos = 0
        while pos < rows:
            d = self.durations_rows[r]
            n = max(1, int(d[int(rng.integers(len(d)))]) if d else rows)
            out[pos : pos + n] = r
            pos += n
            if self.num_regimes > 1:
                r = int(rng.choice(self.num_regimes, p=self.transitions[r]))
        return out

    def summary(self) -> dict[str, Any]:
        """Scalars for a trace's ``meta.generator``."""
        return {"regimes": self.num_regimes, "durations_rows": [list(d) for d in self.durations_rows],
                "request_rows": self.request_rows, "request_set": self.request_set,
                "request_affinity": round(self.request_affinity, 4), "scale": self.scale}


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / x.sum(-1, keepdims=True)


# ------------------------------------------------------------------------------------------- regimes
def _features(counts: np.ndarray) -> np.ndarray:
    """Hellinger features ``[n, L*E]`` of count arrays ``[n, L, E]`` (empty layers: zeros)."""
    c = np.asarray(counts, np.float64)
    tot = c.sum(-1, keepdims=True)
    sh = np.divide(c, tot, out=np.zeros_like(c), where=tot > 0)
    return np.sqrt(sh).reshape(len(c), -1) / np.sqrt(c.shape[1])


def _best_split(x: np.ndarray) -> tuple[int, int, float]:
    """The run ``[s, e)`` of blocks ``x`` that differs most from the rest: the largest between-group
    sum of squares ``n_in n_out / n * |mean(in) - mean(out)|^2`` over all runs of at least ``MIN_RUN``
    blocks leaving at least ``MIN_RUN`` outside (a single cut when s = 0 or e = n; a run in the
    middle catches a short change that one cut would blur). Returns ``(s, e, gain)``."""
    n = len(x)
    c = np.vstack([np.zeros(x.shape[1]), np.cumsum(x, axis=0)])
    s, e = np.triu_indices(n + 1, k=MIN_RUN)
    keep = n - (e - s) >= MIN_RUN
    s, e = s[keep], e[keep]
    if not len(s):
        return 0, 0, 0.0
    n_in = (e - s).astype(np.float64)
    inside = c[e] - c[s]
    gap = inside / n_in[:, None] - (c[-1] - inside) / (n - n_in)[:, None]
    gain = n_in * (n - n_in) / n * (gap**2).sum(1)
    i = int(np.argmax(gain))
    return int(s[i]), int(e[i]), float(gain[i])


def _two_sample(n1: int) -> Callable[[np.ndarray], float]:
    """Between-group sum of squares of the first ``n1`` rows against the rest."""

    def stat(y: np.ndarray) -> float:
        n2 = len(y) - n1
        return n1 * n2 / len(y) * float(((y[:n1].mean(0) - y[n1:].mean(0)) ** 2).sum())

    return stat


def _significant(x: np.ndarray, value: float, stat: Callable[[np.ndarray], float],
                 rng: np.random.Generator) -> bool:
    """``value`` beats ``stat`` of the blocks in random order in all but ``ALPHA`` of the permutations."""
    null = np.array([stat(x[rng.permutation(len(x))]) for _ in range(PERMUTATIONS)])
    return bool((null >= value).sum() + 1 <= ALPHA * (PERMUTATIONS + 1))


def find_regimes(block_counts: np.ndarray, *, regimes: int | None = None, max_regimes: int = MAX_REGIMES,
                 seed: int = 0) -> np.ndarray:
    """int ``[B]`` regime of each block ``[B, L, E]``, numbered in order of first appearance.

    Significant cuts only (module docstring); ``regimes`` instead forces that many runs, cut greedily.
    """
    x = _features(block_counts)
    rng = np.random.default_rng(seed)
    runs = [(0, len(x))]
    while len(runs) < (regimes or max_regimes):
        best = None
        for i, (a, b) in enumerate(runs):
            lo, hi, gain = _best_split(x[a:b])
            if hi and (best is None or gain > best[1]) and (
                    regimes is not None or _significant(x[a:b], gain, lambda z: _best_split(z)[2], rng)):
                best = (i, gain, [a + c for c in (lo, hi) if 0 < c < b - a])
        if best is None:
            break
        i, _, cuts = best
        a, b = runs.pop(i)
        edges = [a, *cuts, b]
        runs[i:i] = list(itertools.pairwise(edges))
    labels = np.zeros(len(x), np.int64)
    members: list[list[tuple[int, int]]] = []
    for a, b in runs:  # a run joins an earlier regime it cannot be told apart from
        label = len(members)
        for j, mem in enumerate(members if regimes is None else []):
            if mem[-1][1] == a:
                continue  # the run just before: a significant change by construction
            y = np.concatenate([x[c:d] for c, d in mem] + [x[a:b]])
            stat = _two_sample(sum(d - c for c, d in mem))
            if not _significant(y, stat(y), stat, rng):
                label = j
                break
        if label == len(members):
            members.append([])
        members[label].append((a, b))
        labels[a:b] = label
    return labels


def _request_bounds(starts: np.ndarray, n: int, block: int) -> np.ndarray:
    """Block bounds at request starts: whole requests until a block has ``block`` rows (a longer
    request is a block of its own), so that no request fills several blocks alike."""
    bounds, last = [0], 0
    for a in starts[1:]:
        if a - last >= block:
            bounds.append(int(a))
            last = int(a)
    if n - last < block // 2 and len(bounds) > 1:
        bounds.pop()  # a short tail joins the last block
    return np.array([*bounds, n], np.int64)


def _log_quantiles(lengths: np.ndarray) -> np.ndarray:
    return np.quantile(np.log(np.maximum(lengths, 1)), np.linspace(0, 1, QUANTILES))


def fit_drift(trace: RoutingTrace, depth_map: np.ndarray, *, regimes: int | None = None,
              seed: int = 0) -> DriftModel:
    """Regimes of ``trace`` and the movement target (request spread not yet calibrated), for output
    layers taking source column ``depth_map[l]``."""
    n, e = trace.num_tokens, trace.num_experts
    block = max(-(-4 * e // trace.top_k), 32, n // BLOCKS)  # >= 4 selections per expert and layer
    seq = np.asarray(trace.seq_id)
    starts = np.r_[0, np.flatnonzero(seq[1:] != seq[:-1]) + 1] if n else np.zeros(1, np.int64)
    lengths = np.diff(np.r_[starts, n])
    # real requests (>= 2 per block): blocks hold whole ones and a request keeps its preferences for
    # its whole sequence; a stream without them (one long sequence, e.g. an engine's execution
    # order) gets fixed blocks and request pieces of a quarter block
    has_requests = len(starts) >= 2 * max(1, n // block)
    bounds = _request_bounds(starts, n, block) if has_requests else \
        np.r_[np.arange(max(1, n // block)) * block, n]
    nb = len(bounds) - 1
    blocks = np.stack([range_counts(trace, int(a), int(b)) for a, b in itertools.pairwise(bounds)])
    per_regime = trace.num_layers * e * max(e, 1024)
    cap = int(max(1, min(MAX_REGIMES, BANK_BUDGET // per_regime)))
    labels = np.zeros(nb, np.int64)
    if nb >= 2 * MIN_RUN:
        labels = find_regimes(blocks, regimes=None if regimes is None else min(regimes, cap),
                              max_regimes=cap, seed=seed)
    num_r = int(labels.max()) + 1
    counts = np.stack([blocks[labels == r].sum(0) for r in range(num_r)]).astype(np.float64)
    change = np.r_[0, np.flatnonzero(labels[1:] != labels[:-1]) + 1, nb]
    runs = [(int(labels[a]), int(bounds[b] - bounds[a])) for a, b in itertools.pairwise(change)]
    trans = np.zeros((num_r, num_r))
    for (r0, _), (r1, _) in itertools.pairwise(runs):
        trans[r0, r1] += 1
    for r in range(num_r):
        if trans[r].sum() == 0:  # never left (the last run): back where it came from, the only
            trans[r] = trans[:, r]  # change of load seen to and from it
    trans = trans / np.maximum(trans.sum(1, keepdims=True), 1e-300) if num_r > 1 else np.ones((1, 1))
    durations = tuple(tuple(d for r, d in runs if r == reg) for reg in range(num_r))
    row_regime = np.repeat(labels, np.diff(bounds))
    start_regime = row_regime[starts] if n else np.zeros(1, np.int64)  # each regime starts a request
    initial = np.array([sum(d) for d in durations], np.float64)
    # movement target: TV between consecutive windows of one regime, on the scale a static plan is
    # served on (an eighth of the stream, as drift_stats); shorter when a regime has too few pairs.
    # Requests weigh more the longer the window, and real streams move more at long range than
    # request spread alone gives, so a shorter target underestimates the movement that matters.
    move, tv, pair_regime = max(2 * block, n // MOVE_WINDOWS), np.zeros(0), np.zeros(0, np.int64)
    while True:
        edges = np.arange(n // move + 1) * move
        if len(edges) > 2:
            fixed = np.stack([range_counts(trace, int(a), int(b)) for a, b in itertools.pairwise(edges)])
            ok = row_regime[edges[:-1]] == row_regime[edges[1:] - 1]
            pair = ok[:-1] & ok[1:] & (row_regime[edges[:-2]] == row_regime[edges[1:-1]])
            tv = total_variation(fixed[:-1], fixed[1:])[pair]
            pair_regime = row_regime[edges[:-2]][pair]
        if len(tv) >= MIN_PAIRS or move <= 2 * block:
            break
        move = max(2 * block, move // 2)
    return DriftModel(
        regime_popularity=_normalise(counts + 0.5)[:, np.asarray(depth_map, np.int64)],
        durations_rows=durations,
        transitions=trans,
        initial=initial / initial.sum(),
        block_rows=int(move),
        request_rows=int(lengths.max()) if has_requests else max(1, block // 4),
        request_set=REQUEST_SET_PER_K * trace.top_k,
        length_quantiles=np.stack([_log_quantiles(lengths[start_regime == r] if (start_regime == r).any()
                                                  else lengths) for r in range(num_r)]),
        fitted={"tv_block": float(np.nanmean(tv)) if np.isfinite(tv).any() else float("nan"),
                "tv_pairs": np.bincount(pair_regime, minlength=num_r).tolist(), "blocks": int(nb)},
    )


def restricted(model: DriftModel, regime: int) -> DriftModel:
    """The model with only ``regime``, e.g. to measure movement inside one regime."""
    q = model.length_quantiles
    return replace(model, regime_popularity=model.regime_popularity[regime : regime + 1],
                   durations_rows=((),), transitions=np.ones((1, 1)), initial=np.ones(1),
                   length_quantiles=None if q is None else q[regime : regime + 1])


__all__ = ["DriftModel", "find_regimes", "fit_drift", "restricted"]
