"""Simulation workflows: one run as ``moesim simulate`` builds it, and a plan replayed on held-out tokens.

:func:`replay_setting` is the one rule for how a plan is simulated on a slice of a trace (the phase
and the batch); ``moesim plan``, its timeline and the reports all use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.cost import CostModel
from moesim.cost.cpu_experts import CpuOptions
from moesim.cost.sources import MeasuredTables
from moesim.errors import UserError
from moesim.plans.default import default_plan
from moesim.plans.plan import Plan
from moesim.sim.config import SimConfig
from moesim.sim.engine import simulate
from moesim.sim.results import SimResult
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.specs.runtime import Runtime, load_runtime
from moesim.traces.trace import DECODE, RoutingTrace
from moesim.units import parse_quantity
from moesim.workflows.inputs import cluster_of, cost_model, model_of, trace_of
from moesim.workflows.replan import ReplanOptions, replan_config

LINK_CLASSES = ("nvlink", "ib", "pcie")


@dataclass(frozen=True)
class SimRun:
    """One simulation: the configuration it ran and its result."""

    config: SimConfig
    result: SimResult

    def summary(self) -> dict[str, Any]:
        """The ``moesim simulate --json`` object (docs/results.md)."""
        return self.result.summary()


def byte_quantity(value: str | float | None, flag: str) -> float | None:
    """``"20GiB"`` or a number of bytes (None stays None)."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    return parse_quantity(value, "bytes", field=flag)


def simulate_run(*, hw: str | Path | Cluster, model: str | Path | MoEModel,
                 trace: str | Path | RoutingTrace, plan: str | Path | Plan | None = None,
                 weight_dtype: str | None = None, nodes: int | None = None, batch: int = 1,
                 steps: int | None = None, phase: str = "decode", cache: str | None = None,
                 cache_size: int | None = None, expert_cache: str | float | None = None,
                 gpu_memory: str | float | None = None, miss: str | None = None,
                 prefetch: str | None = None, overlap: str = "none", dispatch: str = "even", seed: int = 0,
                 calibration: str | Path | MeasuredTables | None = None,
                 check_invariants: bool = False, cpu_kernel: str | None = None,
                 cpu_numa: str | None = None, a2a: str | None = None, cache_scope: str = "layer",
                 cache_reset: str = "none", precision: str | Mapping[str, str] | None = None,
                 tp: int | None = None, dp: int | None = None, ep: int | None = None,
                 runtime: str | Path | Runtime | None = None, replan: ReplanOptions | None = None) -> SimRun:
    """What ``moesim simulate`` runs: load the inputs, build the :class:`SimConfig`, simulate.

    ``expert_cache`` is the expert-cache budget per GPU; ``gpu_memory`` the whole GPU's memory, of
    which the expert cache gets what the model's other bytes leave (:mod:`moesim.memory`).
    ``cpu_kernel`` / ``cpu_numa``: how the CPU runs missed experts (docs/cost.md); ``a2a``: the
    all-to-all mode (None: the default for the phase and node count); ``cache_scope`` / ``cache_reset``:
    per-layer or global caches, emptied at sequence starts or never. ``precision``: per-tensor dtypes
    (``"attention=fp8,kv_cache=fp8"`` or a mapping, docs/models.md); ``tp``/``dp``/``ep``: the parallel
    layout (:mod:`moesim.parallel`); ``runtime``: a runtime profile's name, path or object
    (:mod:`moesim.specs.runtime`); ``replan``: online re-placement (docs/replan.md) from the plan
    (default: the contiguous layout)."""
    cluster = cluster_of(hw, nodes=nodes)
    spec = model_of(model, weight_dtype=weight_dtype, precision=precision)
    framework = load_runtime(runtime)
    routing = trace_of(trace, spec)
    loaded = plan if isinstance(plan, Plan) or plan is None else Plan.load(plan)
    if loaded is not None:
        loaded.validate(spec, file=None if isinstance(plan, Plan) else str(plan))
    cpu = CpuOptions.of(cpu_kernel, cpu_numa) if cpu_kernel or cpu_numa else None
    cost = cost_model(cluster, spec, calibration, cpu=cpu, runtime=framework)
    replanning = None
    if replan is not None:
        start = loaded or default_plan(spec, cluster)
        replanning = replan_config(replan, start, spec, cluster, cost, seed=seed)
    cfg = SimConfig(
        cluster=cluster, model=spec, trace=routing, plan=loaded, batch_size=batch, steps=steps, phase=phase,
        overlap=overlap, seed=seed, dispatch=dispatch, cache_policy=cache, cache_size=cache_size,
        expert_cache_bytes=byte_quantity(expert_cache, "--expert-cache"),
        gpu_memory_bytes=byte_quantity(gpu_memory, "--gpu-memory"), miss=miss, prefetch=prefetch,
        check_invariants=check_invariants, a2a=a2a, cache_scope=cache_scope, cache_reset=cache_reset,
        tp=tp, dp=dp, ep=ep, runtime=framework, replan=replanning,
    )
    return SimRun(cfg, simulate(cfg, cost))


