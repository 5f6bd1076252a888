"""How a static placement decays: planned on one window of load, measured on the next.

The planners see token counts only here (``load_only_request``: G anonymous GPUs on one node, no
cost model), so any planner that needs nothing else runs: greedy, EPLB, the load-agnostic layouts.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from moesim.errors import UserError
from moesim.planners import plan
from moesim.planners.base import PlanRequest, gpu_imbalance
from moesim.specs.hardware import Cluster, Device, DeviceSpec
from moesim.specs.model import AttentionSpec, MoEModel

DEFAULT_PLANNER = "greedy"


def default_slots(num_experts: int, gpus: int) -> int:
    """One spare slot per GPU beyond an even split (``moesim plan``'s default), at most E."""
    return min(num_experts, -(-num_experts // gpus) + 1)


def load_only_request(load: np.ndarray, *, gpus: int, slots: int, layer_ids: np.ndarray | None = None,
                      seed: int = 0) -> PlanRequest:
    """A PlanRequest for token counts alone (``[W, L, E]`` or ``[L, E]``): the model and the cluster
    carry shapes, not hardware."""
    if gpus < 1:
        raise UserError(f"expected at least 1 GPU, got {gpus}", field="devices")
    load = np.asarray(load, np.float64)
    num_layers, num_experts = load.shape[-2:]
    lids = tuple(int(x) for x in (np.arange(num_layers) if layer_ids is None else layer_ids))
    model = MoEModel(name="trace", num_layers=max(lids) + 1, moe_layers=lids, hidden_size=1,
                     expert_intermediate_size=1, num_experts=int(num_experts), top_k=1,
                     attention=AttentionSpec("gqa", 1, 1, 1))
    spec = DeviceSpec(model="any GPU", kind="gpu", memory_bytes=0.0, memory_bandwidth_bytes_per_s=0.0,
                      peak_flops_per_s={})
    devices = tuple(Device(f"gpu{g}", 0, spec) for g in range(gpus))
    cluster = Cluster(name=f"{gpus} GPUs", nodes=1, devices=devices, switches=(), links=())
    return PlanRequest(model=model, cluster=cluster, devices=tuple(d.id for d in devices),
                       slots_per_device=slots, load=load, seed=seed)


def static_plan_imbalance(window_load: np.ndarray, *, gpus: int, slots: int, planner: str = DEFAULT_PLANNER,
                          layer_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(next [W-1], same [W])``: imbalance of a plan made on window w, on window w+1 and on w itself.

    Each value is the mean over layers of max-GPU / mean-GPU load (``base.gpu_imbalance``).
    """
    load = np.asarray(window_load, np.float64)
    base = load_only_request(load[0], gpus=gpus, slots=slots, layer_ids=layer_ids)
    nxt, same = [], []
    for w in range(load.shape[0]):
        p = plan(planner, replace(base, load=load[w]))
        same.append(gpu_imbalance(p, load[w]))
        if w + 1 < load.shape[0]:
            nxt.append(gpu_imbalance(p, load[w + 1]))
    return np.array(nxt), np.array(same)


__all__ = ["DEFAULT_PLANNER", "default_slots", "load_only_request", "static_plan_imbalance"]
