"""How each report cell is computed: one call of a workflow (:mod:`moesim.workflows`), the same
function ``moesim plan`` / ``moesim simulate`` / ``moesim trace stats`` call, turned into the plain
JSON the cell cache stores. So the report's numbers are the commands' numbers, and each cell records
the equivalent command line for the reader.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.jsonable import to_jsonable
from moesim.reports.summaries import hardware_summary, model_summary, provenance, scalar_stats, timeline_boxes
from moesim.resources import resolve
from moesim.sweeps.cells import file_digest
from moesim.sweeps.schema import CellKind
from moesim.workflows import (
    PlacementRequest,
    compare_planners,
    simulate_plan,
    simulate_run,
    static_cache_pin,
    trace_statistics,
)
from moesim.workflows.inputs import cluster_of, cost_model, model_of, trace_of
from moesim.workflows.simulation import replay_setting, timeline_events


def _opt(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def command(argv: Sequence[str]) -> str:
    return shlex.join(["moesim", *argv])


# ---- setup -------------------------------------------------------------------------------------


def cell_setup(p: dict[str, Any]) -> dict[str, Any]:
    cluster = cluster_of(p["hw"], nodes=p.get("nodes"))
    model = model_of(p["model"])
    trace = trace_of(p["trace"], model)
    stats = to_jsonable(trace_statistics(p["trace"]))
    return {
        "hardware": hardware_summary(cluster),
        "model": model_summary(model),
        "trace": {
            "name": Path(str(p["trace"])).name,
            "sha256": file_digest(resolve("trace", p["trace"])),
            "num_tokens": trace.num_tokens,
            "num_layers": trace.num_layers,
            "top_k": trace.top_k,
            "num_experts": trace.num_experts,
            "model_name": trace.model_name,
            "provenance": provenance(dict(trace.meta or {})),
            "stats": scalar_stats(stats),
            "command": command(["trace", "stats", p["trace"], "--json"]),
        },
    }


# ---- placement ---------------------------------------------------------------------------------


def plan_argv(p: dict[str, Any], planner: str) -> list[str]:
    """The ``moesim plan`` command line of a placement cell (shown to the reader)."""
    return ["plan", "--hw", p["hw"], *_opt("--nodes", p.get("nodes")), "--model", p["model"],
            "--trace", p["trace"], "--planner", planner, *_opt("--slots-per-gpu", p.get("slots_per_gpu")),
            "--train-fraction", str(p["train_fraction"]), "--time-limit", str(p["time_limit_s"]),
            *_opt("--batch-size", p.get("batch_tokens")), *_opt("--steps", p.get("steps")),
            "--dispatch", p.get("dispatch", "even"), "--seed", str(p["seed"]), "--json"]


def placement_request(p: dict[str, Any], planner: str) -> PlacementRequest:
    """The :class:`PlacementRequest` of a placement cell (what :func:`plan_argv` runs)."""
    return PlacementRequest(
        hw=p["hw"], nodes=p.get("nodes"), model=p["model"], trace=p["trace"], planners=(planner,),
        slots_per_gpu=p.get("slots_per_gpu"), train_fraction=p["train_fraction"],
        time_limit_s=p["time_limit_s"], batch_tokens=p.get("batch_tokens") or PlacementRequest.batch_tokens,
        steps=p.get("steps"), dispatch=p.get("dispatch", "even"), seed=p["seed"],
    )


def cell_plan(p: dict[str, Any]) -> dict[str, Any]:
    """One planner of ``moesim plan``, its per-layer imbalance and (optionally) one step's timeline."""
    planner = p["planner"]
    comparison = compare_planners(placement_request(p, planner))
    row, plan = comparison.rows[planner], comparison.plans[planner]
    timeline = None
    if p.get("timeline"):
        try:
            timeline = _plan_timeline(p, comparison)
        except UserError as e:  # the table's numbers stand without the picture
            timeline = {"error": str(e)}
    return {
        "planner": planner,
        "json": {**row.as_dict(), "solve_s": row.solve_s},
        "timeline": timeline,
        "info": comparison.info(),
        "moe_layers": list(comparison.moe_layers),
        "imbalance_per_layer_train": list(row.imbalance_per_layer_train),
        "imbalance_per_layer_eval": list(row.imbalance_per_layer_eval),
        "plan": plan.to_dict(),
        "command": command(plan_argv(p, planner)),
    }


