"""Roofline and efficiency curves: hand-computed cases, zero and monotonic behaviour."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.cost import CostModel
from moesim.cost.efficiency import Curve, device_efficiency, validate_curve
from moesim.cost.ops import attention_counts, attention_weight_params, ffn_activation_elements_per_token
from moesim.errors import UserError
from tests.test_cost_fixtures import DSV3, H100, MIXTRAL, PIM, XEON, flat, make_cluster

GPU = "n0.gpu0"


@pytest.fixture(scope="module")
def flat_cost() -> CostModel:
    return CostModel(make_cluster(1, 8, gpu=flat(H100), cpu=flat(XEON)), MIXTRAL)


def test_memory_bound_decode_expert_is_bytes_over_bandwidth(flat_cost: CostModel) -> None:
    tokens = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    nbytes = MIXTRAL.expert_bytes() + 1 * ffn_activation_elements_per_token(MIXTRAL, 14336) * 2
    expected = nbytes / (3.35e12 * 0.85)
    assert flat_cost.expert_compute_s(GPU, tokens) == pytest.approx(expected, rel=1e-12)
    # 352 MB of bf16 weights in ~124 us on an H100
    assert 100e-6 < expected < 150e-6


def test_compute_bound_prefill_expert_is_flops_over_peak(flat_cost: CostModel) -> None:
    tokens = np.array([4096, 0, 0, 0, 0, 0, 0, 0])  # a multiple of the 16-row tile: no padding
    expected = 2 * MIXTRAL.expert_params * 4096 / (989.4e12 * 0.7)
    assert flat_cost.expert_compute_s(GPU, tokens) == pytest.approx(expected, rel=1e-12)


def test_tile_padding_counts_sixteen_rows_for_one_token(flat_cost: CostModel) -> None:
    roof = flat_cost.roofline(GPU)
    one = flat_cost.expert_times_s(GPU, np.array([1]))[0]
    sixteen = flat_cost.expert_times_s(GPU, np.array([16]))[0]
    # both memory-bound; compute of 1 token is charged 16 rows
    assert one < sixteen
    assert roof.compute_s(2 * MIXTRAL.expert_params * 16, "bf16") < one


def test_zero_tokens_cost_zero() -> None:
    cost = CostModel(make_cluster(1, 8), DSV3)
    assert cost.expert_compute_s(GPU, np.zeros(32)) == 0.0
    assert cost.expert_compute_batch_s([GPU, "n0.gpu1"], np.zeros((2, 32))).tolist() == [0.0, 0.0]
    assert cost.expert_times_s(GPU, np.zeros(4)).tolist() == [0.0] * 4
    assert cost.cpu_expert_s("n0.cpu0", np.zeros(4)) == 0.0
    for op in (cost.router_s, cost.permute_combine_s, cost.shared_expert_s, cost.dense_ffn_s):
        assert op(GPU, 0) == 0.0
    assert cost.attention_s(GPU, 0, 4096, "decode") == 0.0


def test_weights_are_read_once_per_active_expert() -> None:
    cost = CostModel(make_cluster(1, 8, gpu=flat(H100)), DSV3)
    one = cost.expert_compute_s(GPU, np.array([1, 0, 0, 0]))
    two = cost.expert_compute_s(GPU, np.array([1, 1, 0, 0]))
    same = cost.expert_compute_s(GPU, np.array([2, 0, 0, 0]))
    assert two == pytest.approx(2 * one, rel=0.01)  # memory-bound: twice the weights
    assert same < 1.01 * one


@settings(max_examples=60, deadline=None)
@given(
    base=st.lists(st.integers(0, 3000), min_size=4, max_size=4),
    extra=st.integers(1, 500),
    which=st.integers(0, 3),
)
def test_expert_time_is_monotonic_in_tokens(base: list[int], extra: int, which: int) -> None:
    cost = CostModel(make_cluster(1, 8), DSV3)
    t = np.array(base, dtype=float)
    more = t.copy()
    more[which] += extra
    for device in (GPU, "n0.cpu0"):
        assert cost.expert_compute_s(device, more) >= cost.expert_compute_s(device, t)
    assert cost.attention_s(GPU, sum(base) + extra, 512, "decode") >= cost.attention_s(
        GPU, sum(base), 512, "decode"
    )


def test_fast_scalar_path_matches_the_vectorised_batch() -> None:
    cost = CostModel(make_cluster(1, 8), DSV3)
    rng = np.random.default_rng(0)
    t = rng.poisson(20, size=(8, 32)).astype(float)
    t[3] = 0
    ids = [d.id for d in cost.cluster.gpus]
    batch = cost.expert_compute_batch_s(ids, t)
    single = [cost.expert_compute_s(d, row) for d, row in zip(ids, t, strict=True)]
    np.testing.assert_allclose(batch, single, rtol=1e-12)


def test_default_curves_lower_efficiency_of_small_ops() -> None:
    eff = device_efficiency(H100)
    assert eff.memory.scalar(1e3) < eff.memory.scalar(1e6) < eff.memory.scalar(1e9) == pytest.approx(0.85)
    assert eff.compute.scalar(1e6) < eff.compute.scalar(1e12) == pytest.approx(0.7)
    assert eff.tile_rows == 16


def test_profile_curves_replace_the_defaults() -> None:
    spec = flat(H100, efficiency_curves=MappingProxyType({"memory": ((0, 0.5), (1e9, 0.9))}))
    eff = device_efficiency(spec)
    assert eff.memory.scalar(0.5e9) == pytest.approx(0.7)
    assert eff.compute.scalar(1e15) == pytest.approx(0.7)  # default shape x scalar


def test_curve_validation() -> None:
    with pytest.raises(UserError, match="rises too steeply"):
        validate_curve([(1, 0.1), (2, 0.9)])
    with pytest.raises(UserError, match="fraction"):
        validate_curve([(0, 1.5)])
    with pytest.raises(UserError, match="at least one"):
        validate_curve([])
    bad = flat(H100, efficiency_curves=MappingProxyType({"speed": ((0, 0.5),)}))
    with pytest.raises(UserError, match="expected keys"):
        device_efficiency(bad)
    c = Curve.of(((0, 0.2), (10, 0.4)))
    np.testing.assert_allclose(c(np.array([-1, 5, 100])), [0.2, 0.3, 0.4])


def test_pim_uses_internal_bandwidth() -> None:
    cost = CostModel(make_cluster(1, 1, pim=PIM), MIXTRAL)
    t = cost.pim_expert_s("n0.pim0", np.array([1]))
    assert t == pytest.approx(MIXTRAL.expert_bytes() / (4e12 * 0.85), rel=0.01)
    with pytest.raises(UserError, match="expected a pim device"):
        cost.pim_expert_s(GPU, np.array([1]))


def test_fp8_weights_run_at_fp8_peak_and_read_half_the_bytes() -> None:
    cost = CostModel(make_cluster(1, 1, gpu=flat(H100)), MIXTRAL)
    bf16 = cost.expert_compute_s(GPU, np.array([8192]))
    fp8 = cost.expert_compute_s(GPU, np.array([8192]), dtype="fp8")
    assert fp8 == pytest.approx(bf16 / 2, rel=0.05)
    assert cost.roofline(GPU).compute_dtype("int4", "bf16") == "bf16"  # weight-only int4 -> bf16 MMA


def test_attention_counts_gqa_and_mla() -> None:
    gqa = attention_counts(MIXTRAL, 1, 1000, "decode")
    kv = 1000 * 2 * 8 * 128 * 2  # 1000 cached tokens x (K+V) x 8 kv heads x 128 x bf16
    params = 4096 * 4096 * 2 + 2 * 4096 * 1024
    assert gqa.nbytes == pytest.approx(params * 2 + kv + (2 * 4096 + 2 * 4096) * 2)
    assert gqa.flops == pytest.approx(2 * params + 4 * 32 * 128 * 1000)
    mla = attention_counts(DSV3, 1, 1000, "decode")
    assert mla.flops - 2 * attention_weight_params(DSV3) == pytest.approx(2 * 128 * (2 * 512 + 64) * 1000)
    prefill = attention_counts(DSV3, 1000, 500, "prefill")
    assert prefill.nbytes < attention_counts(DSV3, 1000, 500, "decode").nbytes
    with pytest.raises(ValueError):
        attention_counts(DSV3, 1, 1, "train")
