"""One re-placement setting replayed over a stream, with its per-step series: a report row or sweep cell.

The stream is one trace, or several concatenated in order (a subject switch made of recordings); its
first ``train_fraction`` of tokens plans the initial placement and the rest is served under one policy,
exactly as ``moesim plan --replan`` replays each candidate (:func:`moesim.workflows.replan_search.
choose_replan`), so :func:`stream_argv`'s command line prints the same candidate's numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.sim.replan_results import step_imbalance
from moesim.traces.trace import RoutingTrace
from moesim.vocab import Replan
from moesim.workflows.replan import ReplanOptions
from moesim.workflows.replan_search import STATIC, ReplanSearch, choose_replan

PLAN_TIME_LIMIT_S = 60.0
"""``moesim plan --time-limit``'s default: the ILP's safety net, so the shown command plans alike."""
STREAM_FILE = "STREAM.npz"
"""The file a shown ``moesim trace concat`` writes when the stream is several traces."""


@dataclass(frozen=True)
class StreamSetting:
    """What a re-placement row replays (docs/replan.md has each option)."""

    hw: str
    model: str
    traces: tuple[Any, ...]
    """Trace names or paths (or loaded traces), played one after the other."""
    policy: str = "static"
    interval_steps: int = 8
    window_steps: int = 8
    threshold: float = 0.1
    hedge_windows: int = 4
    migration: str = "blocking"
    planner: str = "eplb"
    moves: str = "all"
    batch_tokens: int = 4096
    train_fraction: float = 0.2
    slots_per_gpu: int | None = None
    nodes: int | None = None
    dispatch: str = "even"
    seed: int = 0

    @property
    def label(self) -> str:
        """The candidate's label in ``moesim plan --replan --json`` (``candidates``)."""
        if self.policy == STATIC:
            return STATIC
        t = f" t={self.threshold:g}" if self.policy == str(Replan.DRIFT) else ""
        return f"{self.policy} n={self.interval_steps} w={self.window_steps}{t}"

    def options(self) -> ReplanOptions:
        return ReplanOptions(policy=self.policy, planner=self.planner, interval_steps=self.interval_steps,
                             window_steps=self.window_steps, threshold=self.threshold,
                             hedge_windows=self.hedge_windows, migration=self.migration, moves=self.moves)


def stream_trace(traces: Sequence[Any]) -> Any:
    """The one trace, or the traces loaded and concatenated (``moesim trace concat``)."""
    if len(traces) == 1:
        return traces[0]
    from moesim.traces.streams import concatenate

    return concatenate([t if isinstance(t, RoutingTrace) else RoutingTrace.load(t) for t in traces])


def stream_argv(s: StreamSetting) -> list[list[str]]:
    """The command lines that print this row's numbers (its ``candidates`` entry, :attr:`label`): a
    ``moesim trace concat`` first when the stream is several traces."""
    names = [str(t) for t in s.traces]
    pre = [["trace", "concat", *names, "--out", STREAM_FILE]] if len(names) > 1 else []
    trace = STREAM_FILE if pre else names[0]
    argv = ["plan", "--hw", s.hw, *(["--nodes", str(s.nodes)] if s.nodes else []), "--model", s.model,
            "--trace", trace, "--replan", s.policy]
    if s.policy != STATIC:
        argv += ["--replan-interval", str(s.interval_steps), "--replan-window", str(s.window_steps)]
        if s.policy == str(Replan.DRIFT):
            argv += ["--replan-threshold", f"{s.threshold:g}"]
        if s.policy == str(Replan.HEDGED):
            argv += ["--hedge-windows", str(s.hedge_windows)]
    argv += ["--replan-planner", s.planner, "--migration", s.migration, "--replan-moves", s.moves,
             "--batch-size", str(s.batch_tokens), "--train-fraction", f"{s.train_fraction:g}",
             *(["--slots-per-gpu", str(s.slots_per_gpu)] if s.slots_per_gpu else []),
             "--dispatch", s.dispatch, "--seed", str(s.seed), "--json"]
    return [*pre, argv]


def replay_stream(s: StreamSetting) -> dict[str, Any]:
    """Replay the stream under ``s``: the candidate's scalars (``plan --replan --json``'s), the stream's
    shape, the re-plans and the per-step series (imbalance, step time) for plots."""
    req = ReplanSearch(hw=s.hw, model=s.model, trace=stream_trace(s.traces), planner=s.planner,
                       migration=s.migration, hedge_windows=s.hedge_windows, moves=s.moves, nodes=s.nodes,
                       slots_per_gpu=s.slots_per_gpu, warmup_fraction=s.train_fraction,
                       batch_tokens=s.batch_tokens, dispatch=s.dispatch, seed=s.seed,
                       time_limit_s=PLAN_TIME_LIMIT_S)
    choice = choose_replan(req, candidates={s.label: s.options()})
    run = choice.runs[s.label]
    summary = run.summary()["replan"]
    c = choice.candidates[s.label].as_dict()
    return {
        "label": s.label, "imbalance": c["imbalance"], "step_time_s": c["step_time_s"],
        "tokens_per_s": c["tokens_per_s"], "rebalances": c["rebalances"],
        "migration_bytes": c["migration_bytes"], "in_flight_bytes": c["in_flight_bytes"],
        "stall_s": c["stall_s"], "checks": summary["checks"],
        "stream_steps": choice.stream_steps, "stream_tokens": choice.stream_tokens,
        "warmup_tokens": choice.warmup_tokens, "phase": choice.phase, "batch": choice.batch,
        "gpus": choice.gpus, "slots_per_gpu": choice.slots_per_gpu,
        "replans": [{k: r.get(k) for k in ("step", "effective_step", "reason", "bytes", "stall_s",
                                          "experts_moved")} for r in summary["rebalances"]],
        "imbalance_per_step": [float(x) for x in np.asarray(step_imbalance(run.gpu_tokens))],
        "step_time_per_step_s": [float(x) for x in np.asarray(run.step_latency_s)],
    }