def _plan_timeline(p: dict[str, Any], comparison: Any) -> dict[str, Any]:
    """One simulated step of the plan on the evaluation tokens (as ``moesim plan`` simulates it), as
    boxes of its Perfetto timeline."""
    i = comparison.inputs
    plan = comparison.plans[p["planner"]]
    batch_tokens = i.request.batch_tokens
    result = simulate_plan(i.cluster, i.model, i.evaluation, plan, i.cost, batch_tokens=batch_tokens, steps=1,
                           seed=p["seed"], dispatch=i.request.dispatch)
    rows, events = timeline_boxes({"traceEvents": timeline_events(result)})
    phase, batch = replay_setting(i.evaluation, batch_tokens)
    shown = ["simulate", "--hw", p["hw"], *_opt("--nodes", p.get("nodes")), "--model", p["model"],
             "--trace", "EVAL.npz", "--plan", "PLAN.json", "--batch", str(batch), "--phase", phase,
             "--steps", "1", "--seed", str(p["seed"]), "--timeline", "TIMELINE.json"]
    summary = {k: v for k, v in result.summary().items() if k not in ("wall_seconds", "timing")}
    return {"step": 0, "rows": rows, "events": events, "summary": summary, "command": command(shown)}


# ---- offloading ---------------------------------------------------------------------------------


def cell_hitrate(p: dict[str, Any]) -> dict[str, Any]:
    """Whole-trace hit rates per policy and cache size (``moesim trace stats --cache-sizes``)."""
    sizes = [int(c) for c in p["sizes"]]
    rates = trace_statistics(p["trace"], cache_sizes=sizes, policies=p["policies"])["cache_hit_rate"]
    argv = ["trace", "stats", p["trace"], "--cache-sizes", ",".join(map(str, sizes)),
            "--policies", ",".join(p["policies"]), "--json"]
    return {
        "rates": {pol: {str(c): rates[pol][str(c)] for c in sizes} for pol in p["policies"]},
        "command": command(argv),
    }


def cell_static(p: dict[str, Any]) -> dict[str, Any]:
    """The cache planner's pinned experts for the memory of C experts per layer, and their hit rate."""
    pin = static_cache_pin(hw=p["hw"], model=p["model"], trace=p["trace"], size=int(p["size"]),
                           weight_dtype=p.get("weight_dtype"))
    return {"size": pin.size, "budget_bytes": pin.budget_bytes, "resident": [list(r) for r in pin.resident],
            "hit_rate": pin.hit_rate, "expected_hit_rate": pin.expected_hit_rate, "gap": pin.gap,
            "command": f"moesim.planners.cache_ilp.plan_cache(gpu_memory_bytes={pin.budget_bytes:.0f}, "
                       "miss='fetch')"}


def offload_argv(p: dict[str, Any]) -> list[str]:
    """The ``moesim simulate`` command line of one (expert cache, miss mode) offloading cell."""
    return ["simulate", "--hw", p["hw"], "--model", p["model"],
            *_opt("--weight-dtype", p.get("weight_dtype")), "--trace", p["trace"],
            "--batch", str(p["batch"]), *_opt("--steps", p.get("steps")), "--phase", "decode",
            "--cache", p["policy"], "--expert-cache", str(p["expert_cache"]).replace(" ", ""),
            "--miss", p["miss"],
            *_opt("--calibration", p.get("calibration")), "--seed", str(p["seed"]), "--json"]


def cell_offload(p: dict[str, Any]) -> dict[str, Any]:
    """``moesim simulate --cache POLICY --expert-cache M --miss MODE``: its summary, this machine's wall
    time left out."""
    run = simulate_run(hw=p["hw"], model=p["model"], weight_dtype=p.get("weight_dtype"), trace=p["trace"],
                       batch=int(p["batch"]), steps=p.get("steps"), phase="decode", cache=p["policy"],
                       expert_cache=str(p["expert_cache"]), miss=p["miss"], calibration=p.get("calibration"),
                       seed=int(p["seed"]))
    summary = {k: v for k, v in run.summary().items() if k not in ("wall_seconds", "timing")}
    return {"summary": summary, "command": command(offload_argv(p))}


# ---- serving -------------------------------------------------------------------------------------

SERVE_KEYS = ("duration_s", "requests", "throughput", "ttft_s", "tpot_s", "itl_s", "e2e_s", "goodput",
              "kv_cache", "batch", "preemptions", "kv_transfer", "routing", "instances")


