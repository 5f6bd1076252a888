"""From finished grid cells to a :class:`Document`: the setup, placement, offloading, timeline and
calibration sections, with a caption and the producing command on every figure and table.

Every number a table or figure shows is also emitted as a :class:`Record`, so ``results.csv``
holds exactly what the page shows. Numbers are taken from the cells unchanged (no rounding).
"""

from __future__ import annotations

from typing import Any

from moesim.reports import grid as g
from moesim.reports import plots
from moesim.reports.document import Document, Figure, Record, Section, Table
from moesim.reports.sweep import OffloadStudy, PlacementStudy, Sweep
from moesim.units import parse_quantity

GiB = float(1 << 30)
_TRACE_STATS = {
    "sequences": "sequences",
    "summary.max_over_mean": "max/mean load",
    "summary.gini": "Gini",
    "summary.entropy_norm": "entropy (norm.)",
    "summary.reuse_distance_mean": "mean reuse distance",
    "summary.consecutive_overlap": "consecutive overlap",
    "summary.cross_layer_topk_mass": "cross-layer top-k mass",
}


def _slug(*parts: Any) -> str:
    """A file stem from names or paths (each path by its file name without suffix)."""
    names = []
    for p in parts:
        if p is None:
            continue
        name = str(p).rsplit("/", 1)[-1]
        for suffix in (".npz", ".yaml", ".yml"):
            name = name.removesuffix(suffix)
        names.append(name)
    return "".join(c if c.isalnum() else "-" for c in "_".join(names)).strip("-")


def _spread(series: dict[str, list[float | None]]) -> float:
    """max / min of the positive values of all series (1.0 when there are none)."""
    vals = [v for vs in series.values() for v in vs if v is not None and v > 0]
    return max(vals) / min(vals) if vals else 1.0


def _short(name: str) -> str:
    """A path shows as its file name in tables and titles."""
    return name.rsplit("/", 1)[-1]


