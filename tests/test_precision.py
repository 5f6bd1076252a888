"""Precision per tensor (moesim.specs.precision): formats, the precision: block, the example specs of
issue 12, and each tensor's dtype moving exactly the costs that read that tensor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.errors import UserError
from moesim.memory import MemoryModel
from moesim.sim import SimConfig, simulate
from moesim.specs import load_cluster, load_model
from moesim.specs.model import with_precision
from moesim.specs.model_file import model_summary
from moesim.specs.precision import DTYPES, Q4_K_M_BITS, parse_precision_flag
from moesim.traces import RoutingTrace

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "models"
DSV3_FP8 = EXAMPLES / "deepseek-v3-fp8-serving.yaml"
MIXTRAL_Q4 = EXAMPLES / "mixtral-8x7b-q4km-cpu.yaml"


def test_formats_bits_per_weight():
    """GGUF block sizes (ggml-common.h): q8_0 34 bytes per 32, q4_0 18 per 32, q6_k 210 per 256; MXFP4
    32 E2M1 values + one E8M0 scale; Q4_K_M the llama.cpp mix, the same constant as the CPU kernel's."""
    assert DTYPES["q8_0"].bits == 34 * 8 / 32
    assert DTYPES["q4_0"].bits == 18 * 8 / 32
    assert DTYPES["q6_k"].bits == 210 * 8 / 256
    assert DTYPES["mxfp4"].bits == (32 * 4 + 8) / 32
    assert DTYPES["q4_k_m"].bits == pytest.approx(2 / 3 * 4.5 + 1 / 3 * (4.5 + 6.5625) / 2, abs=0.005)
    cpu = load_cluster("rtx4090-workstation").device("n0.cpu0").spec
    assert cpu.cpu_kernels["avx512-q4"].weight_bits == Q4_K_M_BITS


def test_precision_flag_parsing():
    assert parse_precision_flag("attention=fp8, kv_cache=fp8,compute.attention=auto") == {
        "attention": "fp8", "kv_cache": "fp8", "compute.attention": "auto"}
    cases = (("attention=fp7", "fp7"), ("attn=fp8", "attn"), ("attention", "attention"), ("", "at least"))
    for bad, word in cases:
        with pytest.raises(UserError) as e:
            parse_precision_flag(bad)
        assert word in e.value.message and e.value.field.startswith("--precision")


def test_deepseek_v3_fp8_serving_spec_bytes_per_layer():
    """By hand from the config: MLA attention 1536·7168 + 1536·128·192 + 7168·576 + 512·128·256 +
    128·128·7168 = 187,105,280 weights = bytes in fp8; 256 routed experts of 3·7168·2048 fp8 bytes per
    MoE layer; the KV cache 512 + 64 elements in fp8 = 576 B per token and layer."""
    m = load_model(DSV3_FP8)
    t = model_summary(m)["tensors"]
    assert t["attention"] == {"dtype": "fp8", "params_per_layer": 187_105_280, "bytes_per_layer": 187_105_280,
                              "layers": 61, "total_bytes": 61 * 187_105_280}
    assert t["routed_experts"]["bytes_per_layer"] == 256 * 3 * 7168 * 2048
    assert t["shared_experts"]["bytes_per_layer"] == 3 * 7168 * 2048
    assert t["dense"]["bytes_per_layer"] == 3 * 7168 * 18432 and t["dense"]["layers"] == 3
    assert t["lm_head"]["bytes_per_layer"] == 129_280 * 7168 * 2  # bf16
    assert t["kv_cache"]["bytes_per_token_per_layer"] == 576
    assert m.dispatch_dtype == "fp8" and m.combine_dtype == "bf16"
    assert m.dispatch_bytes_per_token == 7168 and m.combine_bytes_per_token == 2 * 7168


def test_mixtral_q4km_spec_bytes_per_layer():
    m = load_model(MIXTRAL_Q4)
    t = model_summary(m)["tensors"]
    assert m.weight_dtype == "q4_k_m" and t["attention"]["dtype"] == "bf16"
    assert t["routed_experts"]["bytes_per_layer"] == pytest.approx(8 * 3 * 4096 * 14336 * 4.84 / 8)
    assert t["attention"]["bytes_per_layer"] == 2 * (2 * 4096 * 4096 + 2 * 4096 * 1024)


def test_built_in_deepseek_v3_keeps_its_fp8_linears():
    """The checkpoint's Linear layers are fp8; its embedding, head and gate bf16 (README_WEIGHTS.md)."""
    m = load_model("deepseek-v3")
    linears = ("attention", "dense", "shared_experts", "routed_experts")
    assert [m.weight_dtype_of(t) for t in linears] == ["fp8"] * 4
    assert m.weight_dtype_of("embeddings") == "bf16" and m.weight_dtype_of("router") == "bf16"
    assert m.kv_cache_dtype == "bf16"


def _v3_trace(model, tokens: int = 64, seed: int = 0) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(model.num_experts)[: model.top_k]
                    for _ in range(tokens * model.num_moe_layers)])
    return RoutingTrace.build(ids.reshape(tokens, model.num_moe_layers, model.top_k),
                              num_experts=model.num_experts, layer_ids=np.array(model.moe_layers))


