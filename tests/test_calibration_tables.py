"""Calibration tables: format round trip, validation messages, and interpolation in shape.

All tables here are SYNTHETIC (made-up times from simple formulas, written to tmp_path), never
measurements; the header says ``gpu: SYNTHETIC-TEST-GPU``.
"""

from __future__ import annotations

import math

import pytest

from moesim.calibration import Calibration, load_calibration, read_table, write_table
from moesim.calibration.format import columns, parse_table, render_table
from moesim.errors import UserError

HEADER = {"gpu": "SYNTHETIC-TEST-GPU", "driver": "none", "cuda": "none", "torch": "none", "triton": "none",
          "date": "2026-01-01T00:00:00Z", "clocks": {"sm_mhz": None}, "note": "synthetic test fixture"}


def _fused_rows():
    """t = 1e-5 + 1e-8 * tokens * hidden * ffn / 1e6 (synthetic), at tokens 1..4096."""
    rows = []
    for tokens in (1, 4, 16, 64, 256, 1024, 4096):
        for dtype in ("bf16", "fp16"):
            t = 1e-5 + 1e-8 * tokens * 4096 * 14336 / 1e6 * (1.0 if dtype == "bf16" else 1.1)
            rows.append({"tokens": tokens, "num_experts": 8, "top_k": 2, "hidden": 4096, "ffn": 14336,
                         "dtype": dtype, "impl": "triton", "device": "cuda:0", "seconds_median": t,
                         "repeats": 100})
        rows.append({"tokens": tokens, "num_experts": 8, "top_k": 2, "hidden": 4096, "ffn": 14336,
                     "dtype": "bf16", "impl": "torch_loop", "device": "cuda:0", "seconds_median": 1.0,
                     "repeats": 100})
    return rows


def _grouped_rows():
    """t = 2e-6 * num_experts * tokens_per_expert ** 0.5 (synthetic)."""
    return [{"tokens_per_expert": float(tpe), "num_experts": e, "hidden": 2048, "ffn": 1408, "dtype": "bf16",
             "impl": "triton", "device": "cuda:0", "seconds_median": 2e-6 * e * math.sqrt(tpe), "repeats": 50}
            for tpe in (1, 4, 16, 64) for e in (1, 4, 16, 64)]


@pytest.fixture
def calib_dir(tmp_path):
    write_table(tmp_path / "fused_moe.csv", "fused_moe", HEADER, _fused_rows())
    write_table(tmp_path / "grouped_gemm.csv", "grouped_gemm", HEADER, _grouped_rows())
    write_table(tmp_path / "h2d.csv", "h2d", HEADER, [
        {"bytes": float(b), "pinned": pinned, "device": "cuda:0", "repeats": 20,
         "seconds_median": 5e-6 + b / (25e9 if pinned else 10e9)}
        for b in (4096, 2**20, 2**30) for pinned in (True, False)])
    write_table(tmp_path / "p2p.csv", "p2p", HEADER, [
        {"bytes": float(b), "device": "cuda:0", "src": s, "dst": 1, "repeats": 20, "seconds_median": t}
        for b in (1e6, 1e8) for s, t in ((0, 1e-3 * b / 1e6), (2, 3e-3 * b / 1e6))])
    return tmp_path


def test_round_trip_keeps_rows_and_header(calib_dir):
    table = read_table(calib_dir / "fused_moe.csv")
    assert table.op == "fused_moe"
    assert table.header["gpu"] == "SYNTHETIC-TEST-GPU"
    assert table.header["date"] == "2026-01-01T00:00:00Z"  # stays a string, not a YAML timestamp
    assert table.header["schema"] == "moesim-calibration/v1"
    assert len(table.rows) == len(_fused_rows())
    first = table.rows[0]
    assert first["tokens"] == 1 and first["hidden"] == 4096 and first["dtype"] == "bf16"
    assert first["seconds_median"] == pytest.approx(_fused_rows()[0]["seconds_median"], rel=1e-15)
    text = (calib_dir / "fused_moe.csv").read_text()
    assert text.startswith("# schema: moesim-calibration/v1\n# op: fused_moe\n")
    assert ",".join(columns("fused_moe")) in text


def test_exact_points_and_log_log_interpolation(calib_dir):
    cal = load_calibration(calib_dir)
    assert isinstance(cal, Calibration)
    assert cal.device == "SYNTHETIC-TEST-GPU"
    assert cal.ops == ("fused_moe", "grouped_gemm", "h2d", "p2p")
    shape = {"num_experts": 8, "top_k": 2, "hidden": 4096, "ffn": 14336, "dtype": "bf16"}
    t64 = cal.time_s("fused_moe", tokens=64, **shape)
    t256 = cal.time_s("fused_moe", tokens=256, **shape)
    assert t64 == pytest.approx(1e-5 + 1e-8 * 64 * 4096 * 14336 / 1e6)
    # Halfway in log(tokens) is the geometric mean of the neighbours.
    assert cal.time_s("fused_moe", tokens=128, **shape) == pytest.approx(math.sqrt(t64 * t256))
    # impl defaults to the Triton kernel, not the torch baseline stored beside it.
    assert cal.time_s("fused_moe", tokens=128, **shape) < 0.1
    assert cal.time_s("fused_moe", tokens=128, impl="torch_loop", **shape) == pytest.approx(1.0)
    # dtype is matched exactly.
    fp16 = 1e-5 + 1.1e-8 * 64 * 4096 * 14336 / 1e6
    assert cal.time_s("fused_moe", tokens=64, **{**shape, "dtype": "fp16"}) == pytest.approx(fp16)
    assert cal.time_s("fused_moe", tokens=64, **{**shape, "dtype": "fp8"}) is None


