"""The report's offloading sections: hit rate vs cache size per policy, and simulated tokens/s vs the
expert-cache budget per way of serving a miss."""

from __future__ import annotations

from typing import Any

from moesim.reports import grid as g
from moesim.reports import plots
from moesim.reports.builder import Builder, GiB, short, slug, spread
from moesim.reports.document import Figure, Section, Table
from moesim.reports.sweep import OffloadStudy
from moesim.units import parse_quantity


def offload_section(b: Builder, o: OffloadStudy) -> Section:
    tables: list[Table] = []
    figs: list[Figure] = []
    _hit_rates(b, o, tables, figs)
    _throughput(b, o, tables, figs)
    paras = (f"Hardware `{short(o.hw)}`, model `{short(o.model)}`, trace `{short(o.trace)}`.",)
    return Section(f"Offloading on {short(o.hw)}", paras, tuple(tables), tuple(figs))


def _hit_rates(b: Builder, o: OffloadStudy, tables: list[Table], figs: list[Figure]) -> None:
    where = (o.hw, o.model, o.trace)
    sec, stem = f"offload {short(o.hw)}", slug("offload", o.hw, o.model, o.trace)
    setup = b.res.get(g.setup_cell(o.hw, o.model, o.trace))
    shape = (setup["model"]["num_experts"], setup["model"]["top_k"]) if setup else (8, 2)
    sizes = g.cache_sizes(o, *shape)
    curves: dict[str, list[float | None]] = {}
    hit_cmd = ""
    if any(p != "static" for p in o.policies):
        r = b.cell(g.hitrate_cell(o, sizes))
        if r is not None:
            hit_cmd = r["command"]
            for p in o.policies:
                if p != "static":
                    curves[p] = [r["rates"][p][str(c)] for c in sizes]
    if "static" in o.policies:
        vals = []
        for c in sizes:
            r = b.cell(g.static_cell(o, c, b.sweep.seed))
            vals.append(None if r is None else r["hit_rate"])
        curves["static"] = vals
    order = [p for p in o.policies if p in curves and p != "belady"]
    order += ["belady"] if "belady" in curves else []
    curves = {p: curves[p] for p in order}
    for p, vals in curves.items():
        for c, v in zip(sizes, vals, strict=True):
            b.rec(sec, f"{stem}_hitrate", where, p, "cache_experts_per_layer", c, "hit_rate", v)
    if not curves:
        return
    tables.append(Table(
        f"{stem}_hitrate_table", f"Hit rate vs cache size ({short(o.trace)})",
        "Per-layer expert cache of C experts, tokens in row order, batch 1, over the whole "
        f"trace (`{hit_cmd}`). `static`: the experts the cache planner (`cache_ilp.plan_cache`, "
        "fetch misses, no prefetch) pins in the memory of C experts per layer, planned on the "
        "whole trace.",
        ("experts cached / layer", *curves),
        tuple((c, *[curves[p][i] for p in curves]) for i, c in enumerate(sizes)),
    ))
    figs.append(b.figure(
        f"{stem}_hitrate", f"Hit rate vs cache size on {short(o.trace)}",
        "Expert-cache hit rate per policy as the per-layer cache grows. Belady (the offline "
        "optimum) is the ceiling of every cache that starts empty (LRU, LFU); the static pin is "
        "loaded before the first token, so it has no cold misses and can touch the ceiling.",
        plots.lines(sizes, curves, xlabel="experts cached per MoE layer", ylabel="hit rate",
                    title="Hit rate vs cache size", emphasise="belady"),
    ))


def _throughput(b: Builder, o: OffloadStudy, tables: list[Table], figs: list[Figure]) -> None:
    where = (o.hw, o.model, o.trace)
    sec, stem = f"offload {short(o.hw)}", slug("offload", o.hw, o.model, o.trace)
    cells = {(m, x): b.cell(g.offload_cell(o, m, x, b.sweep.seed))
             for m in o.expert_cache for x in o.miss_modes}
    if all(r is None for r in cells.values()):
        return
    budgets = sorted(o.expert_cache, key=lambda m: parse_quantity(m, "bytes"))
    gib = [parse_quantity(m, "bytes") / GiB for m in budgets]
    tps: dict[str, list[Any]] = {}
    rows = []
    cmd = ""
    for miss in o.miss_modes:
        tps[miss] = []
        for m, x in zip(budgets, gib, strict=True):
            r = cells[(m, miss)]
            v = None if r is None else r["summary"]["tokens_per_s"]
            hr = None if r is None else r["summary"].get("cache_hit_rate")
            cmd = cmd or (r["command"] if r else "")
            tps[miss].append(b.rec(sec, f"{stem}_memory", where, miss, "expert_cache_gib", x,
                                   "tokens_per_s", v, "tokens/s"))
            rows.append((miss, m, v, b.rec(sec, f"{stem}_memory_table", where, miss, "expert_cache_gib", x,
                                           "cache_hit_rate", hr)))
    tables.append(Table(
        f"{stem}_memory_table", f"Tokens/s vs expert-cache budget on {short(o.hw)}",
        f"Decode, batch {o.batch}, `{o.memory_policy}` cache sized by the expert-cache budget per GPU "
        "(the GPU also holds the model's non-expert weights, KV cache and activations; a budget they do "
        f"not fit beside is refused); each row equals `moesim simulate` with that budget and miss mode "
        f"(e.g. `{cmd}`).",
        ("miss handling", "expert cache", "tokens/s", "cache hit rate"), tuple(rows),
    ))
    logy = spread(tps) > 20
    figs.append(b.figure(
        f"{stem}_memory", f"Tokens/s vs expert-cache budget on {short(o.hw)}",
        "Simulated decode throughput as the expert-cache budget grows, for each way of "
        "serving a cache miss: fetch over PCIe, run on the CPU (Fiddler), fetch in "
        "low precision (HOBBIT), run on PIM (Duplex). Gaps: mode unavailable, or the budget does not fit "
        "the GPU beside the rest of the model.",
        plots.lines(gib, tps, xlabel="expert-cache budget per GPU (GiB)",
                    ylabel="tokens/s" + (" (log scale)" if logy else ""),
                    title="Decode throughput vs expert-cache budget", logy=logy),
    ))
