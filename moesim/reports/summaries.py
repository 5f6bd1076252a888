"""Short summaries the report's setup and timeline sections show: hardware, model, trace statistics,
trace provenance, and a timeline's boxes."""

from __future__ import annotations

from collections import Counter
from typing import Any


def hardware_summary(cluster: Any) -> dict[str, Any]:
    """Devices grouped by (kind, model) and links grouped by kind, with their headline numbers."""
    groups: dict[tuple[str, str], list[Any]] = {}
    for d in cluster.devices:
        groups.setdefault((d.kind, d.spec.model), []).append(d)
    peak_dtype = "bf16"
    devices = [
        {
            "kind": kind,
            "model": model,
            "count": len(ds),
            "memory_bytes": float(ds[0].spec.memory_bytes),
            "memory_bandwidth_bytes_per_s": float(ds[0].spec.memory_bandwidth_bytes_per_s),
            "peak_flops_per_s": float(ds[0].spec.peak_flops_per_s.get(peak_dtype, 0.0)),
        }
        for (kind, model), ds in groups.items()
    ]
    counts = Counter(link.spec.kind for link in cluster.links)
    links: dict[str, dict[str, Any]] = {}
    for link in cluster.links:
        links.setdefault(
            link.spec.kind,
            {
                "kind": link.spec.kind,
                "count": counts[link.spec.kind],
                "bandwidth_bytes_per_s": float(link.spec.bandwidth_bytes_per_s),
                "latency_s": float(link.spec.latency_s),
            },
        )
    return {
        "name": cluster.name,
        "nodes": cluster.nodes,
        "devices": devices,
        "links": list(links.values()),
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


def scalar_stats(stats: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, float]:
    """Numeric scalars of a ``trace stats`` JSON object (nested summaries flattened with dots)."""
    out: dict[str, float] = {}
    for k, v in stats.items():
        if k in ("load", "cache_hit_rate", "per_layer", "layers_detail"):
            continue
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[prefix + k] = v
        elif isinstance(v, dict) and depth < 1:
            out.update(scalar_stats(v, f"{prefix}{k}.", depth + 1))
    return out


def provenance(meta: dict[str, Any], limit: int = 10) -> dict[str, str]:
    """Short provenance fields of a trace's metadata: source, prompts, licence, how it was
    synthesised and what it was fitted to (nested dicts flattened with dots; lists left out)."""
    skip = {"schema", "num_experts", "top_k", "n_tokens", "n_moe_layers", "n_sequences", "has_gate_weights",
            "k_order", "sequences", "per_sequence"}
    out: dict[str, str] = {}

    def walk(d: dict[str, Any], prefix: str, depth: int) -> None:
        for k, v in d.items():
            if len(out) >= limit or k in skip:
                continue
            if isinstance(v, dict) and depth < 2:
                walk(v, f"{prefix}{k}.", depth + 1)
            elif isinstance(v, (str, int, float, bool)) and str(v):
                out[prefix + k] = str(v)[:240]

    walk(meta, "", 0)
    return out


def timeline_boxes(doc: dict[str, Any], max_links: int = 6) -> tuple[list[str], list[list[Any]]]:
    """Tracks and ``[track, start_s, end_s, kind]`` boxes of a Chrome/Perfetto trace JSON (complete
    ``X`` events); every device, then the ``max_links`` busiest link directions."""
    events = doc.get("traceEvents", []) if isinstance(doc, dict) else []
    names: dict[tuple[Any, Any], str] = {}
    for e in events:
        if e.get("ph") == "M" and e.get("name") == "thread_name":
            names[(e.get("pid"), e.get("tid"))] = str(e.get("args", {}).get("name"))
    boxes: list[list[Any]] = []
    busy: Counter[str] = Counter()
    order: dict[str, tuple[int, int]] = {}
    for e in events:
        if e.get("ph") != "X":
            continue
        key = (e.get("pid"), e.get("tid"))
        track = names.get(key, f"{key[0]}:{key[1]}")
        start = float(e["ts"]) * 1e-6
        end = start + float(e.get("dur", 0.0)) * 1e-6
        boxes.append([track, start, end, str(e.get("cat") or e.get("name", "")).split(" ")[0]])
        busy[track] += end - start
        order.setdefault(track, (int(key[0] or 0), int(key[1] or 0)))
    device_pid = min((pid for pid, _ in order.values()), default=0)
    devices = sorted((t for t, k in order.items() if k[0] == device_pid), key=lambda t: order[t])
    links = sorted((t for t in order if t not in devices), key=lambda t: (-busy[t], order[t]))
    rows = devices + links[:max_links]
    keep = set(rows)
    return rows, [b for b in boxes if b[0] in keep]
