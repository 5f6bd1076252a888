"""Built-in model specs carry their config.json numbers; the model format and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.errors import UserError
from moesim.resources import builtin_names
from moesim.specs import load_model
from moesim.specs.model_file import model_params, model_summary

BUILTIN = [
    "mixtral-8x7b",
    "mixtral-8x22b",
    "deepseek-v2-lite",
    "deepseek-v3",
    "qwen1.5-moe-a2.7b",
    "qwen3-30b-a3b",
    "qwen3-235b-a22b",
    "olmoe-1b-7b",
    "gpt-oss-20b",
    "gpt-oss-120b",
    "phi-3.5-moe",
    "switch-base-128",
]

# (L, MoE layers, h, I_moe, E, k, shared, H, Hkv, d_h), read from each model's config.json (the copies
# named in moesim/specs/models/*.yaml `source:`), independently of the YAML files under test.
CONFIG = {
    "mixtral-8x7b": (32, 32, 4096, 14336, 8, 2, 0, 32, 8, 128),
    "mixtral-8x22b": (56, 56, 6144, 16384, 8, 2, 0, 48, 8, 128),
    "deepseek-v2-lite": (27, 26, 2048, 1408, 64, 6, 2, 16, 16, None),
    "deepseek-v3": (61, 58, 7168, 2048, 256, 8, 1, 128, 128, None),
    "qwen1.5-moe-a2.7b": (24, 24, 2048, 1408, 60, 4, 1, 16, 16, 128),
    "qwen3-30b-a3b": (48, 48, 2048, 768, 128, 8, 0, 32, 4, 128),
    "qwen3-235b-a22b": (94, 94, 4096, 1536, 128, 8, 0, 64, 4, 128),
    "olmoe-1b-7b": (16, 16, 2048, 1024, 64, 8, 0, 16, 16, 128),
    "gpt-oss-20b": (24, 24, 2880, 2880, 32, 4, 0, 64, 8, 64),
    "gpt-oss-120b": (36, 36, 2880, 2880, 128, 4, 0, 64, 8, 64),
    "phi-3.5-moe": (32, 32, 4096, 6400, 16, 2, 0, 32, 8, 128),
    "switch-base-128": (24, 12, 768, 3072, 128, 1, 0, 12, 12, 64),
}

# Total parameters (billions) published for the checkpoint: LRC model/config.jsonl num_params, the
# llama.cpp GGUF count for gpt-oss-120b (ggml-org/llama.cpp PR #19922, llama-bench output), and the
# advertised totals for DeepSeek-V3 and Qwen3-235B (unverified).
PUBLISHED_TOTAL_B = {
    "mixtral-8x7b": 46.7,
    "deepseek-v2-lite": 15.71,
    "qwen1.5-moe-a2.7b": 14.32,
    "qwen3-30b-a3b": 30.53,
    "olmoe-1b-7b": 6.92,
    "phi-3.5-moe": 41.87,
    "switch-base-128": 7.42,
    "gpt-oss-120b": 116.83,
    "deepseek-v3": 671.0,
    "qwen3-235b-a22b": 235.0,
}


def test_the_builtin_list_is_complete() -> None:
    assert sorted(builtin_names("model")) == sorted(BUILTIN)


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_model_matches_its_config(name: str) -> None:
    m = load_model(name)
    L, moe, h, inter, e, k, s, heads, kv, hd = CONFIG[name]
    assert m.name == name and m.source.strip()
    assert (m.num_layers, m.num_moe_layers, m.hidden_size, m.expert_intermediate_size) == (L, moe, h, inter)
    assert (m.num_experts, m.top_k, m.num_shared_experts) == (e, k, s)
    assert (m.attention.num_heads, m.attention.num_kv_heads) == (heads, kv)
    if hd is not None:
        assert m.attention.head_dim == hd


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTAL_B))
def test_derived_parameter_count_matches_the_published_total(name: str) -> None:
    total = model_params(load_model(name))["total"] / 1e9
    assert total == pytest.approx(PUBLISHED_TOTAL_B[name], rel=0.01)


def test_deepseek_v3() -> None:
    m = load_model("deepseek-v3")
    assert m.moe_layers == tuple(range(3, 61))
    assert m.weight_dtype == "fp8" and m.activation_dtype == "bf16"
    assert (m.num_expert_groups, m.topk_groups) == (8, 4)
    assert m.shared_expert_intermediate_size == 2048 and m.dense_intermediate_size == 18432
    a = m.attention
    assert (a.kind, a.q_lora_rank, a.kv_lora_rank, a.qk_nope_head_dim, a.qk_rope_head_dim, a.v_head_dim) == (
        "mla",
        1536,
        512,
        128,
        64,
        128,
    )
    assert m.expert_bytes() == 3 * 7168 * 2048  # fp8: one byte per weight, 44.0 MB
    assert m.kv_cache_bytes_per_token() == 70272  # 576 elements x 2 B x 61 layers


def test_sizes_in_the_reference_table() -> None:
    assert load_model("mixtral-8x7b").expert_bytes() == pytest.approx(352.3e6, rel=1e-3)
    assert load_model("deepseek-v2-lite").expert_bytes() == pytest.approx(17.3e6, rel=1e-3)
    assert load_model("qwen3-30b-a3b").expert_bytes() == pytest.approx(9.44e6, rel=1e-3)
    gpt = load_model("gpt-oss-20b")
    assert gpt.weight_dtype == "mxfp4" and gpt.expert_bytes() == pytest.approx(13.2e6, rel=2e-3)
    assert gpt.attention.sliding_window == 128


def test_switch_sparse_layers_are_every_second_layer() -> None:
    m = load_model("switch-base-128")
    assert m.moe_layers == tuple(range(1, 24, 2)) and not m.gated
    assert m.expert_params == 2 * 768 * 3072


def test_qwen15_shared_expert_is_one_block_of_four_widths() -> None:
    m = load_model("qwen1.5-moe-a2.7b")
    assert m.num_shared_experts == 1 and m.shared_expert_intermediate_size == 4 * 1408


def test_summary_has_the_cli_fields() -> None:
    s = model_summary(load_model("deepseek-v3"))
    for key in (
        "name",
        "num_layers",
        "moe_layers",
        "hidden_size",
        "expert_intermediate_size",
        "num_experts",
        "num_shared_experts",
        "top_k",
        "expert_bytes",
    ):
        assert key in s
    assert len(s["moe_layers"]) == 58 and s["params"]["active_per_token"] == pytest.approx(37.5e9, rel=0.02)


# ---- the format ----------------------------------------------------------------------------------

SMALL = """\
name: tiny
source: test
num_layers: 4
moe_layers: all
hidden_size: 64
expert_intermediate_size: 32
num_experts: 8
top_k: 2
attention: {kind: gqa, num_heads: 4, num_kv_heads: 2}
"""


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_user_model_and_defaults(tmp_path: Path) -> None:
    m = load_model(str(write(tmp_path, SMALL)))
    assert m.name == "tiny" and m.moe_layers == (0, 1, 2, 3) and m.attention.head_dim == 16
    assert m.weight_dtype == "bf16" and m.gated and m.num_shared_experts == 0


@pytest.mark.parametrize(
    ("spec", "layers"),
    [
        ("[1, 3]", (1, 3)),
        ("{first_dense: 1}", (1, 2, 3)),
        ("{every: 2}", (0, 2)),
        ("{every: 2, offset: 1}", (1, 3)),
    ],
)
def test_moe_layer_forms(tmp_path: Path, spec: str, layers: tuple[int, ...]) -> None:
    text = SMALL.replace("moe_layers: all", f"moe_layers: {spec}\ndense_intermediate_size: 128")
    assert load_model(str(write(tmp_path, text))).moe_layers == layers


def test_extends_a_builtin(tmp_path: Path) -> None:
    p = write(
        tmp_path, "extends: olmoe-1b-7b\nweight_dtype: bf16\nactivation_dtype: bf16\n", "olmoe-bf16.yaml"
    )
    m = load_model(str(p))
    assert m.name == "olmoe-bf16" and m.weight_dtype == "bf16" and m.num_experts == 64


def model_error(path: Path) -> str:
    with pytest.raises(UserError) as err:
        load_model(str(path))
    return str(err.value)


@pytest.mark.parametrize(
    ("edit", "field", "message"),
    [
        (("top_k: 2", "top_k: 9"), "top_k", "expected at most num_experts (8) experts per token, got 9"),
        (
            ("num_experts: 8", "num_experts: eight"),
            "num_experts",
            "expected a whole number >= 1, got 'eight'",
        ),
        (
            ("moe_layers: all", "moe_layers: [0, 9]"),
            "moe_layers[1]",
            "expected a layer index from 0 to 3, got 9",
        ),
        (("moe_layers: all", "moe_layers: some"), "moe_layers", "expected 'all', a list of layer indices"),
        (
            ("moe_layers: all", "moe_layers: [1]"),
            "dense_intermediate_size",
            "expected the FFN width of the 3 dense",
        ),
        (("kind: gqa", "kind: mqa"), "attention.kind", "expected one of gqa, mla, got 'mqa'"),
        (("kind: gqa", "kind: mla"), "attention.kv_lora_rank", "missing required field"),
        (
            ("num_kv_heads: 2", "num_kv_heads: 3"),
            "attention.num_kv_heads",
            "expected a divisor of num_heads (4)",
        ),
        (("top_k: 2", "top_k: 2\nweight_dtype: fp6"), "weight_dtype", "expected one of fp32, tf32, bf16"),
        (
            ("top_k: 2", "top_k: 2\nnum_shared_experts: 1"),
            "shared_expert_intermediate_size",
            "expected the width",
        ),
        (("top_k: 2", "top_k: 2\nexperts: 8"), "experts", "unknown field; expected one of: "),
        (("source: test\n", ""), "source", "missing required field"),
    ],
)
def test_model_errors(tmp_path: Path, edit: tuple[str, str], field: str, message: str) -> None:
    p = write(tmp_path, SMALL.replace(*edit))
    assert model_error(p).startswith(f"{p}: {field}: {message}")


def test_missing_and_malformed_model_files(tmp_path: Path) -> None:
    assert model_error(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: no such model spec file"
    assert model_error(write(tmp_path, "[1, 2]")).endswith(
        "expected a YAML mapping at the top level, got a list"
    )
    with pytest.raises(UserError, match="unknown model spec 'gpt-5'"):
        load_model("gpt-5")


def test_the_documented_example_loads(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text(encoding="utf-8")
    example = text.split("## Example", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    m = load_model(str(write(tmp_path, example, "my-moe.yaml")))
    assert m.name == "my-moe" and m.num_moe_layers == 27 and m.num_shared_experts == 2
