"""Greedy: Jefferson apportionment of replicas, then longest-processing-time packing, no duplicates."""

from __future__ import annotations

import numpy as np

from moesim.planners.base import (
    PlanRequest,
    apportion,
    check_request,
    duplicate_slots,
    lpt_pack,
    make_plan,
    repair_duplicates,
)
from moesim.plans.plan import Plan


def greedy_layer(weights: np.ndarray, num_devices: int, slots: int) -> np.ndarray:
    """``[G, S]`` placement of one layer: replicas by D'Hondt (at most one per GPU), LPT packing."""
    counts = apportion(weights, num_devices * slots, max_per_item=num_devices)
    items = np.repeat(np.arange(weights.size), counts)
    sizes = (weights / counts)[items]
    layer = lpt_pack(items, sizes, num_devices, slots, forbid_duplicates=True)
    if duplicate_slots(layer):
        layer, _ = repair_duplicates(layer, weights)
    return layer


def plan_greedy(req: PlanRequest) -> Plan:
    """Longest-processing-time with replication of the heaviest experts, on the summed training load."""
    check_request(req)
    load = req.total_load()
    placement = np.stack([greedy_layer(load[layer], req.num_devices, req.slots_per_device)
                          for layer in range(load.shape[0])])
    return make_plan(req, "greedy", placement, params={"replicas": "jefferson", "packing": "lpt"})
