"""The report's setup section (hardware, models, traces) and its calibration section."""

from __future__ import annotations

from typing import Any

from moesim.reports import grid as g
from moesim.reports.builder import Builder, GiB, short
from moesim.reports.document import Section, Table

TRACE_STATS = {
    "sequences": "sequences",
    "summary.max_over_mean": "max/mean load",
    "summary.gini": "Gini",
    "summary.entropy_norm": "entropy (norm.)",
    "summary.reuse_distance_mean": "mean reuse distance",
    "summary.consecutive_overlap": "consecutive overlap",
    "summary.cross_layer_topk_mass": "cross-layer top-k mass",
}
MODEL_KEYS = ("num_moe_layers", "num_experts", "top_k", "num_shared_experts", "hidden_size",
              "expert_intermediate_size", "expert_mib", "total_expert_gib")


def _hardware_rows(b: Builder, hw: dict[str, Any], where: tuple[str, str, str]) -> list[tuple[Any, ...]]:
    rows: list[tuple[Any, ...]] = []
    for d in hw["devices"]:
        def one(metric: str, value: float, unit: str, d: dict[str, Any] = d) -> Any:
            return b.rec("setup", "hardware", where, d["model"], "", "", metric, value, unit)

        rows.append((hw["name"], hw["nodes"], d["kind"], d["model"], d["count"],
                     one("memory_gib", d["memory_bytes"] / GiB, "GiB"),
                     one("memory_gb_per_s", d["memory_bandwidth_bytes_per_s"] / 1e9, "GB/s"),
                     one("peak_bf16_tflops", d["peak_flops_per_s"] / 1e12, "TFLOP/s")))
    for ln in hw["links"]:
        rows.append((hw["name"], hw["nodes"], "link", ln["kind"], ln["count"], None,
                     b.rec("setup", "hardware", where, ln["kind"], "", "", "link_gb_per_s",
                           ln["bandwidth_bytes_per_s"] / 1e9, "GB/s"), None))
    return rows


def setup_section(b: Builder) -> Section:
    cells: list[g.Cell] = []
    for st in (*b.sweep.placement, *b.sweep.offload):
        c = g.setup_cell(st.hw, st.model, st.trace, getattr(st, "nodes", None))
        if c not in cells:
            cells.append(c)
    hw_rows: list[tuple[Any, ...]] = []
    model_rows: list[tuple[Any, ...]] = []
    trace_rows: list[tuple[Any, ...]] = []
    paras: list[str] = []
    seen: set[str] = set()
    for c in cells:
        r = b.cell(c)
        if r is None:
            continue
        where = (c.p["hw"], c.p["model"], c.p["trace"])
        hw, m, t = r["hardware"], r["model"], r["trace"]
        if f"hw:{hw['name']}:{hw['nodes']}" not in seen:
            seen.add(f"hw:{hw['name']}:{hw['nodes']}")
            hw_rows += _hardware_rows(b, hw, where)
        if f"model:{m['name']}" not in seen:
            seen.add(f"model:{m['name']}")
            model_rows.append((m["name"], *[b.rec("setup", "models", where, m["name"], "", "", k, m[k])
                                            for k in MODEL_KEYS]))
        if f"trace:{t['sha256']}" not in seen:
            seen.add(f"trace:{t['sha256']}")
            st = t["stats"]
            vals = [b.rec("setup", "traces", where, t["name"], "", "", k, st.get(k)) for k in TRACE_STATS]
            trace_rows.append((t["name"], t["num_tokens"], t["num_layers"], t["top_k"], *vals))
            prov = "; ".join(f"{k}: {v}" for k, v in t["provenance"].items())
            paras.append(f"Trace `{t['name']}` (sha256 {t['sha256'][:12]}, model {t['model_name']}): "
                         f"{prov or 'no provenance recorded in the file'}. Statistics: `{t['command']}`.")
    tables = [
        Table("hardware", "Hardware profiles",
              "Devices and links of each profile (`moesim hw show NAME`); peak is the dense bf16 peak.",
              ("profile", "nodes", "kind", "model", "count", "memory GiB", "bandwidth GB/s", "peak TFLOP/s"),
              tuple(hw_rows)),
        Table("models", "Models", "MoE shape of each model spec (`moesim model show NAME`).",
              ("model", "MoE layers", "experts", "top-k", "shared", "hidden", "expert FFN", "expert MiB",
               "all experts GiB"), tuple(model_rows)),
        Table("traces", "Traces",
              "Routing statistics (`moesim trace stats`): load max/mean and Gini over "
              "experts, normalised entropy, mean reuse distance, overlap of consecutive tokens' experts, "
              "top-k mass of the next layer's experts given this layer's.",
              ("trace", "tokens", "layers", "top-k", *TRACE_STATS.values()), tuple(trace_rows)),
    ]
    return Section("Setup", tuple(paras), tuple(t for t in tables if t.rows))


def calibration_section(b: Builder) -> Section:
    keys: list[tuple[str, str, int | None, str | None]] = []
    for st in (*b.sweep.placement, *b.sweep.offload):
        key = (st.hw, st.model, getattr(st, "nodes", None), getattr(st, "calibration", None))
        if key not in keys:
            keys.append(key)
    columns: dict[str, dict[str, str]] = {}
    paras = []
    for hw, model, nodes, folder in keys:
        r = b.cell(g.calibration_cell(hw, model, nodes, folder))
        if r is None:
            continue
        label = f"{short(model)} on {short(hw)}" + (f" x{nodes}" if nodes else "")
        label += f" ({short(folder)})" if folder else ""
        columns[label] = r["sources"]
        used = f"calibration `{folder}` measured on {r.get('device')}" if folder else "no calibration"
        val = r.get("validation") or {}
        if val.get("median_abs_error") is not None:
            for metric in ("median_abs_error", "p90_abs_error"):
                b.rec("calibration", "calibration", (hw, model, ""), folder or "", "", "", metric,
                      val.get(metric))
            p90 = val.get("p90_abs_error")
            paras.append(f"{label}: {used}; against measured MoE layer times its median absolute "
                         f"relative error is {val['median_abs_error']:.1%}"
                         + (f", 90th percentile {p90:.1%}" if p90 is not None else "") + ".")
        else:
            paras.append(f"{label}: {used}; no validation measurement is available, so the prediction "
                         "error is unknown.")
    ops = sorted({op for c in columns.values() for op in c})
    rows = tuple((op, *[columns[c].get(op, "n/a") for c in columns]) for op in ops)
    table = Table("calibration", "Cost-model sources",
                  "Where each op's time comes from: a measured calibration table (`moesim calibrate`) or "
                  "the roofline with named efficiency factors (docs/cost.md).", ("op", *columns), rows)
    return Section("Calibration used", tuple(paras), (table,) if rows else ())
