"""FLOP and byte counts of the ops of one transformer-MoE layer (2 FLOP per multiply-add).

Bytes are what the op moves through device memory: weights read once per call, activations read
and written once per kernel. Token counts may be numpy arrays (results broadcast). Each tensor's
weights are in its own dtype (``model.weight_dtype_of``: routed experts ``fp8`` for DeepSeek-V3,
``mxfp4`` for gpt-oss...), the KV cache in ``model.kv_cache_dtype``, activations in
``model.activation_dtype``. ``tp`` is the tensor-parallel degree of the op: each device holds
1/tp of its heads or columns (:func:`attention_shard`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.specs.model import DTYPE_BYTES, MoEModel
from moesim.specs.sizes import AttentionShard, attention_params, attention_shard

__all__ = ["AttentionShard", "attention_shard"]

# Kernel launches per op. expert: vLLM's fused_experts_impl (vllm-project/vllm @000d145,
# vllm/model_executor/layers/fused_moe/fused_moe.py): one fused_moe call = align + 2 grouped GEMMs
# + activation + top-k sum. The others count the kernels of a plain eager implementation.
LAUNCHES = {
    "expert": 5,
    "attention": 4,  # qkv projection, rope/cache write, attention core, output projection
    "router": 2,  # gate GEMM, top-k/softmax
    "permute_combine": 2,  # permute (scatter by expert), un-permute + weighted sum
    "shared_expert": 3,  # gate/up GEMM, activation, down GEMM
    "dense_ffn": 3,
    "lm_head": 2,  # final norm + logits GEMM
    "embedding": 1,  # row gather
}

Array = np.ndarray | float


@dataclass(frozen=True)
class OpCount:
    """FLOPs, bytes and launches of one op (arrays when the inputs were arrays)."""

    flops: Array
    nbytes: Array
    launches: Array


def _act(model: MoEModel) -> float:
    return DTYPE_BYTES[model.activation_dtype]


def ffn_activation_elements_per_token(model: MoEModel, width: int) -> int:
    """Activation elements an FFN of ``width`` reads + writes per token over its kernels.

    Gated: GEMM1 reads x (H) writes gate|up (2I); activation reads 2I writes I; GEMM2 reads I
    writes H -> 2H + 6I. Plain 2-matrix FFN: H + I, I + I, I + H -> 2H + 4I.
    """
    h = model.hidden_size
    return 2 * h + (6 if model.gated else 4) * width


def padded_rows(tokens_per_expert: np.ndarray, tile_rows: int) -> np.ndarray:
    """Rows each expert's GEMM computes after padding to the kernel's M tile."""
    t = np.asarray(tokens_per_expert, dtype=float)
    if tile_rows <= 1:
        return t
    return np.ceil(t / tile_rows) * tile_rows


def expert_counts(
    model: MoEModel, tokens_per_expert: np.ndarray, weight_dtype: str | None = None, tile_rows: int = 1
) -> OpCount:
    """Per-expert counts (same shape as ``tokens_per_expert``); experts with 0 tokens cost 0."""
    t = np.asarray(tokens_per_expert, dtype=float)
    active = t > 0
    flops = 2.0 * model.expert_params * padded_rows(t, tile_rows)
    weights = model.expert_bytes(weight_dtype) * active
    acts = t * ffn_activation_elements_per_token(model, model.expert_intermediate_size) * _act(model)
    return OpCount(flops=flops, nbytes=weights + acts, launches=0.0)


def grouped_expert_counts(
    model: MoEModel, tokens_per_expert: np.ndarray, weight_dtype: str | None = None, tile_rows: int = 1
) -> OpCount:
    """One grouped-GEMM call over the last axis of ``tokens_per_expert`` (weights read once per
    expert with tokens). Leading axes (devices) are kept."""
    per = expert_counts(model, tokens_per_expert, weight_dtype, tile_rows)
    t = np.asarray(tokens_per_expert, dtype=float)
    any_tokens = t.sum(axis=-1) > 0
    return OpCount(
        flops=np.sum(per.flops, axis=-1),
        nbytes=np.sum(per.nbytes, axis=-1),
        launches=LAUNCHES["expert"] * any_tokens,
    )


def dense_ffn_counts(
    model: MoEModel, tokens: Array, width: int, weight_dtype: str, count: int = 1, tp: int = 1
) -> OpCount:
    """``count`` dense FFNs of ``width`` applied to every token (shared experts, dense layers); with
    ``tp`` > 1 one device's 1/tp of the columns (call it with ``width // tp``: the same)."""
    t = np.asarray(tokens, dtype=float)
    width = width // tp
    params = (3 if model.gated else 2) * model.hidden_size * width * count
    flops = 2.0 * params * t
    nbytes = params * DTYPE_BYTES[weight_dtype] * (t > 0) + t * count * ffn_activation_elements_per_token(
        model, width
    ) * _act(model)
    return OpCount(flops=flops, nbytes=nbytes, launches=LAUNCHES["dense_ffn"] * (t > 0))


def router_counts(model: MoEModel, tokens: Array) -> OpCount:
    """Gate GEMM [tokens, H] x [H, E] plus the fp32 logits it writes and top-k reads."""
    t = np.asarray(tokens, dtype=float)
    h, e = model.hidden_size, model.num_experts
    flops = 2.0 * t * h * e
    nbytes = (h * e * _act(model) + t * h * _act(model) + 2 * t * e * 4.0 + t * model.top_k * 8.0) * (t > 0)
    return OpCount(flops=flops, nbytes=nbytes, launches=LAUNCHES["router"] * (t > 0))


