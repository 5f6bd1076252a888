"""The engines' default layout: expert e on GPU e*G//E, extra slots hold replicas of experts 0, 1, ..."""

from __future__ import annotations

import numpy as np

from moesim.planners.base import PlanRequest, check_request, fill_extra_slots, make_plan
from moesim.plans.plan import Plan


def plan_contiguous(req: PlanRequest) -> Plan:
    """Blocks of consecutive experts per GPU; load-agnostic (Megatron/vLLM ``linear``, SGLang ``trivial``).

    Extra slots (``G*S > E``) are filled as the engines fill redundant slots, with copies of
    experts 0, 1, 2, ... in order, not the hottest: this is the layout a user gets by default.
    """
    check_request(req)
    E, G, L = req.model.num_experts, req.num_devices, req.model.num_moe_layers
    rows: list[list[int]] = [[] for _ in range(G)]
    for e in range(E):
        rows[e * G // E].append(e)
    layer = fill_extra_slots(rows, req.slots_per_device, E)
    return make_plan(req, "contiguous", np.broadcast_to(layer, (L, *layer.shape)).copy(),
                     params={"extra_slots": "replicas of experts 0, 1, 2, ... (engine default)"})
