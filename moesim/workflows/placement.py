"""The placement workflow of ``moesim plan``: plan on the first part of a trace, compare on the rest.

:func:`compare_planners` splits the trace's tokens (row order), runs each placement planner on the
training part (and the cache planner when a GPU memory budget is given), then scores every plan on
the evaluation part: GPU load imbalance, the ILP cost model's predicted MoE step, and a simulation
(step time, tokens/s, all-to-all bytes by link class, speedup over ``BASELINE_PLANNER``, the
engines' own initial layout). Per-step
load counts (no tokens) are split by step and get the plans and imbalance, without a simulation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from moesim.cost import CostModel
from moesim.errors import UserError
from moesim.parallel import Parallelism
from moesim.planners import BASELINE_PLANNER, PLANNERS, PlanRequest
from moesim.planners.base import check_request, gpu_imbalance
from moesim.plans.ep_groups import expand, group_devices, group_rows
from moesim.plans.plan import CachePlan, Plan
from moesim.progress import progress
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.specs.runtime import Runtime, load_runtime
from moesim.traces.counts import LoadCounts
from moesim.traces.trace import RoutingTrace
from moesim.workflows.inputs import cluster_of, cost_model, model_and_trace
from moesim.workflows.simulation import byte_quantity, bytes_by_link_class, simulate_plan

PLANNER_NAMES: tuple[str, ...] = tuple(PLANNERS)


@dataclass(frozen=True)
class PlacementRequest:
    """The options of one comparison (``moesim plan``'s flags; docs/planners.md)."""

    hw: str | Path | Cluster
    model: str | Path | MoEModel | None = None
    """None: the trace's model (or DeepSeek-V2-Lite with the shipped trace)."""
    trace: str | Path | RoutingTrace | LoadCounts | None = None
    """A routing trace or a load-counts file; None: the shipped ``deepseek-v2-lite-synth``."""
    planners: tuple[str, ...] = PLANNER_NAMES
    nodes: int | None = None
    slots_per_gpu: int | None = None
    """None: experts / GPUs rounded up, plus one spare slot per GPU."""
    replicas: int | None = None
    """Physical slots per layer in all (a multiple of the GPU count); excludes ``slots_per_gpu``."""
    weight_dtype: str | None = None
    precision: str | None = None
    """Per-tensor dtypes, ``--precision attention=fp8,...`` (docs/models.md)."""
    train_fraction: float = 0.5
    windows: int = 1
    objective: str = "worst"
    """ilp: the worst or the mean of the windows' targets."""
    ilp_target: str = "time"
    """ilp: a window's target is its predicted step time (``time``) or its slowest GPU's tokens
    (``tokens``)."""
    gap_limit: float | None = None
    """ilp: stop a layer's search within this relative gap of its bound (None: the ILP's 0.001)."""
    origin: str = "even"
    dispatch: str = "even"
    time_limit_s: float = 60.0
    batch_tokens: int = 4096
    steps: int | None = None
    seed: int = 0
    gpu_memory: str | float | None = None
    """Whole GPU memory budget: adds the cache/offload plan (``moesim.planners.cache_ilp``) for decode
    steps of ``batch_tokens`` sequences, the batch the plans are then simulated with."""
    cache_policy: str = "static"
    miss: str = "fetch"
    prefetch: str = "none"
    ep_size: int | None = None
    """EP groups (``--ep``): below the GPU count, experts are placed on ``ep_size`` groups of GPUs / ep_size
    GPUs, each GPU holding 1/(GPUs / ep_size) of its group's experts (:mod:`moesim.plans.ep_groups`);
    None: every GPU."""
    runtime: str | Path | Runtime | None = None
    """The serving framework (``--runtime``, :mod:`moesim.specs.runtime`): its overheads in the cost
    model and the simulations, its memory reserve in the cache plan (None: kernels only)."""
    tp: int | None = None
    """Attention tensor-parallel degree (``--tp``, :mod:`moesim.parallel`) of the simulations and of
    the cache plan's memory layout; None: 1, or G / ``dp``."""
    dp: int | None = None
    """Attention data-parallel groups (``--dp``); None: G / ``tp``."""
    context_tokens: int = 4096
    """Context each sequence of a ``batch_tokens`` decode step attends: the cache plan's KV cache."""


@dataclass(frozen=True)
class PlannerRow:
    """One planner's plan scored on the training and evaluation tokens."""

    gpu_imbalance_train: float
    gpu_imbalance_eval: float
    gap: float | None
    bound: float | None
    objective: float | None
    predicted_moe_step_s_eval: float | None
    """The ILP cost model's MoE time of one step on the evaluation load (None: not in seconds)."""
    step_time_s_eval: float | None
    tokens_per_s_eval: float | None
    a2a_bytes: Mapping[str, float]
    """Simulated bytes by link class (nvlink, ib, pcie) over the evaluation steps."""
    speedup_vs_baseline: float | None
    """Step time of ``BASELINE_PLANNER``'s plan over this plan's (None when it was not compared)."""
    imbalance_per_layer_train: tuple[float, ...]
    imbalance_per_layer_eval: tuple[float, ...]
    eplb_duplicate_slots: int | None = None
    note: str | None = None
    """Why the simulated figures are missing, when they are."""
    solve_s: float = 0.0
    """Wall time of the planner (timing: differs run to run)."""

    def as_dict(self) -> dict[str, Any]:
        """The planner's entry of ``moesim plan --json`` (timing apart)."""
        out: dict[str, Any] = {"gpu_imbalance_train": self.gpu_imbalance_train,
                               "gpu_imbalance_eval": self.gpu_imbalance_eval, "gap": self.gap,
                               "bound": self.bound, "objective": self.objective}
        if self.eplb_duplicate_slots is not None:
            out["eplb_duplicate_slots"] = self.eplb_duplicate_slots
        out.update({"predicted_moe_step_s_eval": self.predicted_moe_step_s_eval,
                    "step_time_s_eval": self.step_time_s_eval, "tokens_per_s_eval": self.tokens_per_s_eval,
                    "a2a_bytes": dict(self.a2a_bytes)})
        if self.note is not None:
            out["note"] = self.note
        out["speedup_vs_baseline"] = self.speedup_vs_baseline
        return out


@dataclass(frozen=True)
class PlanningInputs:
    """What the comparison ran on, loaded: kept for follow-up runs (a plan's timeline)."""

    cluster: Cluster
    model: MoEModel
    train: RoutingTrace | LoadCounts
    evaluation: RoutingTrace | LoadCounts
    cost: CostModel
    request: PlacementRequest


@dataclass(frozen=True)
class PlannerComparison:
    """The result of :func:`compare_planners`."""

    hw: str
    model: str
    trace: str
    gpus: int
    slots_per_gpu: int
    train_tokens: int | None
    """Tokens planned on (None for load counts: see ``train_steps``)."""
    eval_tokens: int | None
    windows: int
    dispatch: str
    moe_layers: tuple[int, ...]
    rows: Mapping[str, PlannerRow]
    plans: Mapping[str, Plan]
    inputs: PlanningInputs = field(repr=False, compare=False)
    train_steps: int | None = None
    """Load counts only: the steps planned on and evaluated on."""
    eval_steps: int | None = None
    expert_tp: int = 1
    """GPUs per EP group (``--ep``): ``slots_per_gpu`` are then each group's (every member holds a shard)."""

    @property
    def chosen(self) -> Plan:
        """The plan ``--out`` writes: the ILP's when it ran, else the first planner's."""
        return self.plans["ilp"] if "ilp" in self.plans else next(iter(self.plans.values()))

    def info(self) -> dict[str, Any]:
        out = {"hw": self.hw, "model": self.model, "trace": self.trace, "gpus": self.gpus,
               "slots_per_gpu": self.slots_per_gpu, "train_tokens": self.train_tokens,
               "eval_tokens": self.eval_tokens, "windows": self.windows, "dispatch": self.dispatch,
               "baseline_planner": BASELINE_PLANNER}
        if self.train_steps is not None:
            out.update(train_steps=self.train_steps, eval_steps=self.eval_steps)
        if self.expert_tp > 1:
            out.update(ep=self.gpus // self.expert_tp, expert_tp=self.expert_tp)
        return out

    def as_dict(self) -> dict[str, Any]:
        """``moesim plan --json``: the same bytes on every run once ``timing`` is left out."""
        return {**self.info(), "planners": {n: r.as_dict() for n, r in self.rows.items()},
                "timing": {"solve_s": {n: r.solve_s for n, r in self.rows.items()}}}


def layer_matrix(load: Any, trace: RoutingTrace | LoadCounts, model: MoEModel) -> np.ndarray:
    """``[W, L, E]`` in the model's MoE-layer order; the trace must record every MoE layer."""
    load = np.asarray(load, dtype=np.float64)
    layer_ids = [int(x) for x in np.asarray(trace.layer_ids)]
    if layer_ids == list(model.moe_layers):
        return load
    if sorted(layer_ids) == sorted(model.moe_layers):
        return load[:, [layer_ids.index(x) for x in model.moe_layers]]
    raise UserError(f"the trace records layers {layer_ids[:6]}{'...' if len(layer_ids) > 6 else ''}, "
                    f"the model's MoE layers are {list(model.moe_layers)[:6]}...; a placement plan needs "
                    "every MoE layer", field="layer_ids")


def _ilp_params(req: PlacementRequest) -> dict[str, Any]:
    """The planners' options of ``req`` (the ILP reads them all; docs/planners.md)."""
    params: dict[str, Any] = {"objective": req.objective, "origin": req.origin,
                              "batch_tokens": req.batch_tokens, "dispatch": req.dispatch,
                              "units": "tokens" if req.ilp_target == "tokens" else "auto"}
    if req.gap_limit is not None:
        params["gap_limit"] = req.gap_limit
    return params


def _check(req: PlacementRequest) -> None:
    if not 0.0 < req.train_fraction < 1.0:
        raise UserError(f"expected a fraction between 0 and 1 (exclusive), got {req.train_fraction}",
                        field="--train-fraction")
    if req.ilp_target not in ("time", "tokens"):
        raise UserError(f"expected time or tokens, got {req.ilp_target!r}", field="--ilp-target")
    if req.gap_limit is not None and not 0.0 <= req.gap_limit < 1.0:
        raise UserError(f"expected a gap in [0, 1), got {req.gap_limit}", field="--gap-limit")
    if req.windows < 1:
        raise UserError(f"expected at least 1 window, got {req.windows}", field="--windows")
    if req.time_limit_s <= 0:
        raise UserError(f"expected a positive time limit, got {req.time_limit_s}", field="--time-limit")
    unknown = [p for p in req.planners if p not in PLANNERS]
    if unknown or not req.planners:
        raise UserError(f"expected planners among {', '.join(PLANNERS)}, got {list(req.planners)}",
                        field="--planner")


def _slots(req: PlacementRequest, gpus: int, experts: int) -> int:
    if req.replicas is not None:
        if req.slots_per_gpu is not None:
            raise UserError("give --slots-per-gpu or --replicas, not both", field="--replicas")
        if req.replicas % gpus:
            raise UserError(f"{req.replicas} replicas do not divide evenly over {gpus} GPUs",
                            field="--replicas")
        return req.replicas // gpus
    # One spare slot per GPU for a replica of a hot expert, when there are experts to spare.
    return req.slots_per_gpu if req.slots_per_gpu is not None else min(experts, -(-experts // gpus) + 1)


def _cache_plan(req: PlacementRequest, model: MoEModel, cluster: Cluster, train: Any,
                cost: CostModel, parallel: Parallelism, runtime: Runtime) -> CachePlan | None:
    budget = byte_quantity(req.gpu_memory, "--gpu-memory")
    if budget is None:
        return None
    from moesim.planners.cache_ilp import plan_cache

    return plan_cache(model, cluster, train, budget, cost, miss=req.miss, prefetch=req.prefetch,
                      policy=req.cache_policy, time_limit_s=req.time_limit_s, batch_size=req.batch_tokens,
                      context_tokens=req.context_tokens, parallel=parallel, runtime=runtime)


def compare_planners(req: PlacementRequest, *, show_progress: bool = False) -> PlannerComparison:
    """Plan with each of ``req.planners`` on the training tokens; score every plan on the rest."""
    from moesim.planners.placement_ilp import predict_moe_step

    _check(req)
    cluster = cluster_of(req.hw, nodes=req.nodes)
    model, data, trace_name = model_and_trace(req.model, req.trace, weight_dtype=req.weight_dtype,
                                              precision=req.precision)
    counts_only = isinstance(data, LoadCounts)  # loads without tokens: no replay, no token statistics
    train, evaluation = data.split(req.train_fraction)

    def size(d: Any) -> int:
        return d.num_steps if counts_only else d.num_tokens

    if size(train) == 0 or size(evaluation) == 0:
        raise UserError(f"{size(data)} {'steps' if counts_only else 'tokens'} cannot be split at "
                        f"{req.train_fraction}", field="--train-fraction")
    gpus = tuple(d.id for d in cluster.gpus)
    if not gpus:
        raise UserError(f"cluster {cluster.name} has no GPU to place experts on", file=cluster.source_file)
    parallel = Parallelism.of(len(gpus), tp=req.tp, dp=req.dp, ep=req.ep_size)
    parallel.check_model(model)
    k = parallel.expert_tp
    if k > 1 and req.gpu_memory is not None:
        raise UserError(f"--ep {parallel.ep} shards experts over {k} GPUs, which is planned and simulated "
                        "with every expert resident: drop --gpu-memory (the expert cache plan)", field="--ep")
    all_gpus, gpus = gpus, group_devices(gpus, k)  # planners place experts on the EP groups
    slots = _slots(req, len(gpus), model.num_experts)
    load = layer_matrix(train.load_matrix(windows=req.windows), train, model)
    eval_load = layer_matrix(evaluation.load_matrix(windows=1), evaluation, model)[0]
    runtime = load_runtime(req.runtime)
    cost = cost_model(cluster, model, runtime=runtime)
    request = PlanRequest(model=model, cluster=cluster, devices=gpus, slots_per_device=slots, load=load,
                          trace=None if counts_only else train, cost=cost, time_limit_s=req.time_limit_s,
                          seed=req.seed, params=_ilp_params(req))
    try:
        check_request(request)
    except UserError as e:
        flag = "--replicas" if req.replicas is not None else "--slots-per-gpu"
        raise UserError(e.message, field=flag if e.field == "slots_per_device" else e.field) from None
    cache_plan = _cache_plan(req, model, cluster, load if counts_only else train, cost, parallel, runtime)
    plans: dict[str, Plan] = {}
    solve_s: dict[str, float] = {}
    for name in progress(req.planners, desc="planning", total=len(req.planners), enabled=show_progress):
        t0 = time.perf_counter()
        plan = expand(PLANNERS[name](request), all_gpus, k)
        solve_s[name] = time.perf_counter() - t0
        if cache_plan is not None:
            plan = dataclasses.replace(plan, cache=cache_plan)
        plan.validate(model, cluster)
        plans[name] = plan
    eval_request = dataclasses.replace(request, load=eval_load, trace=None if counts_only else evaluation)
    train_total = load.sum(axis=0)
    scored: dict[str, dict[str, Any]] = {}
    for name in progress(req.planners, desc="simulating", total=len(req.planners), enabled=show_progress):
        plan = plans[name]
        predicted, units = predict_moe_step(eval_request, group_rows(plan.placement, k))
        dup = plan.params.get("eplb_duplicate_slots")
        scored[name] = {
            "gpu_imbalance_train": gpu_imbalance(plan, load),
            "gpu_imbalance_eval": gpu_imbalance(plan, eval_load),
            "gap": plan.gap, "bound": plan.bound, "objective": plan.objective,
            "predicted_moe_step_s_eval": predicted if units.startswith("seconds") else None,
            "imbalance_per_layer_train": tuple(float(v) for v in plan.imbalance(train_total)),
            "imbalance_per_layer_eval": tuple(float(v) for v in plan.imbalance(eval_load)),
            "eplb_duplicate_slots": None if dup is None else int(dup), "solve_s": solve_s[name],
            **(_simulated(cluster, model, evaluation, plan, cost, req) if not counts_only else
               {"step_time_s_eval": None, "tokens_per_s_eval": None, "a2a_bytes": MappingProxyType({}),
                "note": "load counts only: no token-level simulation"}),
        }
    base = scored.get(BASELINE_PLANNER, {}).get("step_time_s_eval")
    rows = {name: PlannerRow(**r, speedup_vs_baseline=base / r["step_time_s_eval"]
                             if base and r["step_time_s_eval"] else None) for name, r in scored.items()}
    return PlannerComparison(
        hw=cluster.name, model=model.name, trace=trace_name, gpus=len(all_gpus), slots_per_gpu=slots,
        train_tokens=None if counts_only else train.num_tokens,
        eval_tokens=None if counts_only else evaluation.num_tokens, windows=int(np.shape(load)[0]),
        dispatch=req.dispatch, moe_layers=tuple(int(x) for x in model.moe_layers),
        rows=MappingProxyType(rows), plans=MappingProxyType(plans),
        inputs=PlanningInputs(cluster, model, train, evaluation, cost, req),
        train_steps=train.num_steps if counts_only else None,
        eval_steps=evaluation.num_steps if counts_only else None, expert_tp=k,
    )


def _simulated(cluster: Cluster, model: MoEModel, evaluation: RoutingTrace, plan: Plan, cost: CostModel,
               req: PlacementRequest) -> dict[str, Any]:
    """Mean step time, tokens/s and link bytes by class of ``plan`` replayed on the evaluation tokens."""
    summary = simulate_plan(cluster, model, evaluation, plan, cost, batch_tokens=req.batch_tokens,
                            steps=req.steps, seed=req.seed, dispatch=req.dispatch, tp=req.tp, dp=req.dp,
                            runtime=cost.runtime).summary()
    latency = summary.get("step_latency_s") or {}
    return {"step_time_s_eval": latency.get("mean"), "tokens_per_s_eval": summary.get("tokens_per_s"),
            "a2a_bytes": MappingProxyType(bytes_by_link_class(summary, cluster))}
