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
from moesim.workflows import cost_model

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
        cost_model(cluster, mixtral, folder)
    with pytest.raises(TypeError, match="load_calibration"):  # the cost model takes loaded tables only
        CostModel(cluster, mixtral, calibration=folder)  # type: ignore[arg-type]
    cost = CostModel(cluster, mixtral, calibration=load_calibration(str(folder)),
                     calibrated_devices=["n0.gpu3"])
    t = np.array([16, 0, 0, 0, 0, 0, 0, 0])
    assert cost.expert_compute_s("n0.gpu3", t) == pytest.approx(grouped_seconds(16, 1))
    assert cost.expert_compute_s("n0.gpu0", t) != pytest.approx(grouped_seconds(16, 1))
    inf = cost.with_infinite_bandwidth()
    assert inf.expert_compute_s("n0.gpu3", t) == pytest.approx(grouped_seconds(16, 1))
    assert inf.weight_fetch_s("n0.gpu3", 2**25) == pytest.approx(cluster.path_latency("n0.cpu0", "n0.gpu3"))


def test_calibrated_devices_must_be_devices_of_the_cluster(tmp_path: Path, mixtral) -> None:
    folder = write_tables(tmp_path, "SYNTHETIC-TEST-GPU")
    tables = load_calibration(folder)
    with pytest.raises(UserError, match="expected GPU or CPU ids"):
        CostModel(load_cluster("h100x8"), mixtral, calibration=tables, calibrated_devices=["n9.gpu0"])
    # a CPU id is a device of the cluster, but GPU tables never apply to it
    cpu_only = CostModel(load_cluster("h100x8"), mixtral, calibration=tables, calibrated_devices=["n0.cpu0"])
    assert cpu_only.calibrated_devices == frozenset()
    cost = CostModel(load_cluster("h100x8"), mixtral, calibration=tables, calibrated_devices=["n0.gpu1"])
    assert cost.calibrated_devices == frozenset({"n0.gpu1"})
    assert CostModel(load_cluster("h100x8"), mixtral).calibrated_devices == frozenset()


def test_permute_combine_and_p2p_tables(tmp_path: Path, mixtral) -> None:
    head = {"gpu": "NVIDIA H100 80GB HBM3", **HEADER}
    row = {"device": "cuda:0", "repeats": 10}
    write_table(
        tmp_path / "hbm_copy.csv",
        "hbm_copy",
        head,
        [{"bytes": float(b), "seconds_median": 2e-6 + b / 3e12, **row} for b in (2**10, 2**30)],
    )
    write_table(
        tmp_path / "p2p.csv",
        "p2p",
        head,
        [{"bytes": float(b), "seconds_median": 3e-6 + b / 300e9, **row} for b in (2**10, 2**30)],
    )
    cluster = load_cluster("h100x8")
    copy_only = cost_model(cluster, mixtral, tmp_path)
    moved = 2 * 64 * 4096 * 2.0  # top-2 copies of 64 bf16 tokens
    expected = 2 * load_calibration(tmp_path).time_s("hbm_copy", bytes=moved)
    assert copy_only.permute_combine_s("n0.gpu0", 64) == pytest.approx(expected)
    p2p = copy_only.transfer_s("n0.gpu0", "n0.gpu1", 2**20)
    assert p2p == pytest.approx(load_calibration(tmp_path).time_s("p2p", bytes=2**20))
    assert copy_only.sources()["transfer"] == "table"
    write_table(
        tmp_path / "moe_align.csv",
        "moe_align",
        head,
        [{"tokens": t, "num_experts": 8, "top_k": 2, "seconds_median": 5e-6, **row} for t in (1, 4096)],
    )
    write_table(
        tmp_path / "combine.csv",
        "combine",
        head,
        [
            {"tokens": t, "top_k": 2, "hidden": 4096, "dtype": "bf16", "seconds_median": 1e-6 * t**0.5, **row}
            for t in (1, 4096)
        ],
    )
    kernels = cost_model(cluster, mixtral, tmp_path)
    assert kernels.permute_combine_s("n0.gpu0", 64) == pytest.approx(
        5e-6 + load_calibration(tmp_path).time_s("combine", tokens=64, top_k=2, hidden=4096, dtype="bf16")
    )
    assert kernels.sources()["permute_combine"] == "table"


def test_a_profile_calibration_entry_is_used_by_default(tmp_path: Path, mixtral) -> None:
    write_tables(tmp_path / "tables", "NVIDIA H100 80GB HBM3")
    profile = tmp_path / "mine.yaml"
    profile.write_text("kind: cluster\nextends: h100x8\nname: mine\ncalibration: tables\n")
    cluster = load_cluster(profile)
    assert cluster.calibration_dir == str(tmp_path / "tables")
    t = np.array([4, 4, 0, 0, 0, 0, 0, 0])
    assert cost_model(cluster, mixtral).expert_compute_s("n0.gpu0", t) == pytest.approx(grouped_seconds(4, 2))
    assert cost_model(load_cluster("h100x8"), mixtral).sources().get("expert") != "table"
    # The cost model itself loads nothing: without tables it is the roofline, whatever the profile says.
    assert CostModel(cluster, mixtral).sources().get("expert") != "table"
    profile.write_text("kind: cluster\nextends: h100x8\ncalibration: nowhere\n")
    with pytest.raises(UserError, match=r"mine\.yaml: calibration: expected a folder written by"):
        load_cluster(profile)
