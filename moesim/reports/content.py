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


def _slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p is not None)
    return "".join(c if c.isalnum() else "-" for c in text.split("/")[-1].replace(".npz", "")).strip("-")


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
        seen: list[g.Cell] = []
        for s in (*self.sweep.placement, *self.sweep.offload):
            c = g.setup_cell(s.hw, s.model, s.trace, getattr(s, "nodes", None))
            if c not in seen:
                seen.append(c)
        tables: list[Table] = []
        paras: list[str] = []
        hw_done: set[str] = set()
        model_done: set[str] = set()
        for c in seen:
            r = self.cell(c)
            if r is None:
                continue
            where = (c.p["hw"], c.p["model"], c.p["trace"])
            hw = r["hardware"]
            if hw["name"] not in hw_done:
                hw_done.add(hw["name"])
                name = f"hw_{_slug(hw['name'])}"
                rows = []
                for d in hw["devices"]:
                    rows.append(
                        (
                            d["kind"],
                            d["model"],
                            d["count"],
                            self.rec(
                                "setup",
                                name,
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
                                name,
                                where,
                                d["model"],
                                "",
                                "",
                                "memory_bandwidth_gb_per_s",
                                d["memory_bandwidth_bytes_per_s"] / 1e9,
                                "GB/s",
                            ),
                            self.rec(
                                "setup",
                                name,
                                where,
                                d["model"],
                                "",
                                "",
                                "peak_tflops",
                                d["peak_flops_per_s"] / 1e12,
                                "TFLOP/s",
                            ),
                        )
                    )
                for link in hw["links"]:
                    rows.append(
                        (
                            "link",
                            link["kind"],
                            link["count"],
                            None,
                            self.rec(
                                "setup",
                                name,
                                where,
                                link["kind"],
                                "",
                                "",
                                "bandwidth_gb_per_s",
                                link["bandwidth_bytes_per_s"] / 1e9,
                                "GB/s",
                            ),
                            None,
                        )
                    )
                tables.append(
                    Table(
                        name,
                        f"Hardware {hw['name']}",
                        f"{hw['nodes']} node(s); devices and links of the profile "
                        f"(`moesim hw show {hw['name']}`). Peak is the {hw['peak_dtype']} peak.",
                        ("kind", "model", "count", "memory GiB", "bandwidth GB/s", "peak TFLOP/s"),
                        tuple(rows),
                    )
                )
            m = r["model"]
            if m["name"] not in model_done:
                model_done.add(m["name"])
                name = f"model_{_slug(m['name'])}"
                keys = (
                    "num_layers",
                    "num_moe_layers",
                    "num_experts",
                    "top_k",
                    "num_shared_experts",
                    "hidden_size",
                    "expert_intermediate_size",
                    "expert_mib",
                    "total_expert_gib",
                )
                rows = tuple((k, self.rec("setup", name, where, m["name"], "", "", k, m[k])) for k in keys)
                tables.append(
                    Table(
                        name,
                        f"Model {m['name']}",
                        f"`moesim model show {m['name']}`; "
                        f"weights {m['weight_dtype']}. Source: {m['source'] or 'n/a'}.",
                        ("field", "value"),
                        rows,
                    )
                )
            t = r["trace"]
            name = f"trace_{_slug(t['name'])}"
            rows = [
                (k, self.rec("setup", name, where, t["name"], "", "", k, v)) for k, v in t["stats"].items()
            ]
            tables.append(
                Table(
                    name,
                    f"Trace {t['name']}",
                    f"Routing statistics (`{t['command']}`); file sha256 {t['sha256'][:16]}.",
                    ("statistic", "value"),
                    tuple(rows),
                )
            )
            prov = "; ".join(f"{k}: {v}" for k, v in t["provenance"].items())
            paras.append(
                f"Trace `{t['name']}` ({t['num_tokens']} tokens x {t['num_layers']} MoE layers x "
                f"top-{t['top_k']} of {t['num_experts']} experts, model {t['model_name']}). "
                f"Provenance: {prov or 'not recorded in the file'}."
            )
        return Section("Setup", tuple(paras), tuple(tables))

    # ---- placement -----------------------------------------------------------------------------

    def placement(self, s: PlacementStudy) -> Section:
        where = (s.hw, s.model, s.trace)
        sec = f"placement {_short(s.hw)}"
        stem = _slug("placement", s.hw, s.model, s.trace)
        cells = g.study_plan_cells(self.sweep, self.sweep.placement.index(s))
        results = {p: self.cell(c) for p, c in cells.items()}
        done = {p: r for p, r in results.items() if r is not None}
        if not done:
            return Section(f"Placement on {_short(s.hw)}", ("No planner cell could be computed.",))
        base = done.get("contiguous")
        base_step = base["json"]["step_time_s_eval"] if base else None
        classes = sorted({k for r in done.values() for k in (r["json"].get("a2a_bytes") or {})})
        rows = []
        for p, r in done.items():
            j = r["json"]
            speed = base_step / j["step_time_s_eval"] if base_step and j["step_time_s_eval"] else None
            row = [p]
            for key, unit in (
                ("gpu_imbalance_train", ""),
                ("gpu_imbalance_eval", ""),
                ("step_time_s_eval", "s"),
                ("tokens_per_s_eval", "tokens/s"),
            ):
                row.append(self.rec(sec, f"{stem}_table", where, p, "", "", key, j[key], unit))
            row.append(self.rec(sec, f"{stem}_table", where, p, "", "", "speedup_vs_contiguous", speed, "x"))
            for cls in classes:
                v = (j.get("a2a_bytes") or {}).get(cls, 0)
                row.append(
                    self.rec(sec, f"{stem}_table", where, p, "link_class", cls, "all_to_all_bytes", v, "B")
                )
            row.append(self.rec(sec, f"{stem}_table", where, p, "", "", "solve_s", j.get("solve_s"), "s"))
            row.append(self.rec(sec, f"{stem}_table", where, p, "", "", "gap", j.get("gap"), ""))
            rows.append(tuple(row))
        cmd = done[next(iter(done))]["command"].replace(f"--planner {next(iter(done))}", "--planner all")
        table = Table(
            f"{stem}_table",
            f"Placement planners on {_short(s.hw)}",
            f"Planned on the first {s.train_fraction:g} of `{_short(s.trace)}`, simulated on the rest. "
            f"Imbalance is max-GPU / mean-GPU load per MoE layer, averaged over layers. Each row equals "
            f"`{cmd}` for that planner.",
            (
                "planner",
                "imbalance (train)",
                "imbalance (eval)",
                "step time s",
                "tokens/s",
                "speedup vs contiguous",
                *[f"all-to-all B {c}" for c in classes],
                "solve s",
                "gap",
            ),
            tuple(rows),
        )
        figs = []
        layers = next(iter(done.values()))["moe_layers"]
        series = {}
        for p, r in done.items():
            series[p] = r["imbalance_per_layer_eval"]
            for layer, v in zip(layers, r["imbalance_per_layer_eval"], strict=True):
                self.rec(sec, f"{stem}_imbalance", where, p, "moe_layer", layer, "gpu_imbalance_eval", v)
        figs.append(
            self.figure(
                f"{stem}_imbalance",
                f"Realised imbalance per layer on {_short(s.hw)}",
                "Max-GPU / mean-GPU token load of each MoE layer on the evaluation part of the "
                "trace (1.0 = perfect balance), one line per planner.",
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
        )
        names = list(done)
        steps = [done[p]["json"]["step_time_s_eval"] * 1e3 for p in names]
        for p, v in zip(names, steps, strict=True):
            self.rec(sec, f"{stem}_step", where, p, "", "", "step_time_ms_eval", v, "ms")
        figs.append(
            self.figure(
                f"{stem}_step",
                f"Simulated step time per planner on {_short(s.hw)}",
                "Mean simulated step time on the evaluation tokens (lower is better).",
                plots.bars(names, steps, ylabel="step time (ms)", title="Step time (eval)"),
            )
        )
        if base_step:
            speeds = [base_step / done[p]["json"]["step_time_s_eval"] for p in names]
            for p, v in zip(names, speeds, strict=True):
                self.rec(sec, f"{stem}_speedup", where, p, "", "", "speedup_vs_contiguous", v, "x")
            figs.append(
                self.figure(
                    f"{stem}_speedup",
                    f"Speedup over contiguous on {_short(s.hw)}",
                    "Contiguous step time / planner step time, evaluation tokens (higher is better).",
                    plots.bars(
                        names,
                        speeds,
                        ylabel="speedup (x)",
                        title="Speedup vs contiguous",
                        ref_y=1.0,
                        ref_label="contiguous",
                        fmt="{:.3f}",
                    ),
                )
            )
        if classes:
            stacks = {
                c: [float((done[p]["json"].get("a2a_bytes") or {}).get(c, 0)) / 1e9 for p in names]
                for c in classes
            }
            for c, vals in stacks.items():
                for p, v in zip(names, vals, strict=True):
                    self.rec(sec, f"{stem}_a2a", where, p, "link_class", c, "all_to_all_gb", v, "GB")
            figs.append(
                self.figure(
                    f"{stem}_a2a",
                    f"All-to-all bytes by link class on {_short(s.hw)}",
                    "Dispatch + combine bytes over the evaluation steps, split by the class of "
                    "link they cross.",
                    plots.stacked_bars(names, stacks, ylabel="GB", title="All-to-all traffic"),
                )
            )
        paras = (
            f"Hardware `{_short(s.hw)}`, model `{_short(s.model)}`, trace `{_short(s.trace)}`; "
            f"{s.slots_per_gpu or 'default'} expert slots per GPU; ILP time limit {s.time_limit_s:g} s.",
        )
        return Section(f"Placement on {_short(s.hw)}", paras, (table,), tuple(figs))

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
                    f"Per-layer expert cache of C experts, tokens in row order, batch 1 "
                    f"(`{hit_cmd}`); `static` pins the cache planner's experts.",
                    ("experts cached / layer", *curves),
                    tuple((c, *[curves[p][i] for p in curves]) for i, c in enumerate(sizes)),
                )
            )
            figs.append(
                self.figure(
                    f"{stem}_hitrate",
                    f"Hit rate vs cache size on {_short(o.trace)}",
                    "Expert-cache hit rate per policy as the per-layer cache grows; Belady "
                    "(offline optimum) is the ceiling no online policy can pass.",
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
        if o.gpu_memory:
            mems = sorted(o.gpu_memory, key=lambda m: parse_quantity(m, "bytes"))
            gib = [parse_quantity(m, "bytes") / GiB for m in mems]
            tps: dict[str, list[float | None]] = {}
            rows = []
            cmd = ""
            for miss in o.miss_modes:
                tps[miss] = []
                for m, x in zip(mems, gib, strict=True):
                    r = self.cell(g.offload_cell(o, m, miss, self.sweep.seed))
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
                        ylabel="tokens/s",
                        title="Decode throughput vs GPU memory",
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
        if r is None:
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
            f"(`{r['command']}`), from the simulator's timeline; colours are op kinds.",
            plots.timeline(
                r["rows"], [tuple(e) for e in r["events"]], title=f"Step {r['step']}: {planner} placement"
            ),
        )
        return Section("Timeline of one step", (), (), (fig,))

    # ---- calibration ---------------------------------------------------------------------------

    def calibration(self) -> Section:
        hws: list[tuple[str, str, int | None]] = []
        for s in (*self.sweep.placement, *self.sweep.offload):
            key = (s.hw, s.model, getattr(s, "nodes", None))
            if key not in hws:
                hws.append(key)
        tables, paras = [], []
        for hw, model, nodes in hws:
            r = self.cell(g.calibration_cell(hw, model, nodes))
            if r is None:
                continue
            where = (hw, model, "")
            name = f"calibration_{_slug(hw, model)}"
            rows = tuple((op, src) for op, src in sorted(r["sources"].items()))
            tables.append(
                Table(
                    name,
                    f"Cost-model sources on {_short(hw)}",
                    f"Where each op's time comes from: a measured calibration table or the roofline "
                    f"with named efficiency factors. Calibration: {r['calibration'] or 'none'}.",
                    ("op", "source"),
                    rows,
                )
            )
            val = r.get("validation_error")
            if val is not None:
                self.rec(
                    "calibration",
                    name,
                    where,
                    r["calibration"] or "",
                    "",
                    "",
                    "validation_mean_abs_error",
                    val,
                )
                paras.append(
                    f"`{_short(hw)}`: calibration {r['calibration']} predicts measured MoE layer times "
                    f"with a mean absolute relative error of {val:.1%}."
                )
            else:
                paras.append(
                    f"`{_short(hw)}`: no validation measurement is available for this profile, so the "
                    "prediction error is unknown."
                )
        return Section("Calibration used", tuple(paras), tuple(tables))


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
