"""The layout SGLang and vLLM start from with redundant expert slots: physical slot p holds p mod E.

Both engines number the ``G*S`` physical expert slots globally and give rank r the block
``r*S .. (r+1)*S - 1``; their initial physical-to-logical map is ``p mod E``, so the ``G*S - E``
redundant slots hold copies of experts 0, 1, 2, ... on the last ranks:

- SGLang ``ExpertLocationMetadata.init_trivial`` (``arange(num_physical) % num_logical``) and
  ``_compute_gpu_id_of_physical_expert`` (``physical // num_local_physical``),
  python/sglang/srt/eplb/expert_location.py @ 01fec5c2e61f;
- vLLM ``EplbState.build_initial_global_physical_to_logical_map`` (``range(E)`` then
  ``i % E`` for the redundant ones), vllm/distributed/eplb/eplb_state.py @ 0014ec6c58e1, with
  the ``linear`` placement of ``determine_expert_map`` (contiguous blocks of physical experts per
  rank), vllm/model_executor/layers/fused_moe/layer.py @ c439a139790c.

It is what a user serves before any load statistics exist, hence the baseline of every speedup.
It differs from ``contiguous`` (which keeps ``E/G`` experts per GPU and spreads the copies) as soon
as there are redundant slots. ``S <= E`` (``check_request``) means no rank gets two copies.
"""

from __future__ import annotations

import numpy as np

from moesim.planners.base import PlanRequest, check_request, make_plan
from moesim.plans.plan import Plan


def engine_default_layer(num_experts: int, num_devices: int, slots: int) -> np.ndarray:
    """``[G, S]``: GPU g's slot s is physical expert ``p = g*S + s``, holding logical ``p mod E``."""
    return (np.arange(num_devices * slots) % num_experts).reshape(num_devices, slots)


def plan_engine_default(req: PlanRequest) -> Plan:
    """Physical slot p holds expert ``p mod E``, in rank blocks of S slots; the same for every layer."""
    check_request(req)
    layer = engine_default_layer(req.model.num_experts, req.num_devices, req.slots_per_device)
    placement = np.broadcast_to(layer, (req.model.num_moe_layers, *layer.shape)).copy()
    return make_plan(req, "engine-default", placement,
                     params={"physical_to_logical": "p mod E, rank r holds p = r*S .. r*S+S-1"})
