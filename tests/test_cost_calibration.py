"""CostModel with real calibration tables (moesim.calibration.tables) written to tmp_path.

The tables are SYNTHETIC (times from simple formulas), never measurements."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.calibration import load_calibration, write_table
from moesim.cost import CostModel
from moesim.errors import UserError
from moesim.specs import load_cluster, load_model

HEADER = {
    "driver": "none",
    "cuda": "none",
    "torch": "none",
    "triton": "none",
    "date": "2026-01-01T00:00:00Z",
    "note": "synthetic test fixture",
}


def grouped_seconds(tpe: float, experts: int) -> float:
    return 10e-6 + 1e-6 * experts * tpe


def write_tables(folder: Path, gpu: str) -> Path:
    head = {"gpu": gpu, **HEADER}
    write_table(
        folder / "grouped_gemm.csv",
        "grouped_gemm",
        head,
        [
            {
                "tokens_per_expert": float(tpe),
                "num_experts": e,
                "hidden": 4096,
                "ffn": 14336,
                "dtype": "bf16",
                "impl": "triton",
                "device": "cuda:0",
                "seconds_median": grouped_seconds(tpe, e),
                "repeats": 10,
            }
            for tpe in (1, 4, 16, 64)
            for e in (1, 2, 4, 8)
        ],
    )
    write_table(
        folder / "h2d.csv",
        "h2d",
        head,
        [
            {
                "bytes": float(b),
                "pinned": True,
                "device": "cuda:0",
                "repeats": 10,
                "seconds_median": 5e-6 + b / 50e9,
            }
            for b in (2**20, 2**30)
        ],
    )
    write_table(
        folder / "gemm.csv",
        "gemm",
        head,
        [
            {
                "m": m,
                "n": 8,
                "k": 4096,
                "dtype": "bf16",
                "impl": "torch",
                "device": "cuda:0",
                "seconds_median": 3e-6 * m**0.5,
                "repeats": 10,
            }
            for m in (1, 16, 256)
        ],
    )
    return folder


@pytest.fixture
def mixtral():
    return load_model("mixtral-8x7b")


def test_tables_of_a_matching_gpu_replace_the_roofline(tmp_path: Path, mixtral) -> None:
    cal = load_calibration(write_tables(tmp_path, "NVIDIA H100 80GB HBM3"))
    cluster = load_cluster("h100x8")
    cost = CostModel(cluster, mixtral, calibration=cal)
    plain = CostModel(cluster, mixtral)
    t = np.array([4, 4, 0, 0, 0, 0, 0, 0])
    assert cost.expert_compute_s("n0.gpu0", t) == pytest.approx(grouped_seconds(4, 2))
    assert cost.expert_compute_batch_s(["n0.gpu0", "n0.gpu1"], np.stack([t, t])).tolist() == pytest.approx(
        [grouped_seconds(4, 2)] * 2
    )
    # interpolated between measured tokens_per_expert (log-log), inside the range
    mid = cost.expert_compute_s("n0.gpu0", np.array([8, 8, 0, 0, 0, 0, 0, 0]))
    assert grouped_seconds(4, 2) < mid < grouped_seconds(16, 2)
    # outside the measured range: the roofline
    big = np.array([500, 0, 0, 0, 0, 0, 0, 0])
    assert cost.expert_compute_s("n0.gpu0", big) == plain.expert_compute_s("n0.gpu0", big)
    assert cost.sources()["expert"] == "table+roofline"
    assert cost.weight_fetch_s("n0.gpu0", 2**25) == pytest.approx(cal.time_s("h2d", bytes=2**25, pinned=True))
    assert cost.router_s("n0.gpu0", 16) == pytest.approx(3e-6 * 4)
    assert cost.sources()["router"] == "table"
    assert cost.sources()["attention"] == "roofline"
    # the CPU is never calibrated by GPU tables
    assert cost.cpu_expert_s("n0.cpu0", t) == plain.cpu_expert_s("n0.cpu0", t)


def test_calibration_by_folder_and_explicit_devices(tmp_path: Path, mixtral) -> None:
    folder = write_tables(tmp_path, "SYNTHETIC-TEST-GPU")
    cluster = load_cluster("h100x8")
    with pytest.raises(UserError, match="SYNTHETIC-TEST-GPU"):
        CostModel(cluster, mixtral, calibration=folder)
    cost = CostModel(cluster, mixtral, calibration=str(folder), calibrated_devices=["n0.gpu3"])
    t = np.array([16, 0, 0, 0, 0, 0, 0, 0])
    assert cost.expert_compute_s("n0.gpu3", t) == pytest.approx(grouped_seconds(16, 1))
    assert cost.expert_compute_s("n0.gpu0", t) != pytest.approx(grouped_seconds(16, 1))
    inf = cost.with_infinite_bandwidth()
    assert inf.expert_compute_s("n0.gpu3", t) == pytest.approx(grouped_seconds(16, 1))
    assert inf.weight_fetch_s("n0.gpu3", 2**25) == pytest.approx(cluster.path_latency("n0.cpu0", "n0.gpu3"))


def test_calibrated_devices_must_be_gpus_of_the_cluster(tmp_path: Path, mixtral) -> None:
    folder = write_tables(tmp_path, "SYNTHETIC-TEST-GPU")
    with pytest.raises(UserError, match="expected GPU ids"):
        CostModel(load_cluster("h100x8"), mixtral, calibration=folder, calibrated_devices=["n0.cpu0"])
    cost = CostModel(load_cluster("h100x8"), mixtral, calibration=folder, calibrated_devices=["n0.gpu1"])
    assert cost.calibrated_devices == frozenset({"n0.gpu1"})
    assert CostModel(load_cluster("h100x8"), mixtral).calibrated_devices == frozenset()
