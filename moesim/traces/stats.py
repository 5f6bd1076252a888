"""Trace statistics (``moesim trace stats``): load skew, reuse, cross-layer affinity, local consistency.

Everything is computed in row chunks of bounded size, so a memory-mapped 10M-token trace is
analysed within a fixed memory budget. Definitions are in docs/traces.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from moesim.traces import stats_compiled
from moesim.traces.cache import POLICIES, hit_rates
from moesim.traces.npz import release_pages
from moesim.traces.trace import RoutingTrace, row_chunks
from moesim.traces.transitions import Transitions

REUSE_CLIP = 1 << 14
"""Reuse distances are histogrammed exactly up to this many tokens (larger ones share one bin)."""
REUSE_BINS = (1, 2, 4, 8, 16, 64, 256, 1024, REUSE_CLIP)


def gini(load: np.ndarray) -> np.ndarray:
    """Gini coefficient of each row of non-negative loads (0 = even, -> 1 = one expert takes all)."""
    x = np.sort(np.asarray(load, np.float64), axis=-1)
    n = x.shape[-1]
    total = x.sum(-1)
    weighted = (np.arange(1, n + 1) * x).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = 2.0 * weighted / (n * total) - (n + 1.0) / n
    return np.where(total > 0, g, 0.0)


def entropy_bits(load: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of each row of loads, as a distribution over experts."""
    p = np.asarray(load, np.float64)
    total = p.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(total > 0, p / total, 0.0)
        logp = np.where(p > 0, np.log2(p), 0.0)
    return -(p * logp).sum(-1)


def _segment_starts(trace: RoutingTrace, m: int) -> np.ndarray:
    """Row indices where a segment of ``m`` consecutive tokens of one sequence begins."""
    seq = np.asarray(trace.seq_id)
    n = len(seq)
    new_seq = np.r_[True, seq[1:] != seq[:-1]] if n else np.zeros(0, bool)
    seq_start = np.maximum.accumulate(np.where(new_seq, np.arange(n), 0)) if n else np.zeros(0, np.int64)
    return np.flatnonzero((np.arange(n) - seq_start) % m == 0)


