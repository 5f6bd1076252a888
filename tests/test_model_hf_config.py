"""A transformers config.json loads as the same MoEModel as moesim's built-in spec of that model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from moesim.errors import UserError
from moesim.specs import load_model

# config.json fields of each model (the copies each moesim/specs/models/*.yaml `source:` names; the
# Qwen1.5-MoE and Switch entries are the architecture fields of ljcleo/moe-lrc@61c86cf
# model/qwen/config.json and model/switch/config.json).
CONFIGS = {
    "mixtral-8x7b": {
        "model_type": "mixtral",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "torch_dtype": "bfloat16",
    },
    "phi-3.5-moe": {
        "model_type": "phimoe",
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "intermediate_size": 6400,
        "num_local_experts": 16,
        "num_experts_per_tok": 2,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32064,
        "torch_dtype": "bfloat16",
    },
    "qwen1.5-moe-a2.7b": {
        "model_type": "qwen2_moe",
        "hidden_size": 2048,
        "intermediate_size": 5632,
        "num_attention_heads": 16,
        "num_hidden_layers": 24,
        "num_key_value_heads": 16,
        "torch_dtype": "bfloat16",
        "vocab_size": 151936,
        "decoder_sparse_step": 1,
        "moe_intermediate_size": 1408,
        "shared_expert_intermediate_size": 5632,
        "num_experts_per_tok": 4,
        "num_experts": 60,
    },
    "qwen3-30b-a3b": {
        "model_type": "qwen3_moe",
        "num_hidden_layers": 48,
        "hidden_size": 2048,
        "intermediate_size": 6144,
        "moe_intermediate_size": 768,
        "num_experts": 128,
        "num_experts_per_tok": 8,
        "num_attention_heads": 32,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "vocab_size": 151936,
        "mlp_only_layers": [],
        "decoder_sparse_step": 1,
        "torch_dtype": "bfloat16",
    },
    "olmoe-1b-7b": {
        "model_type": "olmoe",
        "num_hidden_layers": 16,
        "hidden_size": 2048,
        "intermediate_size": 1024,
        "num_experts": 64,
        "num_experts_per_tok": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "vocab_size": 50304,
        "torch_dtype": "float32",
    },
    "deepseek-v2-lite": {
        "model_type": "deepseek_v2",
        "num_hidden_layers": 27,
        "hidden_size": 2048,
        "intermediate_size": 10944,
        "moe_intermediate_size": 1408,
        "n_routed_experts": 64,
        "n_shared_experts": 2,
        "num_experts_per_tok": 6,
        "first_k_dense_replace": 1,
        "moe_layer_freq": 1,
        "n_group": 1,
        "topk_group": 1,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "q_lora_rank": None,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "vocab_size": 102400,
        "torch_dtype": "bfloat16",
    },
    "deepseek-v3": {
        "model_type": "deepseek_v3",
        "num_hidden_layers": 61,
        "hidden_size": 7168,
        "intermediate_size": 18432,
        "moe_intermediate_size": 2048,
        "n_routed_experts": 256,
        "n_shared_experts": 1,
        "num_experts_per_tok": 8,
        "first_k_dense_replace": 3,
        "moe_layer_freq": 1,
        "n_group": 8,
        "topk_group": 4,
        "num_attention_heads": 128,
        "num_key_value_heads": 128,
        "q_lora_rank": 1536,
        "kv_lora_rank": 512,
        "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64,
        "v_head_dim": 128,
        "vocab_size": 129280,
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
    },
    "gpt-oss-20b": {
        "model_type": "gpt_oss",
        "num_hidden_layers": 24,
        "hidden_size": 2880,
        "intermediate_size": 2880,
        "num_local_experts": 32,
        "num_experts_per_tok": 4,
        "experts_per_token": 4,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "sliding_window": 128,
        "layer_types": ["sliding_attention", "full_attention"] * 12,
        "vocab_size": 201088,
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "mxfp4"},
    },
    "switch-base-128": {
        "model_type": "switch_transformers",
        "d_ff": 3072,
        "d_kv": 64,
        "d_model": 768,
        "decoder_sparse_step": 2,
        "encoder_sparse_step": 2,
        "is_gated_act": False,
        "num_decoder_layers": 12,
        "num_experts": 128,
        "num_heads": 12,
        "num_layers": 12,
        "num_selected_experts": 1,
        "torch_dtype": "float32",
        "vocab_size": 32128,
    },
}


def write_config(tmp_path: Path, name: str, config: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_json_equals_the_builtin_spec(tmp_path: Path, name: str) -> None:
    imported = load_model(str(write_config(tmp_path, name, CONFIGS[name])))
    builtin = load_model(name)
    assert imported.name == name  # a config.json takes its folder's name
    assert dataclasses.replace(imported, source="") == dataclasses.replace(builtin, source="")


def test_qwen2_moe_sparse_step_and_dense_layers(tmp_path: Path) -> None:
    config = dict(CONFIGS["qwen1.5-moe-a2.7b"], decoder_sparse_step=2, mlp_only_layers=[3])
    m = load_model(str(write_config(tmp_path, "q", config)))
    assert m.moe_layers == (1, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23)
    assert m.dense_intermediate_size == 5632


def test_config_json_errors(tmp_path: Path) -> None:
    p = write_config(tmp_path, "llama", {"model_type": "llama", "hidden_size": 4096})
    with pytest.raises(UserError) as err:
        load_model(str(p))
    assert str(err.value).startswith(
        f"{p}: model_type: expected a config.json of an MoE model type moesim knows"
    )
    config = dict(CONFIGS["mixtral-8x7b"])
    del config["num_local_experts"]
    p = write_config(tmp_path, "broken", config)
    with pytest.raises(UserError) as err:
        load_model(str(p))
    assert str(err.value) == f"{p}: num_local_experts: missing required field (a mixtral config.json has it)"
