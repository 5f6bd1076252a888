"""Tensor parallelism inside experts in the simulator: routing to EP groups and their collectives.

With ``expert_tp`` = k > 1 (:mod:`moesim.parallel`, :mod:`moesim.plans.ep_groups`) the G GPUs form
G / k EP groups of k consecutive GPUs. Per MoE layer, as Megatron-Core's all-to-all dispatcher does
(``MoEAlltoAllTokenDispatcher``, token_dispatcher.py @0014f13):

1. the dispatch all-to-all sends each (token, expert) copy from its GPU ``i`` to the member of the
   expert's group at the same position, ``group * k + i mod k`` (:meth:`ExpertGroups.route`: the
   expert ids are renamed per position so the ordinary dispatch counts these pairs exactly);
2. each group all-gathers what its members received (every member then has all of the group's
   copies; ring ``all_gather`` of the group's copies x dispatch bytes);
3. every member runs its 1/k shard of the group's experts on all of them (:meth:`gathered`);
4. the group reduce-scatters the partial outputs (ring ``reduce_scatter`` of the group's copies x
   combine bytes), and the combine all-to-all returns each member's share to its source GPU.

The recorded ``tokens`` of a GPU stay the copies it received (their sum over GPUs is the trace's
pairs); its expert time is that of its shard on the gathered copies.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.parallel import Parallelism
from moesim.plans.plan import Plan
from moesim.specs.model import MoEModel


@dataclass(frozen=True)
class ExpertGroups:
    """The EP groups of a run: ``expert_tp`` GPUs each, in the plan's device order."""

    expert_tp: int
    num_experts: int
    groups: tuple[tuple[str, ...], ...]

    @classmethod
    def of_run(cls, parallel: Parallelism, model: MoEModel, devices: tuple[str, ...], *, cached: bool,
               replan: bool) -> ExpertGroups | None:
        """The EP groups of a run (None without expert TP); refused with an expert cache or
        re-placement (expert TP is simulated with every expert resident, one plan)."""
        if parallel.expert_tp == 1:
            return None
        if cached or replan:
            raise UserError(f"--ep {parallel.ep} shards experts over {parallel.expert_tp} GPUs, which is "
                            "simulated with every expert resident and one plan: drop the expert cache "
                            "and the re-placement", field="--replan" if replan else "--cache-policy")
        return cls(parallel.expert_tp, model.num_experts, tuple(parallel.expert_groups(devices)))

    def routing_plan(self, plan: Plan) -> Plan:
        """``plan`` with the copies of expert e that position-r senders use named ``e + r * E``: GPU g
        holds the names of position ``g mod k`` only, so a plain replica table routes a sender at
        position r to its group peers at position r (replicas in several groups stay replicas)."""
        k, E = self.expert_tp, self.num_experts
        p = np.asarray(plan.placement).astype(np.int64)
        pos = (np.arange(p.shape[1], dtype=np.int64) % k)[None, :, None]
        renamed = np.where(p >= 0, p + pos * E, -1).astype(np.int32)
        return replace(plan, placement=renamed, num_experts=E * k, expert_tp=1, cache=None)

    def route(self, ids: np.ndarray, owner: np.ndarray) -> np.ndarray:
        """``ids`` [S, B, L, K] renamed for their sender's position (``owner`` [S, B] GPU of each
        token); -1 stays -1."""
        k, E = self.expert_tp, self.num_experts
        dtype = np.int16 if E * k <= np.iinfo(np.int16).max else np.int32
        shift = ((owner % k) * E).astype(dtype)[:, :, None, None]
        return np.where(ids >= 0, ids.astype(dtype) + shift, -1).astype(dtype)

    def gathered(self, slot_tokens: np.ndarray) -> np.ndarray:
        """[S, L, G, J] copies each GPU computes after the group's all-gather: its group's sum."""
        S, L, G, J = slot_tokens.shape
        k = self.expert_tp
        total = slot_tokens.reshape(S, L, G // k, k, J).sum(axis=3)
        return np.repeat(total, k, axis=2)

    def group_copies(self, slot_tokens: np.ndarray) -> np.ndarray:
        """[S, L, groups] copies each group received in the dispatch."""
        S, L, G, _J = slot_tokens.shape
        return slot_tokens.reshape(S, L, G // self.expert_tp, -1).sum(axis=3)

    def collective_s(self, cost: Any, nbytes: np.ndarray, kind: str) -> np.ndarray:
        """[S, L, G] seconds of one ring ``kind`` per group with ``nbytes`` [S, L, groups] (the whole
        buffer: the gathered copies), every member of a group taking its time."""
        out = np.zeros(nbytes.shape)
        for j, group in enumerate(self.groups):
            col = nbytes[:, :, j]
            uniq, inverse = np.unique(col, return_inverse=True)
            times = np.asarray(cost.all_reduce_s(group, uniq, kind), dtype=float)
            out[:, :, j] = np.broadcast_to(times, uniq.shape)[inverse.ravel()].reshape(col.shape)
        return np.repeat(out, self.expert_tp, axis=2)
