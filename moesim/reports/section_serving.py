"""The report's serving section: latency-throughput curves (TTFT and TPOT, p50 and p99, against the
Poisson arrival rate) for several expert placements and for colocated vs disaggregated serving."""

from __future__ import annotations

from typing import Any

from moesim.reports import grid as g
from moesim.reports import plots
from moesim.reports.builder import Builder, short, slug, spread
from moesim.reports.document import Figure, Section, Table
from moesim.reports.serving_study import DISAGGREGATED, ServingStudy


def _label(series: str) -> str:
    return "disaggregated (contiguous groups)" if series == DISAGGREGATED else f"colocated, {series}"


def serving_section(b: Builder, s: ServingStudy) -> Section:
    where = (s.hw, s.model, s.trace)
    sec, stem = f"serving {short(s.hw)}", slug("serving", s.hw, s.model, s.trace)
    cells = {(v, r): b.cell(g.serving_cell(s, v, r, b.sweep.seed)) for v in s.series for r in s.rates}
    rows, cmd = [], ""
    curves: dict[str, dict[str, list[Any]]] = {m: {} for m in ("ttft", "tpot")}
    for v in s.series:
        for m in curves:
            for q in ("p50", "p99"):
                curves[m][f"{v} {q}"] = []
        for r in s.rates:
            res = cells[(v, r)]
            summ = res["summary"] if res else None
            cmd = cmd or (res["command"] if res else "")

            def val(metric: str, q: str, summ: dict[str, Any] | None = summ) -> float | None:
                return None if summ is None or summ[metric][q] is None else summ[metric][q] * 1e3

            for m in curves:
                for q in ("p50", "p99"):
                    curves[m][f"{v} {q}"].append(b.rec(sec, f"{stem}_{m}", where, f"{v} {q}", "arrival_rate",
                                                       r, f"{m}_{q}", val(f"{m}_s", q), "ms"))
            tput = None if summ is None else summ["throughput"]["output_tokens_per_s_per_gpu"]
            good = None if summ is None else summ["goodput"]["fraction"]
            pre = None if summ is None else summ["preemptions"]
            rows.append((_label(v), r, b.rec(sec, f"{stem}_table", where, v, "arrival_rate", r,
                                             "output_tokens_per_s_per_gpu", tput, "tokens/s"),
                         val("ttft_s", "p50"), val("ttft_s", "p99"), val("tpot_s", "p50"),
                         val("tpot_s", "p99"),
                         b.rec(sec, f"{stem}_table", where, v, "arrival_rate", r, "goodput_fraction", good),
                         pre))
    slo = f" Goodput: share of requests meeting `{s.slo}`." if s.slo else ""
    table = Table(
        f"{stem}_table", f"Serving {short(s.model)} on {short(s.hw)}: latency and throughput vs arrival rate",
        f"{s.requests} requests of the `{s.workload}` workload per point, Poisson arrivals, chunked prefill "
        "(vLLM's defaults for the token budget and sequences per GPU), routed by the trace's evaluation "
        f"part; placements planned on its first {s.train_fraction:g} (e.g. `{cmd}`).{slo}",
        ("serving", "rate (req/s)", "output tokens/s per GPU", "TTFT p50 (ms)", "TTFT p99 (ms)",
         "TPOT p50 (ms)", "TPOT p99 (ms)", "goodput fraction", "preemptions"),
        tuple(rows))
    figs: list[Figure] = []
    logx = max(s.rates) / min(s.rates) > 8
    for m, name in (("ttft", "time to first token"), ("tpot", "time per output token")):
        groups = (("placements", [v for v in s.series if v != DISAGGREGATED]),
                  ("colocated vs disaggregated", [s.series[0], DISAGGREGATED] if s.disaggregated else []))
        for title, members in groups:
            if len(members) < 2:
                continue
            series = {f"{_label(v)} {q}": curves[m][f"{v} {q}"] for v in members for q in ("p50", "p99")}
            logy = spread(series) > 20
            figs.append(b.figure(
                f"{stem}_{m}_{slug(title)}", f"{name.capitalize()} vs arrival rate: {title}",
                f"{name.capitalize()} (p50 and p99) as Poisson arrivals grow, {title}; the curves bend up "
                "where a queue forms. Each point is one `moesim simulate --workload` run.",
                plots.lines(list(s.rates), series, xlabel="arrival rate (requests/s)"
                            + (", log scale" if logx else ""),
                            ylabel=f"{m.upper()} (ms)" + (" (log scale)" if logy else ""), title=name,
                            logx=logx, logy=logy),
            ))
    paras = (f"Hardware `{short(s.hw)}`, model `{short(s.model)}`, trace `{short(s.trace)}`, workload "
             f"`{s.workload}`. Colocated: every GPU prefills and decodes, its requests' attention on it, the "
             "experts where the placement puts them. Disaggregated: the first half of the GPUs prefill "
             "(and emit the first token), the KV cache then moves over NVLink/InfiniBand to the second "
             "half, which decodes; each half holds all experts. TTFT is then prefill-only work, TPOT "
             "decode-only steps on half the GPUs, with twice the experts each. With a fixed number of "
             "requests, the highest rates are bursts: every request arrives before the first ones finish.",)
    return Section(f"Serving on {short(s.hw)}", paras, (table,), tuple(figs))