def local_consistency(
    trace: RoutingTrace, lengths: Sequence[int], sizes: Sequence[int], max_tokens: int | None = None
) -> dict[str, Any]:
    """Segment routing best performance (SRP) and segment cache best hit rate (SCH) per segment length.

    For each segment of ``m`` consecutive tokens of a sequence and each layer, the best fixed expert
    set of size K (SRP) or C (SCH) is the one with the largest total routing weight (gate weight where
    recorded, else 1 per selection) in the segment; the metric is the share of the segment's routing
    weight (SRP) or selections (SCH) that set covers, pooled over segments and layers.
    """
    e, layers, k = trace.num_experts, trace.num_layers, trace.top_k
    rows = trace.num_tokens if max_tokens is None else min(trace.num_tokens, max_tokens)
    sub = trace.rows(0, rows)
    out: dict[str, Any] = {"segment_lengths": list(lengths), "srp": {}, "sch": {}}
    for m in lengths:
        starts = _segment_starts(sub, m)
        mark = np.zeros(rows, bool)
        mark[starts] = True
        seg_of_row = np.cumsum(mark) - 1
        covered_w = total_w = 0.0
        covered = {c: 0 for c in sizes}
        total = 0
        bounds = np.r_[starts, rows]
        step = max(1, (4 << 20) // max(1, layers * k * 8))  # rows per chunk, ~4 MB of int64 ids
        top = min(e, max([k, *sizes]))
        a = 0
        while a < rows:
            b = int(bounds[np.searchsorted(bounds, min(rows, a + step))])  # a segment start or the end
            ids = np.asarray(sub.expert_ids[a:b], np.int64)
            release_pages(sub.expert_ids)
            seg = seg_of_row[a:b] - seg_of_row[a]
            nseg = int(seg[-1]) + 1
            valid = ids >= 0
            whole = bool(valid.all())  # no -1: the keys need no mask (and the weights none either)
            # one histogram per (layer, segment) over experts, all layers at once
            key = (np.arange(layers)[None, :, None] * nseg + seg[:, None, None]) * e + ids
            key = key.ravel() if whole else key[valid]
            counts = np.bincount(key, minlength=layers * nseg * e).reshape(layers * nseg, e)
            sc = _top_sorted(counts, top)
            for c in sizes:
                covered[c] += int(sc[:, : min(c, e)].sum())
            total += int(counts.sum())
            if sub.gate_weights is None:
                covered_w += float(sc[:, :k].sum())
                total_w += float(counts.sum())
            else:
                w = np.nan_to_num(np.asarray(sub.gate_weights[a:b], np.float64))
                w = w.ravel() if whole else w[valid]
                weights = np.bincount(key, weights=w, minlength=layers * nseg * e).reshape(layers * nseg, e)
                covered_w += float(_top_sorted(weights, k).sum())
                total_w += float(weights.sum())
            a = b
        out["srp"][str(m)] = covered_w / total_w if total_w else float("nan")
        out["sch"][str(m)] = {str(c): covered[c] / total if total else float("nan") for c in sizes}
    return out


def _top_sorted(x: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` largest entries of each row, descending (partition first: rows are long, n small)."""
    if n < x.shape[1]:
        x = -np.partition(-x, n - 1, axis=1)[:, :n]
        return -np.sort(-x, axis=1)
    return -np.sort(-x, axis=1)


def _reuse_and_overlap(trace: RoutingTrace, compiled: bool | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per layer: reuse-distance histogram ``[L, CLIP+1]``, cold misses, overlap sum, overlap pairs.
    ``compiled``: the numba loop (default: when installed) or the numpy one (the same integers)."""
    e, layers, k, n = trace.num_experts, trace.num_layers, trace.top_k, trace.num_tokens
    hist = np.zeros((layers, REUSE_CLIP + 1), np.int64)
    cold = np.zeros(layers, np.int64)
    inter_total = np.zeros(layers, np.int64)  # selections also made by the previous row of the sequence
    pairs = 0
    last_seen = np.full((layers, e + 1), -1, np.int64)
    prev_row: np.ndarray | None = None
    prev_seq = None
    seq = np.asarray(trace.seq_id)
    fast = stats_compiled.available() if compiled is None else compiled
    for a, b in row_chunks(n, layers * k * 2, 16 << 20):
        ids = np.array(trace.expert_ids[a:b])
        release_pages(trace.expert_ids)
        if fast:
            before = (ids[0], 0) if prev_row is None else (prev_row, int(prev_seq))
            pairs += stats_compiled.reuse_chunk(ids, seq[a:b], a, *before, prev_row is not None, last_seen,
                                                hist, cold, inter_total)
            prev_row, prev_seq = ids[-1], seq[b - 1]
            continue
        # consecutive-token overlap inside a sequence (temporal locality)
        both = ids if prev_row is None else np.concatenate([prev_row[None], ids])
        s = seq[a:b] if prev_seq is None else np.r_[prev_seq, seq[a:b]]
        same = s[1:] == s[:-1]
        if len(same):
            cur, prv = both[1:][same], both[:-1][same]
            inter = ((cur[..., :, None] == prv[..., None, :]) & (cur[..., :, None] >= 0)).any(-1).sum(-1)
            inter_total += inter.sum(0)
            pairs += int(same.sum())
        prev_row, prev_seq = ids[-1], seq[b - 1]
        # reuse distance in rows, per (layer, expert), carrying the last row seen across chunks
        t = np.repeat(np.arange(a, b, dtype=np.int64), k)
        for layer in range(layers):
            x = ids[:, layer].ravel()
            x = np.where(x < 0, e, x).astype(np.int16)
            order = np.argsort(x, kind="stable")  # radix sort on int16; row order kept per expert
            xs, ts = x[order], t[order]
            first = np.r_[True, xs[1:] != xs[:-1]]
            prev_t = np.where(first, last_seen[layer, xs], np.r_[-1, ts[:-1]])
            keep = xs != e
            d = (ts - prev_t)[keep & (prev_t >= 0)]
            cold[layer] += int((keep & (prev_t < 0)).sum())
            hist[layer] += np.bincount(np.minimum(d, REUSE_CLIP), minlength=REUSE_CLIP + 1)
            lasts = np.r_[first[1:], True]  # last occurrence of each expert in the chunk
            last_seen[layer, xs[lasts]] = ts[lasts]
    return hist, cold, inter_total / k, np.full(layers, pairs)


def cross_layer(trace: RoutingTrace, max_tokens: int | None = None) -> dict[str, Any]:
    """Affinity of adjacent layer columns from their transition counts (:mod:`moesim.traces.transitions`)."""
    co = Transitions.fit(trace.expert_ids, trace.num_experts, stop=max_tokens).counts
    return {"cooccurrence": co, **affinity_summary(co, trace.top_k)}


def affinity_summary(co: np.ndarray, k: int) -> dict[str, list[float]]:
    """Top-K mass of P(next | this) (weighted by this expert's pairs), conditional entropy, MI (bits)."""
    topk, cond_h, mi = [], [], []
    for m in co:
        row = m.sum(1)
        total = row.sum()
        if total == 0:
            topk.append(float("nan"))
            cond_h.append(float("nan"))
            mi.append(float("nan"))
            continue
        w = row / total
        p_cond = np.where(row[:, None] > 0, m / np.maximum(row[:, None], 1), 0.0)
        topk.append(float((w * -np.sort(-p_cond, axis=1)[:, :k].sum(1)).sum()))
        h_cond = float((w * entropy_bits(m)).sum())
        cond_h.append(h_cond)
        mi.append(float(entropy_bits(m.sum(0))) - h_cond)
    return {"topk_mass": topk, "conditional_entropy_bits": cond_h, "mutual_information_bits": mi}


def _median_from_hist(h: np.ndarray) -> float:
    total = h.sum()
    if total == 0:
        return float("nan")
    return float(np.searchsorted(np.cumsum(h), (total + 1) / 2))


def trace_stats(
    trace: RoutingTrace,
    *,
    cache_sizes: Sequence[int] = (),
    policies: Sequence[str] = POLICIES,
    segment_lengths: Sequence[int] = (4, 16, 64),
    cache_tokens: int | None = None,
    pair_tokens: int | None = 500_000,
) -> dict[str, Any]:
    """All statistics of ``trace`` as one JSON-ready dict (see docs/traces.md for every key)."""
    load = trace.load_matrix(1)[0]
    recorded = int(load.sum())
    mean = load.mean(axis=1)
    hist, cold, overlap, pairs = _reuse_and_overlap(trace)
    d = np.arange(REUSE_CLIP + 1)
    reuse_n = hist.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        reuse_mean = (hist * d).sum(1) / reuse_n
        cons = overlap / pairs
    edges = np.r_[0, REUSE_BINS[:-1], REUSE_CLIP - 1]  # last regular bucket ends below the clip bin
    pooled = hist.sum(0)
    total_reuse = pooled.sum() + cold.sum()
    buckets: dict[str, float] = {}
    for lo, hi in itertools.pairwise(edges.tolist()):
        if total_reuse:
            name = f"{lo + 1}-{hi}" if hi > lo + 1 else str(hi)
            buckets[name] = float(pooled[lo + 1 : hi + 1].sum() / total_reuse)
    if total_reuse:
        buckets[f">{REUSE_CLIP - 1}"] = float(pooled[REUSE_CLIP] / total_reuse)
        buckets["never_before"] = float(cold.sum() / total_reuse)
    cl = cross_layer(trace, pair_tokens)
    sizes = [c for c in cache_sizes]
    out: dict[str, Any] = {
        "path": trace.source,
        "model": trace.model_name,
        "tokens": trace.num_tokens,
        "layers": trace.num_layers,
        "top_k": trace.top_k,
        "num_experts": trace.num_experts,
        "layer_ids": trace.layer_ids.tolist(),
        "sequences": trace.num_sequences,
        "recorded_selections": recorded,
        "recorded_fraction": recorded / max(1, trace.num_tokens * trace.num_layers * trace.top_k),
        "load": load.tolist(),
        "per_layer": {
            "max_over_mean": np.where(mean > 0, load.max(axis=1) / np.maximum(mean, 1e-300), np.nan).tolist(),
            "gini": gini(load).tolist(),
            "entropy_bits": entropy_bits(load).tolist(),
            "entropy_norm": (entropy_bits(load) / np.log2(max(trace.num_experts, 2))).tolist(),
            "reuse_distance_mean": reuse_mean.tolist(),
            "reuse_distance_median": [_median_from_hist(h) for h in hist],
            "consecutive_overlap": cons.tolist(),
        },
        "reuse_distance_histogram": buckets,
        "cross_layer": {key: v for key, v in cl.items() if key != "cooccurrence"},
        "cross_layer_tokens": min(trace.num_tokens, pair_tokens or trace.num_tokens),
        "local_consistency": local_consistency(trace, segment_lengths, sizes or [trace.top_k], pair_tokens),
    }
    valid_sizes = [c for c in sizes if c >= trace.top_k]
    if valid_sizes:
        out["cache_hit_rate"] = {
            p: {str(c): r for c, r in v.items()}
            for p, v in hit_rates(trace, valid_sizes, policies, max_tokens=cache_tokens).items()
        }
        out["cache_tokens"] = min(trace.num_tokens, cache_tokens or trace.num_tokens)
    summary_keys = ("max_over_mean", "gini", "entropy_norm", "reuse_distance_mean", "consecutive_overlap")
    out["summary"] = {
        key: float(np.nanmean(out["per_layer"][key])) if trace.num_layers else float("nan")
        for key in summary_keys
    }
    out["summary"]["cross_layer_topk_mass"] = (
        float(np.nanmean(cl["topk_mass"])) if cl["topk_mass"] else float("nan")
    )
    return out
