"""The time of one serving step, priced by the simulator's own step costing.

A step is a batch of (request, positions) work items on one instance. Its trace rows are dispatched
through the instance's plan (:func:`moesim.sim.dispatch.dispatch`, tokens owned by their request's
GPU) and priced by :class:`moesim.sim.stepcost.StepCoster`: router, shared experts and
permute/combine per GPU, the grouped expert call per GPU, the dispatch and combine all-to-alls. Only
attention is priced here, per GPU from its own requests: a work item of ``n`` positions starting at
context ``a`` attends ``n a + n (n + 1) / 2`` keys in all (causal); a GPU's prefill items and its
decode items are two attention calls of their mean context (exact for the FLOPs and the KV bytes,
which are linear in the keys), and a GPU with both reads the projection weights once (the time of
one lone decode token, weights and launches, is taken off the sum). The step takes, per layer, the
slowest GPU's attention and pre-dispatch work + dispatch + the slowest GPU's experts + combine.

The all-to-all mode (:mod:`moesim.cost.a2a`) is the run's, or by default chosen per step as SGLang's
``--deepep-mode auto`` does: ``flat`` inside one node; across nodes DeepEP's normal (``hierarchical``)
kernels for a step holding any prefill, its low-latency kernels for a decode-only step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.cost.a2a import AllToAllSpec, default_mode, forwarding
from moesim.cost.transfers import host_of
from moesim.plans.plan import Plan
from moesim.sim.dispatch import Dispatch, NodeCounting, ReplicaTable, dispatch
from moesim.sim.engine import CHUNK_ROUTED
from moesim.sim.forwarding import Forwarding
from moesim.sim.precost import PreParts
from moesim.sim.replica_routing import node_index
from moesim.sim.stepcost import StepCoster
from moesim.specs.hardware import Cluster
from moesim.specs.runtime import Runtime
from moesim.vocab import AllToAll, Phase, parse

PRE_MEMO = 50_000
"""Distinct per-GPU token counts whose pre-dispatch times are remembered (cleared when full)."""


@dataclass(frozen=True)
class AttentionLoad:
    """Per GPU [G]: prefill and decode query tokens, and the keys they attend in all."""

    prefill_tokens: np.ndarray
    prefill_keys: np.ndarray
    decode_tokens: np.ndarray
    decode_keys: np.ndarray
    output_tokens: np.ndarray
    """Tokens whose logits the LM head computes: every decode position, a prompt's last position."""


@dataclass(frozen=True)
class StepPrice:
    """Seconds of one step, its critical path by phase, and each GPU's busy seconds [G]."""

    seconds: float
    pre_s: float
    dispatch_s: float
    experts_s: float
    combine_s: float
    busy_s: np.ndarray


