"""Routing data by name or path: a token-level trace or per-step load counts, whichever the file holds.

Above both formats and their converters (so that neither imports the other back)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from moesim.resources import resolve
from moesim.traces.convert import convert
from moesim.traces.counts import LoadCounts, is_counts_file
from moesim.traces.trace import RoutingTrace


def load_routing_data(name_or_path: str | Path, *, model: Any = None, key: str | None = None) -> Any:
    """A routing trace or a counts file (``moe-load-counts/v1``) by path or shipped name.

    Returns a ``RoutingTrace`` or a ``LoadCounts``, checked against ``model`` when given; ``key``
    picks one count array of an aggregate ``.npz``. Planners take either (``load_matrix``).
    """
    path = resolve("trace", str(name_or_path))
    if is_counts_file(path):
        counts = LoadCounts.load(path)
    elif key is not None:
        counts = convert([path], "counts-npz", key=key)
    else:
        return RoutingTrace.load(path, model=model)
    if model is not None:
        counts.check_model(model)
    return counts
