"""The report's re-placement section: realised imbalance and step time over a stream whose traffic
switches subject, for a static plan and re-balancing policies, with the migration they pay."""

from __future__ import annotations

from typing import Any

from moesim.reports import grid as g
from moesim.reports import plots
from moesim.reports.builder import Builder, short, slug
from moesim.reports.document import Figure, Section, Table
from moesim.reports.replan_study import STATIC, ReplanStudy


def _label(policy: str, migration: str) -> str:
    return STATIC if policy == STATIC else f"{policy}, {migration}"


def _stream_name(s: ReplanStudy) -> str:
    return " then ".join(short(t) for t in s.trace)


def replan_section(b: Builder, s: ReplanStudy) -> Section:
    stream = _stream_name(s)
    where = (s.hw, s.model, stream)
    sec, stem = f"replan {short(s.hw)}", slug("replan", s.hw, s.model, *s.trace)
    cells = {(p, m): b.cell(g.replan_cell(s, p, m, b.sweep.seed)) for p, m in s.series()}
    base = cells.get((STATIC, s.series()[0][1]))
    rows, imb, ms, marks = [], {}, {}, {}
    shape: dict[str, Any] = {}
    cmd = ""
    for (p, m), r in cells.items():
        name = _label(p, m)
        if r is None:
            rows.append((name, None, None, None, None, None, None, None))
            continue
        shape = shape or r
        if p != STATIC and not cmd:
            cmd = r["command"]

        def rec(metric: str, value: Any, unit: str = "", name: str = name) -> Any:
            return b.rec(sec, f"{stem}_table", where, name, "", "", metric, value, unit)

        speed = base["step_time_s"] / r["step_time_s"] if base else None
        rows.append((name, rec("imbalance", r["imbalance"]),
                     rec("step_time_ms", r["step_time_s"] * 1e3, "ms"),
                     rec("speedup_vs_static", speed), rec("rebalances", r["rebalances"]),
                     rec("migration_gb", r["migration_bytes"] / 1e9, "GB"),
                     rec("stall_ms", r["stall_s"] * 1e3, "ms"),
                     rec("in_flight_gb", r.get("in_flight_bytes", 0.0) / 1e9, "GB")))
        imb[name] = [b.rec(sec, f"{stem}_stream", where, name, "step", i, "imbalance", v)
                     for i, v in enumerate(r["imbalance_per_step"])]
        ms[name] = [b.rec(sec, f"{stem}_stream", where, name, "step", i, "step_time_ms", v * 1e3, "ms")
                    for i, v in enumerate(r["step_time_per_step_s"])]
        marks[name] = [x["effective_step"] for x in r["replans"] if x["effective_step"] is not None]
    window = s.window or s.interval
    what = (f"the first {s.train_fraction:g} of the tokens of `{stream}` plan the initial placement "
            f"({s.planner}); the rest is served in {shape.get('stream_steps', '?')} {shape.get('phase', '')} "
            f"steps of about {s.batch_tokens} tokens on {shape.get('gpus', '?')} GPUs"
            f" x {shape.get('slots_per_gpu', '?')} slots. `periodic` re-plans every {s.interval} steps on "
            f"the last {window}; `drift` checks as often and re-plans when the load's total variation from "
            f"the serving plan's reaches {s.threshold:g}")
    table = Table(
        f"{stem}_table", f"Re-placement on {stream}: {short(s.model)} on {short(s.hw)}",
        f"Realised imbalance (largest GPU's tokens / mean GPU's per step, mean over MoE layers and steps) "
        f"and mean step time with the migration paid: {what}. Blocking copies stop serving (stall); "
        "overlapped ones use the links' idle time and the new plan serves when they land; a copy still in "
        "flight when the stream ends never served: its bytes are `in flight GB`, not migration. Speedup: "
        f"static's mean step time / the row's. A row's numbers are its candidate in `{cmd}`.",
        ("setting", "imbalance", "step ms", "speedup vs static", "re-plans", "migration GB", "stall ms",
         "in flight GB"),
        tuple(rows))
    figs: list[Figure] = []
    if imb:
        steps = max(len(v) for v in imb.values())
        png = plots.stream(list(range(steps)), [("imbalance (max/mean)", imb), ("step time (ms)", ms)],
                           marks, xlabel="step of the stream", title=f"{stream}: balance and step time")
        figs.append(b.figure(
            f"{stem}_stream", f"Imbalance and step time over the stream ({stream})",
            "Per step of the stream: realised imbalance (top) and step time with blocking stalls (bottom); a "
            "triangle marks the first step a new plan served. Each line is one cell "
            f"(`moesim plan --replan`'s candidate, e.g. `{cmd}`).", png))
    paras = (f"Hardware `{short(s.hw)}`, model `{short(s.model)}`, stream `{stream}`"
             + (" (the traces played one after the other, so the traffic changes subject where they meet)"
                if len(s.trace) > 1 else "")
             + ". A static plan is only as good as the traffic it was planned on; the engines (SGLang, vLLM) "
             "re-run EPLB every N steps on their recorders' last window. Here every policy sees only the "
             "steps already served, and each re-plan copies the changed experts' weights over the cluster's "
             "links (docs/replan.md).",)
    verdict = _verdict(cells, base, shape.get("stream_steps"))
    return Section(f"Re-placement on {stream}", (*paras, *verdict), (table,), tuple(figs))


def _verdict(cells: dict[tuple[str, str], Any], base: Any, steps: int | None) -> tuple[str, ...]:
    """One paragraph naming every re-balancing row slower than static with what its stalls cost against
    what its balance saved (the served steps' time, stalls left out), so a loss is stated, not hidden."""
    if not base or not steps:
        return ()
    rows, stalled = [], False
    for (p, m), r in cells.items():
        if p == STATIC or r is None or r["step_time_s"] <= base["step_time_s"]:
            continue
        served = r["step_time_s"] - r["stall_s"] / steps
        saved_ms = (base["step_time_s"] - served) * steps * 1e3
        if r["stall_s"] == 0:
            rows.append(f"`{_label(p, m)}` (no stalls; its plans served slower steps: "
                        f"{-saved_ms:.1f} ms lost)")
            continue
        stalled = True
        won = (f"against {saved_ms:.1f} ms its steps saved" if saved_ms > 0
               else f"on top of steps that were no faster: {-saved_ms:.1f} ms lost")
        rows.append(f"`{_label(p, m)}` (stalls {r['stall_s'] * 1e3:.1f} ms {won})")
    if not rows:
        return ()
    moral = ("; blocking re-balancing pays only when a shift lasts long enough for the better balance to win "
             "the stalls back." if stalled else ".")
    return (f"Slower than `static` over the {steps} steps of this stream: " + ", ".join(rows) + moral,)