class StepPricer:
    """Prices steps of one instance (its plan's GPUs) with ``cost`` (a :class:`moesim.sim.costs.SimCost`)."""

    def __init__(self, cost: Any, cluster: Cluster, plan: Plan, expert_ids: np.ndarray,
                 a2a: AllToAll | str | None = None, *, runtime: Runtime | None = None):
        self.cost, self.cluster, self.plan = cost, cluster, plan
        self.devices: tuple[str, ...] = tuple(plan.devices)
        self.expert_ids = expert_ids
        self.table = ReplicaTable.of(plan)
        self.a2a = None if a2a is None else parse(AllToAll, a2a, field="a2a")
        self.runtime = runtime
        self.num_nodes = len(set(node_index(cluster, self.devices).tolist()))
        self._costers: dict[AllToAll, tuple[StepCoster, Forwarding | None]] = {}
        self.coster = self.coster_for(self.mode(prefill=False))[0]
        self.nodes = (NodeCounting(node_index(cluster, self.devices)) if self.coster.node_blocks is not None
                      else None)
        groups: dict[int, list[int]] = {}
        for g, d in enumerate(self.devices):
            groups.setdefault(id(cluster.device(d).spec), []).append(g)
        self.groups = [np.asarray(v, dtype=np.int64) for v in groups.values()]
        self._lone = {int(idx[0]): float(cost.attention_s(self.devices[idx[0]], 1, 1, "decode"))
                      for idx in self.groups}
        self._hosts: dict[str, str] = {}
        self._pre: dict[bytes, PreParts] = {}

    def mode(self, *, prefill: bool) -> AllToAll:
        """The step's all-to-all mode (module docstring)."""
        if self.a2a is not None:
            return self.a2a
        return default_mode(Phase.PREFILL if prefill else Phase.DECODE, self.num_nodes)

    def coster_for(self, mode: AllToAll) -> tuple[StepCoster, Forwarding | None]:
        """The step costing (and the hierarchical mode's forwarding) of ``mode``, built once."""
        if mode not in self._costers:
            spec = AllToAllSpec.for_model(self.cost.model, mode)
            fw = (Forwarding(*forwarding(self.cluster, self.devices))
                  if spec.forwards and len(self.devices) > 1 else None)
            self._costers[mode] = (StepCoster(self.cost, self.devices, phase="decode", a2a=spec,
                                                      runtime=self.runtime), fw)
        return self._costers[mode]

    def attention(self, load: AttentionLoad) -> np.ndarray:
        """[G] seconds of each GPU's attention (module docstring)."""
        out = np.zeros(len(self.devices))
        for idx in self.groups:
            dev = self.devices[idx[0]]
            parts = []
            for tokens, keys, phase in ((load.prefill_tokens[idx], load.prefill_keys[idx], "prefill"),
                                        (load.decode_tokens[idx], load.decode_keys[idx], "decode")):
                ctx = np.divide(keys, tokens, out=np.ones_like(keys), where=tokens > 0)
                parts.append(np.asarray(self.cost.attention_s(dev, tokens, ctx, phase), dtype=float))
            both = (load.prefill_tokens[idx] > 0) & (load.decode_tokens[idx] > 0)
            shared = np.minimum(self._lone[int(idx[0])], np.minimum(parts[0], parts[1]))
            out[idx] = parts[0] + parts[1] - np.where(both, shared, 0.0)
        return out

    def price(self, rows: np.ndarray, owner: np.ndarray, load: AttentionLoad) -> StepPrice:
        """The step whose tokens are trace ``rows`` on GPUs ``owner`` (indices into the plan's)."""
        G = len(self.devices)
        coster, fw = self.coster_for(self.mode(prefill=bool(load.prefill_tokens.any())))
        d = self.dispatch(rows, owner, fw)
        owned = np.bincount(owner, minlength=G)[None]
        outputs = load.output_tokens[None].astype(np.int64)
        ctx = np.ones(1, dtype=np.int64)
        key = owned.tobytes() + outputs.tobytes()
        base = self._pre.get(key)
        if base is None:  # router, shared experts, permute/combine, dense FFN, LM head: owned counts alone
            if len(self._pre) >= PRE_MEMO:
                self._pre.clear()
            base = self._pre[key] = coster.pre.parts_owned(owned, ctx, outputs,
                                                           attention=np.zeros((1, G)))
        parts = base.with_attention(self.attention(load)[None])
        c = coster.chunk(0, d, np.array([len(rows)]), ctx, parts=parts)
        moe = coster.moe_layers
        pre_s, expert = float(c.pre[0].max(axis=1).sum()), c.expert[0]
        experts_s, dispatch_s, combine_s = float(expert.max(axis=1).sum()), float(c.dispatch.sum()), \
            float(c.combine.sum())
        busy = c.pre[0].sum(axis=0)
        busy += expert.sum(axis=0) if len(moe) else 0.0
        return StepPrice(pre_s + dispatch_s + experts_s + combine_s, pre_s, dispatch_s, experts_s, combine_s,
                         busy)

    def dispatch(self, rows: np.ndarray, owner: np.ndarray, fw: Forwarding | None = None) -> Dispatch:
        """The step's routed pairs counted in pieces of at most :data:`CHUNK_ROUTED` (token, layer,
        top-k) entries, summed (the counts add up over tokens; with replicas each piece starts its
        round-robin afresh), so a 500k-token prefill step never builds GB-sized temporaries."""
        L, K = self.expert_ids.shape[1:]
        piece = max(1, CHUNK_ROUTED // (L * K))
        parts = [dispatch(np.asarray(self.expert_ids[rows[a:a + piece]])[None], owner[None, a:a + piece],
                          self.table, None, self.nodes, fw) for a in range(0, len(rows), piece)]
        if len(parts) == 1:
            return parts[0]

        def total(name: str) -> np.ndarray | None:
            values = [getattr(p, name) for p in parts]
            return None if values[0] is None else np.sum(values, axis=0)

        return Dispatch(slot_tokens=total("slot_tokens"), pair_tokens=total("pair_tokens"),
                        node_rows=total("node_rows"), node_cols=total("node_cols"),
                        pair_total=total("pair_total"))

    def swap_s(self, device: str, nbytes: float) -> float:
        """One way of a swap: ``nbytes`` of KV between ``device`` and its host's memory."""
        host = self._hosts.get(device) or self._hosts.setdefault(device, host_of(self.cluster, device))
        return float(self.cost.transfer_s(device, host, nbytes))

    def transfer_s(self, src: str, dst: str, nbytes: float) -> float:
        """A KV cache moved from GPU ``src`` to GPU ``dst`` over the topology."""
        return float(self.cost.transfer_s(src, dst, nbytes))
