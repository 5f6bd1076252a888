"""How each report cell is computed: by the same functions ``moesim plan --json``,
``moesim simulate --json`` and ``moesim trace stats`` call, so the report's numbers are theirs.

Each function takes the cell's parameters (a plain dict) and returns a plain JSON-able dict that
also carries the equivalent ``moesim`` command line (``"command"``).
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable
from typing import Any

from moesim.reports.cellcache import file_digest
from moesim.resources import resolve


def _cmd(*parts: Any) -> str:
    """A shell command line from flags; ``None`` values drop their flag."""
    out: list[str] = []
    it = list(parts)
    i = 0
    while i < len(it):
        a = it[i]
        if (
            isinstance(a, str)
            and a.startswith("--")
            and i + 1 < len(it)
            and not str(it[i + 1]).startswith("--")
        ):
            if it[i + 1] is not None:
                out += [a, str(it[i + 1])]
            i += 2
            continue
        if a is not None:
            out.append(str(a))
        i += 1
    return shlex.join(out)


# ---- setup -------------------------------------------------------------------------------------


def hardware_summary(cluster: Any) -> dict[str, Any]:
    """Devices grouped by (kind, model) and links grouped by kind, with their headline numbers."""
    dev_groups: dict[tuple[str, str], list[Any]] = {}
    for d in cluster.devices:
        dev_groups.setdefault((d.kind, d.spec.model), []).append(d)
    peak_dtype = "bf16"
    devices = []
    for (kind, model), ds in dev_groups.items():
        spec = ds[0].spec
        devices.append(
            {
                "kind": kind,
                "model": model,
                "count": len(ds),
                "memory_bytes": float(spec.memory_bytes),
                "memory_bandwidth_bytes_per_s": float(spec.memory_bandwidth_bytes_per_s),
                "peak_flops_per_s": float(spec.peak_flops_per_s.get(peak_dtype, 0.0)),
            }
        )
    link_count = Counter(link.spec.kind for link in cluster.links)
    links, seen = [], set()
    for link in cluster.links:
        if link.spec.kind in seen:
            continue
        seen.add(link.spec.kind)
        links.append(
            {
                "kind": link.spec.kind,
                "count": link_count[link.spec.kind],
                "bandwidth_bytes_per_s": float(link.spec.bandwidth_bytes_per_s),
                "latency_s": float(link.spec.latency_s),
            }
        )
    return {
        "name": cluster.name,
        "nodes": cluster.nodes,
        "devices": devices,
        "links": links,
        "peak_dtype": peak_dtype,
    }


def model_summary(model: Any) -> dict[str, Any]:
    return {
        "name": model.name,
        "num_layers": model.num_layers,
        "num_moe_layers": model.num_moe_layers,
        "num_experts": model.num_experts,
        "top_k": model.top_k,
        "num_shared_experts": model.num_shared_experts,
        "hidden_size": model.hidden_size,
        "expert_intermediate_size": model.expert_intermediate_size,
        "expert_mib": model.expert_bytes() / (1 << 20),
        "total_expert_gib": model.expert_bytes() * model.num_experts * model.num_moe_layers / (1 << 30),
        "weight_dtype": model.weight_dtype,
        "source": model.source,
    }


_PROVENANCE_KEYS = (
    "source",
    "source_repo",
    "source_commit",
    "generator",
    "fitted_to",
    "fit",
    "dataset",
    "prompts",
    "recorded_with",
    "synthetic",
    "license",
    "description",
    "seed",
)


def trace_summary(trace: Any, name: str, path: Any) -> dict[str, Any]:
    """Shape, provenance (selected meta keys) and routing statistics of a trace."""
    from moesim.traces.stats import trace_stats

    stats = trace_stats(trace)
    meta = dict(trace.meta or {})
    prov = {
        k: meta[k] for k in _PROVENANCE_KEYS if k in meta and isinstance(meta[k], (str, int, float, bool))
    }
    return {
        "name": str(name).rsplit("/", 1)[-1],
        "sha256": file_digest(path),
        "num_tokens": trace.num_tokens,
        "num_layers": trace.num_layers,
        "top_k": trace.top_k,
        "num_experts": trace.num_experts,
        "model_name": trace.model_name,
        "provenance": prov,
        "stats": {k: v for k, v in stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)},
        "command": _cmd("moesim", "trace", "stats", str(name), "--json"),
    }


def cell_setup(p: dict[str, Any]) -> dict[str, Any]:
    from moesim.specs import load_cluster, load_model
    from moesim.traces import RoutingTrace

    cluster = load_cluster(p["hw"], nodes=p.get("nodes"))
    model = load_model(p["model"])
    trace = RoutingTrace.load(p["trace"], model=model)
    return {
        "hardware": hardware_summary(cluster),
        "model": model_summary(model),
        "trace": trace_summary(trace, p["trace"], resolve("trace", p["trace"])),
    }


# ---- offloading: hit-rate curves ---------------------------------------------------------------


def cell_hitrate(p: dict[str, Any]) -> dict[str, Any]:
    """Whole-trace hit rates per policy and cache size (``moesim.traces.cache.hit_rates``)."""
    from moesim.specs import load_model
    from moesim.traces import RoutingTrace
    from moesim.traces.cache import hit_rates

    trace = RoutingTrace.load(p["trace"], model=load_model(p["model"]))
    sizes = [int(c) for c in p["sizes"]]
    rates = hit_rates(trace, sizes, list(p["policies"]))
    return {
        "rates": {pol: {str(c): float(r[c]) for c in sizes} for pol, r in rates.items()},
        "command": _cmd(
            "moesim", "trace", "stats", p["trace"], "--cache-sizes", ",".join(map(str, sizes)), "--json"
        ),
    }


# ---- calibration -------------------------------------------------------------------------------


def cell_calibration(p: dict[str, Any]) -> dict[str, Any]:
    """Which ops the cost model prices from tables vs the roofline, and the validation error if known."""
    from moesim.cost import CostModel
    from moesim.specs import load_cluster, load_model

    cluster = load_cluster(p["hw"], nodes=p.get("nodes"))
    calibration, validation = _default_calibration(cluster)
    cost = CostModel(cluster, load_model("mixtral-8x7b"), calibration)
    sources = {op: src for op, src in cost.sources().items()}
    return {
        "sources": sources,
        "calibration": None if calibration is None else str(calibration),
        "validation_error": validation,
    }


def _default_calibration(cluster: Any) -> tuple[Any, float | None]:
    """The calibration ``moesim simulate`` uses for this cluster by default (none yet) and its error."""
    return None, None


COMPUTE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "setup": cell_setup,
    "hitrate": cell_hitrate,
    "calibration": cell_calibration,
}
