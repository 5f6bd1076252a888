"""Weight sizes of a model by tensor: parameters per layer, the layers that hold them, and bytes in
the tensor's own dtype (:mod:`moesim.specs.precision`). ``model show``, the memory model and the
cost model's op counts all read them here (biases and norms ignored)."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.specs.model import DTYPE_BYTES, MoEModel


@dataclass(frozen=True)
class TensorSize:
    """One kind of weight tensor: ``params_per_layer`` in each of ``layers`` layers, in ``dtype``."""

    name: str
    dtype: str
    params_per_layer: int
    layers: int

    @property
    def bytes_per_layer(self) -> float:
        return self.params_per_layer * DTYPE_BYTES[self.dtype]

    @property
    def params(self) -> int:
        return self.params_per_layer * self.layers

    @property
    def total_bytes(self) -> float:
        return self.bytes_per_layer * self.layers


def attention_params(model: MoEModel) -> int:
    """Weights of one attention block's projections (GQA: q, k, v, o; MLA: the low-rank q and kv
    projections, their up-projections and o)."""
    a, h = model.attention, model.hidden_size
    if a.kind == "mla":
        assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None
        nope, rope = a.qk_nope_head_dim or 0, a.qk_rope_head_dim
        v = a.v_head_dim or a.head_dim
        q_dim = a.num_heads * (nope + rope)
        q = h * a.q_lora_rank + a.q_lora_rank * q_dim if a.q_lora_rank else h * q_dim
        kv = h * (a.kv_lora_rank + rope) + a.kv_lora_rank * a.num_heads * (nope + v)
        return q + kv + a.num_heads * v * h
    return h * a.num_heads * a.head_dim * 2 + h * a.num_kv_heads * a.head_dim * 2


@dataclass(frozen=True)
class AttentionShard:
    """What one device of a ``tp``-way tensor-parallel attention holds and computes."""

    params: float
    """Projection weights on the device."""
    heads: int
    """Query heads on the device."""
    kv_elements_per_token: float
    """KV-cache elements per token and layer on the device."""


def attention_shard(model: MoEModel, tp: int = 1) -> AttentionShard:
    """One device's share of a layer's attention under ``tp``-way tensor parallelism (Megatron-style:
    q/k/v and the up-projections split by columns, o by rows). GQA with fewer KV heads than ``tp``
    replicates each KV head over ``tp / kv_heads`` devices (vLLM ``QKVParallelLinear``,
    vllm-project/vllm @8c94938 vllm/model_executor/layers/linear.py); MLA keeps its down-projections
    (q_a, kv_a) and its latent cache whole on every device (deepseek-ai/DeepSeek-V3
    inference/model.py: ``wq_a``/``wkv_a`` are not parallel, ``kv_cache`` holds all ``kv_lora_rank``)."""
    a, h = model.attention, model.hidden_size
    if tp == 1:
        return AttentionShard(float(attention_params(model)), a.num_heads,
                              float(a.kv_cache_elements_per_token()))
    heads = a.num_heads // tp
    if a.kind == "mla":
        assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None
        nope, rope, v = a.qk_nope_head_dim or 0, a.qk_rope_head_dim, a.v_head_dim or a.head_dim
        down = h * (a.q_lora_rank or 0) + h * (a.kv_lora_rank + rope)
        up = (a.q_lora_rank or h) * a.num_heads * (nope + rope) + a.kv_lora_rank * a.num_heads * (nope + v)
        return AttentionShard(down + (up + a.num_heads * v * h) / tp, heads,
                              float(a.kv_cache_elements_per_token()))
    kv_heads = max(1, a.num_kv_heads // tp)
    params = 2 * h * heads * a.head_dim + 2 * h * kv_heads * a.head_dim
    return AttentionShard(float(params), heads, float(2 * kv_heads * a.head_dim))


def ffn_params(model: MoEModel, width: int) -> int:
    """One FFN of ``width``: 3 matrices gated (SwiGLU), 2 plain."""
    return (3 if model.gated else 2) * model.hidden_size * width


def tensor_sizes(model: MoEModel) -> dict[str, TensorSize]:
    """Every weight tensor kind: attention, dense (FFN of dense layers), shared_experts, routed_experts
    (all experts of a layer), router, embedding (input) and lm_head (output, counted untied)."""
    m = model.num_moe_layers
    out = [
        TensorSize("attention", model.weight_dtype_of("attention"), attention_params(model),
                   model.num_layers),
        TensorSize("dense", model.weight_dtype_of("dense"), ffn_params(model, model.dense_intermediate_size),
                   model.num_layers - m),
        TensorSize("shared_experts", model.weight_dtype_of("shared_experts"),
                   ffn_params(model, model.shared_expert_intermediate_size) * model.num_shared_experts, m),
        TensorSize("routed_experts", model.weight_dtype, model.expert_params * model.num_experts, m),
        TensorSize("router", model.weight_dtype_of("router"), model.hidden_size * model.num_experts, m),
        TensorSize("embedding", model.weight_dtype_of("embeddings"), model.vocab_size * model.hidden_size, 1),
        TensorSize("lm_head", model.weight_dtype_of("embeddings"), model.vocab_size * model.hidden_size, 1),
    ]
    return {t.name: t for t in out}