def test_the_two_example_specs_simulate():
    m = load_model(DSV3_FP8)
    cluster = load_cluster("h100x8x4")
    r = simulate(SimConfig(cluster, m, _v3_trace(m), batch_size=32, tp=8), CostModel(cluster, m))
    s = r.summary()
    assert s["tokens"] == 64 and s["precision"]["kv_cache"] == "fp8" and s["parallel"]["tp"] == 8
    assert s["cost_sources"]["attention"] == "roofline"
    q4 = load_model(MIXTRAL_Q4)
    ws = load_cluster("rtx4090-workstation")
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=q4).rows(0, 8)
    s = simulate(SimConfig(ws, q4, trace, cache_policy="lru", cache_size=3, miss="cpu")).summary()
    assert s["op_class_s"]["mean_per_step_s"]["experts_cpu"] > 0
    cache = 3 * 32 * 3 * 4096 * 14336 * 4.84 / 8  # 3 Q4_K_M experts per layer
    assert s["memory_breakdown_bytes"]["n0.gpu0"]["experts"] == pytest.approx(cache)


def test_fp8_compute_on_a_gpu_without_fp8_is_refused_naming_the_device():
    m = load_model(DSV3_FP8)
    with pytest.raises(UserError) as e:
        CostModel(load_cluster("a100x8"), m)
    msg = e.value.message
    assert "n0.gpu0" in msg and "a100" in msg and "fp8" in msg and "\n" not in msg
    assert e.value.field.startswith("precision.compute")
    auto = with_precision(m, {"compute": "auto"})
    CostModel(load_cluster("a100x8"), auto)  # weight-only fp8 on an A100: bf16 GEMMs, accepted


# ---- each tensor's dtype moves exactly the costs that read it ------------------------------------------

COMPONENTS = ("attention_decode", "attention_prefill", "dense", "shared", "router", "permute", "experts",
              "lm_head", "embedding", "dispatch", "combine", "kv_bytes")
PERTURB = {  # key of --precision -> (new dtype, the components it must move)
    "attention": ("fp8", {"attention_decode", "attention_prefill"}),
    "dense": ("fp8", {"dense"}),
    "shared_experts": ("fp8", {"shared"}),
    "routed_experts": ("fp8", {"experts"}),
    "embeddings": ("fp8", {"lm_head", "embedding"}),
    "kv_cache": ("fp8", {"attention_decode", "kv_bytes"}),
    "dispatch": ("fp8", {"dispatch"}),
    "combine": ("fp8", {"combine"}),
    "compute.attention": ("fp8", {"attention_prefill"}),
    "compute.dense": ("fp8", {"dense"}),
    "compute.routed_experts": ("fp8", {"experts"}),
}
MEMORY = {"attention": "attention", "dense": "dense_ffn", "shared_experts": "shared_experts",
          "embeddings": "embeddings", "kv_cache": "kv_cache"}


def _components(model, cluster, trace) -> dict[str, object]:
    cost = CostModel(cluster, model)
    g = "n0.gpu0"
    t = 2048  # large enough for the GEMMs to be compute-bound: they see the compute dtype
    out: dict[str, object] = {
        "attention_decode": cost.attention_s(g, t, 4096, "decode"),  # reads the KV cache
        "attention_prefill": cost.attention_s(g, t, t, "prefill"),  # compute-bound
        "dense": cost.dense_ffn_s(g, t),
        "shared": cost.shared_expert_s(g, t), "router": cost.router_s(g, t),
        "permute": cost.permute_combine_s(g, t),
        "experts": cost.expert_compute_s(g, np.full(model.num_experts, 1024.0)),
        "lm_head": cost.lm_head_s(g, t), "embedding": cost.embedding_s(g, t),
        "kv_bytes": model.kv_cache_bytes_per_token(),
    }
    r = simulate(SimConfig(cluster, model, trace, batch_size=64), cost)
    out["dispatch"] = r.rec.phase_s[:, :, 1].copy()
    out["combine"] = r.rec.phase_s[:, :, 3].copy()
    out["memory"] = MemoryModel(model, gpus=8).device("g", 80e9).parts()
    return out


def _same(a: object, b: object) -> bool:
    return bool(np.array_equal(a, b)) if isinstance(a, np.ndarray) else a == b


@pytest.fixture(scope="module")
def v2_lite_base():
    """DeepSeek-V2-Lite: MLA, one dense layer, shared experts, on h100x8; everything in bf16."""
    m = load_model("deepseek-v2-lite")
    cluster = load_cluster("h100x8")
    trace = RoutingTrace.load("deepseek-v2-lite-synth", model=m).rows(0, 128)
    return m, cluster, trace, _components(m, cluster, trace)


@pytest.mark.parametrize("key", sorted(PERTURB))
def test_one_tensor_dtype_moves_exactly_its_costs(key, v2_lite_base):
    model, cluster, trace, base = v2_lite_base
    dtype, moved = PERTURB[key]
    changed = _components(with_precision(model, {key: dtype}), cluster, trace)
    for c in COMPONENTS:
        if c in moved:
            assert not _same(changed[c], base[c]), (key, c)
        else:
            assert _same(changed[c], base[c]), (key, c)
    for k, part in MEMORY.items():
        same = changed["memory"][part] == base["memory"][part]
        assert same == (k != key), (key, part)


def test_replace_keeps_precision_frozen_and_hashable():
    m = with_precision(load_model("mixtral-8x7b"), {"compute": "fp8", "kv_cache": "fp8"})
    assert hash(m) == hash(replace(m))
    assert dict(m.precision.compute)["routed_experts"] == "fp8"
