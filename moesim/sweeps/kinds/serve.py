"""``serve`` cells: one :func:`moesim.workflows.serve_run` each (``moesim simulate --workload``'s flags as
parameters; the ``--json`` summary's scalars as metrics), so a sweep can vary arrival rates,
schedulers, SLOs, KV and engine settings (docs/serving.md)."""

from __future__ import annotations

import json
from typing import Any

from moesim.specs.model import DTYPE_BYTES
from moesim.sweeps.kinds.simulate import load_trace
from moesim.sweeps.schema import CellKind, Metric, Param
from moesim.vocab import AllToAll, CpuNuma, choices


def _serving_choices() -> tuple[tuple[str, ...], tuple[str, ...], int]:
    from moesim.serving.kv import PREEMPTION_MODES
    from moesim.serving.schedulers import SCHEDULERS
    from moesim.serving.workload import MAX_REQUESTS

    return tuple(SCHEDULERS), tuple(PREEMPTION_MODES), MAX_REQUESTS


_SCHEDULERS, _PREEMPTIONS, _MAX_REQUESTS = _serving_choices()

PARAMS = (
    Param("hw", "str", "hardware profile (built-in name or YAML path)", "--hw", file="hardware",
          required=True),
    Param("nodes", "int", "override the profile's node count", "--nodes", minimum=1),
    Param("model", "str", "model spec (built-in name or YAML path)", "--model", file="model", required=True),
    Param("weight_dtype", "str", "serve the routed experts in this dtype", "--weight-dtype",
          choices=tuple(DTYPE_BYTES)),
    Param("precision", "str", "per-tensor dtypes, e.g. attention=fp8,kv_cache=fp8", "--precision"),
    Param("runtime", "str", "runtime profile: step/layer overheads and memory reserve", "--runtime",
          file="runtime"),
    Param("trace", "str", "routing trace (.npz path or shipped name)", "--trace", file="trace", required=True,
          load=load_trace),
    Param("plan", "str", "plan file (YAML/JSON) of colocated serving; default contiguous", "--plan",
          file="path"),
    Param("workload", "str", "workload YAML or built-in name (chat)", "--workload", file="workload",
          required=True),
    Param("scheduler", "str", "how steps are formed", "--scheduler", choices=_SCHEDULERS),
    Param("arrival_rate", "float", "Poisson arrivals, requests/s (overrides the workload's)",
          "--arrival-rate", minimum=1e-12),
    Param("concurrency", "int", "closed loop: clients, each sending when its last request finished",
          "--concurrency", minimum=1),
    Param("requests", "int", "requests to send (default: the workload's)", "--requests", minimum=1,
          maximum=_MAX_REQUESTS + 1),
    Param("duration_s", "float", "stop sending after this simulated time, s", "--duration", minimum=1e-12),
    Param("slo", "str", "goodput objectives, e.g. ttft=200ms,tpot=20ms", "--slo"),
    Param("token_budget", "int", "tokens per step per GPU (default: vLLM's)", "--token-budget", minimum=1,
          maximum=10_000_001),
    Param("max_seqs", "int", "running requests per GPU (default: vLLM's)", "--max-seqs", minimum=1,
          maximum=10_000_001),
    Param("kv_block", "int", "tokens per KV-cache block", "--kv-block", minimum=1, maximum=4097),
    Param("preemption", "str", "when the KV cache runs out", "--preemption", choices=_PREEMPTIONS),
    Param("gpu_memory_utilization", "float", "share of each GPU's memory the engine uses, in (0, 1]",
          "--gpu-memory-utilization", minimum=1e-12),
    Param("prefill_gpus", "int", "disaggregated: GPUs of the prefill group", "--prefill-gpus", minimum=1),
    Param("a2a", "str", "all-to-all mode of every step (default: per step)", "--a2a",
          choices=choices(AllToAll)),
    Param("seed", "int", "random seed (arrivals, lengths, acceptance draws)", "--seed", minimum=0),
    Param("calibration", "str", "calibration tables (folder, table or built-in name)", "--calibration",
          file="path"),
    Param("cpu_kernel", "str", "CPU expert kernel of the profile's CPU entry", "--cpu-kernel"),
    Param("cpu_numa", "str", "how a multi-socket host shares CPU experts", "--cpu-numa",
          choices=choices(CpuNuma)),
    Param("check_invariants", "bool", "check the serving invariants after the run", "--check-invariants"),
)


def _quantiles(name: str, what: str) -> tuple[Metric, ...]:
    return tuple(Metric(f"{name}.{q}", "float", "s", f"{label} {what}")
                 for q, label in (("p50", "median"), ("p90", "90th percentile"), ("p99", "99th percentile"),
                                  ("mean", "mean")))


METRICS = (
    *_quantiles("ttft_s", "time to first token"),
    *_quantiles("tpot_s", "time per output token after the first, per request"),
    *_quantiles("e2e_s", "end-to-end latency"),
    Metric("throughput.requests_per_s", "float", "requests/s", "finished requests / duration_s"),
    Metric("throughput.input_tokens_per_s", "float", "tokens/s",
           "prompt tokens of finished requests / duration_s"),
    Metric("throughput.output_tokens_per_s", "float", "tokens/s",
           "output tokens of finished requests / duration_s"),
    Metric("throughput.output_tokens_per_s_per_gpu", "float", "tokens/s", "output tokens/s / GPUs"),
    Metric("goodput.requests_per_s", "float", "requests/s",
           "finished requests meeting every SLO / duration_s (null without slo)"),
    Metric("goodput.fraction", "float", "",
           "share of finished requests meeting every SLO (null without slo)"),
    Metric("benchmark_duration_s", "float", "s", "the summary's duration_s: last finish - first send, "
           "simulated (vLLM's benchmark duration)"),
    Metric("requests.finished", "int", "", "requests finished"),
    Metric("requests.unfinished", "int", "", "requests refused or cut off (reported with their reason)"),
    Metric("kv_cache.mean_utilization", "float", "", "KV blocks in use / pool, time-weighted over steps"),
    Metric("batch.mean_tokens", "float", "tokens", "tokens per step, mean"),
    Metric("preemptions", "int", "", "requests preempted (recompute or swap)"),
    Metric("kv_transfer.bytes", "float", "B", "disaggregated: KV bytes moved prefill -> decode"),
)

_DROPPED = ("mode", "scheduler", "a2a", "instances", "series", "timing")
"""Summary fields that repeat a parameter, lists, and the wall time (the row's ``wall_s`` has it)."""
_RENAMED = {"model": "model_name", "plan": "plan_name", "duration_s": "benchmark_duration_s"}


def run_serve(p: dict[str, Any]) -> dict[str, Any]:
    """One ``moesim simulate --workload`` run: its summary's scalars (nested names joined with ``.``)."""
    from moesim.workflows.serving import serve_run

    s = serve_run(**p).summary()
    out = {_RENAMED.get(k, k): v for k, v in s.items() if k not in _DROPPED}
    out["requests"] = {k: v for k, v in s["requests"].items() if k != "unfinished_reasons"}
    out["unfinished_reasons"] = json.dumps(s["requests"]["unfinished_reasons"], sort_keys=True)
    return out


SERVE = CellKind(
    name="serve", run=run_serve, verb=("simulate",), params=PARAMS, metrics=METRICS,
    headline=("ttft_s.p99", "tpot_s.p99", "throughput.output_tokens_per_s"),
    doc="one moesim simulate --workload run: requests served with continuous batching and a KV cache",
)
