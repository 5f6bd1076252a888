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


def _provenance(meta: dict[str, Any]) -> dict[str, str]:
    """Short provenance fields of a trace's metadata (source, generator, fit, licence ...)."""
    keys = (
        "source",
        "source_repo",
        "source_commit",
        "generator",
        "synthetic",
        "fitted_to",
        "fit_source",
        "dataset",
        "prompts",
        "license",
        "seed",
        "model",
    )
    out = {}
    for k in keys:
        v = meta.get(k)
        if isinstance(v, (str, int, float, bool)) and str(v):
            out[k] = str(v)[:200]
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
            "--seed", str(p["seed"]), *extra, "--json"]


def cell_plan(p: dict[str, Any]) -> dict[str, Any]:
    """``moesim plan --planner P --json`` plus the per-layer imbalance of the plan it wrote."""
    from moesim.plans.plan import Plan

    with tempfile.TemporaryDirectory(prefix="moesim-report-") as tmp:
        plan_file = Path(tmp) / "plan.json"
        out = run_verb(plan_argv(p, p["planner"], "--out", str(plan_file)))
        plan = Plan.load(plan_file)
    train, evaluation = _split_loads(p)
    return {
        "planner": p["planner"],
        "json": out["planners"][p["planner"]],
        "info": {k: v for k, v in out.items() if k != "planners"},
        "moe_layers": list(plan.moe_layers),
        "imbalance_per_layer_train": plan.imbalance(train).tolist(),
        "imbalance_per_layer_eval": plan.imbalance(evaluation).tolist(),
        "plan": plan.to_dict(),
        "command": command(plan_argv(p, p["planner"])),
    }


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
    argv = ["trace", "stats", p["trace"], "--cache-sizes", ",".join(map(str, sizes)), "--json"]
    out = run_verb(argv)
    rates = out["cache_hit_rate"]
    return {
        "rates": {pol: {str(c): rates[pol][str(c)] for c in sizes} for pol in p["policies"]},
        "command": command(argv),
    }


# ---- calibration -------------------------------------------------------------------------------


def cell_calibration(p: dict[str, Any]) -> dict[str, Any]:
    """Which ops the cost model prices from measured tables and which from the roofline."""
    from moesim.cost import CostModel
    from moesim.specs import load_cluster, load_model

    cluster = load_cluster(p["hw"], nodes=p.get("nodes"))
    cost = CostModel(cluster, load_model(p["model"]))
    return {"sources": dict(cost.sources()), "calibration": None, "validation_error": None}


COMPUTE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "setup": cell_setup,
    "plan": cell_plan,
    "hitrate": cell_hitrate,
    "calibration": cell_calibration,
}
