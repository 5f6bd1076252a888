"""MoE model specs: the architecture numbers of a model's config.json, plus derived sizes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from moesim.specs.precision import AUTO, DTYPE_BYTES, Precision, apply_overrides, dtype

__all__ = ["DTYPE_BYTES", "AttentionSpec", "MoEModel", "Precision", "with_precision", "with_weight_dtype"]


@dataclass(frozen=True)
class AttentionSpec:
    """Attention shape: GQA/MHA (``kind="gqa"``) or DeepSeek's multi-head latent attention."""

    kind: Literal["gqa", "mla"]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    sliding_window: int | None = None
    """Tokens attended in sliding-window layers (gpt-oss); None = full attention everywhere."""

    def kv_cache_elements_per_token(self) -> int:
        """Cached elements per token per layer (K and V for GQA; latent + rope key for MLA)."""
        if self.kind == "mla":
            assert self.kv_lora_rank is not None and self.qk_rope_head_dim is not None
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_kv_heads * self.head_dim


@dataclass(frozen=True)
class MoEModel:
    """One MoE model. Layer indices are the model's own (0-based, as in its config)."""

    name: str
    num_layers: int
    moe_layers: tuple[int, ...]
    hidden_size: int
    expert_intermediate_size: int
    num_experts: int
    top_k: int
    attention: AttentionSpec
    num_shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    """Width of each shared expert (0 when there are none)."""
    dense_intermediate_size: int = 0
    """FFN width of the dense (non-MoE) layers, 0 when every layer is MoE."""
    gated: bool = True
    """SwiGLU experts (gate, up, down: 3 matrices) vs plain 2-matrix FFN (Switch)."""
    vocab_size: int = 0
    weight_dtype: str = "bf16"
    """dtype of the routed expert weights as served (``fp8`` for DeepSeek-V3, ``mxfp4`` for gpt-oss)."""
    activation_dtype: str = "bf16"
    dispatch_dtype: str | None = None
    """dtype of the all-to-all dispatch payload (``fp8`` for DeepSeek-V3 with DeepEP); None: the
    activation dtype."""
    combine_dtype: str | None = None
    """dtype of the all-to-all combine payload; None: the activation dtype."""
    num_expert_groups: int = 1
    """DeepSeek-V3 group-limited routing: experts are split into this many groups."""
    topk_groups: int = 1
    source: str = ""
    precision: Precision = field(default_factory=Precision)
    """dtypes of the other tensors (attention, dense, shared experts, embeddings, KV cache, compute)."""

    def __post_init__(self) -> None:
        for name in ("dispatch_dtype", "combine_dtype"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, self.activation_dtype)

    @property
    def num_moe_layers(self) -> int:
        return len(self.moe_layers)

    @property
    def expert_params(self) -> int:
        """Parameters of one routed expert (biases and router ignored)."""
        return (3 if self.gated else 2) * self.hidden_size * self.expert_intermediate_size

    def expert_bytes(self, dtype: str | None = None) -> float:
        """Bytes of one routed expert's weights in ``dtype`` (default: the model's weight dtype)."""
        return self.expert_params * DTYPE_BYTES[dtype or self.weight_dtype]

    @property
    def expert_flops_per_token(self) -> int:
        """FLOPs of one token through one routed expert (2 per multiply-add)."""
        return 2 * self.expert_params

    @property
    def shared_expert_params(self) -> int:
        return (3 if self.gated else 2) * self.hidden_size * self.shared_expert_intermediate_size

    @property
    def activation_bytes_per_token(self) -> float:
        """Bytes of one token's hidden state in the activation dtype."""
        return self.hidden_size * DTYPE_BYTES[self.activation_dtype]

    @property
    def dispatch_bytes_per_token(self) -> float:
        """Bytes the dispatch all-to-all moves per (token, expert) copy."""
        return self.hidden_size * DTYPE_BYTES[self.dispatch_dtype or self.activation_dtype]

    @property
    def combine_bytes_per_token(self) -> float:
        """Bytes the combine all-to-all moves back per (token, expert) copy."""
        return self.hidden_size * DTYPE_BYTES[self.combine_dtype or self.activation_dtype]

    def weight_dtype_of(self, tensor: str) -> str:
        """dtype of the weights of ``tensor`` (``attention``, ``dense``, ``shared_experts``,
        ``routed_experts``, ``embeddings``; ``router`` is always the activation dtype)."""
        if tensor == "routed_experts":
            return self.weight_dtype
        if tensor == "router":
            return self.activation_dtype
        return getattr(self.precision, tensor) or self.activation_dtype

    @property
    def kv_cache_dtype(self) -> str:
        return self.precision.kv_cache or self.activation_dtype

    def compute_dtype_of(self, op: str) -> str | None:
        """The dtype ``op``'s GEMMs are pinned to, or None for ``auto`` (see :class:`Precision`)."""
        value = self.precision.compute_of(op)
        return None if value == AUTO else value

    def kv_cache_bytes_per_token(self) -> float:
        """KV-cache bytes per token summed over all layers, in the KV-cache dtype."""
        per_layer = self.attention.kv_cache_elements_per_token() * DTYPE_BYTES[self.kv_cache_dtype]
        return per_layer * self.num_layers


def with_weight_dtype(model: MoEModel, dtype_name: str) -> MoEModel:
    """The same model with its routed experts served in ``dtype_name`` (``--weight-dtype fp8``)."""
    dtype(dtype_name, field="--weight-dtype")
    if dtype_name == model.weight_dtype:
        return model
    return replace(model, name=f"{model.name}@{dtype_name}", weight_dtype=dtype_name)


def with_precision(model: MoEModel, overrides: Mapping[str, str]) -> MoEModel:
    """The same model with the tensors of ``overrides`` (``--precision attention=fp8,...``, keys of
    :data:`moesim.specs.precision.PRECISION_KEYS`) in those dtypes; named ``name@key=dtype,...``."""
    if not overrides:
        return model
    for key, value in overrides.items():
        if value != AUTO or not key.startswith("compute"):
            dtype(value, field=f"--precision {key}")
    weight = overrides.get("routed_experts", overrides.get("weights", model.weight_dtype))
    changed = replace(
        model,
        weight_dtype=weight,
        dispatch_dtype=overrides.get("dispatch", model.dispatch_dtype),
        combine_dtype=overrides.get("combine", model.combine_dtype),
        precision=apply_overrides(model.precision, overrides),
    )
    if changed == model:
        return model
    tag = ",".join(f"{k}={v}" for k, v in overrides.items())
    return replace(changed, name=f"{model.name}@{tag}")