def replay_setting(tokens: RoutingTrace, batch_tokens: int) -> tuple[str, int]:
    """``(phase, batch)`` a plan is simulated with on ``tokens``: decode steps of ``batch_tokens``
    tokens when most rows are decode tokens, else prefill steps of whole prompts adding up to about
    ``batch_tokens`` tokens."""
    if batch_tokens < 1:
        raise UserError(f"expected at least 1 token per step, got {batch_tokens}", field="--batch-size")
    phase = "decode" if tokens.phase is not None and (tokens.phase == DECODE).mean() > 0.5 else "prefill"
    if phase == "decode":
        return phase, batch_tokens
    mean_prompt = tokens.num_tokens / max(1, len(np.unique(np.asarray(tokens.seq_id))))
    return phase, max(1, round(batch_tokens / mean_prompt))


def simulate_plan(cluster: Cluster, model: MoEModel, tokens: RoutingTrace, plan: Plan, cost: CostModel, *,
                  batch_tokens: int = 4096, steps: int | None = None, seed: int = 0,
                  dispatch: str = "even", tp: int | None = None, dp: int | None = None,
                  runtime: Runtime | None = None) -> SimResult:
    """Replay ``tokens`` (e.g. a trace's evaluation part) with ``plan`` by :func:`replay_setting`
    (``tp``/``dp``/``runtime`` as in :class:`SimConfig`; give ``cost`` the same runtime)."""
    phase, batch = replay_setting(tokens, batch_tokens)
    cfg = SimConfig(cluster=cluster, model=model, trace=tokens, plan=plan, batch_size=batch, phase=phase,
                    seed=seed, dispatch=dispatch, steps=steps, tp=tp, dp=dp, runtime=runtime)
    return simulate(cfg, cost)


def link_class(kind: str) -> str:
    """``nvlink``, ``ib`` (any scale-out network), ``pcie`` or ``other`` for a link kind."""
    k = kind.lower()
    if "nvlink" in k or "nvswitch" in k:
        return "nvlink"
    if "ib" in k or "infiniband" in k or "roce" in k or "ethernet" in k:
        return "ib"
    return "pcie" if "pcie" in k else "other"


def bytes_by_link_class(summary: Mapping[str, Any], cluster: Cluster) -> dict[str, float]:
    """Bytes a run moved over each class of link, summed over the links of the class (in the
    summary's ``per_link`` order, so the sums do not depend on anything else)."""
    by_class = dict.fromkeys(LINK_CLASSES, 0.0)
    graph = cluster.graph
    for entry in summary.get("per_link") or []:
        src, dst = entry.get("src"), entry.get("dst")
        if graph.has_edge(src, dst):
            cls = link_class(graph.edges[src, dst]["link"].spec.kind)
            if cls in by_class:
                by_class[cls] += float(entry.get("bytes", 0.0))
    return by_class


def timeline_events(result: SimResult) -> list[dict[str, Any]]:
    """The run's Chrome/Perfetto trace events (what ``--timeline FILE`` writes), in memory."""
    from moesim.sim.timeline import trace_events

    return trace_events(result.spans(), result.rec.devices)
