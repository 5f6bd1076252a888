"""``replan`` cells: one re-placement setting replayed over a trace (:func:`moesim.workflows.replan_stream.
replay_stream`, what ``moesim plan --replan POLICY`` runs for one candidate: the trace's first
``train_fraction`` plans the initial placement, the rest is served under the policy), so a sweep can vary
policies, intervals, windows, thresholds, migration and the inner planner (docs/replan.md)."""

from __future__ import annotations

import json
from typing import Any

from moesim.errors import UserError
from moesim.sweeps.kinds.simulate import load_trace
from moesim.sweeps.schema import CellKind, Metric, Param
from moesim.vocab import Dispatch, Migration, Replan, choices


def _planners() -> tuple[str, ...]:
    from moesim.planners import PLANNERS
    from moesim.workflows.replan import MOVES

    return tuple(PLANNERS), MOVES


_PLANNERS, _MOVES = _planners()

PARAMS = (
    Param("hw", "str", "hardware profile (built-in name or YAML path)", "--hw", file="hardware",
          required=True),
    Param("nodes", "int", "override the profile's node count", "--nodes", minimum=1),
    Param("model", "str", "model spec (built-in name or YAML path)", "--model", file="model", required=True),
    Param("trace", "str", "routing trace (.npz path or shipped name): warm-up, then the stream",
          "--trace", file="trace", required=True, load=load_trace),
    Param("policy", "str", "re-balancing policy", "--replan", choices=choices(Replan), required=True),
    Param("interval", "int", "steps between the policy's checks", "--replan-interval", minimum=1),
    Param("window", "int", "past steps a plan is made on", "--replan-window", minimum=1),
    Param("threshold", "float", "drift: total variation that triggers a re-plan, in (0, 1]",
          "--replan-threshold", minimum=1e-12, maximum=1.0 + 1e-12),
    Param("hedge_windows", "int", "hedged: windows planned for together", "--hedge-windows", minimum=1),
    Param("migration", "str", "copies block serving or use idle link time", "--migration",
          choices=choices(Migration)),
    Param("planner", "str", "the inner planner of every plan (initial and re-plans)", "--replan-planner",
          choices=_PLANNERS),
    Param("moves", "str", "all: the planner's placement; min: its counts with the fewest moves",
          "--replan-moves", choices=_MOVES),
    Param("batch_tokens", "int", "tokens per step (decode: exactly; prefill: whole prompts adding up to it)",
          "--batch-size", minimum=1),
    Param("train_fraction", "float", "leading share of tokens that plans the initial placement, in (0, 1)",
          "--train-fraction", minimum=1e-12, maximum=1.0),
    Param("slots_per_gpu", "int", "physical expert slots per GPU (default: experts/GPUs + 1)",
          "--slots-per-gpu", minimum=1),
    Param("dispatch", "str", "which replicas a token may use", "--dispatch", choices=choices(Dispatch)),
    Param("seed", "int", "random seed", "--seed", minimum=0),
)

METRICS = (
    Metric("label", "str", "", "the candidate's key in the command's JSON (candidates)"),
    Metric("imbalance", "float", "", "realised imbalance per step (largest GPU's tokens / mean GPU's, mean "
           "over MoE layers), mean over the stream's steps"),
    Metric("step_time_s", "float", "s", "mean step time, blocking migration stalls included"),
    Metric("tokens_per_s", "float", "tokens/s", "stream tokens / simulated seconds"),
    Metric("rebalances", "int", "", "re-plans that took effect"),
    Metric("checks", "int", "", "times the policy was consulted"),
    Metric("migration_bytes", "float", "B", "expert weight bytes copied by the re-plans that took effect"),
    Metric("in_flight_bytes", "float", "B", "bytes of an overlapped copy still in flight when the stream "
           "ended (never served; not in migration_bytes)"),
    Metric("stall_s", "float", "s", "time serving waited for blocking copies (0 when overlapped)"),
    Metric("stream_steps", "int", "", "steps of the stream (after the warm-up)"),
    Metric("stream_tokens", "int", "tokens", "tokens of the stream"),
    Metric("imbalance_per_step", "str", "", "JSON list: the realised imbalance of each step"),
    Metric("step_time_per_step_s", "str", "s", "JSON list: each step's time, stalls included"),
    Metric("replan_steps", "str", "", "JSON list: the first step each applied re-plan served"),
)


def run_replan(p: dict[str, Any]) -> dict[str, Any]:
    """One re-placement setting over the stream: the candidate's figures and its per-step series (as JSON
    text, so the dataset keeps one row per cell)."""
    from moesim.workflows.replan_stream import StreamSetting, replay_stream

    if p["policy"] != str(Replan.STATIC) and p.get("interval") is None:
        raise UserError(f"expected an interval (steps between checks) for policy {p['policy']}",
                        field="interval")
    names = {"interval": "interval_steps", "window": "window_steps", "trace": "traces"}
    given = {names.get(k, k): v for k, v in p.items() if v is not None}
    given["traces"] = (p["trace"],)
    if p.get("window") is None and p.get("interval") is not None:
        given["window_steps"] = p["interval"]  # as plan --replan: its default windows hold the interval
    setting = StreamSetting(**given)
    r = replay_stream(setting)
    out: dict[str, Any] = {"label": setting.label}
    out.update({k: r[k] for k in ("imbalance", "step_time_s", "tokens_per_s", "rebalances", "checks",
                             "migration_bytes", "in_flight_bytes", "stall_s", "stream_steps",
                             "stream_tokens")})
    out["imbalance_per_step"] = json.dumps(r["imbalance_per_step"])
    out["step_time_per_step_s"] = json.dumps(r["step_time_per_step_s"])
    out["replan_steps"] = json.dumps([x["effective_step"] for x in r["replans"]
                                      if x["effective_step"] is not None])
    return out


REPLAN = CellKind(
    name="replan", run=run_replan, verb=("plan",), params=PARAMS, metrics=METRICS,
    headline=("imbalance", "step_time_s", "migration_bytes"),
    doc="one re-placement setting replayed over a trace (moesim plan --replan POLICY): realised balance, "
        "step time and migration",
)
