"""CostModel: calibration tables replace the roofline inside their range, sources() labels,
device matching, dense ops, CPU vs PCIe fetch (Fiddler's shape)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.errors import UserError
from tests.test_cost_fixtures import DSV3, MIXTRAL, make_cluster

GPU = "n0.gpu0"


class FakeCalibration:
    """Implements the ``Calibration`` contract: ``time_s(op, **shape) -> float | None``, ``device``.
    ``grouped_gemm`` is 'measured' up to 64 tokens per expert; ``h2d`` up to 1 GB."""

    device = "NVIDIA H100 80GB HBM3"
    ops = ("grouped_gemm", "h2d")

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def time_s(self, op: str, **shape: Any) -> float | None:
        self.calls.append((op, shape))
        if op == "grouped_gemm" and shape["tokens_per_expert"] <= 64:
            return 1e-3 * shape["num_experts"]
        if op == "h2d" and shape["bytes"] <= 1e9:
            return 7e-3
        return None


def test_table_used_inside_its_range_and_roofline_outside() -> None:
    cal = FakeCalibration()
    cost = CostModel(make_cluster(1, 8), MIXTRAL, calibration=cal)
    plain = CostModel(make_cluster(1, 8), MIXTRAL)
    small = np.array([10, 30, 0, 0, 0, 0, 0, 0])
    assert cost.expert_compute_s(GPU, small) == pytest.approx(2e-3)
    op, shape = cal.calls[-1]
    assert op == "grouped_gemm"
    assert shape == {
        "tokens_per_expert": 20.0,
        "num_experts": 2,
        "hidden": 4096,
        "ffn": 14336,
        "dtype": "bf16",
    }
    assert cost.sources()["expert"] == "table"
    big = np.array([1000, 0, 0, 0, 0, 0, 0, 0])
    assert cost.expert_compute_s(GPU, big) == pytest.approx(plain.expert_compute_s(GPU, big))
    assert cost.sources()["expert"] == "table+roofline"
    assert cost.source_counts()["expert"] == {"table": 1, "roofline": 1}


def test_sources_labels_without_and_with_calibration() -> None:
    plain = CostModel(make_cluster(1, 2), MIXTRAL)
    assert set(plain.sources().values()) == {"roofline"}
    cost = CostModel(make_cluster(1, 2), MIXTRAL, calibration=FakeCalibration())
    labels = cost.sources()
    assert labels["expert"] == "table" and labels["weight_fetch"] == "table"  # listed by the calibration
    assert labels["attention"] == "roofline" and labels["all_to_all"] == "roofline"
    assert cost.weight_fetch_s(GPU, 1e8) == pytest.approx(7e-3)
    cost.weight_fetch_s(GPU, 1e10)
    assert cost.sources()["weight_fetch"] == "table+roofline"
    cost.attention_s(GPU, 8, 100, "decode")
    assert cost.sources()["attention"] == "roofline"


def test_table_applies_only_to_matching_gpus_and_not_to_cpus() -> None:
    cost = CostModel(make_cluster(1, 2), MIXTRAL, calibration=FakeCalibration())
    plain = CostModel(make_cluster(1, 2), MIXTRAL)
    t = np.array([1, 1])
    assert cost.cpu_expert_s("n0.cpu0", t) == plain.cpu_expert_s("n0.cpu0", t)
    other = FakeCalibration()
    other.device = "NVIDIA GeForce RTX 4090"
    with pytest.raises(UserError, match="RTX 4090"):
        CostModel(make_cluster(1, 2), MIXTRAL, calibration=other)


def test_expert_times_with_table_and_roofline() -> None:
    cost = CostModel(make_cluster(1, 2), MIXTRAL, calibration=FakeCalibration())
    times = cost.expert_times_s(GPU, np.array([0, 5, 5, 500]))
    assert times[0] == 0.0 and times[1] == times[2] == pytest.approx(1e-3)
    assert times[3] == pytest.approx(
        CostModel(make_cluster(1, 2), MIXTRAL).expert_times_s(GPU, np.array([500]))[0]
    )


def test_unknown_devices_and_dtypes_are_user_errors() -> None:
    cost = CostModel(make_cluster(1, 2), MIXTRAL)
    with pytest.raises(UserError, match="no device"):
        cost.router_s("n9.gpu0", 4)
    with pytest.raises(UserError, match="weight dtype"):
        cost.expert_compute_s(GPU, np.array([1]), dtype="fp7")
    with pytest.raises(UserError, match="expected a gpu device"):
        cost.weight_fetch_s("n0.cpu0", 1e6)


def test_dense_ops_scale_and_vectorise() -> None:
    cost = CostModel(make_cluster(1, 2), DSV3)
    tokens = np.array([0, 1, 64, 4096])
    for op in (cost.router_s, cost.permute_combine_s, cost.shared_expert_s, cost.dense_ffn_s):
        times = op(GPU, tokens)
        assert times.shape == (4,) and times[0] == 0.0
        assert np.all(np.diff(times) >= 0)
        assert op(GPU, 64) == pytest.approx(times[2])
    # decode attention grows with context; prefill does not re-read the cache per token
    assert cost.attention_s(GPU, 64, 8192, "decode") > cost.attention_s(GPU, 64, 1024, "decode")
    assert CostModel(make_cluster(1, 2), MIXTRAL).shared_expert_s(GPU, 64) == 0.0


def test_cpu_execution_beats_pcie_fetch_at_batch_one_for_mixtral() -> None:
    # Fiddler's observation on a PCIe box: computing a missed expert on the CPU from DDR beats
    # copying its 352 MB of weights to the GPU.
    cost = CostModel(make_cluster(1, 1), MIXTRAL)
    cpu = cost.cpu_expert_s("n0.cpu0", np.array([1]))
    fetch = cost.weight_fetch_s(GPU, MIXTRAL.expert_bytes()) + cost.expert_compute_s(GPU, np.array([1]))
    assert cpu < fetch
    # but a prefill batch on the CPU is compute-bound and loses
    assert cost.cpu_expert_s("n0.cpu0", np.array([2048])) > fetch


def test_expert_compute_dispatches_by_device_kind() -> None:
    cost = CostModel(make_cluster(1, 1), MIXTRAL)
    t = np.array([3, 0])
    assert cost.expert_compute_s("n0.cpu0", t) == cost.cpu_expert_s("n0.cpu0", t)
    assert cost.op_time_s(GPU, 0, 0) == 0.0


def test_memoised_results_equal_fresh_ones_and_count_every_call() -> None:
    cost = CostModel(make_cluster(1, 2), DSV3)
    tokens = np.array([1.0, 8.0, 64.0])
    first = cost.attention_s(GPU, tokens, 1024, "decode")
    first[:] = -1.0  # the caller owns what it gets: the memo keeps its own copy
    again = cost.attention_s(GPU, tokens, 1024, "decode")
    fresh = CostModel(make_cluster(1, 2), DSV3).attention_s(GPU, tokens, 1024, "decode")
    np.testing.assert_array_equal(again, fresh)
    assert cost.attention_s(GPU, 8, 1024, "decode") == pytest.approx(fresh[1])
    assert cost.attention_s(GPU, 8, 1024, "prefill") != cost.attention_s(GPU, 8, 1024, "decode")
    assert cost.source_counts()["attention"] == {"table": 0, "roofline": 5}
    assert cost.router_s("n0.gpu1", 8) == cost.router_s(GPU, 8)  # identical GPUs share entries
