"""``moesim plan --replan``: replay a trace under re-balancing candidates and choose the best.

The trace's first ``warmup_fraction`` of tokens (row order) is the traffic the initial plan is made
on (by the inner planner: what the engine would load from a previous run's statistics); the rest is
the stream every candidate serves, starting from that plan — ``static`` keeps it, the engines'
defaults (SGLang: every 1000 passes on the last 1000; vLLM: every 3000 steps on the last 1000)
and the candidates re-plan on the stream's past only. A candidate's score is its mean simulated step
time on the stream, migration stalls included; the best is the fastest candidate of the asked
policies, reported with its gain over ``static`` and over the SGLang default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.progress import progress
from moesim.sim.config import SimConfig
from moesim.sim.engine import simulate
from moesim.sim.results import SimResult
from moesim.specs.hardware import Cluster
from moesim.specs.runtime import Runtime, load_runtime
from moesim.traces.trace import RoutingTrace
from moesim.vocab import Replan, parse
from moesim.workflows.inputs import cluster_of, cost_model, model_and_trace
from moesim.workflows.placement import layer_matrix
from moesim.workflows.replan import (
    SGLANG_INTERVAL_STEPS,
    SGLANG_WINDOW_STEPS,
    VLLM_INTERVAL_STEPS,
    VLLM_WINDOW_STEPS,
    ReplanOptions,
    inner_planner,
    replan_config,
)
from moesim.workflows.simulation import replay_setting

STATIC = "static"
SGLANG_DEFAULT = "sglang-default"
VLLM_DEFAULT = "vllm-default"
BASELINES = (STATIC, SGLANG_DEFAULT, VLLM_DEFAULT)
DEFAULT_THRESHOLDS = (0.05, 0.1, 0.2)


@dataclass(frozen=True)
class ReplanSearch:
    """The options of ``moesim plan --replan`` (docs/replan.md)."""

    hw: str | Path | Cluster
    model: Any = None
    trace: Any = None
    policies: tuple[str, ...] = ("periodic", "drift")
    planner: str = "eplb"
    intervals: tuple[int, ...] | None = None
    """Candidate intervals in steps (None: 1/32, 1/16, 1/8 and 1/4 of the stream's steps)."""
    windows: tuple[int, ...] | None = None
    """Candidate windows in steps (None: half the interval and the interval)."""
    thresholds: tuple[float, ...] | None = None
    """``drift`` thresholds (None: 0.05, 0.1, 0.2)."""
    migration: str = "blocking"
    source: str = "gpu"
    hedge_windows: int = 4
    moves: str = "all"
    ilp_target: str = "time"
    nodes: int | None = None
    slots_per_gpu: int | None = None
    warmup_fraction: float = 0.2
    batch_tokens: int = 4096
    dispatch: str = "even"
    seed: int = 0
    time_limit_s: float = 10.0
    weight_dtype: str | None = None
    runtime: str | Path | Runtime | None = None
    """``--runtime``: its overheads in the cost model and the replays (None: kernels only)."""
    tp: int | None = None
    """``--tp``/``--dp``: the replays' attention layout (:mod:`moesim.parallel`)."""
    dp: int | None = None


@dataclass(frozen=True)
class Candidate:
    """One replay: a label, its options and what it gave."""

    label: str
    options: ReplanOptions
    imbalance: float
    """Mean over the stream's steps of the realised per-step imbalance."""
    step_time_s: float
    """Mean step time, blocking stalls included."""
    tokens_per_s: float | None
    rebalances: int
    """Re-plans that took effect."""
    migration_bytes: float
    """Bytes of the re-plans that took effect."""
    stall_s: float
    in_flight_bytes: float = 0.0
    """Bytes of an overlapped copy still in flight when the stream ended (never served)."""
    gain_vs_static: float | None = None
    gain_vs_engine: float | None = None
    """Mean step time of ``sglang-default`` / this candidate's (> 1: faster)."""

    def as_dict(self) -> dict[str, Any]:
        o = self.options
        return {"policy": o.policy, "interval_steps": o.interval_steps, "window_steps": o.window_steps,
                "threshold": o.threshold if o.policy == "drift" else None, "imbalance": self.imbalance,
                "step_time_s": self.step_time_s, "tokens_per_s": self.tokens_per_s,
                "rebalances": self.rebalances, "migration_bytes": self.migration_bytes,
                "in_flight_bytes": self.in_flight_bytes, "stall_s": self.stall_s,
                "gain_vs_static": self.gain_vs_static,
                "gain_vs_engine": self.gain_vs_engine}


@dataclass(frozen=True)
class ReplanChoice:
    """The result of :func:`choose_replan`."""

    hw: str
    model: str
    trace: str
    gpus: int
    slots_per_gpu: int
    warmup_tokens: int
    stream_tokens: int
    stream_steps: int
    phase: str
    batch: int
    planner: str
    migration: str
    candidates: Mapping[str, Candidate]
    best: str
    runs: Mapping[str, SimResult] = field(repr=False, compare=False)
    """Each candidate's simulation (per-step frames for plots)."""

    def as_dict(self) -> dict[str, Any]:
        """``moesim plan --replan --json``."""
        return {"hw": self.hw, "model": self.model, "trace": self.trace, "gpus": self.gpus,
                "slots_per_gpu": self.slots_per_gpu, "warmup_tokens": self.warmup_tokens,
                "stream_tokens": self.stream_tokens, "stream_steps": self.stream_steps, "phase": self.phase,
                "batch": self.batch, "planner": self.planner, "migration": self.migration, "best": self.best,
                "candidates": {k: c.as_dict() for k, c in self.candidates.items()}}


def candidate_grid(req: ReplanSearch, steps: int) -> dict[str, ReplanOptions]:
    """The candidates of ``req`` for a stream of ``steps`` steps (labels -> options), baselines first."""
    base = ReplanOptions(policy="static", planner=req.planner, migration=req.migration, source=req.source,
                         hedge_windows=req.hedge_windows, moves=req.moves, ilp_target=req.ilp_target,
                         time_limit_s=req.time_limit_s, batch_tokens=req.batch_tokens)
    out = {STATIC: base,
           SGLANG_DEFAULT: replace(base, policy="periodic", interval_steps=SGLANG_INTERVAL_STEPS,
                                   window_steps=SGLANG_WINDOW_STEPS),
           VLLM_DEFAULT: replace(base, policy="periodic", interval_steps=VLLM_INTERVAL_STEPS,
                                 window_steps=VLLM_WINDOW_STEPS)}
    intervals = req.intervals or tuple(sorted({max(1, steps // d) for d in (32, 16, 8, 4)}))
    for policy in req.policies:
        p = parse(Replan, policy, field="--replan")
        if p == Replan.STATIC:
            continue
        for n in intervals:
            for w in req.windows or tuple(sorted({max(1, n // 2), n})):
                thresholds = (req.thresholds or DEFAULT_THRESHOLDS) if p == Replan.DRIFT else (None,)
                for t in thresholds:
                    label = f"{p} n={n} w={w}" + (f" t={t:g}" if t is not None else "")
                    out[label] = replace(base, policy=str(p), interval_steps=n, window_steps=w,
                                         threshold=t if t is not None else base.threshold)
    return out


def choose_replan(req: ReplanSearch, *, candidates: Mapping[str, ReplanOptions] | None = None,
                  show_progress: bool = False) -> ReplanChoice:
    """Replay the stream under every candidate (``candidates``, else :func:`candidate_grid`)."""
    if not 0.0 < req.warmup_fraction < 1.0:
        raise UserError(f"expected a fraction between 0 and 1 (exclusive), got {req.warmup_fraction}",
                        field="--train-fraction")
    cluster = cluster_of(req.hw, nodes=req.nodes)
    model, data, name = model_and_trace(req.model, req.trace, weight_dtype=req.weight_dtype)
    if not isinstance(data, RoutingTrace):
        raise UserError("--replan replays tokens: expected a routing trace, got load counts", field="--trace")
    warmup, stream = data.split(req.warmup_fraction)
    if warmup.num_tokens == 0 or stream.num_tokens == 0:
        raise UserError(f"{data.num_tokens} tokens cannot be split at {req.warmup_fraction}",
                        field="--train-fraction")
    gpus = tuple(d.id for d in cluster.gpus)
    E = model.num_experts
    slots = req.slots_per_gpu or min(E, -(-E // len(gpus)) + 1)
    runtime = load_runtime(req.runtime)
    cost = cost_model(cluster, model, runtime=runtime)
    warm_load = layer_matrix(warmup.load_matrix(windows=1), warmup, model)[0]
    first = inner_planner(req.planner, model, cluster, gpus, slots, cost=cost, seed=req.seed,
                          time_limit_s=req.time_limit_s)(warm_load[None])
    phase, batch = replay_setting(stream, req.batch_tokens)
    base = SimConfig(cluster=cluster, model=model, trace=stream, plan=first, batch_size=batch, phase=phase,
                     seed=req.seed, dispatch=req.dispatch, tp=req.tp, dp=req.dp, runtime=runtime)
    steps = _steps(base)
    grid = dict(candidates) if candidates is not None else candidate_grid(req, steps)
    runs: dict[str, SimResult] = {}
    for label in progress(list(grid), desc="replaying", total=len(grid), enabled=show_progress):
        rc = replan_config(grid[label], first, model, cluster, cost, seed=req.seed, initial_load=warm_load)
        runs[label] = simulate(replace(base, replan=rc), cost)
    scored = {label: _candidate(label, grid[label], r) for label, r in runs.items()}
    static = scored.get(STATIC)
    engine = scored.get(SGLANG_DEFAULT)
    for label, c in scored.items():
        scored[label] = replace(c, gain_vs_static=static.step_time_s / c.step_time_s if static else None,
                                gain_vs_engine=engine.step_time_s / c.step_time_s if engine else None)
    asked = [k for k in scored if k not in BASELINES] or list(scored)
    # ties (e.g. candidates that never re-plan) go to the fewest re-plans, then the label
    best = min(asked, key=lambda k: (scored[k].step_time_s, scored[k].rebalances, k))
    return ReplanChoice(hw=cluster.name, model=model.name, trace=name, gpus=len(gpus), slots_per_gpu=slots,
                        warmup_tokens=warmup.num_tokens, stream_tokens=stream.num_tokens, stream_steps=steps,
                        phase=phase, batch=batch, planner=req.planner, migration=req.migration,
                        candidates=MappingProxyType(scored), best=best, runs=MappingProxyType(runs))


def _steps(cfg: SimConfig) -> int:
    from moesim.sim.workload import build_workload

    return build_workload(cfg.trace, phase=cfg.phase, batch_size=cfg.batch_size, steps=cfg.steps,
                          batch_key=cfg.batch_key).num_steps


def _candidate(label: str, options: ReplanOptions, result: SimResult) -> Candidate:
    s = result.summary()
    rp = s["replan"]
    return Candidate(label=label, options=options, imbalance=rp["imbalance_mean"],
                     step_time_s=float(np.mean(result.step_latency_s)), tokens_per_s=s["tokens_per_s"],
                     rebalances=int(rp["applied"]), migration_bytes=rp["migration_bytes"],
                     stall_s=rp["stall_s"], in_flight_bytes=rp["in_flight_bytes"])


def policy_comparison(req: ReplanSearch, settings: Sequence[tuple[str, ReplanOptions]]) -> ReplanChoice:
    """The same replay for a fixed list of ``(label, options)`` (the report's static / periodic / drift)."""
    return choose_replan(req, candidates=dict(settings))