def test_outside_measured_range_is_none_and_zero_work_is_zero(calib_dir):
    cal = load_calibration(calib_dir)
    shape = {"num_experts": 8, "top_k": 2, "hidden": 4096, "ffn": 14336, "dtype": "bf16"}
    assert cal.time_s("fused_moe", tokens=8192, **shape) is None
    assert cal.time_s("fused_moe", tokens=0, **shape) == 0.0
    assert cal.time_s("h2d", bytes=100.0) is None
    assert cal.time_s("gemm", m=16, n=16, k=16, dtype="bf16") is None  # no gemm table
    reason = cal.lookup("fused_moe", tokens=8192, **shape).reason
    assert "outside the measured range" in reason


def test_nearest_hidden_scales_time_and_other_keys_must_match(calib_dir):
    cal = load_calibration(calib_dir)
    shape = {"num_experts": 8, "top_k": 2, "ffn": 14336, "dtype": "bf16"}
    base = cal.time_s("fused_moe", tokens=64, hidden=4096, **shape)
    near = cal.lookup("fused_moe", tokens=64, hidden=5120, **shape)
    assert not near.exact and near.matched["hidden"] == 4096
    assert near.seconds == pytest.approx(base * 5120 / 4096)
    assert cal.time_s("fused_moe", tokens=64, hidden=5120, exact=True, **shape) is None
    # num_experts and top_k change the kind of work: no nearest-value guess.
    assert cal.time_s("fused_moe", tokens=64, hidden=4096, **{**shape, "num_experts": 16}) is None


def test_two_axis_interpolation_for_grouped_gemm(calib_dir):
    cal = load_calibration(calib_dir)
    shape = {"hidden": 2048, "ffn": 1408, "dtype": "bf16"}
    got = cal.time_s("grouped_gemm", tokens_per_expert=16, num_experts=4, **shape)
    assert got == pytest.approx(2e-6 * 4 * 4)
    # Between grid points in both axes: the synthetic law is a power law, so log-log is exact.
    got = cal.time_s("grouped_gemm", tokens_per_expert=8.0, num_experts=8, **shape)
    assert got == pytest.approx(2e-6 * 8 * math.sqrt(8.0), rel=1e-9)
    assert cal.time_s("grouped_gemm", tokens_per_expert=8.0, num_experts=128, **shape) is None


def test_transfers_pinned_default_and_median_over_pairs(calib_dir):
    cal = load_calibration(calib_dir)
    assert cal.time_s("h2d", bytes=2.0**20) == pytest.approx(5e-6 + 2**20 / 25e9)
    assert cal.time_s("h2d", bytes=2.0**20, pinned=False) == pytest.approx(5e-6 + 2**20 / 10e9)
    assert cal.time_s("p2p", bytes=1e6) == pytest.approx(2e-3)  # median of the two GPU pairs


def test_bad_queries_raise_user_error(calib_dir):
    cal = load_calibration(calib_dir)
    with pytest.raises(UserError, match="unknown calibration op"):
        cal.time_s("flash_attention", tokens=1)
    with pytest.raises(UserError, match="no shape fields"):
        cal.time_s("h2d", bytes=1.0, colour="red")
    with pytest.raises(UserError, match="needs"):
        cal.time_s("h2d", pinned=True)


def test_malformed_tables_give_one_line_errors(tmp_path):
    good = render_table("hbm_copy", HEADER, [{"bytes": 1e6, "device": "cuda:0", "seconds_median": 1e-6,
                                             "repeats": 3}])
    with pytest.raises(UserError, match="schema"):
        parse_table(good.replace("moesim-calibration/v1", "v0"), path="x.csv")
    with pytest.raises(UserError, match="non-negative number") as err:
        parse_table(good.replace("1e-06", "-1"), path="x.csv")
    assert "line" in str(err.value) and "seconds_median" in str(err.value)
    with pytest.raises(UserError, match="missing"):
        parse_table(good.replace("# gpu: SYNTHETIC-TEST-GPU\n", ""), path="x.csv")
    with pytest.raises(UserError, match="columns"):
        parse_table(good.replace("seconds_median", "secs"), path="x.csv")
    with pytest.raises(UserError, match="lacks"):
        render_table("hbm_copy", HEADER, [{"bytes": 1.0, "device": "cuda:0", "repeats": 1}])
    with pytest.raises(UserError, match="no such"):
        load_calibration(tmp_path / "absent")
    with pytest.raises(UserError, match="found none"):
        load_calibration(tmp_path)
    write_table(tmp_path / "a.csv", "hbm_copy", HEADER, [])
    write_table(tmp_path / "b.csv", "h2d", {**HEADER, "gpu": "OTHER-SYNTHETIC-GPU"}, [])
    with pytest.raises(UserError, match="one GPU model"):
        load_calibration(tmp_path)