def permute_combine_counts(model: MoEModel, tokens: Array) -> OpCount:
    """Permute: read each token once, write it top_k times (grouped by expert); combine: read the
    top_k expert outputs and write the weighted sum. Memory-bound; the sum is 2*k*H FLOP/token."""
    t = np.asarray(tokens, dtype=float)
    h, k = model.hidden_size, model.top_k
    nbytes = 2.0 * t * (h + k * h) * _act(model)
    return OpCount(flops=2.0 * t * k * h, nbytes=nbytes, launches=LAUNCHES["permute_combine"] * (t > 0))


def attention_weight_params(model: MoEModel) -> int:
    """Parameters of the attention projections of one layer (GQA: q, k, v, o; MLA: the low-rank
    q and kv projections, their up-projections and o)."""
    return attention_params(model)


def attention_core_flops_per_key(model: MoEModel, phase: str) -> int:
    """FLOPs of one (query token, cached key) pair: scores plus the weighted sum of values.

    GQA: 2*heads*head_dim for q.k and as much for p.v. MLA decode runs in the absorbed form, over
    the latent (scores on kv_lora + rope dims, values on kv_lora dims); MLA prefill materialises K
    and V per head (nope + rope for scores, v_head_dim for values), as DeepSeek-V3 does.
    """
    a = model.attention
    if a.kind == "mla":
        assert a.kv_lora_rank is not None and a.qk_rope_head_dim is not None
        if phase == "decode":
            return 2 * a.num_heads * (2 * a.kv_lora_rank + a.qk_rope_head_dim)
        nope = a.qk_nope_head_dim or 0
        v = a.v_head_dim or a.head_dim
        return 2 * a.num_heads * (nope + a.qk_rope_head_dim + v)
    return 4 * a.num_heads * a.head_dim


def attended_keys(model: MoEModel, context_tokens: Array, layer: int | None = None) -> np.ndarray:
    """Keys a query attends: ``context_tokens``, clipped to the window on sliding-window layers.

    gpt-oss alternates sliding and full attention starting with a sliding layer (its config's
    ``layer_types``; the model spec's ``sliding_window_layers: {every: 2, offset: 0}``); ``layer=None``
    averages one sliding and one full layer."""
    ctx = np.asarray(context_tokens, dtype=float)
    window = model.attention.sliding_window
    if not window:
        return ctx
    clipped = np.minimum(ctx, float(window))
    if layer is None:
        return (clipped + ctx) / 2
    return clipped if layer % 2 == 0 else ctx


def attention_counts(model: MoEModel, tokens: Array, context_tokens: Array, phase: str,
                     tp: int = 1) -> OpCount:
    """Attention of ``tokens`` query tokens, each attending ``context_tokens`` keys (the mean), on one
    device of a ``tp``-way tensor-parallel group (its heads and weights, :func:`attention_shard`).

    Decode reads each query's cached KV (``tokens * context`` cache entries); prefill computes its
    keys once and flash attention reads them from on-chip tiles, so it moves ``tokens`` entries.
    """
    if phase not in ("decode", "prefill"):
        raise ValueError(f"phase must be 'decode' or 'prefill', got {phase!r}")
    t = np.asarray(tokens, dtype=float)
    ctx = np.asarray(context_tokens, dtype=float)
    act = _act(model)
    shard = attention_shard(model, tp)
    proj_flops = 2.0 * shard.params * t
    core_flops = attention_core_flops_per_key(model, phase) / tp * t * ctx
    kv_bytes_per_entry = shard.kv_elements_per_token * DTYPE_BYTES[model.kv_cache_dtype]
    kv_entries = t * ctx if phase == "decode" else t
    h = model.hidden_size
    # q/k/v/o activations written and read around the core, plus the layer input and output.
    act_bytes = t * (2 * h + 2 * shard.heads * model.attention.head_dim) * act
    weights = shard.params * DTYPE_BYTES[model.weight_dtype_of("attention")]
    nbytes = (weights + act_bytes + kv_entries * kv_bytes_per_entry) * (t > 0)
    return OpCount(flops=proj_flops + core_flops, nbytes=nbytes, launches=LAUNCHES["attention"] * (t > 0))


def lm_head_counts(model: MoEModel, tokens: Array, tp: int = 1) -> OpCount:
    """Logits of ``tokens`` tokens (decode: every token; prefill: the last of each prompt): the
    [tokens, H] x [H, V/tp] GEMM in the embeddings' dtype, logits written in the activation dtype."""
    t = np.asarray(tokens, dtype=float)
    h, v = model.hidden_size, model.vocab_size / tp
    weights = h * v * DTYPE_BYTES[model.weight_dtype_of("embeddings")]
    nbytes = (weights + t * (h + v) * _act(model)) * (t > 0)
    return OpCount(flops=2.0 * t * h * v, nbytes=nbytes, launches=LAUNCHES["lm_head"] * (t > 0))


def embedding_counts(model: MoEModel, tokens: Array) -> OpCount:
    """The input embedding of ``tokens`` tokens: one row gathered per token, written as activations."""
    t = np.asarray(tokens, dtype=float)
    h = model.hidden_size
    nbytes = t * h * (DTYPE_BYTES[model.weight_dtype_of("embeddings")] + _act(model))
    return OpCount(flops=np.zeros_like(t), nbytes=nbytes, launches=LAUNCHES["embedding"] * (t > 0))
