"""How each report cell is computed: by running the ``moesim`` verbs themselves in-process
(``moesim plan ... --json``, ``moesim simulate ... --json``, ``moesim trace stats ... --json``),
through the same argument parser and ``run`` functions as the command line, and reading their JSON.
So the report's numbers are the commands' numbers, and each cell records the exact command.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.reports.cellcache import file_digest
from moesim.resources import resolve


def run_verb(argv: Sequence[str]) -> dict[str, Any]:
    """``moesim ARGV`` in this process; its ``--json`` output as a dict.

    A :class:`UserError` propagates; an argparse rejection becomes one.
    """
    from moesim.cli import build_parser

    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = parser.parse_args(list(argv))
    except SystemExit:
        lines = [ln for ln in err.getvalue().splitlines() if ln.strip()]
        raise UserError(f"moesim {shlex.join(argv)}: {lines[-1] if lines else 'rejected'}") from None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.func(args)
    if code:
        raise UserError(f"moesim {shlex.join(argv)} exited with {code}")
    return json.loads(out.getvalue())


def _opt(flag: str, value: Any) -> list[str]:
    return [] if value is None else [flag, str(value)]


def command(argv: Sequence[str]) -> str:
    return shlex.join(["moesim", *argv])


# ---- setup -------------------------------------------------------------------------------------


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


_STAT_KEYS = ("tokens", "layers", "top_k", "num_experts")


def _scalar_stats(stats: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, float]:
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
            out.update(_scalar_stats(v, f"{prefix}{k}.", depth + 1))
    return out


def _provenance(meta: dict[str, Any], limit: int = 10) -> dict[str, str]:
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


def cell_setup(p: dict[str, Any]) -> dict[str, Any]:
    from moesim.specs import load_cluster, load_model
    from moesim.traces import RoutingTrace

    cluster = load_cluster(p["hw"], nodes=p.get("nodes"))
    model = load_model(p["model"])
    path = resolve("trace", p["trace"])
    trace = RoutingTrace.load(p["trace"], model=model)
    argv = ["trace", "stats", p["trace"], "--json"]
    stats = run_verb(argv)
    return {
        "hardware": hardware_summary(cluster),
        "model": model_summary(model),
        "trace": {
            "name": Path(str(p["trace"])).name,
            "sha256": file_digest(path),
            "num_tokens": trace.num_tokens,
            "num_layers": trace.num_layers,
            "top_k": trace.top_k,
            "num_experts": trace.num_experts,
            "model_name": trace.model_name,
            "provenance": _provenance(dict(trace.meta or {})),
            "stats": _scalar_stats(stats),
            "command": command(argv),
        },
    }


# ---- placement ---------------------------------------------------------------------------------


def plan_argv(p: dict[str, Any], planner: str, *extra: str) -> list[str]:
    """The ``moesim plan`` command line of a placement cell."""
    return ["plan", "--hw", p["hw"], *_opt("--nodes", p.get("nodes")), "--model", p["model"],
            "--trace", p["trace"], "--planner", planner, *_opt("--slots-per-gpu", p.get("slots_per_gpu")),
            "--train-fraction", str(p["train_fraction"]), "--time-limit", str(p["time_limit_s"]),
            *_opt("--batch-size", p.get("batch_tokens")), *_opt("--steps", p.get("steps")),
            "--dispatch", p.get("dispatch", "even"), "--seed", str(p["seed"]), *extra, "--json"]


def cell_plan(p: dict[str, Any]) -> dict[str, Any]:
    """``moesim plan --planner P --json`` plus the per-layer imbalance of the plan it wrote."""
    from moesim.plans.plan import Plan

    with tempfile.TemporaryDirectory(prefix="moesim-report-") as tmp:
        plan_file = Path(tmp) / "plan.json"
        out = run_verb(plan_argv(p, p["planner"], "--out", str(plan_file)))
        plan = Plan.load(plan_file)
        timeline = None
        if p.get("timeline"):
            try:
                timeline = _plan_timeline(p, plan_file, Path(tmp))
            except UserError as e:  # the table's numbers stand without the picture
                timeline = {"error": str(e)}
    train, evaluation = _split_loads(p)
    return {
        "planner": p["planner"],
        "json": out["planners"][p["planner"]],
        "timeline": timeline,
        "info": {k: v for k, v in out.items() if k != "planners"},
        "moe_layers": list(plan.moe_layers),
        "imbalance_per_layer_train": plan.imbalance(train).tolist(),
        "imbalance_per_layer_eval": plan.imbalance(evaluation).tolist(),
        "plan": plan.to_dict(),
        "command": command(plan_argv(p, p["planner"])),
    }


def _plan_timeline(p: dict[str, Any], plan_file: Path, tmp: Path) -> dict[str, Any]:
    """``moesim simulate --plan PLAN --steps 1 --timeline F`` on the evaluation tokens, as boxes."""
    from moesim.specs import load_model
    from moesim.traces import RoutingTrace

    trace = RoutingTrace.load(p["trace"], model=load_model(p["model"]))
    evaluation = trace.split(p["train_fraction"])[1]
    eval_file = tmp / "eval.npz"
    evaluation.save(eval_file)
    import numpy as np

    # The same phase and batch as ``moesim plan`` simulates its plans with (prefill steps hold whole
    # prompts: about batch-size tokens).
    phase = "decode" if evaluation.phase is not None and (evaluation.phase == 1).mean() > 0.5 else "prefill"
    batch = int(p.get("batch_tokens") or 4096)
    if phase == "prefill":
        mean_prompt = evaluation.num_tokens / max(1, len(np.unique(np.asarray(evaluation.seq_id))))
        batch = max(1, round(batch / mean_prompt))
    tail = ["--batch", str(batch), "--phase", phase, "--steps", "1", "--seed", str(p["seed"])]
    head = ["simulate", "--hw", p["hw"], *_opt("--nodes", p.get("nodes")), "--model", p["model"]]
    tl_file = tmp / "timeline.json"
    summary = run_verb([*head, "--trace", str(eval_file), "--plan", str(plan_file), *tail,
                        "--timeline", str(tl_file), "--json"])
    rows, events = timeline_boxes(json.loads(tl_file.read_text()))
    shown = [*head, "--trace", "EVAL.npz", "--plan", "PLAN.json", *tail, "--timeline", "TIMELINE.json"]
    return {"step": 0, "rows": rows, "events": events, "summary": summary, "command": command(shown)}


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


def _split_loads(p: dict[str, Any]) -> tuple[Any, Any]:
    """``[L, E]`` loads of the training and evaluation tokens, as ``moesim plan`` splits them."""
    from moesim.cli.plan import _layer_matrix
    from moesim.specs import load_model
    from moesim.traces import RoutingTrace

    model = load_model(p["model"])
    trace = RoutingTrace.load(p["trace"], model=model)
    train, evaluation = trace.split(p["train_fraction"])
    return (
        _layer_matrix(train.load_matrix(windows=1), train, model)[0],
        _layer_matrix(evaluation.load_matrix(windows=1), evaluation, model)[0],
    )


# ---- offloading ---------------------------------------------------------------------------------


def cell_hitrate(p: dict[str, Any]) -> dict[str, Any]:
    """Whole-trace hit rates per policy and cache size, from ``moesim trace stats --cache-sizes``."""
    sizes = [int(c) for c in p["sizes"]]
    argv = ["trace", "stats", p["trace"], "--cache-sizes", ",".join(map(str, sizes)),
            "--policies", ",".join(p["policies"]), "--json"]
    out = run_verb(argv)
    rates = out["cache_hit_rate"]
    return {
        "rates": {pol: {str(c): rates[pol][str(c)] for c in sizes} for pol in p["policies"]},
        "command": command(argv),
    }


def static_budget_bytes(model: Any, size: int, num_gpus: int = 1) -> float:
    """GPU memory that holds ``size`` experts per MoE layer next to everything else the cache planner
    counts (non-expert weights and KV cache for batch 1, a staging buffer of top-k experts)."""
    from moesim.planners.cache_ilp import non_expert_bytes

    eb = model.expert_bytes()
    fixed = sum(non_expert_bytes(model, batch_size=1).values()) / num_gpus + model.top_k * eb
    return fixed + size * model.num_moe_layers * eb / num_gpus + 0.5 * eb


def _roomy(cluster: Any, budget: float) -> Any:
    """The cluster with every GPU's memory raised to at least ``budget`` (compute and links unchanged)."""
    import dataclasses

    def grown(d: Any) -> Any:
        spec = dataclasses.replace(d.spec, memory_bytes=max(d.spec.memory_bytes, budget))
        return dataclasses.replace(d, spec=spec) if d.kind == "gpu" else d

    devices = tuple(grown(d) for d in cluster.devices)
    return dataclasses.replace(cluster, devices=devices)


