"""What every placement planner shares: the request, checks, apportionment, packing and metrics.

A planner maps a :class:`PlanRequest` to a :class:`moesim.plans.plan.Plan`. Loads are token counts
``load[window, moe_layer, expert]`` (how many (token, top-k slot) pairs chose the expert); a
replicated expert's tokens are split evenly over its replicas, the convention of EPLB and of
``Plan.device_load``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.plans.plan import Plan
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel


@dataclass(frozen=True)
class PlanRequest:
    """Everything a placement planner may use.

    ``load`` is ``[W, L, E]`` token counts (W windows of the training part of a trace, L = the
    model's MoE layers, E = its routed experts); a ``[L, E]`` array is taken as one window.
    ``devices`` are the ids of the expert-parallel GPUs, in slot order. ``trace`` (a
    ``moesim.traces.RoutingTrace`` of the training tokens) and ``cost`` (a ``moesim.cost.CostModel``)
    are optional: planners that need them fall back to token counts and say so in ``Plan.params``.
    """

    model: MoEModel
    cluster: Cluster
    devices: tuple[str, ...]
    slots_per_device: int
    load: np.ndarray
    trace: Any = None
    cost: Any = None
    time_limit_s: float = 60.0
    seed: int = 0
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Planner options (``ilp``: ``workers``, ``origin``, ``objective``; see docs/planners.md)."""

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def num_slots(self) -> int:
        return self.num_devices * self.slots_per_device

    def windows(self) -> np.ndarray:
        """``[W, L, E]`` float64 loads."""
        load = np.asarray(self.load, dtype=np.float64)
        return load[None] if load.ndim == 2 else load

    def total_load(self) -> np.ndarray:
        """``[L, E]`` loads summed over windows."""
        return self.windows().sum(axis=0)

    def node_of_device(self) -> np.ndarray:
        """``[G]`` index (0..N-1) of the node of each device, in order of first appearance."""
        nodes = [self.cluster.device(d).node for d in self.devices]
        order = {n: i for i, n in enumerate(dict.fromkeys(nodes))}
        return np.array([order[n] for n in nodes], dtype=np.int64)


def check_request(req: PlanRequest) -> None:
    """Raise :class:`UserError` for a request no planner can satisfy."""
    E, L = req.model.num_experts, req.model.num_moe_layers
    if req.num_devices < 1:
        raise UserError("expected at least one GPU to place experts on", field="devices")
    for d in req.devices:
        try:
            req.cluster.device(d)
        except KeyError:
            raise UserError(f"no device {d!r} in cluster {req.cluster.name}", field="devices") from None
    if req.slots_per_device < 1:
        raise UserError(f"expected at least 1 slot per GPU, got {req.slots_per_device}",
                        field="slots_per_device")
    if req.num_slots < E:
        raise UserError(
            f"{req.num_devices} GPUs x {req.slots_per_device} slots = {req.num_slots} slots cannot hold "
            f"the {E} experts of {req.model.name} (need at least {-(-E // req.num_devices)} slots per GPU)",
            field="slots_per_device",
        )
    if req.slots_per_device > E:
        raise UserError(
            f"{req.slots_per_device} slots per GPU exceed the {E} experts of {req.model.name}: a GPU "
            "may hold at most one copy of each expert",
            field="slots_per_device",
        )
    w = req.windows()
    if w.ndim != 3 or w.shape[1:] != (L, E):
        raise UserError(
            f"expected load [windows, {L} MoE layers, {E} experts], got shape {tuple(np.shape(req.load))}",
            field="load",
        )
    if not np.isfinite(w).all() or (w < 0).any():
        raise UserError("expected finite, non-negative token counts", field="load")


def make_plan(req: PlanRequest, name: str, placement: np.ndarray, **extra: Any) -> Plan:
    """A :class:`Plan` for ``req`` with ``placement[L, G, S]``; ``extra`` goes to Plan fields/params."""
    params = dict(extra.pop("params", {}))
    predicted = dict(extra.pop("predicted", {}))
    plan = Plan(
        planner=name,
        model=req.model.name,
        devices=tuple(req.devices),
        moe_layers=tuple(req.model.moe_layers),
        num_experts=req.model.num_experts,
        placement=np.asarray(placement, dtype=np.int32),
        params=MappingProxyType(params),
        predicted=MappingProxyType(predicted),
        **extra,
    )
    return plan


# ---- replica counts -----------------------------------------------------------------------------


def apportion(weights: np.ndarray, total: int, *, max_per_item: int | None = None) -> np.ndarray:
    """Jefferson/D'Hondt: one replica each, then each extra one to ``argmax(w / count)``.

    Minimises ``max_e w_e / c_e`` for ``sum c = total`` (capped at ``max_per_item`` replicas, so no
    GPU has to hold two copies). Ties go to the lowest index, so the result is deterministic.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = w.size
    cap = max_per_item if max_per_item is not None else total
    total = min(total, n * cap)
    counts = np.ones(n, dtype=np.int64)
    heap = [(-w[i], i) for i in range(n) if cap > 1]
    heapq.heapify(heap)
    for _ in range(total - n):
        if not heap:
            break
        _, i = heapq.heappop(heap)
        counts[i] += 1
        if counts[i] < cap:
            heapq.heappush(heap, (-w[i] / counts[i], i))
    return counts


# ---- packing ------------------------------------------------------------------------------------


def lpt_pack(items: np.ndarray, sizes: np.ndarray, num_devices: int, slots: int, *,
             forbid_duplicates: bool = True) -> np.ndarray:
    """Longest-processing-time packing of replicas into ``num_devices`` bins of ``slots`` each.

    ``items[i]`` is the logical expert of replica i, ``sizes[i]`` its load. Replicas go, largest
    first, to the lightest device that has a free slot (and, with ``forbid_duplicates``, no copy of
    that expert yet). Returns ``[G, S]`` expert ids, ``-1`` for unused slots.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    order = np.lexsort((items, -sizes))
    load = [0.0] * num_devices
    fill = [0] * num_devices
    out = np.full((num_devices, slots), -1, dtype=np.int64)
    held: list[set[int]] = [set() for _ in range(num_devices)]
    # devices with a free slot by (load, index): the heap's top is numpy's first argmin
    heap = [(0.0, g) for g in range(num_devices)] if slots > 0 else []
    item_list, size_list = np.asarray(items).tolist(), sizes.tolist()
    for i in order.tolist():
        e = item_list[i]
        skipped = []
        while heap and forbid_duplicates and e in held[heap[0][1]]:
            skipped.append(heapq.heappop(heap))
        if heap:
            _, g = heapq.heappop(heap)
        else:  # every free device holds e: unavoidable, repair_duplicates() fixes it afterwards
            g = skipped.pop(0)[1]
        for entry in skipped:
            heapq.heappush(heap, entry)
        out[g, fill[g]] = e
        fill[g] += 1
        load[g] += size_list[i]
        held[g].add(e)
        if fill[g] < slots:
            heapq.heappush(heap, (load[g], g))
    return out


def duplicate_slots(placement: np.ndarray) -> int:
    """Slots holding a second (third...) copy of an expert already on the same device."""
    rows = np.sort(np.asarray(placement).reshape(-1, placement.shape[-1]), axis=1)
    return int(((rows[:, 1:] == rows[:, :-1]) & (rows[:, 1:] >= 0)).sum())


def layer_device_load(layer_placement: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``[G]`` load of each device for one layer, replicas split evenly."""
    ids = layer_placement[layer_placement >= 0]
    counts = np.bincount(ids, minlength=weights.size)
    per = np.divide(weights, counts, out=np.zeros_like(weights, dtype=np.float64), where=counts > 0)
    return np.where(layer_placement >= 0, per[np.maximum(layer_placement, 0)], 0.0).sum(axis=1)


def repair_duplicates(layer_placement: np.ndarray, weights: np.ndarray,
                      groups: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Swap away same-device duplicate replicas, choosing each swap to keep the max load lowest.

    A duplicate copy on device a is exchanged with a slot of another device b (of the same
    ``groups[b]`` when given, e.g. the same node for hierarchical EPLB) such that neither device
    then holds two copies. Returns the repaired ``[G, S]`` placement and the number of swaps.
    """
    p = layer_placement.copy()
    G = p.shape[0]
    swaps = 0
    counts = np.bincount(p[p >= 0], minlength=weights.size)
    per = np.divide(weights, counts, out=np.zeros_like(weights, dtype=np.float64), where=counts > 0)
    for a in range(G):
        for s in range(p.shape[1]):
            e = p[a, s]
            if e < 0 or np.count_nonzero(p[a] == e) < 2:
                continue
            best = None
            load = layer_device_load(p, weights)
            # same group first; only when that is impossible (more copies than GPUs in the group) any
            for same_group_only in ((True, False) if groups is not None else (False,)):
                for b in range(G):
                    if b == a or e in p[b] or (same_group_only and groups[b] != groups[a]):
                        continue
                    for t in range(p.shape[1]):
                        f = p[b, t]
                        if f >= 0 and f in p[a]:
                            continue
                        delta = per[e] - (per[f] if f >= 0 else 0.0)
                        new_max = max(load[a] - delta, load[b] + delta)
                        if best is None or new_max < best[0]:
                            best = (new_max, b, t)
                if best is not None:
                    break
            if best is None:
                continue
            _, b, t = best
            p[a, s], p[b, t] = p[b, t], p[a, s]
            swaps += 1
    return p, swaps


# ---- metrics ------------------------------------------------------------------------------------


def gpu_imbalance(plan: Plan, load: np.ndarray) -> float:
    """Per layer max-GPU / mean-GPU load (replicas split evenly), averaged over layers."""
    load = np.asarray(load, dtype=np.float64)
    if load.ndim == 3:
        load = load.sum(axis=0)
    return float(plan.imbalance(load).mean())
