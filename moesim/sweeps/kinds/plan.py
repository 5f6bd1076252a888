"""``plan`` cells: one planner of :func:`moesim.workflows.compare_planners` each (``moesim plan --planner
P``'s flags as parameters; the planner's row of ``--json`` as metrics)."""

from __future__ import annotations

from typing import Any

from moesim.specs.model import DTYPE_BYTES
from moesim.sweeps.schema import CellKind, Metric, Param
from moesim.vocab import Dispatch, choices


def load_routing(value: str) -> Any:
    """A routing trace or a load-counts file (planners take either), loaded once by the driver."""
    from moesim.traces.routing_data import load_routing_data

    return load_routing_data(value)


def _choices() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """The planners and the cache planner's policies, miss modes and prefetches, as moesim plan takes them."""
    from moesim.planners import PLANNERS
    from moesim.planners.cache_ilp import MISS_CHOICES, POLICY_CHOICES, PREFETCH_CHOICES

    return tuple(PLANNERS), tuple(POLICY_CHOICES), tuple(MISS_CHOICES), tuple(PREFETCH_CHOICES)


_PLANNERS, _POLICIES, _MISSES, _PREFETCHES = _choices()


PARAMS = (
    Param("hw", "str", "hardware profile (built-in name or YAML path)", "--hw", file="hardware",
          required=True),
    Param("nodes", "int", "override the profile's node count", "--nodes", minimum=1),
    Param("model", "str", "model spec (default: the trace's model)", "--model", file="model"),
    Param("trace", "str", "routing trace or load-counts .npz (default: the shipped DeepSeek-V2-Lite trace)",
          "--trace", file="trace", load=load_routing),
    Param("planner", "str", "the placement planner", "--planner", choices=_PLANNERS, required=True),
    Param("slots_per_gpu", "int", "expert slots per GPU", "--slots-per-gpu", minimum=1),
    Param("replicas", "int", "physical expert slots per layer in all", "--replicas", minimum=1),
    Param("weight_dtype", "str", "serve the routed experts in this dtype", "--weight-dtype",
          choices=tuple(DTYPE_BYTES)),
    Param("train_fraction", "float", "fraction of the tokens planned on; the rest evaluates",
          "--train-fraction", minimum=1e-9, maximum=1.0),
    Param("windows", "int", "ilp: consecutive windows of the training tokens planned against", "--windows",
          minimum=1),
    Param("objective", "str", "ilp: worst or mean window", "--objective", choices=("worst", "mean")),
    Param("origin", "str", "ilp: where a layer's tokens start", "--origin",
          choices=("even", "previous-layer")),
    Param("dispatch", "str", "replica choice in the simulations and the ilp", "--dispatch",
          choices=choices(Dispatch)),
    Param("time_limit_s", "float", "ilp solver time limit", "--time-limit", minimum=1e-9),
    Param("batch_tokens", "int", "tokens per simulated step", "--batch-size", minimum=1),
    Param("steps", "int", "simulated steps on the evaluation tokens", "--steps", minimum=1),
    Param("seed", "int", "random seed (solver and simulator)", "--seed", minimum=0),
    Param("gpu_memory", "bytes", "whole GPU memory budget: adds the cache/offload plan", "--gpu-memory"),
    Param("cache_policy", "str", "with gpu_memory: the cache plan's policy", "--cache-policy",
          choices=_POLICIES),
    Param("miss", "str", "with gpu_memory: what a miss does", "--miss", choices=_MISSES),
    Param("prefetch", "str", "with gpu_memory: the prefetch assumed", "--prefetch", choices=_PREFETCHES),
)

METRICS = (
    Metric("gpu_imbalance_train", "float", "", "max/mean GPU load per layer on the training tokens, mean"),
    Metric("gpu_imbalance_eval", "float", "", "the same on the evaluation tokens"),
    Metric("predicted_moe_step_s_eval", "float", "s", "the ILP cost model's MoE step on the evaluation load"),
    Metric("step_time_s_eval", "float", "s", "simulated mean step time on the evaluation tokens"),
    Metric("tokens_per_s_eval", "float", "tokens/s", "simulated tokens/s on the evaluation tokens"),
    Metric("a2a_bytes.nvlink", "float", "B", "simulated bytes over NVLink links"),
    Metric("a2a_bytes.ib", "float", "B", "simulated bytes over scale-out links"),
    Metric("a2a_bytes.pcie", "float", "B", "simulated bytes over PCIe links"),
    Metric("gap", "float", "", "ilp: relative optimality gap (null for heuristics)"),
    Metric("objective_value", "float", "", "the planner's objective (the plan's objective field)"),
    Metric("gpus", "int", "", "GPUs planned for"),
    Metric("slots_per_gpu_used", "int", "", "expert slots per GPU of the plan"),
    Metric("solve_s", "float", "s", "wall time of the planner", timing=True),
)


def run_plan(p: dict[str, Any]) -> dict[str, Any]:
    """One planner planned on the training tokens and scored on the rest, as ``moesim plan`` does."""
    from moesim.workflows import PlacementRequest, compare_planners

    fields = {k: v for k, v in p.items() if k != "planner"}
    comparison = compare_planners(PlacementRequest(planners=(p["planner"],), **fields))
    row = comparison.rows[p["planner"]]
    out = row.as_dict()
    # One planner per cell: the speedup over contiguous is a ratio of two cells' rows, not a cell's.
    out.pop("speedup_vs_contiguous", None)
    out["objective_value"] = out.pop("objective")
    info = comparison.info()
    out.update(cluster=info["hw"], model_name=info["model"], gpus=info["gpus"],
               slots_per_gpu_used=info["slots_per_gpu"], train_tokens=info["train_tokens"],
               eval_tokens=info["eval_tokens"], solve_s=row.solve_s,
               imbalance_per_layer_eval=list(row.imbalance_per_layer_eval))
    return out


PLAN = CellKind(
    name="plan", run=run_plan, verb=("plan",), params=PARAMS, metrics=METRICS,
    headline=("step_time_s_eval", "gpu_imbalance_eval", "tokens_per_s_eval"),
    doc="one placement planner of moesim plan, planned on the training tokens, simulated on the rest",
)
