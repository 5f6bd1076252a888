"""Placement planners: one interface (PlanRequest -> Plan), one module each.

``PLANNERS`` maps a name to its planner; ``plan(name, request)`` runs one. Caching/offload
planning lives in ``moesim.planners.cache_ilp``.
"""

from __future__ import annotations

from collections.abc import Callable

from moesim.errors import UserError
from moesim.planners.base import PlanRequest
from moesim.planners.contiguous import plan_contiguous
from moesim.planners.engine_default import plan_engine_default
from moesim.planners.eplb import plan_eplb, plan_eplb_hierarchical
from moesim.planners.greedy import plan_greedy
from moesim.planners.placement_ilp import plan_ilp
from moesim.planners.round_robin import plan_round_robin
from moesim.plans.plan import Plan

PLANNERS: dict[str, Callable[[PlanRequest], Plan]] = {
    "engine-default": plan_engine_default,
    "contiguous": plan_contiguous,
    "round-robin": plan_round_robin,
    "greedy": plan_greedy,
    "eplb": plan_eplb,
    "eplb-hierarchical": plan_eplb_hierarchical,
    "ilp": plan_ilp,
}

BASELINE_PLANNER = "engine-default"
"""The layout every "speedup" is measured against: what SGLang and vLLM serve before any statistics."""


def plan(name: str, request: PlanRequest) -> Plan:
    """Run planner ``name`` on ``request``; the plan is validated before it is returned."""
    if name not in PLANNERS:
        raise UserError(f"expected a planner among {', '.join(PLANNERS)}, got {name!r}", field="planner")
    result = PLANNERS[name](request)
    result.validate(request.model)
    return result


__all__ = ["BASELINE_PLANNER", "PLANNERS", "PlanRequest", "plan"]
