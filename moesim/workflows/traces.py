"""Trace statistics as ``moesim trace stats`` computes them: load skew, reuse, affinity, hit rates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.specs import load_model
from moesim.traces.cache import POLICIES
from moesim.traces.counts import LoadCounts
from moesim.traces.routing_data import load_routing_data
from moesim.traces.stats import entropy_bits, gini, trace_stats
from moesim.traces.trace import RoutingTrace
from moesim.workflows.drift import drift_stats

SEGMENT_LENGTHS = (4, 16, 64)
CACHE_TOKENS = 200_000
"""Rows the cache hit rates replay by default (None or 0: all)."""


def trace_statistics(trace: str | Path | RoutingTrace | LoadCounts, *, model: str | Path | None = None,
                     key: str | None = None, cache_sizes: Sequence[int] = (),
                     policies: Sequence[str] = POLICIES, segment_lengths: Sequence[int] = SEGMENT_LENGTHS,
                     cache_tokens: int | None = CACHE_TOKENS,
                     drift: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """All statistics of a trace (docs/traces.md); a counts-only file gets the load statistics only.

    ``drift`` (options of ``workflows.drift.drift_stats``, ``{}`` for its defaults) adds ``drift``.
    """
    loaded = trace if isinstance(trace, (RoutingTrace, LoadCounts)) else \
        load_routing_data(trace, model=None if model is None else load_model(model), key=key)
    out = _statistics(loaded, cache_sizes, policies, segment_lengths, cache_tokens)
    if drift is not None:
        out["drift"] = drift_stats(loaded, **drift)
    return out


def _statistics(loaded: RoutingTrace | LoadCounts, cache_sizes: Sequence[int], policies: Sequence[str],
                segment_lengths: Sequence[int], cache_tokens: int | None) -> dict[str, Any]:
    if isinstance(loaded, LoadCounts):
        load = loaded.load_matrix(1)[0]
        mean = load.mean(1)
        return {
            "path": loaded.source,
            "kind": "load-counts",
            "layers": loaded.num_layers,
            "num_experts": loaded.num_experts,
            "steps": loaded.num_steps,
            "load": load.tolist(),
            "per_layer": {
                "max_over_mean": (load.max(1) / np.maximum(mean, 1e-300)).tolist(),
                "gini": gini(load).tolist(),
                "entropy_bits": entropy_bits(load).tolist(),
            },
        }
    bad = [c for c in cache_sizes if not loaded.top_k <= c <= loaded.num_experts]
    if bad:
        raise UserError(f"expected cache sizes from top-k ({loaded.top_k}) to the number of experts "
                        f"({loaded.num_experts}), got {bad}", field="--cache-sizes")
    return trace_stats(loaded, cache_sizes=list(cache_sizes), policies=list(policies),
                       segment_lengths=list(segment_lengths), cache_tokens=cache_tokens or None)


def trace_summary(trace: RoutingTrace | LoadCounts) -> dict[str, Any]:
    """Shape, sequences and metadata of loaded routing data (``moesim trace info``)."""
    if isinstance(trace, LoadCounts):
        return {
            "path": trace.source,
            "kind": "load-counts",
            "steps": trace.num_steps,
            "layers": trace.num_layers,
            "num_experts": trace.num_experts,
            "layer_ids": trace.layer_ids.tolist(),
            "selections": int(trace.counts.sum()),
        }
    phases, counts = np.unique(np.asarray(trace.phase), return_counts=True)
    return {
        "path": trace.source,
        "kind": "routing-trace",
        "model": trace.model_name,
        "tokens": trace.num_tokens,
        "layers": trace.num_layers,
        "top_k": trace.top_k,
        "num_experts": trace.num_experts,
        "sequences": trace.num_sequences,
        "layer_ids": trace.layer_ids.tolist(),
        "phases": {
            {0: "prefill", 1: "decode", -1: "unknown"}[int(p)]: int(c)
            for p, c in zip(phases, counts, strict=True)
        },
        "gate_weights": trace.gate_weights is not None,
        "memory_mapped": isinstance(trace.expert_ids, np.memmap),
        "extra_keys": sorted(trace.extras),
    }