def static_hit_rate(trace: Any, model: Any, resident: Sequence[Sequence[int]]) -> float:
    """Hits / requests of a fixed resident set per MoE layer, tokens one at a time (the trace cache
    semantics: a token's distinct experts at a layer are its requests; -1 is skipped)."""
    import numpy as np

    cols = {int(x): i for i, x in enumerate(np.asarray(trace.layer_ids))}
    hits = requests = 0
    for li, layer in enumerate(model.moe_layers):
        if layer not in cols:
            continue
        ids = np.asarray(trace.expert_ids[:, cols[layer], :], dtype=np.int64)
        ids = np.sort(ids, axis=1)
        first = np.concatenate([np.ones((ids.shape[0], 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
        distinct = (ids >= 0) & first
        pinned = np.zeros(model.num_experts + 1, bool)
        pinned[list(resident[li])] = True
        hits += int((distinct & pinned[np.where(ids >= 0, ids, model.num_experts)]).sum())
        requests += int(distinct.sum())
    return hits / requests if requests else float("nan")


def cell_static(p: dict[str, Any]) -> dict[str, Any]:
    """The cache planner's pinned experts for the memory of C experts per layer, and their hit rate.

    The planner (``moesim.planners.cache_ilp.plan_cache``, as ``moesim plan --gpu-memory`` calls it)
    sees the whole trace, like Belady; the GPU's capacity is not enforced, as for the other curves.
    """
    from moesim.cost import CostModel
    from moesim.planners.cache_ilp import plan_cache
    from moesim.specs import load_cluster, load_model, with_weight_dtype
    from moesim.traces import RoutingTrace

    model = load_model(p["model"])
    if p.get("weight_dtype"):
        model = with_weight_dtype(model, p["weight_dtype"])
    cluster = load_cluster(p["hw"])
    gpus = max(1, len(cluster.gpus))
    budget = static_budget_bytes(model, int(p["size"]), gpus)
    roomy = _roomy(cluster, budget)
    trace = RoutingTrace.load(p["trace"], model=model)
    plan = plan_cache(model, roomy, trace, budget, CostModel(roomy, model), miss="fetch", prefetch="none",
                      time_limit_s=30)
    return {"size": int(p["size"]), "budget_bytes": budget, "resident": [list(r) for r in plan.resident],
            "hit_rate": static_hit_rate(trace, model, plan.resident),
            "expected_hit_rate": plan.params.get("expected_hit_rate"), "gap": plan.params.get("gap"),
            "command": f"moesim.planners.cache_ilp.plan_cache(gpu_memory_bytes={budget:.0f}, miss='fetch')"}


def offload_argv(p: dict[str, Any]) -> list[str]:
    """The ``moesim simulate`` command line of one (GPU memory, miss mode) offloading cell."""
    return ["simulate", "--hw", p["hw"], "--model", p["model"],
            *_opt("--weight-dtype", p.get("weight_dtype")), "--trace", p["trace"],
            "--batch", str(p["batch"]), *_opt("--steps", p.get("steps")), "--phase", "decode",
            "--cache", p["policy"], "--gpu-memory", str(p["gpu_memory"]).replace(" ", ""),
            "--miss", p["miss"],
            *_opt("--calibration", p.get("calibration")), "--seed", str(p["seed"]), "--json"]


def cell_offload(p: dict[str, Any]) -> dict[str, Any]:
    """``moesim simulate --cache POLICY --gpu-memory M --miss MODE --json``."""
    argv = offload_argv(p)
    summary = run_verb(argv)
    summary.pop("timing", None)  # this machine's time, not the simulated one's
    return {"summary": summary, "command": command(argv)}


# ---- calibration -------------------------------------------------------------------------------


def cell_calibration(p: dict[str, Any]) -> dict[str, Any]:
    """Which ops the cost model prices from measured tables and which from the roofline, and the
    calibration's validation error when the folder holds ``validation.json`` (the output of
    ``moesim calibrate --validate ... --json``)."""
    from moesim.cost import CostModel
    from moesim.specs import load_cluster, load_model

    cluster = load_cluster(p["hw"], nodes=p.get("nodes"))
    folder = p.get("calibration")
    cost = CostModel(cluster, load_model(p["model"]), folder)
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


COMPUTE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "setup": cell_setup,
    "plan": cell_plan,
    "hitrate": cell_hitrate,
    "calibration": cell_calibration,
    "static": cell_static,
    "offload": cell_offload,
}