def cell_serve(p: dict[str, Any]) -> dict[str, Any]:
    """One point of a serving curve: ``moesim simulate --workload`` at one Poisson rate, on the trace's
    evaluation part (placement planners plan on the rest), colocated with the series' placement or
    disaggregated."""
    from moesim.workflows.serving import serve_run

    cluster = cluster_of(p["hw"], nodes=p.get("nodes"))
    model = model_of(p["model"])
    trace = trace_of(p["trace"], model)
    evaluation = trace.split(p["train_fraction"])[1]
    plan, scheduler, shown = None, "chunked", ["--plan", "PLAN.json"]
    if p["series"] == "disaggregated":
        scheduler, shown = "disaggregated", ["--scheduler", "disaggregated"]
    else:
        req = PlacementRequest(hw=cluster, model=model, trace=trace, planners=(p["series"],),
                               slots_per_gpu=p.get("slots_per_gpu"), train_fraction=p["train_fraction"],
                               seed=p["seed"])
        plan = compare_planners(req).plans[p["series"]]
    run = serve_run(hw=cluster, model=model, trace=evaluation, workload=p["workload"], plan=plan,
                    scheduler=scheduler, arrival_rate=p["rate"], requests=p["requests"], seed=p["seed"],
                    slo=p.get("slo"))
    summary = run.summary()
    argv = ["simulate", "--hw", p["hw"], *_opt("--nodes", p.get("nodes")), "--model", p["model"],
            "--trace", "EVAL.npz", "--workload", p["workload"], "--arrival-rate", f"{p['rate']:g}",
            "--requests", str(p["requests"]), *shown, *_opt("--slo", p.get("slo")),
            "--seed", str(p["seed"]), "--json"]
    return {"summary": {k: summary[k] for k in SERVE_KEYS}, "command": command(argv)}


# ---- re-placement -------------------------------------------------------------------------------


def cell_replan(p: dict[str, Any]) -> dict[str, Any]:
    """One re-placement setting replayed over a stream (``moesim plan --replan POLICY``'s candidate): its
    figures, re-plans and per-step series."""
    from moesim.workflows.replan_stream import StreamSetting, replay_stream, stream_argv

    names = {"interval": "interval_steps", "window": "window_steps", "trace": "traces"}
    setting = StreamSetting(**{names.get(k, k): v for k, v in p.items() if v is not None})
    return {**replay_stream(setting), "command": " && ".join(command(a) for a in stream_argv(setting))}


# ---- calibration -------------------------------------------------------------------------------


def cell_calibration(p: dict[str, Any]) -> dict[str, Any]:
    """Which ops the cost model prices from measured tables and which from the roofline, and the
    calibration's validation error when the folder holds ``validation.json`` (the output of
    ``moesim calibrate --validate ... --json``)."""
    cluster = cluster_of(p["hw"], nodes=p.get("nodes"))
    folder = p.get("calibration")
    cost = cost_model(cluster, model_of(p["model"]), folder)
    validation = None
    if folder is not None and (Path(folder) / "validation.json").is_file():
        path = Path(folder) / "validation.json"
        try:
            summary = json.loads(path.read_text(encoding="utf-8")).get("summary") or {}
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
            raise UserError("expected the JSON object of 'moesim calibrate --validate --json'",
                            file=path) from None
        validation = {k: summary.get(k) for k in ("median_abs_error", "p90_abs_error", "cases")}
    return {"sources": dict(cost.sources()), "calibration": folder,
            "device": getattr(cost.calibration, "device", None), "validation": validation}


_FILES = {"hw": "hardware", "model": "model", "trace": "trace", "calibration": "path"}
"""The parameters of report cells that name files (their contents enter the cell hash)."""


def _kind(name: str, run: Callable[[dict[str, Any]], dict[str, Any]]) -> CellKind:
    return CellKind(name=name, run=run, doc=(run.__doc__ or name).strip().splitlines()[0], files=_FILES)


REPORT_KINDS: dict[str, CellKind] = {k.name: k for k in (
    _kind("setup", cell_setup),
    _kind("plan", cell_plan),
    _kind("hitrate", cell_hitrate),
    _kind("calibration", cell_calibration),
    _kind("static", cell_static),
    _kind("offload", cell_offload),
    _kind("serve", cell_serve),
    _kind("replan", cell_replan),
)}
"""The report's cell kinds: free-form parameters, whole JSON results (kept in the row's ``result``)."""
