"""The serving workflow: requests with arrivals, continuous batching and a KV cache (``moesim simulate
--workload``), and rate sweeps over it (latency-throughput curves)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.cost.cpu_experts import CpuOptions
from moesim.cost.sources import MeasuredTables
from moesim.plans.plan import Plan
from moesim.serving import ServeConfig, ServeResult, WorkloadSpec, load_workload, parse_slo, serve
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.specs.runtime import Runtime, load_runtime
from moesim.traces.trace import RoutingTrace
from moesim.workflows.inputs import cluster_of, cost_model, model_of, trace_of


@dataclass(frozen=True)
class ServeRun:
    """One serving simulation: the configuration it ran and its result."""

    config: ServeConfig
    result: ServeResult

    def summary(self) -> dict[str, Any]:
        """The ``moesim simulate --workload ... --json`` object (docs/serving.md)."""
        return self.result.summary()


def serve_run(*, hw: str | Path | Cluster, model: str | Path | MoEModel, trace: str | Path | RoutingTrace,
              workload: str | Path | WorkloadSpec = "chat", plan: str | Path | Plan | None = None,
              weight_dtype: str | None = None, nodes: int | None = None, scheduler: str = "chunked",
              arrival_rate: float | None = None, concurrency: int | None = None, requests: int | None = None,
              duration_s: float | None = None, seed: int | None = None, slo: str | None = None,
              token_budget: int | None = None, max_seqs: int | None = None, kv_block: int = 16,
              preemption: str = "recompute", gpu_memory_utilization: float = 0.9,
              prefill_gpus: int | None = None, calibration: str | Path | MeasuredTables | None = None,
              cpu_kernel: str | None = None, cpu_numa: str | None = None, a2a: str | None = None,
              precision: str | Mapping[str, str] | None = None, runtime: str | Path | Runtime | None = None,
              timeline_steps: int = 2000, check_invariants: bool = False) -> ServeRun:
    """What ``moesim simulate --workload`` runs: load the inputs, apply the flags to the workload,
    build the :class:`ServeConfig`, serve. Names or loaded objects, as :func:`simulate_run`; ``a2a``:
    the all-to-all mode (None: per step, as SGLang's ``--deepep-mode auto``); ``precision`` and
    ``runtime`` as :func:`simulate_run`'s."""
    cluster = cluster_of(hw, nodes=nodes)
    spec = model_of(model, weight_dtype=weight_dtype, precision=precision)
    framework = load_runtime(runtime)
    routing = trace_of(trace, spec)
    loaded = plan if isinstance(plan, Plan) or plan is None else Plan.load(plan)
    if loaded is not None:
        loaded.validate(spec, file=None if isinstance(plan, Plan) else str(plan))
    base = workload if isinstance(workload, WorkloadSpec) else load_workload(workload)
    wl = base.with_(arrival_rate=arrival_rate, concurrency=concurrency, requests=requests,
                    duration_s=duration_s, seed=seed)
    cfg = ServeConfig(cluster=cluster, model=spec, trace=routing, workload=wl, plan=loaded,
                      scheduler=scheduler,
                      token_budget=token_budget, max_seqs=max_seqs, kv_block_tokens=kv_block,
                      preemption=preemption, gpu_memory_utilization=gpu_memory_utilization,
                      prefill_gpus=prefill_gpus, slo=parse_slo(slo), a2a=a2a, runtime=framework,
                      timeline_steps=timeline_steps, check_invariants=check_invariants)
    cpu = CpuOptions.of(cpu_kernel, cpu_numa) if cpu_kernel or cpu_numa else None
    return ServeRun(cfg, serve(cfg, cost_model(cluster, spec, calibration, cpu=cpu, runtime=framework)))


def serve_curve(rates: Sequence[float], **kwargs: Any) -> list[ServeRun]:
    """:func:`serve_run` at each Poisson arrival rate (requests/s), same requests otherwise: the
    points of a latency-throughput curve. The inputs are loaded once."""
    cluster = cluster_of(kwargs.pop("hw"), nodes=kwargs.pop("nodes", None))
    spec = model_of(kwargs.pop("model"), weight_dtype=kwargs.pop("weight_dtype", None),
                    precision=kwargs.pop("precision", None))
    trace = trace_of(kwargs.pop("trace"), spec)
    workload = kwargs.pop("workload", "chat")
    base = workload if isinstance(workload, WorkloadSpec) else load_workload(workload)
    return [serve_run(hw=cluster, model=spec, trace=trace, workload=base, arrival_rate=r, **kwargs)
            for r in rates]
