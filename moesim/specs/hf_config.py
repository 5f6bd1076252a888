"""A Hugging Face ``config.json`` as a moesim model spec: ``moesim model show path/to/config.json``.

Each supported ``model_type`` names its fields differently (``num_local_experts``,
``n_routed_experts``, ``num_experts``...) and marks MoE layers its own way
(``first_k_dense_replace``, ``decoder_sparse_step``, ``encoder_sparse_step``). This module maps
them onto the fields of docs/models.md; the result is then validated like any spec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moesim.errors import UserError
from moesim.limits import EXPERTS, LAYERS, MAX_WIDTH, TOP_K

_TORCH_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def is_hf_config(data: dict[str, Any]) -> bool:
    """True for a transformers config (it has ``model_type``, which a moesim spec never has)."""
    return "model_type" in data


class _Config:
    """Field access on a config.json with errors naming the file and the key."""

    def __init__(self, data: dict[str, Any], file: str):
        self.data, self.file = data, file
        self.kind = str(data.get("model_type"))

    def int(self, *keys: str, default: int | None = None, minimum: int = 1) -> int:
        """The first of ``keys`` present, a whole number >= ``minimum`` (and within moesim.limits)."""
        for key in keys:
            value = self.data.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                    raise UserError(f"expected a whole number >= {minimum}, got {value!r}", file=self.file,
                                    field=key)
                limit = _LIMITS.get(key)
                if limit is not None:
                    limit.check(value, file=self.file, field=key)
                elif value > MAX_WIDTH:
                    raise UserError(f"expected a whole number from {minimum} to {MAX_WIDTH:,}, got {value:,}",
                                    file=self.file, field=key)
                return value
        if default is not None:
            return default
        raise UserError(
            f"missing required field (a {self.kind} config.json has it)", file=self.file, field=keys[0]
        )

    def get(self, key: str, default: Any = None) -> Any:
        value = self.data.get(key)
        return default if value is None else value

    def int_list(self, key: str) -> list[int]:
        """A list of whole numbers (layer indices), empty when absent."""
        value = self.get(key, [])
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise UserError(f"expected a list of whole numbers, got {value!r}", file=self.file, field=key)
        return value

    def str_list(self, key: str) -> list[str]:
        value = self.get(key, [])
        if not isinstance(value, list) or any(not isinstance(v, str) for v in value):
            raise UserError(f"expected a list of texts, got {value!r}", file=self.file, field=key)
        return value


# config.json keys bounded by a limit of moesim.limits (the others by MAX_WIDTH)
_LIMITS = {
    **dict.fromkeys(("num_hidden_layers", "num_layers", "num_decoder_layers"), LAYERS),
    **dict.fromkeys(("num_local_experts", "num_experts", "n_routed_experts"), EXPERTS),
    **dict.fromkeys(("num_experts_per_tok", "experts_per_token", "num_selected_experts"), TOP_K),
}


def _dtype(c: _Config) -> str:
    return _TORCH_DTYPES.get(str(c.get("torch_dtype", c.get("dtype", "bfloat16"))), "bf16")


def _gqa(c: _Config, hidden: int, **extra: Any) -> dict[str, Any]:
    heads = c.int("num_attention_heads")
    return {
        "kind": "gqa",
        "num_heads": heads,
        "num_kv_heads": c.int("num_key_value_heads", default=heads),
        "head_dim": c.int("head_dim", default=hidden // heads),
        **extra,
    }


def _mixtral(c: _Config) -> dict[str, Any]:
    h = c.int("hidden_size")
    return {
        "num_layers": c.int("num_hidden_layers"),
        "moe_layers": "all",
        "hidden_size": h,
        "expert_intermediate_size": c.int("intermediate_size"),
        "num_experts": c.int("num_local_experts"),
        "top_k": c.int("num_experts_per_tok"),
        "attention": _gqa(c, h),
    }


def _olmoe(c: _Config) -> dict[str, Any]:
    h = c.int("hidden_size")
    return {
        "num_layers": c.int("num_hidden_layers"),
        "moe_layers": "all",
        "hidden_size": h,
        "expert_intermediate_size": c.int("intermediate_size"),
        "num_experts": c.int("num_experts"),
        "top_k": c.int("num_experts_per_tok"),
        "attention": _gqa(c, h),
    }


def _qwen_moe(c: _Config) -> dict[str, Any]:
    h, layers = c.int("hidden_size"), c.int("num_hidden_layers")
    step = c.int("decoder_sparse_step", default=1)
    dense_only = set(c.int_list("mlp_only_layers"))
    # transformers' Qwen2/3-MoE: layer i is sparse unless listed in mlp_only_layers, when (i + 1) % step == 0.
    moe = [i for i in range(layers) if i not in dense_only and (i + 1) % step == 0]
    shared_width = c.int("shared_expert_intermediate_size", default=0, minimum=0)
    spec = {
        "num_layers": layers,
        "moe_layers": moe,
        "hidden_size": h,
        "expert_intermediate_size": c.int("moe_intermediate_size"),
        "num_experts": c.int("num_experts"),
        "top_k": c.int("num_experts_per_tok"),
        "attention": _gqa(c, h),
    }
    if shared_width:
        spec.update(num_shared_experts=1, shared_expert_intermediate_size=shared_width)
    if len(moe) < layers:
        spec["dense_intermediate_size"] = c.int("intermediate_size")
    return spec


def _deepseek(c: _Config) -> dict[str, Any]:
    h, layers = c.int("hidden_size"), c.int("num_hidden_layers")
    first, freq = c.int("first_k_dense_replace", default=0, minimum=0), c.int("moe_layer_freq", default=1)
    moe = [i for i in range(layers) if i >= first and i % freq == 0]
    shared = c.int("n_shared_experts", default=0, minimum=0)
    spec: dict[str, Any] = {
        "num_layers": layers,
        "moe_layers": moe,
        "hidden_size": h,
        "expert_intermediate_size": c.int("moe_intermediate_size"),
        "num_experts": c.int("n_routed_experts"),
        "top_k": c.int("num_experts_per_tok"),
        "num_expert_groups": c.int("n_group", default=1),
        "topk_groups": c.int("topk_group", default=1),
        "attention": {
            "kind": "mla",
            "num_heads": c.int("num_attention_heads"),
            "num_kv_heads": c.int("num_key_value_heads", "num_attention_heads"),
            "q_lora_rank": c.get("q_lora_rank"),
            "kv_lora_rank": c.int("kv_lora_rank"),
            "qk_nope_head_dim": c.int("qk_nope_head_dim"),
            "qk_rope_head_dim": c.int("qk_rope_head_dim"),
            "v_head_dim": c.int("v_head_dim"),
        },
    }
    if shared:
        spec.update(num_shared_experts=shared, shared_expert_intermediate_size=c.int("moe_intermediate_size"))
    if len(moe) < layers:
        spec["dense_intermediate_size"] = c.int("intermediate_size")
    return spec


def _gpt_oss(c: _Config) -> dict[str, Any]:
    h = c.int("hidden_size")
    types = c.str_list("layer_types")
    window = c.int("sliding_window", default=0, minimum=0)
    extra = {"sliding_window": window} if window and (not types or "sliding_attention" in types) else {}
    return {
        "num_layers": c.int("num_hidden_layers"),
        "moe_layers": "all",
        "hidden_size": h,
        "expert_intermediate_size": c.int("intermediate_size"),
        "num_experts": c.int("num_local_experts"),
        "top_k": c.int("num_experts_per_tok", "experts_per_token"),
        "attention": _gqa(c, h, **extra),
    }


def _switch(c: _Config) -> dict[str, Any]:
    enc, dec = c.int("num_layers"), c.int("num_decoder_layers", "num_layers")
    h = c.int("d_model")

    # transformers' SwitchTransformers: block i of a stack is sparse when i % sparse_step == 1 (or step == 1).
    def sparse(count: int, step: int, first: int) -> list[int]:
        return [first + i for i in range(count) if step > 0 and (step == 1 or i % step == 1)]

    moe = sparse(enc, c.int("encoder_sparse_step", default=1, minimum=0), 0) + sparse(
        dec, c.int("decoder_sparse_step", default=1, minimum=0), enc
    )
    return {
        "num_layers": enc + dec,
        "moe_layers": moe,
        "hidden_size": h,
        "expert_intermediate_size": c.int("d_ff"),
        "dense_intermediate_size": c.int("d_ff"),
        "gated": bool(c.get("is_gated_act", False)),
        "num_experts": c.int("num_experts"),
        "top_k": c.int("num_selected_experts", default=1),
        "attention": {
            "kind": "gqa",
            "num_heads": c.int("num_heads"),
            "num_kv_heads": c.int("num_heads"),
            "head_dim": c.int("d_kv"),
        },
    }


_CONVERTERS: dict[str, Callable[[_Config], dict[str, Any]]] = {
    "mixtral": _mixtral,
    "phimoe": _mixtral,
    "olmoe": _olmoe,
    "qwen2_moe": _qwen_moe,
    "qwen3_moe": _qwen_moe,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "gpt_oss": _gpt_oss,
    "switch_transformers": _switch,
}


# Substrings of ``modules_to_not_convert`` entries that keep a tensor out of fp8 quantisation.
_FP8_TENSORS = {"attention": ("attn",), "dense": ("mlp",), "shared_experts": ("shared_expert",)}


def _fp8_precision(quant: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
    """An fp8 checkpoint quantises every Linear (DeepSeek-V3's README_WEIGHTS.md) but those its
    ``modules_to_not_convert`` names; embeddings, LM head and router stay in ``torch_dtype``."""
    skip = [str(m) for m in quant.get("modules_to_not_convert") or []]
    present = {"attention": True, "dense": "dense_intermediate_size" in spec,
               "shared_experts": "num_shared_experts" in spec}
    return {t: "fp8" for t, keys in _FP8_TENSORS.items()
            if present[t] and not any(k in m for m in skip for k in keys)}


def spec_from_hf_config(data: dict[str, Any], *, file: str) -> dict[str, Any]:
    """The moesim spec fields (docs/models.md) equivalent to a transformers config.json."""
    c = _Config(data, file)
    convert = _CONVERTERS.get(c.kind)
    if convert is None:
        raise UserError(
            f"expected a config.json of an MoE model type moesim knows ({', '.join(sorted(_CONVERTERS))})"
            f", got {data.get('model_type')!r}",
            file=file,
            field="model_type",
        )
    spec = convert(c)
    quant = c.get("quantization_config", {})
    method = str(quant.get("quant_method", "")) if isinstance(quant, dict) else ""
    weight = {"fp8": "fp8", "mxfp4": "mxfp4"}.get(method, _dtype(c))
    if method == "fp8":
        spec["precision"] = _fp8_precision(quant, spec)
    spec.update(
        weight_dtype=weight,
        activation_dtype=_dtype(c),
        vocab_size=c.int("vocab_size", default=0, minimum=0),
        source=f"transformers config.json ({file})",
    )
    if method == "fp8" and isinstance(quant, dict) and quant.get("weight_block_size"):
        # block-FP8 experts take FP8 activations: DeepEP dispatches them in FP8, combines in BF16
        spec.update(dispatch_dtype="fp8", combine_dtype=_dtype(c))
    if c.get("_name_or_path"):
        spec["hf_id"] = str(c.get("_name_or_path"))
    return spec
