"""Round-robin layout: expert e on GPU e mod G (vLLM's ``round_robin`` placement strategy)."""

from __future__ import annotations

import numpy as np

from moesim.planners.base import PlanRequest, check_request, make_plan
from moesim.plans.default import EXTRA_SLOTS_NOTE, fill_extra_slots
from moesim.plans.plan import Plan


def plan_round_robin(req: PlanRequest) -> Plan:
    """Expert e on GPU ``e % G``; extra slots hold copies of experts 0, 1, 2, ...; load-agnostic."""
    check_request(req)
    E, G, L = req.model.num_experts, req.num_devices, req.model.num_moe_layers
    rows: list[list[int]] = [[] for _ in range(G)]
    for e in range(E):
        rows[e % G].append(e)
    layer = fill_extra_slots(rows, req.slots_per_device, E)
    return make_plan(req, "round-robin", np.broadcast_to(layer, (L, *layer.shape)).copy(),
                     params={"extra_slots": EXTRA_SLOTS_NOTE})
