"""The KV cache as memory: per-device pools of fixed-size blocks, sized by the memory model, and
what happens to a request's cache when a pool runs out (preemption by recompute or by swap).

A request holds ``ceil(context / block_tokens)`` blocks on the GPU that runs its attention (data-
parallel attention: each GPU keeps the whole-model KV of its own requests). A token's KV is
``model.kv_cache_bytes_per_token()`` bytes over all layers: K and V heads x head dim for GQA, the
compressed latent + rope key for MLA, in the model's KV dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moesim.memory import kv_pool_bytes
from moesim.plans.plan import Plan
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.specs.runtime import Runtime

PREEMPTION_MODES = ("recompute", "swap")


@dataclass(frozen=True)
class KvLayout:
    """How KV memory is counted: ``bytes_per_token`` (all layers) in blocks of ``block_tokens``."""

    bytes_per_token: float
    block_tokens: int

    def blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def block_bytes(self) -> float:
        return self.bytes_per_token * self.block_tokens


class KvPool:
    """One device's KV blocks (engine state): capacity, blocks in use, and the peak."""

    __slots__ = ("capacity_blocks", "device", "peak_blocks", "used_blocks")

    def __init__(self, device: str, capacity_blocks: int):
        self.device = device
        self.capacity_blocks = capacity_blocks
        self.used_blocks = 0
        self.peak_blocks = 0

    @property
    def free_blocks(self) -> int:
        return self.capacity_blocks - self.used_blocks

    def resize(self, old_blocks: int, new_blocks: int) -> None:
        """A request's holding goes from ``old_blocks`` to ``new_blocks`` (the caller checked it fits)."""
        self.used_blocks += new_blocks - old_blocks
        assert 0 <= self.used_blocks <= self.capacity_blocks, "KV pool over- or under-flow"
        self.peak_blocks = max(self.peak_blocks, self.used_blocks)


def make_pools(model: MoEModel, cluster: Cluster, plan: Plan, layout: KvLayout, *, step_tokens: int,
               utilization: float, runtime: Runtime | None = None) -> list[KvPool]:
    """One pool per GPU of ``plan``: whole blocks of what :func:`moesim.memory.kv_pool_bytes` leaves
    beside the weights, the resident experts and a ``step_tokens``-token step's activations."""
    free = kv_pool_bytes(model, cluster, plan.devices, plan.resident_expert_bytes(model),
                         step_tokens=step_tokens, utilization=utilization, runtime=runtime)
    return [KvPool(d, math.floor(free[d] / layout.block_bytes())) for d in plan.devices]

