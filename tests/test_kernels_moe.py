"""The Triton MoE kernels against their PyTorch references, in Triton's CPU interpreter.

Shapes are small (the interpreter runs each program instance in numpy, ~10 ms each) but ragged:
token counts that are not multiples of the block, experts with no tokens, dropped pairs (-1),
K = 1 and K = 8, up to 64 experts.
"""

from __future__ import annotations

import importlib
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton decorates any kernel

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton", reason="triton is not installed: kernel tests need its interpreter")

from moesim.errors import UserError  # noqa: E402

_MODULES = ("runtime", "align", "grouped_gemm", "combine", "moe_layer")


def _kernels():
    """The kernel modules, re-imported if something imported them before the interpreter was on."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is set to something other than 1 in this environment",
                    allow_module_level=True)
    import triton.language as tl

    if type(tl.cumsum).__name__ != "InterpretedFunction":
        # triton.language was imported before TRITON_INTERPRET=1 was set (by a module collected
        # earlier): its own @jit helpers are compiled-mode objects and cannot run on a CPU.
        message = ("triton was imported before this module set TRITON_INTERPRET=1; run the kernel tests "
                   "in their own process: pytest tests/test_kernels_moe.py")
        if torch.cuda.is_available():
            pytest.skip(message, allow_module_level=True)
        pytest.fail(message, pytrace=False)
    mods = {name: importlib.import_module(f"moesim.kernels.{name}") for name in _MODULES}
    if type(mods["align"]._scatter_kernel).__name__ != "InterpretedFunction":
        mods = {name: importlib.reload(mods[name]) for name in _MODULES}
    return mods


K = _kernels()
from moesim.kernels.configs import BlockConfig, ConfigTable, default_config, shape_key  # noqa: E402
from moesim.kernels.reference import fused_moe_torch  # noqa: E402
from tests import kernel_reference as ref  # noqa: E402

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def _routing(gen: torch.Generator, T: int, E: int, k: int, *, empty: tuple[int, ...] = (), drop: float = 0.0):
    """Random distinct experts per token, never from ``empty``; a fraction ``drop`` of pairs set to -1."""
    allowed = torch.tensor([e for e in range(E) if e not in empty])
    scores = torch.rand(T, allowed.numel(), generator=gen)
    ids = allowed[scores.topk(k, dim=1).indices]
    if drop:
        ids[torch.rand(T, k, generator=gen) < drop] = -1
    weights = torch.softmax(torch.randn(T, k, generator=gen), dim=1)
    return ids.to(torch.int32), weights


def _operands(gen, T, H, F, E, dtype):
    x = torch.randn(T, H, generator=gen)
    w1 = torch.randn(E, 2 * F, H, generator=gen) / H**0.5
    w2 = torch.randn(E, H, F, generator=gen) / F**0.5
    return x.to(dtype), w1.to(dtype), w2.to(dtype)


def _rel_err(out: torch.Tensor, want: torch.Tensor) -> float:
    """Max abs error over max abs reference value (NaN fails)."""
    assert torch.isfinite(out).all()
    return float((out.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-12))


# ---- align -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("T", "E", "k", "block_m", "empty", "drop"), [
    (1, 8, 1, 16, (), 0.0),
    (37, 8, 2, 16, (3,), 0.0),
    (50, 64, 8, 16, (0, 7, 63), 0.1),
    (33, 16, 4, 32, (5, 6), 0.0),
    (0, 4, 2, 16, (), 0.0),
])
def test_align_matches_reference(T, E, k, block_m, empty, drop):
    gen = torch.Generator().manual_seed(T * 1000 + E)
    if T:
        ids, _ = _routing(gen, T, E, k, empty=empty, drop=drop)
    else:
        ids = torch.zeros(0, k, dtype=torch.int32)
    got = K["align"].moe_align(ids, E, block_m)
    want = ref.align_reference(ids, E, block_m)
    n = int(got.num_padded.item())
    assert n == int(want["num_padded"])
    assert n <= got.max_padded
    assert torch.equal(got.counts.long(), want["counts"])
    assert torch.equal(got.block_expert[: n // block_m].long(), want["block_expert"])
    assert (got.block_expert[n // block_m:] == -1).all()
    assert (got.sorted_ids[n:] == got.num_pairs).all()
    # Inside each expert's segment the order is free (atomics): compare as sorted sets.
    start = 0
    for e in range(E):
        seg = -(-int(want["counts"][e]) // block_m) * block_m
        a = torch.sort(got.sorted_ids[start : start + seg].long()).values
        b = torch.sort(want["sorted_ids"][start : start + seg]).values
        assert torch.equal(a, b), f"expert {e}"
        start += seg
    if drop:
        dropped = torch.nonzero(ids.reshape(-1) < 0).flatten()
        assert not torch.isin(dropped.to(torch.int32), got.sorted_ids).any()


def test_align_grouped_keeps_row_order_within_experts():
    counts = torch.tensor([3, 0, 17, 1], dtype=torch.int32)
    got = K["align"].align_grouped(counts, 16)
    n = int(got.num_padded)
    assert n == 16 + 32 + 16
    real = got.sorted_ids[:n][got.sorted_ids[:n] < got.num_pairs]
    assert torch.equal(torch.sort(real.long()).values, torch.arange(21))
    assert got.block_expert[: n // 16].tolist() == [0, 2, 2, 3]


# ---- grouped GEMM ------------------------------------------------------------------------------

@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_moe_gemm_matches_reference(gated, dtype):
    gen = torch.Generator().manual_seed(7)
    T, E, k, Kdim, N = 21, 6, 2, 72, 40  # K and N not multiples of the block either
    ids, _ = _routing(gen, T, E, k, empty=(2,), drop=0.05)
    cfg = BlockConfig(block_m=16, block_n=32, block_k=32, group_m=2)
    a = torch.randn(T, Kdim, generator=gen).to(dtype)
    w = (torch.randn(E, 2 * N if gated else N, Kdim, generator=gen) / Kdim**0.5).to(dtype)
    align = K["align"].moe_align(ids, E, cfg.block_m)
    out = K["grouped_gemm"].moe_gemm(a, w, align, cfg, a_row_div=k, gated=gated)
    want = ref.moe_gemm_reference(a, w, ids, a_row_div=k, gated=gated, dtype=torch.float64)
    valid = (ids.reshape(-1) >= 0)
    assert out.shape == (T * k, N) and out.dtype == dtype
    assert _rel_err(out[valid], want[valid]) < TOL[dtype]


# ---- combine -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("T", "k", "H", "dtype"), [(19, 1, 40, torch.float32), (19, 8, 130, torch.float32),
                                                    (5, 3, 64, torch.float16), (9, 2, 33, torch.bfloat16)])
def test_combine_matches_reference(T, k, H, dtype):
    gen = torch.Generator().manual_seed(T + k)
    ids, weights = _routing(gen, T, 16, k, drop=0.1)
    y = torch.randn(T * k, H, generator=gen).to(dtype)
    y[ids.reshape(-1) < 0] = float("nan")  # rows of dropped pairs are never written: must not leak
    out = K["combine"].moe_combine(y, ids, weights.to(dtype), 16)
    want = ref.combine_reference(y, ids, weights.to(dtype), 16, dtype=torch.float64)
    assert _rel_err(out, want) < TOL[dtype]


# ---- fused_moe end to end ----------------------------------------------------------------------

CASES = [
    # T, H, F, E, k, empty experts, dropped fraction, block config (None = heuristic)
    (1, 64, 32, 8, 1, (), 0.0, None),  # decode, one token
    (37, 96, 80, 8, 2, (3,), 0.0, None),  # Mixtral-like routing, T not a multiple of the block
    (23, 64, 48, 64, 8, (1, 2, 40), 0.0, BlockConfig(16, 64, 64)),  # 64 experts, K = 8, empty experts
    (29, 80, 40, 16, 1, (0, 15), 0.1, BlockConfig(32, 32, 32, group_m=4)),  # K = 1, dropped pairs
    (18, 48, 96, 4, 4, (), 0.0, BlockConfig(16, 32, 16)),  # every expert in every token
]


@pytest.mark.parametrize(("T", "H", "F", "E", "k", "empty", "drop", "cfg"), CASES)
def test_fused_moe_fp32_matches_reference(T, H, F, E, k, empty, drop, cfg):
    gen = torch.Generator().manual_seed(T * 31 + E)
    ids, weights = _routing(gen, T, E, k, empty=empty, drop=drop)
    x, w1, w2 = _operands(gen, T, H, F, E, torch.float32)
    out = K["moe_layer"].fused_moe(x, w1, w2, ids, weights, config=cfg)
    want = ref.fused_moe_reference(x, w1, w2, ids, weights, dtype=torch.float64)
    assert out.shape == (T, H) and out.dtype == torch.float32
    assert float((out.double() - want).abs().max()) < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 8])
def test_fused_moe_half_precision(dtype, k):
    gen = torch.Generator().manual_seed(k)
    T, H, F, E = 13, 64, 48, 32
    ids, weights = _routing(gen, T, E, k, empty=(4, 5))
    x, w1, w2 = _operands(gen, T, H, F, E, dtype)
    out = K["moe_layer"].fused_moe(x, w1, w2, ids, weights.to(dtype))
    want = ref.fused_moe_reference(x, w1, w2, ids, weights.to(dtype), dtype=torch.float64)
    assert out.dtype == dtype
    assert _rel_err(out, want) < TOL[dtype]


def test_fused_moe_from_the_package_is_the_function():
    # The documented API. Every kernel submodule is imported by now (K above), which is when a
    # submodule named like the function would replace the package's lazy attribute.
    from moesim.kernels import fused_moe

    gen = torch.Generator().manual_seed(5)
    ids, weights = _routing(gen, 9, 8, 2, empty=(6,))
    x, w1, w2 = _operands(gen, 9, 32, 24, 8, torch.float32)
    out = fused_moe(x, w1, w2, ids, weights)
    want = ref.fused_moe_reference(x, w1, w2, ids, weights, dtype=torch.float64)
    assert out.shape == (9, 32) and out.dtype == torch.float32
    assert float((out.double() - want).abs().max()) < 1e-4


def test_fused_moe_agrees_with_torch_loop_baseline():
    gen = torch.Generator().manual_seed(3)
    ids, weights = _routing(gen, 11, 8, 2)
    x, w1, w2 = _operands(gen, 11, 32, 32, 8, torch.float32)
    out = K["moe_layer"].fused_moe(x, w1, w2, ids, weights)
    base = fused_moe_torch(x, w1, w2, ids, weights)
    assert float((out - base).abs().max()) < 1e-4


def test_fused_moe_rejects_bad_shapes():
    x = torch.zeros(4, 8)
    w1 = torch.zeros(2, 6, 8)
    w2 = torch.zeros(2, 8, 3)
    ids = torch.zeros(4, 1, dtype=torch.int32)
    wts = torch.ones(4, 1)
    with pytest.raises(UserError, match="w2"):
        K["moe_layer"].fused_moe(x, w1, torch.zeros(2, 8, 4), ids, wts)
    with pytest.raises(UserError, match="topk_weights"):
        K["moe_layer"].fused_moe(x, w1, w2, ids, torch.ones(4, 2))
    with pytest.raises(UserError, match="one dtype"):
        K["moe_layer"].fused_moe(x.half(), w1, w2, ids, wts)
    with pytest.raises(UserError, match="integer"):
        K["moe_layer"].fused_moe(x, w1, w2, ids.float(), wts)


# ---- configs -----------------------------------------------------------------------------------

def test_config_table_round_trip_and_nearest(tmp_path):
    key = shape_key(8, 4096, 14336, "bf16")
    table = ConfigTable(device="synthetic").with_entry(key, 1, BlockConfig(16, 64, 128))
    table = table.with_entry(key, 1024, BlockConfig(64, 128, 64, group_m=8, num_warps=8))
    path = tmp_path / "configs.json"
    table.save(path)
    back = ConfigTable.load(path)
    assert back == table
    assert back.nearest(key, 3).block_m == 16
    assert back.nearest(key, 900).block_m == 64
    assert back.lookup(900, 8, 2, 4096, 14336, "bf16").num_warps == 8
    # A shape the table does not have falls back to the heuristic.
    assert back.lookup(4, 64, 6, 2048, 1408, "bf16") == default_config(4, 64, 6, 2048, 1408, "bf16")


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(UserError, match="power of two"):
        BlockConfig(block_m=24)
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "moesim-kernel-configs/v1", "configs": {"k": {"1": {"block_q": 16}}}}')
    with pytest.raises(UserError, match="expected a config"):
        ConfigTable.load(bad)


def test_default_config_small_tiles_in_decode_large_in_prefill():
    decode = default_config(8, 8, 2, 4096, 14336, "bf16")
    prefill = default_config(8192, 8, 2, 4096, 14336, "bf16")
    assert decode.block_m < prefill.block_m


# ---- property: any small ragged routing --------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


@hypothesis.settings(max_examples=12, deadline=None, derandomize=True)
@hypothesis.given(T=st.integers(1, 40), E=st.integers(1, 64), k=st.integers(1, 8), H=st.integers(1, 70),
                  F=st.integers(1, 70), seed=st.integers(0, 2**16), block_m=st.sampled_from([16, 32]))
def test_fused_moe_property_random_shapes(T, E, k, H, F, seed, block_m):
    k = min(k, E)
    gen = torch.Generator().manual_seed(seed)
    ids, weights = _routing(gen, T, E, k, drop=0.05)
    x, w1, w2 = _operands(gen, T, H, F, E, torch.float32)
    out = K["moe_layer"].fused_moe(x, w1, w2, ids, weights, config=BlockConfig(block_m, 32, 32))
    want = ref.fused_moe_reference(x, w1, w2, ids, weights, dtype=torch.float64)
    assert float((out.double() - want).abs().max()) < 1e-4


def test_candidate_configs_fit_shared_memory_and_are_valid():
    from moesim.kernels.configs import candidate_configs

    for dtype in ("bf16", "fp32"):
        cands = candidate_configs(dtype)
        assert len(cands) >= 10 and len(set(cands)) == len(cands)
        elem = 4 if dtype == "fp32" else 2
        for c in cands:
            assert (c.block_m * c.block_k + 2 * c.block_n * c.block_k) * elem * c.num_stages <= 200 * 1024
    assert {c.block_m for c in candidate_configs("bf16")} == {16, 32, 64, 128}
