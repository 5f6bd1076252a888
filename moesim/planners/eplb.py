"""DeepSeek's EPLB, re-implemented from its description (github.com/deepseek-ai/EPLB README and
eplb.py @d52c72d, MIT), not its code.

Three greedy steps per layer: (1) pack expert groups onto nodes by load (cardinality-constrained
LPT), (2) inside each node give extra replicas by Jefferson/D'Hondt (``argmax load / count``,
no cap), (3) pack each node's replicas onto its GPUs with LPT, exactly ``R/G`` per GPU. The
global policy is the hierarchical one with one group on one node (as upstream since e1100fe).

Upstream can put two copies of one expert on one GPU (deepseek-ai/EPLB issue #22). moesim keeps
EPLB's decisions but cannot accept such a plan (``Plan.validate``: a duplicate is a wasted slot,
and vLLM-Ascend's loader overwrites it), so the duplicates are **repaired by swapping**: each
surplus copy is exchanged with a slot of another GPU (of the same node under the hierarchical
policy) chosen to keep the layer's max GPU load lowest. The count of duplicate slots EPLB made and
its imbalance before repair are kept in ``Plan.params`` (``eplb_duplicate_slots``,
``imbalance_train_unrepaired``) so the defect stays visible. Where EPLB gives an expert more
copies than there are GPUs (in its node), no swap can help; that layer is re-run with the
replica count capped at one per GPU (``capped_layers`` counts them).
"""

from __future__ import annotations

import numpy as np

from moesim.errors import UserError
from moesim.planners.base import (
    PlanRequest,
    apportion,
    check_request,
    duplicate_slots,
    layer_device_load,
    make_plan,
    repair_duplicates,
)
from moesim.plans.plan import Plan


def balanced_packing(weights: np.ndarray, num_packs: int) -> np.ndarray:
    """EPLB step 1/3: heaviest item first to the lightest pack that still has room.

    Every pack gets exactly ``len(weights) / num_packs`` items. Returns the pack of each item.
    """
    n = weights.size
    per_pack = n // num_packs
    pack_of = np.empty(n, dtype=np.int64)
    load = np.zeros(num_packs)
    fill = np.zeros(num_packs, dtype=np.int64)
    for i in np.argsort(-weights, kind="stable"):
        room = np.flatnonzero(fill < per_pack)
        p = int(room[np.argmin(load[room])])
        pack_of[i] = p
        load[p] += weights[i]
        fill[p] += 1
    return pack_of


def rebalance_layer(weights: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                    num_gpus: int, *, cap: bool = False) -> np.ndarray:
    """EPLB for one layer: ``[num_gpus, num_replicas // num_gpus]`` logical ids (duplicates possible).

    ``cap=True`` (not upstream) limits an expert to one replica per GPU of its node, so that a
    duplicate-free layout exists; used only where upstream's counts make one impossible.
    """
    E = weights.size
    group_size = E // num_groups
    experts_per_node = E // num_nodes
    gpus_per_node = num_gpus // num_nodes
    slots = num_replicas // num_gpus
    # 1: groups -> nodes; node n gets the experts of its groups in order (node-major relabelling)
    group_load = weights.reshape(num_groups, group_size).sum(axis=1)
    node_of_group = balanced_packing(group_load, num_nodes)
    out = np.full((num_gpus, slots), -1, dtype=np.int64)
    for node in range(num_nodes):
        experts = np.concatenate([np.arange(g * group_size, (g + 1) * group_size)
                                  for g in np.flatnonzero(node_of_group == node)])
        assert experts.size == experts_per_node
        w = weights[experts]
        # 2: replicas inside the node, D'Hondt with no per-GPU cap (as upstream)
        counts = apportion(w, num_replicas // num_nodes, max_per_item=gpus_per_node if cap else None)
        items = np.repeat(np.arange(experts.size), counts)
        sizes = (w / counts)[items]
        # 3: replicas -> GPUs of the node, exactly `slots` each
        pack = balanced_packing(sizes, gpus_per_node)
        for p in range(gpus_per_node):
            out[node * gpus_per_node + p] = experts[items[pack == p]]
    return out


def plan_eplb(req: PlanRequest, *, hierarchical: bool = False) -> Plan:
    """EPLB's global policy (``hierarchical=False``) or its hierarchical one, duplicates repaired."""
    check_request(req)
    E, G = req.model.num_experts, req.num_devices
    node_of = req.node_of_device()
    nodes = int(node_of.max()) + 1
    groups = max(1, req.model.num_expert_groups)
    policy = "global"
    if hierarchical:
        if E % groups == 0 and groups % nodes == 0 and G % nodes == 0 and req.num_slots % nodes == 0:
            policy = "hierarchical"
        else:  # upstream: hierarchical iff num_groups % num_nodes == 0, else the global policy
            policy = f"global (fallback: {groups} expert groups on {nodes} nodes)"
    if policy == "hierarchical" and np.any(np.diff(node_of) < 0):
        raise UserError("hierarchical EPLB needs the GPUs listed node by node", field="devices")
    load = req.total_load()
    raw, fixed = [], []
    swaps = capped = 0
    shape = (groups, nodes) if policy == "hierarchical" else (1, 1)
    for layer in range(load.shape[0]):
        p = rebalance_layer(load[layer], req.num_slots, *shape, G)
        raw.append(p)
        if duplicate_slots(p):
            p, n = repair_duplicates(p, load[layer], node_of if policy == "hierarchical" else None)
            swaps += n
        if duplicate_slots(p):  # more copies than GPUs: no swap can help, cap the replica counts
            p = rebalance_layer(load[layer], req.num_slots, *shape, G, cap=True)
            p, n = repair_duplicates(p, load[layer], node_of if policy == "hierarchical" else None)
            swaps += n
            capped += 1
        fixed.append(p)
    raw_arr = np.stack(raw)
    unrepaired = []
    for layer in range(load.shape[0]):
        dev = layer_device_load(raw_arr[layer], load[layer])
        unrepaired.append(dev.max() / dev.mean() if dev.mean() > 0 else 1.0)
    name = "eplb-hierarchical" if hierarchical else "eplb"
    return make_plan(req, name, np.stack(fixed), params={
        "policy": policy,
        "num_groups": groups if policy == "hierarchical" else 1,
        "num_nodes": nodes if policy == "hierarchical" else 1,
        "eplb_duplicate_slots": duplicate_slots(raw_arr),
        "repair_swaps": swaps,
        "capped_layers": capped,
        "imbalance_train_unrepaired": float(np.mean(unrepaired)),
    })


def plan_eplb_hierarchical(req: PlanRequest) -> Plan:
    return plan_eplb(req, hierarchical=True)
