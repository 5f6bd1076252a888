"""The engines' default layout: expert e on GPU ``e * G // E``, extra slots hold replicas of experts
0, 1, 2, ... in order, every expert resident. The simulator runs it when no plan is given; the
``contiguous`` planner returns the same placement."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from moesim.errors import UserError
from moesim.plans.ep_groups import expand, group_devices
from moesim.plans.plan import Plan
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel

EXTRA_SLOTS_NOTE = "replicas of experts 0, 1, 2, ... (engine default)"


def fill_extra_slots(rows: list[list[int]], slots: int, num_experts: int) -> np.ndarray:
    """Fill free slots with extra replicas of experts 0, 1, 2, ... (the engines' default redundancy).

    SGLang's trivial layout and vLLM's initial map give redundant physical slot j expert
    ``j % num_experts``; here each extra copy goes to the first device with a free slot that does
    not hold that expert yet. Returns ``[G, S]`` (``-1`` where nothing fits without a duplicate).
    """
    G = len(rows)
    out = np.full((G, slots), -1, dtype=np.int64)
    for g, r in enumerate(rows):
        out[g, : len(r)] = r
    free = sum(slots - len(r) for r in rows)
    e = 0
    for _ in range(free):
        for _attempt in range(num_experts):
            cand = [g for g in range(G) if (out[g] < 0).any() and e not in out[g]]
            if cand:
                g = cand[0]
                out[g, np.flatnonzero(out[g] < 0)[0]] = e
                e = (e + 1) % num_experts
                break
            e = (e + 1) % num_experts
    return out


def contiguous_placement(num_experts: int, num_devices: int, slots_per_device: int) -> np.ndarray:
    """``[G, S]`` one layer's slots: blocks of consecutive experts per device (Megatron/vLLM
    ``linear``, SGLang ``trivial``), free slots filled by :func:`fill_extra_slots`."""
    rows: list[list[int]] = [[] for _ in range(num_devices)]
    for e in range(num_experts):
        rows[e * num_devices // num_experts].append(e)
    return fill_extra_slots(rows, slots_per_device, num_experts)


def default_plan(model: MoEModel, cluster: Cluster, ep: int | None = None) -> Plan:
    """Contiguous placement on every GPU of ``cluster``, as few slots as hold every expert once; with
    ``ep`` below the GPU count, on ``ep`` EP groups of GPUs / ep GPUs (:mod:`moesim.plans.ep_groups`)."""
    gpus = tuple(d.id for d in cluster.gpus)
    if not gpus:
        raise UserError(f"cluster {cluster.name} has no GPU to place experts on", field="devices")
    k = len(gpus) // ep if ep is not None and 0 < ep < len(gpus) and len(gpus) % ep == 0 else 1
    owners = group_devices(gpus, k)
    E, L = model.num_experts, model.num_moe_layers
    slots = min(E, -(-E // len(owners)))
    layer = contiguous_placement(E, len(owners), slots)
    plan = Plan(planner="contiguous", model=model.name, devices=owners, moe_layers=tuple(model.moe_layers),
                num_experts=E, placement=np.broadcast_to(layer, (L, *layer.shape)).astype(np.int32),
                params=MappingProxyType({"extra_slots": EXTRA_SLOTS_NOTE}))
    return expand(plan, gpus, k)
