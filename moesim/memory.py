"""One memory model: the bytes each GPU holds for a model, and how many routed experts fit a budget.

The cache planners (``moesim plan --gpu-memory``), the simulator (``moesim simulate --gpu-memory``
and its memory check) and the reports all size GPU memory here. Per GPU it counts:

- its ``1/G`` share of the non-expert weights (attention, embeddings and LM head, router, shared
  experts, dense FFNs; G GPUs split the layers in contiguous pipeline stages);
- its ``1/G`` share of the KV cache of ``batch_size`` sequences of ``context_tokens`` tokens;
- the activation workspace of one layer for the whole batch (every stage sees every token);
- a staging buffer for fetched misses (a static cache that fetches: K experts, 2K with prefetch);
- the routed experts it keeps resident (placement slots, or the expert cache).

:class:`MemoryBreakdown` holds one device's figures in bytes, by name, so that per-tensor
precision, tensor/data-parallel sharding or a serving KV pool can change how a field is computed
(in :class:`MemoryModel`) without changing the code that reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from moesim.errors import UserError
from moesim.specs.hardware import Cluster
from moesim.specs.model import DTYPE_BYTES, MoEModel

GIB = float(1 << 30)
DEFAULT_CONTEXT_TOKENS = 4096
"""Context each sequence of the batch attends to when sizing the KV cache (tokens)."""


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.4g} GiB"


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


def non_expert_weights(model: MoEModel) -> NonExpertWeights:
    """Attention, embedding/LM head, router, shared-expert and dense-FFN weight bytes (biases and norms
    ignored), in the model's weight dtype when it is 8 or 16 bit, else bf16 (4-bit releases keep
    attention in bf16)."""
    wb = DTYPE_BYTES[model.weight_dtype] if model.weight_dtype in ("bf16", "fp16", "fp8") else 2.0
    a, h = model.attention, model.hidden_size
    if a.kind == "mla":
        rope, nope, v = a.qk_rope_head_dim or 0, a.qk_nope_head_dim or 0, a.v_head_dim or a.head_dim
        q = h * a.num_heads * (nope + rope) if not a.q_lora_rank else \
            h * a.q_lora_rank + a.q_lora_rank * a.num_heads * (nope + rope)
        attn = q + h * ((a.kv_lora_rank or 0) + rope) + (a.kv_lora_rank or 0) * a.num_heads * (nope + v) \
            + a.num_heads * v * h
    else:
        attn = h * a.head_dim * (2 * a.num_heads + 2 * a.num_kv_heads)
    ffn_mats = 3 if model.gated else 2
    dense_layers = model.num_layers - model.num_moe_layers
    return NonExpertWeights(
        attention_bytes=float(attn * model.num_layers * wb),
        embeddings_bytes=float(2 * model.vocab_size * h * wb),
        router_bytes=float(h * model.num_experts * model.num_moe_layers * wb),
        shared_experts_bytes=float(model.num_shared_experts * model.shared_expert_params
                                   * model.num_moe_layers * wb),
        dense_ffn_bytes=float(ffn_mats * h * model.dense_intermediate_size * dense_layers * wb),
    )


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


@dataclass(frozen=True)
class MemoryBreakdown:
    """What one device holds, in bytes, against its ``capacity_bytes`` (the budget it is given)."""

    device: str
    capacity_bytes: float
    attention_bytes: float = 0.0
    embeddings_bytes: float = 0.0
    router_bytes: float = 0.0
    shared_experts_bytes: float = 0.0
    dense_ffn_bytes: float = 0.0
    kv_cache_bytes: float = 0.0
    activation_bytes: float = 0.0
    staging_bytes: float = 0.0
    expert_bytes: float = 0.0
    """Routed experts kept resident: placement slots or the expert cache."""

    @property
    def non_expert_weight_bytes(self) -> float:
        return (self.attention_bytes + self.embeddings_bytes + self.router_bytes + self.shared_experts_bytes
                + self.dense_ffn_bytes)

    @property
    def fixed_bytes(self) -> float:
        """Everything but the resident experts."""
        return self.non_expert_weight_bytes + self.kv_cache_bytes + self.activation_bytes + self.staging_bytes

    @property
    def total_bytes(self) -> float:
        return self.fixed_bytes + self.expert_bytes

    def parts(self) -> dict[str, float]:
        """The fixed bytes by part (what ``CachePlan.params["memory_bytes"]`` reports)."""
        return {"attention": self.attention_bytes, "embeddings": self.embeddings_bytes,
                "router": self.router_bytes, "shared_experts": self.shared_experts_bytes,
                "dense_ffn": self.dense_ffn_bytes, "kv_cache": self.kv_cache_bytes,
                "activations": self.activation_bytes, "staging": self.staging_bytes}

    def describe_fixed(self, unit: str = "GiB") -> str:
        """``non-expert weights 2.99 GiB + KV cache 0.5 GiB + ...`` (the parts that are not experts),
        in GiB or decimal ``GB``."""
        parts = [("non-expert weights", self.non_expert_weight_bytes), ("KV cache", self.kv_cache_bytes),
                 ("activations", self.activation_bytes), ("staging", self.staging_bytes)]
        scale = GIB if unit == "GiB" else 1e9
        return " + ".join(f"{name} {v / scale:.4g} {unit}" for name, v in parts if v > 0) or "nothing"


@dataclass(frozen=True)
class MemoryModel:
    """How ``model``'s memory spreads over ``gpus`` GPUs serving ``batch_size`` sequences."""

    model: MoEModel
    gpus: int = 1
    batch_size: int = 1
    """Sequences (decode: tokens) per step."""
    context_tokens: int = DEFAULT_CONTEXT_TOKENS

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise UserError(f"expected at least 1 GPU, got {self.gpus}", field="gpus")
        if self.batch_size < 1:
            raise UserError(f"expected a batch of at least 1, got {self.batch_size}", field="batch_size")

    def device(self, device_id: str, capacity_bytes: float, *, staging_experts: int = 0,
               staging_dtype: str | None = None, kv_cache_bytes: float | None = None,
               step_tokens: float | None = None, expert_bytes: float = 0.0) -> MemoryBreakdown:
        """One GPU's breakdown. ``kv_cache_bytes`` (this device's) and ``step_tokens`` (the largest
        step's tokens) replace the batch-based estimates when the caller knows them."""
        w = non_expert_weights(self.model)
        share = 1.0 / self.gpus
        kv = (self.model.kv_cache_bytes_per_token() * self.batch_size * self.context_tokens * share
              if kv_cache_bytes is None else float(kv_cache_bytes))
        return MemoryBreakdown(
            device=device_id, capacity_bytes=float(capacity_bytes),
            attention_bytes=w.attention_bytes * share, embeddings_bytes=w.embeddings_bytes * share,
            router_bytes=w.router_bytes * share, shared_experts_bytes=w.shared_experts_bytes * share,
            dense_ffn_bytes=w.dense_ffn_bytes * share, kv_cache_bytes=kv,
            activation_bytes=activation_bytes(self.model, self.batch_size if step_tokens is None
                                              else step_tokens),
            staging_bytes=staging_experts * self.model.expert_bytes(staging_dtype),
            expert_bytes=float(expert_bytes),
        )

    def expert_slots(self, breakdown: MemoryBreakdown) -> int:
        """Whole experts that fit in what the fixed part leaves of the budget (0 when nothing is left)."""
        free = breakdown.capacity_bytes - breakdown.fixed_bytes
        return max(0, math.floor(free / self.model.expert_bytes() + 1e-9))

    def expert_budget(self, device_id: str, gpu_memory_bytes: float, *, staging_experts: int = 0,
                      staging_dtype: str | None = None) -> float:
        """Bytes left for routed experts when the whole device has ``gpu_memory_bytes``; a one-line
        :class:`UserError` naming ``--gpu-memory`` and ``--expert-cache`` when nothing is left."""
        b = self.device(device_id, gpu_memory_bytes, staging_experts=staging_experts,
                        staging_dtype=staging_dtype)
        if b.fixed_bytes >= gpu_memory_bytes:
            raise UserError(
                f"{gib(gpu_memory_bytes)} is the whole memory of {device_id}, and {self.model.name} needs "
                f"{gib(b.fixed_bytes)} there before any expert ({b.describe_fixed()}); give the device's "
                "memory, or the expert budget alone with --expert-cache "
                f"{gib(gpu_memory_bytes).replace(' ', '')}",
                field="--gpu-memory")
        return gpu_memory_bytes - b.fixed_bytes

    def experts_per_layer(self, expert_budget_bytes: float) -> int:
        """Experts of every MoE layer that an expert budget holds (one cache per layer)."""
        return int(expert_budget_bytes // (self.model.expert_bytes() * self.model.num_moe_layers))


def fit_devices(model: MoEModel, cluster: Cluster, devices: Sequence[str],
                resident_expert_bytes: Mapping[str, float], *, kv_cache_bytes: Sequence[float],
                step_tokens: float, staging_experts: int = 0, staging_dtype: str | None = None,
                cached: bool = False) -> dict[str, MemoryBreakdown]:
    """Each device's breakdown for a run (``kv_cache_bytes[i]``: device i's largest KV cache;
    ``step_tokens``: the largest step); one :class:`UserError` naming the device, its need by part and
    its capacity when one does not fit."""
    layout = MemoryModel(model, gpus=len(devices))
    what = (f"{'its expert cache' if cached else 'expert weights'} "
            f"({model.expert_bytes() / 1e6:.1f} MB per {model.weight_dtype} expert)")
    hint = ("; cache fewer experts, use a smaller batch or a smaller --weight-dtype" if cached
            else "; use more devices or fewer slots")
    out: dict[str, MemoryBreakdown] = {}
    for d, kv in zip(devices, kv_cache_bytes, strict=True):
        try:
            capacity = cluster.device(d).spec.memory_bytes
        except KeyError:
            raise UserError(f"no device {d!r} in cluster {cluster.name}", field="devices") from None
        b = layout.device(d, capacity, kv_cache_bytes=kv, step_tokens=step_tokens,
                          staging_experts=staging_experts, staging_dtype=staging_dtype,
                          expert_bytes=resident_expert_bytes.get(d, 0.0))
        if b.total_bytes > b.capacity_bytes:
            raise UserError(
                f"device {d} needs {b.total_bytes / 1e9:.2f} GB: {b.expert_bytes / 1e9:.2f} GB for {what} + "
                f"{b.describe_fixed('GB')}, but has {capacity / 1e9:.2f} GB{hint}",
                field="cache.capacity_experts" if cached else "placement")
        out[d] = b
    return out
