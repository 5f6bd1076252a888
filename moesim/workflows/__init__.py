"""The library layer under the command line and the reports: one typed function per workflow.

``moesim plan`` is :func:`compare_planners`, ``moesim simulate`` is :func:`simulate_run` (with
``--workload``: :func:`serve_run`), ``moesim trace stats`` is :func:`trace_statistics`; the report
cells call the same functions (and :func:`simulate_plan`, :func:`static_cache_pin`), so a report's
numbers are the commands' numbers.
"""

from __future__ import annotations

from moesim.workflows.caching import StaticPin, static_budget_bytes, static_cache_pin, static_hit_rate
from moesim.workflows.inputs import cost_model
from moesim.workflows.placement import (
    PLANNER_NAMES,
    PlacementRequest,
    PlannerComparison,
    PlannerRow,
    compare_planners,
    layer_matrix,
)
from moesim.workflows.serving import ServeRun, serve_curve, serve_run
from moesim.workflows.simulation import SimRun, replay_setting, simulate_plan, simulate_run
from moesim.workflows.traces import trace_statistics

__all__ = [
    "PLANNER_NAMES",
    "PlacementRequest",
    "PlannerComparison",
    "PlannerRow",
    "ServeRun",
    "SimRun",
    "StaticPin",
    "compare_planners",
    "cost_model",
    "layer_matrix",
    "replay_setting",
    "serve_curve",
    "serve_run",
    "simulate_plan",
    "simulate_run",
    "static_budget_bytes",
    "static_cache_pin",
    "static_hit_rate",
    "trace_statistics",
]