class _Builder:
    def __init__(self, sweep: Sweep, res: g.GridResult, command: str):
        self.sweep, self.res, self.command = sweep, res, command
        self.records: list[Record] = []
        self.notes: list[str] = []

    # ---- helpers -------------------------------------------------------------------------------

    def rec(
        self,
        section: str,
        item: str,
        where: tuple[str, str, str],
        series: str,
        x_name: str,
        x: Any,
        metric: str,
        value: Any,
        unit: str = "",
    ) -> Any:
        hw, model, trace = where
        self.records.append(
            Record(
                section,
                item,
                _short(hw),
                _short(model),
                _short(trace),
                series,
                x_name,
                x,
                metric,
                value,
                unit,
            )
        )
        return value

    def cell(self, cell: g.Cell) -> dict[str, Any] | None:
        r = self.res.get(cell)
        if r is None:
            err = self.res.error(cell) or "not computed"
            self.notes.append(f"`{cell.label}`: {err}")
        return r

    def figure(self, name: str, title: str, caption: str, png: bytes) -> Figure:
        return Figure(name, title, caption, self.command, png)

    # ---- setup ---------------------------------------------------------------------------------

    def setup(self) -> Section:
        cells: list[g.Cell] = []
        for st in (*self.sweep.placement, *self.sweep.offload):
            c = g.setup_cell(st.hw, st.model, st.trace, getattr(st, "nodes", None))
            if c not in cells:
                cells.append(c)
        hw_rows: list[tuple[Any, ...]] = []
        model_rows: list[tuple[Any, ...]] = []
        trace_rows: list[tuple[Any, ...]] = []
        paras: list[str] = []
        seen: set[str] = set()
        for c in cells:
            r = self.cell(c)
            if r is None:
                continue
            where = (c.p["hw"], c.p["model"], c.p["trace"])
            hw, m, t = r["hardware"], r["model"], r["trace"]
            if f"hw:{hw['name']}:{hw['nodes']}" not in seen:
                seen.add(f"hw:{hw['name']}:{hw['nodes']}")
                for d in hw["devices"]:
                    hw_rows.append(
                        (
                            hw["name"],
                            hw["nodes"],
                            d["kind"],
                            d["model"],
                            d["count"],
                            self.rec(
                                "setup",
                                "hardware",
                                where,
                                d["model"],
                                "",
                                "",
                                "memory_gib",
                                d["memory_bytes"] / GiB,
                                "GiB",
                            ),
                            self.rec(
                                "setup",
                                "hardware",
                                where,
                                d["model"],
                                "",
                                "",
                                "memory_gb_per_s",
                                d["memory_bandwidth_bytes_per_s"] / 1e9,
                                "GB/s",
                            ),
                            self.rec(
                                "setup",
                                "hardware",
                                where,
                                d["model"],
                                "",
                                "",
                                "peak_bf16_tflops",
                                d["peak_flops_per_s"] / 1e12,
                                "TFLOP/s",
                            ),
                        )
                    )
                for ln in hw["links"]:
                    hw_rows.append(
                        (
                            hw["name"],
                            hw["nodes"],
                            "link",
                            ln["kind"],
                            ln["count"],
                            None,
                            self.rec(
                                "setup",
                                "hardware",
                                where,
                                ln["kind"],
                                "",
                                "",
                                "link_gb_per_s",
                                ln["bandwidth_bytes_per_s"] / 1e9,
                                "GB/s",
                            ),
                            None,
                        )
                    )
            if f"model:{m['name']}" not in seen:
                seen.add(f"model:{m['name']}")
                keys = (
                    "num_moe_layers",
                    "num_experts",
                    "top_k",
                    "num_shared_experts",
                    "hidden_size",
                    "expert_intermediate_size",
                    "expert_mib",
                    "total_expert_gib",
                )
                model_rows.append(
                    (
                        m["name"],
                        *[self.rec("setup", "models", where, m["name"], "", "", k, m[k]) for k in keys],
                    )
                )
            if f"trace:{t['sha256']}" not in seen:
                seen.add(f"trace:{t['sha256']}")
                st = t["stats"]
                vals = [
                    self.rec("setup", "traces", where, t["name"], "", "", k, st.get(k)) for k in _TRACE_STATS
                ]
                trace_rows.append((t["name"], t["num_tokens"], t["num_layers"], t["top_k"], *vals))
                prov = "; ".join(f"{k}: {v}" for k, v in t["provenance"].items())
                paras.append(
                    f"Trace `{t['name']}` (sha256 {t['sha256'][:12]}, model {t['model_name']}): "
                    f"{prov or 'no provenance recorded in the file'}. Statistics: `{t['command']}`."
                )
        tables = [
            Table(
                "hardware",
                "Hardware profiles",
                "Devices and links of each profile (`moesim hw show NAME`); peak is the dense bf16 peak.",
                (
                    "profile",
                    "nodes",
                    "kind",
                    "model",
                    "count",
                    "memory GiB",
                    "bandwidth GB/s",
                    "peak TFLOP/s",
                ),
                tuple(hw_rows),
            ),
            Table(
                "models",
                "Models",
                "MoE shape of each model spec (`moesim model show NAME`).",
                (
                    "model",
                    "MoE layers",
                    "experts",
                    "top-k",
                    "shared",
                    "hidden",
                    "expert FFN",
                    "expert MiB",
                    "all experts GiB",
                ),
                tuple(model_rows),
            ),
            Table(
                "traces",
                "Traces",
                "Routing statistics (`moesim trace stats`): load max/mean and Gini over "
                "experts, normalised entropy, mean reuse distance, overlap of consecutive tokens' experts, "
                "top-k mass of the next layer's experts given this layer's.",
                ("trace", "tokens", "layers", "top-k", *[_TRACE_STATS[k] for k in _TRACE_STATS]),
                tuple(trace_rows),
            ),
        ]
        return Section("Setup", tuple(paras), tuple(t for t in tables if t.rows))

    # ---- placement -----------------------------------------------------------------------------

    def placement(self, s: PlacementStudy) -> Section:
        where = (s.hw, s.model, s.trace)
        sec = f"placement {_short(s.hw)}"
        stem = _slug("placement", s.hw, f"{s.nodes}nodes" if s.nodes else None, s.model, s.trace)
        title = f"Placement on {_short(s.hw)}" + (f" ({s.nodes} nodes)" if s.nodes else "")
        cells = g.study_plan_cells(self.sweep, self.sweep.placement.index(s))
        results = {p: self.cell(c) for p, c in cells.items()}
        done = {p: r for p, r in results.items() if r is not None}
        if not done:
            return Section(title, ("No planner cell could be computed.",))
        names = list(done)
        js = {p: done[p]["json"] for p in names}
        base_step = js["contiguous"].get("step_time_s_eval") if "contiguous" in js else None

        def speedup(p: str) -> float | None:
            st = js[p].get("step_time_s_eval")
            return base_step / st if base_step and st else None

        classes = sorted({k for j in js.values() for k in (j.get("a2a_bytes") or {})})
        item = f"{stem}_table"
        cols = (
            ("gpu_imbalance_train", "imbalance (train)", ""),
            ("gpu_imbalance_eval", "imbalance (eval)", ""),
            ("predicted_moe_step_s_eval", "predicted MoE s/step", "s"),
            ("step_time_s_eval", "simulated step s", "s"),
            ("tokens_per_s_eval", "tokens/s", "tokens/s"),
        )
        rows = []
        for p in names:
            j = js[p]
            row: list[Any] = [p]
            row += [self.rec(sec, item, where, p, "", "", key, j.get(key), unit) for key, _, unit in cols]
            row.append(self.rec(sec, item, where, p, "", "", "speedup_vs_contiguous", speedup(p), "x"))
            row += [
                self.rec(
                    sec,
                    item,
                    where,
                    p,
                    "link_class",
                    c,
                    "all_to_all_bytes",
                    (j.get("a2a_bytes") or {}).get(c, 0.0),
                    "B",
                )
                for c in classes
            ]
            row.append(self.rec(sec, item, where, p, "", "", "solve_s", j.get("solve_s"), "s"))
            row.append(self.rec(sec, item, where, p, "", "", "gap", j.get("gap")))
            rows.append(tuple(row))
        first = names[0]
        cmd = done[first]["command"].replace(f"--planner {first}", "--planner all")
        table = Table(
            item,
            f"Placement planners on {_short(s.hw)}",
            f"Planned on the first {s.train_fraction:g} of `{_short(s.trace)}` (row order), evaluated "
            "on the rest. Imbalance: max-GPU / mean-GPU load per MoE layer (replicas split evenly), "
            "averaged over layers. Predicted: the ILP's cost model; simulated: `moesim simulate` of "
            f"the evaluation tokens. Each row equals that planner's entry of `{cmd}`.",
            (
                "planner",
                *[c[1] for c in cols],
                "speedup vs contiguous",
                *[f"all-to-all bytes {c}" for c in classes],
                "solve s",
                "gap",
            ),
            tuple(rows),
        )
        layers = done[first]["moe_layers"]
        series = {}
        for p in names:
            series[p] = done[p]["imbalance_per_layer_eval"]
            for layer, v in zip(layers, series[p], strict=True):
                self.rec(sec, f"{stem}_imbalance", where, p, "moe_layer", layer, "gpu_imbalance_eval", v)
        figs = [
            self.figure(
                f"{stem}_imbalance",
                f"Realised imbalance per layer on {_short(s.hw)}",
                "Max-GPU / mean-GPU token load of each MoE layer on the evaluation tokens (1.0 = "
                "perfect balance), one line per planner; the layer mean is the table's imbalance.",
                plots.lines(
                    layers,
                    series,
                    xlabel="MoE layer",
                    ylabel="max / mean GPU load",
                    title=f"Realised imbalance per layer ({_short(s.trace)})",
                    ref_y=1.0,
                    ref_label="perfect balance",
                ),
            )
        ]
        steps = {p: js[p].get("step_time_s_eval") for p in names}
        if any(v is not None for v in steps.values()):
            ms = [None if steps[p] is None else steps[p] * 1e3 for p in names]
            for p, v in zip(names, ms, strict=True):
                self.rec(sec, f"{stem}_step", where, p, "", "", "step_time_ms_eval", v, "ms")
            figs.append(
                self.figure(
                    f"{stem}_step",
                    f"Simulated step time per planner on {_short(s.hw)}",
                    "Mean simulated step time on the evaluation tokens (lower is better).",
                    plots.bars(names, ms, ylabel="step time (ms)", title="Step time (evaluation)"),
                )
            )
        if base_step:
            sp = [speedup(p) for p in names]
            for p, v in zip(names, sp, strict=True):
                self.rec(sec, f"{stem}_speedup", where, p, "", "", "speedup_vs_contiguous", v, "x")
            figs.append(
                self.figure(
                    f"{stem}_speedup",
                    f"Speedup over contiguous on {_short(s.hw)}",
                    "Contiguous step time / planner step time on the evaluation tokens (higher is better).",
                    plots.bars(
                        names,
                        sp,
                        ylabel="speedup (x)",
                        title="Speedup vs contiguous",
                        ref_y=1.0,
                        ref_label="contiguous",
                        fmt="{:.3f}",
                    ),
                )
            )
        if classes and any((j.get("a2a_bytes") or {}).get(c) for j in js.values() for c in classes):
            stacks = {
                c: [float((js[p].get("a2a_bytes") or {}).get(c, 0.0)) / 1e9 for p in names] for c in classes
            }
            for c, vals in stacks.items():
                for p, v in zip(names, vals, strict=True):
                    self.rec(sec, f"{stem}_a2a", where, p, "link_class", c, "all_to_all_gb", v, "GB")
            figs.append(
                self.figure(
                    f"{stem}_a2a",
                    f"All-to-all bytes by link class on {_short(s.hw)}",
                    "Dispatch + combine bytes of the evaluation steps by the class of link they "
                    "cross (NVLink inside a node, InfiniBand across nodes, PCIe).",
                    plots.stacked_bars(names, stacks, ylabel="GB", title="All-to-all traffic"),
                )
            )
        info = done[first].get("info", {})
        paras = [
            f"Hardware `{_short(s.hw)}` ({info.get('gpus', '?')} GPUs x {info.get('slots_per_gpu', '?')} "
            f"expert slots), model `{_short(s.model)}`, trace `{_short(s.trace)}`: planned on "
            f"{info.get('train_tokens', '?')} tokens, evaluated on {info.get('eval_tokens', '?')}; "
            f"ILP time limit {s.time_limit_s:g} s."
        ]
        paras += self._placement_verdict(js, speedup)
        return Section(title, tuple(paras), (table,), tuple(figs))

    @staticmethod
    def _placement_verdict(js: dict[str, dict[str, Any]], speedup: Any) -> list[str]:
        """Which planner wins and why, in words, from the numbers of the table."""
        timed = {p: j["step_time_s_eval"] for p, j in js.items() if j.get("step_time_s_eval")}
        out = []
        if timed:
            best = min(timed, key=lambda p: timed[p])
            sp = speedup(best)
            out.append(
                f"Fastest simulated step: `{best}` ({timed[best] * 1e3:.3f} ms"
                + (f", {sp:.3f}x contiguous" if sp else "")
                + ")."
            )
        if "ilp" in js and "eplb" in js:
            a, b = js["ilp"], js["eplb"]
            why = [f"evaluation imbalance {a['gpu_imbalance_eval']:.4f} vs {b['gpu_imbalance_eval']:.4f}"]
            ia, ib = (a.get("a2a_bytes") or {}).get("ib", 0.0), (b.get("a2a_bytes") or {}).get("ib", 0.0)
            if ia or ib:
                why.append(f"cross-node (InfiniBand) all-to-all {ia / 1e9:.3f} GB vs {ib / 1e9:.3f} GB")
            if a.get("step_time_s_eval") and b.get("step_time_s_eval"):
                d = 1.0 - a["step_time_s_eval"] / b["step_time_s_eval"]
                word = "shorter" if d >= 0 else "longer"
                verdict = f"`ilp`'s simulated step is {abs(d):.2%} {word} than `eplb`'s"
            else:
                verdict = "`ilp` vs `eplb`"
            out.append(f"{verdict}: " + "; ".join(why) + ".")
        return out

    # ---- offloading ----------------------------------------------------------------------------

    def offload(self, o: OffloadStudy) -> Section:
        where = (o.hw, o.model, o.trace)
        sec = f"offload {_short(o.hw)}"
        stem = _slug("offload", o.hw, o.model, o.trace)
        tables, figs, paras = [], [], []
        setup = self.res.get(g.setup_cell(o.hw, o.model, o.trace))
        shape = (setup["model"]["num_experts"], setup["model"]["top_k"]) if setup else (8, 2)
        sizes = g.cache_sizes(o, *shape)
        curves: dict[str, list[float | None]] = {}
        hit_cmd = ""
        if any(p != "static" for p in o.policies):
            r = self.cell(g.hitrate_cell(o, sizes))
            if r is not None:
                hit_cmd = r["command"]
                for p in o.policies:
                    if p != "static":
                        curves[p] = [r["rates"][p][str(c)] for c in sizes]
        if "static" in o.policies:
            vals = []
            for c in sizes:
                r = self.cell(g.static_cell(o, c, self.sweep.seed))
                vals.append(None if r is None else r["hit_rate"])
            curves["static"] = vals
        order = [p for p in o.policies if p in curves and p != "belady"] + (
            ["belady"] if "belady" in curves else []
        )
        curves = {p: curves[p] for p in order}
        for p, vals in curves.items():
            for c, v in zip(sizes, vals, strict=True):
                self.rec(sec, f"{stem}_hitrate", where, p, "cache_experts_per_layer", c, "hit_rate", v)
        if curves:
            tables.append(
                Table(
                    f"{stem}_hitrate_table",
                    f"Hit rate vs cache size ({_short(o.trace)})",
                    "Per-layer expert cache of C experts, tokens in row order, batch 1, over the whole "
                    f"trace (`{hit_cmd}`). `static`: the experts the cache planner (`cache_ilp.plan_cache`, "
                    "fetch misses, no prefetch) pins in the memory of C experts per layer, planned on the "
                    "whole trace.",
                    ("experts cached / layer", *curves),
                    tuple((c, *[curves[p][i] for p in curves]) for i, c in enumerate(sizes)),
                )
            )
            figs.append(
                self.figure(
                    f"{stem}_hitrate",
                    f"Hit rate vs cache size on {_short(o.trace)}",
                    "Expert-cache hit rate per policy as the per-layer cache grows. Belady (the offline "
                    "optimum) is the ceiling of every cache that starts empty (LRU, LFU); the static pin is "
                    "loaded before the first token, so it has no cold misses and can touch the ceiling.",
                    plots.lines(
                        sizes,
                        curves,
                        xlabel="experts cached per MoE layer",
                        ylabel="hit rate",
                        title="Hit rate vs cache size",
                        emphasise="belady",
                    ),
                )
            )
        mem_cells = {
            (m, x): self.cell(g.offload_cell(o, m, x, self.sweep.seed))
            for m in o.gpu_memory
            for x in o.miss_modes
        }
        if any(r is not None for r in mem_cells.values()):
            mems = sorted(o.gpu_memory, key=lambda m: parse_quantity(m, "bytes"))
            gib = [parse_quantity(m, "bytes") / GiB for m in mems]
            tps: dict[str, list[float | None]] = {}
            rows = []
            cmd = ""
            for miss in o.miss_modes:
                tps[miss] = []
                for m, x in zip(mems, gib, strict=True):
                    r = mem_cells[(m, miss)]
                    v = None if r is None else r["summary"]["tokens_per_s"]
                    hr = None if r is None else r["summary"].get("cache_hit_rate")
                    cmd = cmd or (r["command"] if r else "")
                    tps[miss].append(
                        self.rec(
                            sec,
                            f"{stem}_memory",
                            where,
                            miss,
                            "gpu_memory_gib",
                            x,
                            "tokens_per_s",
                            v,
                            "tokens/s",
                        )
                    )
                    rows.append(
                        (
                            miss,
                            m,
                            v,
                            self.rec(
                                sec,
                                f"{stem}_memory_table",
                                where,
                                miss,
                                "gpu_memory_gib",
                                x,
                                "cache_hit_rate",
                                hr,
                            ),
                        )
                    )
            tables.append(
                Table(
                    f"{stem}_memory_table",
                    f"Tokens/s vs GPU memory on {_short(o.hw)}",
                    f"Decode, batch {o.batch}, `{o.memory_policy}` cache sized by the budget; each row "
                    f"equals `moesim simulate` with that budget and miss mode (e.g. `{cmd}`).",
                    ("miss handling", "GPU memory", "tokens/s", "cache hit rate"),
                    tuple(rows),
                )
            )
            figs.append(
                self.figure(
                    f"{stem}_memory",
                    f"Tokens/s vs GPU memory budget on {_short(o.hw)}",
                    "Simulated decode throughput as the GPU memory budget grows, for each way of "
                    "serving a cache miss: fetch over PCIe, run on the CPU (Fiddler), fetch in "
                    "low precision (HOBBIT), run on PIM (Duplex). Gaps: mode unavailable.",
                    plots.lines(
                        gib,
                        tps,
                        xlabel="GPU memory budget (GiB)",
                        ylabel="tokens/s" + (" (log scale)" if _spread(tps) > 20 else ""),
                        title="Decode throughput vs GPU memory",
                        logy=_spread(tps) > 20,
                    ),
                )
            )
        paras.append(f"Hardware `{_short(o.hw)}`, model `{_short(o.model)}`, trace `{_short(o.trace)}`.")
        return Section(f"Offloading on {_short(o.hw)}", tuple(paras), tuple(tables), tuple(figs))

    # ---- timeline ------------------------------------------------------------------------------

    def timeline(self) -> Section | None:
        if not self.sweep.placement:
            return None
        s = self.sweep.placement[0]
        planner = g.timeline_planner(self.sweep, s)
        r = self.res.get(g.study_plan_cells(self.sweep, 0)[planner])
        r = None if r is None else r.get("timeline")
        if r is None or "error" in r:
            if r is not None:
                self.notes.append(f"timeline of `{planner}` on `{_short(s.hw)}`: {r['error']}")
            return None
        where = (s.hw, s.model, s.trace)
        stem = _slug("timeline", s.hw, planner)
        busy: dict[str, float] = {}
        for row, start, end, _cat in r["events"]:
            busy[row] = busy.get(row, 0.0) + (end - start)
        for row in r["rows"]:
            self.rec("timeline", stem, where, row, "step", r["step"], "busy_s", busy.get(row, 0.0), "s")
        fig = self.figure(
            stem,
            f"Timeline of one step ({planner} on {_short(s.hw)})",
            f"Per-device and per-link activity during step {r['step']} of the simulation "
            f"(`{r['command']}`, where EVAL.npz holds the evaluation tokens and PLAN.json the plan that "
            f"`moesim plan --planner {planner} --out PLAN.json` wrote), from the simulator's Perfetto "
            "timeline; colours are op kinds.",
            plots.timeline(
                r["rows"], [tuple(e) for e in r["events"]], title=f"Step {r['step']}: {planner} placement"
            ),
        )
        return Section("Timeline of one step", (), (), (fig,))

    # ---- calibration ---------------------------------------------------------------------------

    def calibration(self) -> Section:
        keys: list[tuple[str, str, int | None, str | None]] = []
        for st in (*self.sweep.placement, *self.sweep.offload):
            key = (st.hw, st.model, getattr(st, "nodes", None), getattr(st, "calibration", None))
            if key not in keys:
                keys.append(key)
        columns: dict[str, dict[str, str]] = {}
        paras = []
        for hw, model, nodes, folder in keys:
            r = self.cell(g.calibration_cell(hw, model, nodes, folder))
            if r is None:
                continue
            label = f"{_short(model)} on {_short(hw)}" + (f" x{nodes}" if nodes else "")
            label += f" ({_short(folder)})" if folder else ""
            columns[label] = r["sources"]
            used = f"calibration `{folder}` measured on {r.get('device')}" if folder else "no calibration"
            val = r.get("validation") or {}
            if val.get("median_abs_error") is not None:
                for metric in ("median_abs_error", "p90_abs_error"):
                    self.rec("calibration", "calibration", (hw, model, ""), folder or "", "", "", metric,
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


def build_document(sweep: Sweep, res: g.GridResult, *, command: str) -> Document:
    """The whole report for ``sweep`` from the finished cells in ``res``."""
    b = _Builder(sweep, res, command)
    sections: list[Section] = [b.setup()]
    sections += [b.placement(s) for s in sweep.placement]
    sections += [b.offload(o) for o in sweep.offload]
    tl = b.timeline()
    if tl is not None:
        sections.append(tl)
    sections.append(b.calibration())
    repro = (
        f"Regenerate this report with `{command}`. Finished cells are cached beside it, keyed by a hash "
        "of the input files' contents, the cell's parameters and moesim's code, so a rerun only computes "
        "what changed.",
    )
    sections.append(Section("Reproduce", repro))
    return Document(sweep.title, command, tuple(sections), tuple(b.records), tuple(dict.fromkeys(b.notes)))
