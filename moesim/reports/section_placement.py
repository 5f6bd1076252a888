"""The report's placement sections (one per study: the planners' table and figures) and the one-step
timeline of the first study's drawn planner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moesim.planners import BASELINE_PLANNER
from moesim.reports import grid as g
from moesim.reports import plots
from moesim.reports.builder import Builder, short, slug
from moesim.reports.document import Figure, Section, Table
from moesim.reports.sweep import PlacementStudy

COLUMNS = (
    ("gpu_imbalance_train", "imbalance (train)", ""),
    ("gpu_imbalance_eval", "imbalance (eval)", ""),
    ("predicted_moe_step_s_eval", "predicted MoE s/step", "s"),
    ("step_time_s_eval", "simulated step s", "s"),
    ("tokens_per_s_eval", "tokens/s", "tokens/s"),
)


def placement_section(b: Builder, s: PlacementStudy) -> Section:
    where = (s.hw, s.model, s.trace)
    sec = f"placement {short(s.hw)}"
    stem = slug("placement", s.hw, f"{s.nodes}nodes" if s.nodes else None, s.model, s.trace)
    title = f"Placement on {short(s.hw)}" + (f" ({s.nodes} nodes)" if s.nodes else "")
    cells = g.study_plan_cells(b.sweep, b.sweep.placement.index(s))
    results = {p: b.cell(c) for p, c in cells.items()}
    done = {p: r for p, r in results.items() if r is not None}
    if not done:
        return Section(title, ("No planner cell could be computed.",))
    names = list(done)
    js = {p: done[p]["json"] for p in names}
    base_step = js[BASELINE_PLANNER].get("step_time_s_eval") if BASELINE_PLANNER in js else None

    def speedup(p: str) -> float | None:
        st = js[p].get("step_time_s_eval")
        return base_step / st if base_step and st else None

    classes = sorted({k for j in js.values() for k in (j.get("a2a_bytes") or {})})
    item = f"{stem}_table"
    rows = []
    for p in names:
        j = js[p]
        row: list[Any] = [p]
        row += [b.rec(sec, item, where, p, "", "", key, j.get(key), unit) for key, _, unit in COLUMNS]
        row.append(b.rec(sec, item, where, p, "", "", "speedup_vs_baseline", speedup(p), "x"))
        row += [b.rec(sec, item, where, p, "link_class", c, "all_to_all_bytes",
                      (j.get("a2a_bytes") or {}).get(c, 0.0), "B") for c in classes]
        row.append(b.rec(sec, item, where, p, "", "", "solve_s", j.get("solve_s"), "s"))
        row.append(b.rec(sec, item, where, p, "", "", "gap", j.get("gap")))
        rows.append(tuple(row))
    first = names[0]
    cmd = done[first]["command"].replace(f"--planner {first}", "--planner all")
    table = Table(
        item, f"Placement planners on {short(s.hw)}",
        f"Planned on the first {s.train_fraction:g} of `{short(s.trace)}` (row order), evaluated "
        "on the rest. Imbalance: max-GPU / mean-GPU load per MoE layer (replicas split evenly), "
        "averaged over layers. Predicted: the ILP's cost model; simulated: `moesim simulate` of "
        f"the evaluation tokens. Each row equals that planner's entry of `{cmd}`.",
        ("planner", *[c[1] for c in COLUMNS], f"speedup vs {BASELINE_PLANNER}",
         *[f"all-to-all bytes {c}" for c in classes], "solve s", "gap"),
        tuple(rows),
    )
    figs = _placement_figures(b, s, done, speedup, classes, stem, sec)
    info = done[first].get("info", {})
    paras = [
        f"Hardware `{short(s.hw)}` ({info.get('gpus', '?')} GPUs x {info.get('slots_per_gpu', '?')} "
        f"expert slots), model `{short(s.model)}`, trace `{short(s.trace)}`: planned on "
        f"{info.get('train_tokens', '?')} tokens, evaluated on {info.get('eval_tokens', '?')}; "
        f"ILP time limit {s.time_limit_s:g} s."
    ]
    paras += placement_verdict(js, speedup)
    return Section(title, tuple(paras), (table,), tuple(figs))


def _placement_figures(b: Builder, s: PlacementStudy, done: dict[str, dict[str, Any]],
                       speedup: Callable[[str], float | None], classes: list[str], stem: str,
                       sec: str) -> list[Figure]:
    where = (s.hw, s.model, s.trace)
    names = list(done)
    js = {p: done[p]["json"] for p in names}
    layers = done[names[0]]["moe_layers"]
    series = {}
    for p in names:
        series[p] = done[p]["imbalance_per_layer_eval"]
        for layer, v in zip(layers, series[p], strict=True):
            b.rec(sec, f"{stem}_imbalance", where, p, "moe_layer", layer, "gpu_imbalance_eval", v)
    figs = [b.figure(
        f"{stem}_imbalance", f"Realised imbalance per layer on {short(s.hw)}",
        "Max-GPU / mean-GPU token load of each MoE layer on the evaluation tokens (1.0 = "
        "perfect balance), one line per planner; the layer mean is the table's imbalance.",
        plots.lines(layers, series, xlabel="MoE layer", ylabel="max / mean GPU load",
                    title=f"Realised imbalance per layer ({short(s.trace)})", ref_y=1.0,
                    ref_label="perfect balance"),
    )]
    steps = {p: js[p].get("step_time_s_eval") for p in names}
    if any(v is not None for v in steps.values()):
        ms = [None if steps[p] is None else steps[p] * 1e3 for p in names]
        for p, v in zip(names, ms, strict=True):
            b.rec(sec, f"{stem}_step", where, p, "", "", "step_time_ms_eval", v, "ms")
        figs.append(b.figure(
            f"{stem}_step", f"Simulated step time per planner on {short(s.hw)}",
            "Mean simulated step time on the evaluation tokens (lower is better).",
            plots.bars(names, ms, ylabel="step time (ms)", title="Step time (evaluation)"),
        ))
    if BASELINE_PLANNER in js and js[BASELINE_PLANNER].get("step_time_s_eval"):
        sp = [speedup(p) for p in names]
        for p, v in zip(names, sp, strict=True):
            b.rec(sec, f"{stem}_speedup", where, p, "", "", "speedup_vs_baseline", v, "x")
        figs.append(b.figure(
            f"{stem}_speedup", f"Speedup over {BASELINE_PLANNER} on {short(s.hw)}",
            f"{BASELINE_PLANNER} step time (the engines' initial layout) / planner step time on the "
            "evaluation tokens (higher is better).",
            plots.bars(names, sp, ylabel="speedup (x)", title=f"Speedup vs {BASELINE_PLANNER}", ref_y=1.0,
                       ref_label=BASELINE_PLANNER, fmt="{:.3f}"),
        ))
    if classes and any((j.get("a2a_bytes") or {}).get(c) for j in js.values() for c in classes):
        stacks = {c: [float((js[p].get("a2a_bytes") or {}).get(c, 0.0)) / 1e9 for p in names]
                  for c in classes}
        for c, vals in stacks.items():
            for p, v in zip(names, vals, strict=True):
                b.rec(sec, f"{stem}_a2a", where, p, "link_class", c, "all_to_all_gb", v, "GB")
        figs.append(b.figure(
            f"{stem}_a2a", f"All-to-all bytes by link class on {short(s.hw)}",
            "Dispatch + combine bytes of the evaluation steps by the class of link they "
            "cross (NVLink inside a node, InfiniBand across nodes, PCIe).",
            plots.stacked_bars(names, stacks, ylabel="GB", title="All-to-all traffic"),
        ))
    return figs


def placement_verdict(js: dict[str, dict[str, Any]], speedup: Callable[[str], float | None]) -> list[str]:
    """Which planner wins and why, in words, from the numbers of the table."""
    timed = {p: j["step_time_s_eval"] for p, j in js.items() if j.get("step_time_s_eval")}
    out = []
    if timed:
        best = min(timed, key=lambda p: timed[p])
        sp = speedup(best)
        out.append(f"Fastest simulated step: `{best}` ({timed[best] * 1e3:.3f} ms"
                   + (f", {sp:.3f}x {BASELINE_PLANNER}" if sp else "") + ").")
    if "ilp" in js and "eplb" in js:
        a, c = js["ilp"], js["eplb"]
        why = [f"evaluation imbalance {a['gpu_imbalance_eval']:.4f} vs {c['gpu_imbalance_eval']:.4f}"]
        ia, ic = (a.get("a2a_bytes") or {}).get("ib", 0.0), (c.get("a2a_bytes") or {}).get("ib", 0.0)
        if ia or ic:
            why.append(f"cross-node (InfiniBand) all-to-all {ia / 1e9:.3f} GB vs {ic / 1e9:.3f} GB")
        if a.get("step_time_s_eval") and c.get("step_time_s_eval"):
            d = 1.0 - a["step_time_s_eval"] / c["step_time_s_eval"]
            word = "shorter" if d >= 0 else "longer"
            verdict = f"`ilp`'s simulated step is {abs(d):.2%} {word} than `eplb`'s"
        else:
            verdict = "`ilp` vs `eplb`"
        out.append(f"{verdict}: " + "; ".join(why) + ".")
    return out


def timeline_section(b: Builder) -> Section | None:
    if not b.sweep.placement:
        return None
    s = b.sweep.placement[0]
    planner = g.timeline_planner(b.sweep, s)
    r = b.res.get(g.study_plan_cells(b.sweep, 0)[planner])
    r = None if r is None else r.get("timeline")
    if r is None or "error" in r:
        if r is not None:
            b.notes.append(f"timeline of `{planner}` on `{short(s.hw)}`: {r['error']}")
        return None
    where = (s.hw, s.model, s.trace)
    stem = slug("timeline", s.hw, planner)
    busy: dict[str, float] = {}
    for row, start, end, _cat in r["events"]:
        busy[row] = busy.get(row, 0.0) + (end - start)
    for row in r["rows"]:
        b.rec("timeline", stem, where, row, "step", r["step"], "busy_s", busy.get(row, 0.0), "s")
    fig = b.figure(
        stem, f"Timeline of one step ({planner} on {short(s.hw)})",
        f"Per-device and per-link activity during step {r['step']} of the simulation "
        f"(`{r['command']}`, where EVAL.npz holds the evaluation tokens and PLAN.json the plan that "
        f"`moesim plan --planner {planner} --out PLAN.json` wrote), from the simulator's Perfetto "
        "timeline; colours are op kinds.",
        plots.timeline(r["rows"], [tuple(e) for e in r["events"]],
                       title=f"Step {r['step']}: {planner} placement"),
    )
    return Section("Timeline of one step", (), (), (fig,))
