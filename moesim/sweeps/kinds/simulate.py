"""``simulate`` cells: one :func:`moesim.workflows.simulate_run` each (``moesim simulate``'s flags as
parameters; the ``--json`` summary's scalars as metrics)."""

from __future__ import annotations

from typing import Any

from moesim.specs.model import DTYPE_BYTES
from moesim.sweeps.schema import CellKind, Metric, Param
from moesim.vocab import CachePolicy, CpuNuma, Dispatch, MissMode, Overlap, Phase, Prefetch, choices


def load_trace(value: str) -> Any:
    """A token-level routing trace, loaded once by the driver (a counts file is refused here)."""
    from moesim.traces.trace import RoutingTrace

    return RoutingTrace.load(value)


PARAMS = (
    Param("hw", "str", "hardware profile (built-in name or YAML path)", "--hw", file="hardware",
          required=True),
    Param("nodes", "int", "override the profile's node count", "--nodes", minimum=1),
    Param("model", "str", "model spec (built-in name or YAML path)", "--model", file="model", required=True),
    Param("weight_dtype", "str", "serve the routed experts in this dtype", "--weight-dtype",
          choices=tuple(DTYPE_BYTES)),
    Param("trace", "str", "routing trace (.npz path or shipped name)", "--trace", file="trace", required=True,
          load=load_trace),
    Param("plan", "str", "plan file (YAML/JSON); default contiguous", "--plan", file="path"),
    Param("batch", "int", "decode: tokens per step; prefill: whole prompts per step", "--batch", minimum=1),
    Param("steps", "int", "steps to simulate (default: the whole trace once)", "--steps", minimum=1),
    Param("phase", "str", "what a step is", "--phase", choices=choices(Phase)),
    Param("cache", "str", "per-layer expert cache policy", "--cache", choices=choices(CachePolicy)),
    Param("cache_size", "int", "experts cached per MoE layer", "--cache-size", minimum=1),
    Param("expert_cache", "bytes", "expert-cache budget per GPU", "--expert-cache"),
    Param("gpu_memory", "bytes", "whole memory per GPU (the expert cache gets what the rest leaves)",
          "--gpu-memory"),
    Param("miss", "str", "what a cache miss does", "--miss", choices=choices(MissMode)),
    Param("prefetch", "str", "next-layer prefetch", "--prefetch", choices=choices(Prefetch)),
    Param("overlap", "str", "overlap of all-to-all with expert compute", "--overlap",
          choices=choices(Overlap)),
    Param("dispatch", "str", "which replicas a token may use", "--dispatch", choices=choices(Dispatch)),
    Param("seed", "int", "random seed", "--seed", minimum=0),
    Param("calibration", "str", "calibration tables (folder, table or built-in name)", "--calibration",
          file="path"),
    Param("cpu_kernel", "str", "CPU expert kernel of the profile's CPU entry", "--cpu-kernel"),
    Param("cpu_numa", "str", "how a multi-socket host shares CPU experts", "--cpu-numa",
          choices=choices(CpuNuma)),
    Param("check_invariants", "bool", "check conservation, memory and causality during the run",
          "--check-invariants"),
)

METRICS = (
    Metric("tokens_per_s", "float", "tokens/s", "tokens / simulated_seconds"),
    Metric("simulated_seconds", "float", "s", "end of the last step"),
    Metric("steps_simulated", "int", "", "steps simulated (the summary's steps)"),
    Metric("tokens", "int", "tokens", "trace rows processed"),
    Metric("step_latency_s.mean", "float", "s", "mean step duration"),
    Metric("step_latency_s.p50", "float", "s", "median step duration"),
    Metric("step_latency_s.p90", "float", "s", "90th percentile step duration"),
    Metric("step_latency_s.p99", "float", "s", "99th percentile step duration"),
    Metric("cache_hit_rate", "float", "", "hits / requests (null when every expert is resident)"),
    Metric("utilization_max", "float", "", "the busiest device's busy_s / simulated_seconds"),
    Metric("peak_memory_bytes_max", "float", "B", "the largest per-device memory total"),
    Metric("link_bytes.nvlink", "float", "B", "bytes over NVLink/NVSwitch links"),
    Metric("link_bytes.ib", "float", "B", "bytes over scale-out links (InfiniBand, RoCE, Ethernet)"),
    Metric("link_bytes.pcie", "float", "B", "bytes over PCIe links (weight fetches included)"),
)

_ECHOES = ("seed", "phase", "overlap", "dispatch")
"""Summary fields that repeat a parameter (the parameter's column holds it)."""
_RENAMED = {"steps": "steps_simulated", "model": "model_name", "plan": "plan_name"}


def run_simulate(p: dict[str, Any]) -> dict[str, Any]:
    """One ``moesim simulate`` run: its summary's scalars, plus per-device maxima and bytes by link class."""
    from moesim.workflows import simulate_run
    from moesim.workflows.simulation import bytes_by_link_class

    run = simulate_run(**p)
    s = run.summary()
    out = {_RENAMED.get(k, k): v for k, v in s.items()
           if k not in (*_ECHOES, "timing", "per_device", "per_link")}
    devices = s.get("per_device") or []
    out["utilization_max"] = max((d["utilization"] for d in devices), default=None)
    out["peak_memory_bytes_max"] = max((d["peak_memory_bytes"] for d in devices), default=None)
    out["link_bytes"] = bytes_by_link_class(s, run.config.cluster)
    return out


SIMULATE = CellKind(
    name="simulate", run=run_simulate, verb=("simulate",), params=PARAMS, metrics=METRICS,
    headline=("tokens_per_s", "step_latency_s.mean", "cache_hit_rate"),
    doc="one moesim simulate run: replay a trace on a cluster under a plan, cache and miss policy",
)
