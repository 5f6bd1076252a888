"""The engines' default layout as a planner (the layout itself lives in :mod:`moesim.plans.default`)."""

from __future__ import annotations

import numpy as np

from moesim.planners.base import PlanRequest, check_request, make_plan
from moesim.plans.default import EXTRA_SLOTS_NOTE, contiguous_placement
from moesim.plans.plan import Plan


def plan_contiguous(req: PlanRequest) -> Plan:
    """Blocks of consecutive experts per GPU; load-agnostic (Megatron/vLLM ``linear``, SGLang ``trivial``).

    Extra slots (``G*S > E``) are filled as the engines fill redundant slots, with copies of
    experts 0, 1, 2, ... in order, not the hottest: this is the layout a user gets by default.
    """
    check_request(req)
    L = req.model.num_moe_layers
    layer = contiguous_placement(req.model.num_experts, req.num_devices, req.slots_per_device)
    return make_plan(req, "contiguous", np.broadcast_to(layer, (L, *layer.shape)).copy(),
                     params={"extra_slots": EXTRA_SLOTS_NOTE})
