"""What each part of a GPU's memory weighs, in bytes: the non-expert weights (under tensor-parallel
attention), the KV cache per token, one layer's activations, a static cache's staging buffer and the
routed experts a placement or a cache keeps resident (sharded over ``expert_tp`` GPUs inside an EP
group). :class:`moesim.memory.MemoryModel` adds them up per device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.specs.model import DTYPE_BYTES, MoEModel
from moesim.specs.sizes import attention_shard, tensor_sizes


@dataclass(frozen=True)
class NonExpertWeights:
    """Bytes of a model's weights besides the routed experts, summed over all layers."""

    attention_bytes: float
    embeddings_bytes: float
    """Input embedding and LM head, counted untied."""
    router_bytes: float
    shared_experts_bytes: float
    dense_ffn_bytes: float

    @property
    def total_bytes(self) -> float:
        return (self.attention_bytes + self.embeddings_bytes + self.router_bytes + self.shared_experts_bytes
                + self.dense_ffn_bytes)


def non_expert_weights(model: MoEModel, tp: int = 1) -> NonExpertWeights:
    """Attention, embedding + LM head, router, shared-expert and dense-FFN weight bytes over all layers,
    each in its own dtype (biases and norms ignored); ``tp`` > 1: one GPU's shard of a tensor-parallel
    group (1/tp of heads, columns and vocabulary; the router and MLA's down-projections whole)."""
    t = tensor_sizes(model)
    attention = t["attention"].total_bytes if tp == 1 else (
        attention_shard(model, tp).params * model.num_layers * DTYPE_BYTES[t["attention"].dtype])
    return NonExpertWeights(
        attention_bytes=float(attention),
        embeddings_bytes=float(t["embedding"].total_bytes + t["lm_head"].total_bytes) / tp,
        router_bytes=float(t["router"].total_bytes),
        shared_experts_bytes=float(t["shared_experts"].total_bytes) / tp,
        dense_ffn_bytes=float(t["dense"].total_bytes) / tp,
    )


def kv_bytes_per_token(model: MoEModel, tp: int = 1) -> float:
    """KV-cache bytes one GPU holds per token of its sequences, over all layers (its KV heads under
    ``tp``; MLA's latent cache is whole on every GPU)."""
    shard = attention_shard(model, tp)
    return shard.kv_elements_per_token * DTYPE_BYTES[model.kv_cache_dtype] * model.num_layers


def activation_bytes(model: MoEModel, tokens: float) -> float:
    """Live activations of one MoE layer for ``tokens`` tokens: the hidden state in and out, and per
    routed copy its dispatch and combine buffers and the expert's intermediate (gate and up outputs
    when gated), in the activation dtype."""
    ab = DTYPE_BYTES[model.activation_dtype]
    h, f, k = model.hidden_size, model.expert_intermediate_size, model.top_k
    per_token = 2 * h + k * (2 * h + (2 if model.gated else 1) * f)
    return float(tokens * per_token * ab)


def staging_experts(policy: str, miss: str, prefetch: str, top_k: int) -> int:
    """Experts of staging buffer a static cache needs for its fetched misses (double-buffered with
    prefetch); dynamic caches load into the cache itself, executed misses need none."""
    if policy != "static" or miss not in ("fetch", "lowbit", "auto"):
        return 0
    return top_k * (2 if prefetch != "none" else 1)


def resident_expert_counts(placement: np.ndarray, devices: Sequence[str],
                           cache: Any | None = None) -> dict[str, int]:
    """Routed experts each GPU keeps resident: its used placement slots, or with a cache
    (``moesim.plans.plan.CachePlan``) the cache's slots, which every GPU allocates for every MoE layer
    (``capacity_experts``; ``static``: the resident set sizes) - the simulator's caches are per
    (layer, GPU)."""
    if cache is not None and str(cache.policy) != "none":
        per_layer = ([len(r) for r in cache.resident] if str(cache.policy) == "static"
                     else list(cache.capacity_experts))
        return dict.fromkeys(devices, int(sum(per_layer)))
    used = (np.asarray(placement) >= 0).sum(axis=(0, 2))
    return {d: int(used[g]) for g, d in enumerate(devices)}


def resident_expert_bytes(model: MoEModel, placement: np.ndarray, devices: Sequence[str],
                          cache: Any | None = None, expert_tp: int = 1) -> dict[str, float]:
    """:func:`resident_expert_counts` in bytes (``model.expert_bytes()`` each, divided by ``expert_tp``:
    a GPU of an EP group holds that share of each of its experts, :mod:`moesim.plans.ep_groups`)."""
    per_expert = model.expert_bytes() / expert_tp
    return {d: n * per_expert for d, n in resident_expert_counts(placement, devices, cache).items()}
