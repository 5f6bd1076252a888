"""``moesim calibrate --device cpu``: the CPU tables' format, a real (tiny) measurement, the committed
example table, and CPU expert times that follow the measured curve."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from moesim.calibration import load_calibration, read_table, write_table
from moesim.calibration.format import parse_table, render_table
from moesim.cli import main
from moesim.cost import CostModel
from moesim.errors import UserError
from moesim.resources import builtin_dir
from moesim.specs import load_cluster, load_model

EXAMPLE = builtin_dir("hardware") / "calibration" / "cpu-intel-xeon-processor"
CPU_HEAD = {"cpu": "Intel(R) Xeon(R) Gold 6454S", "cores": 32, "threads": 32, "torch": "2.13.0",
            "date": "2026-01-01T00:00:00Z", "command": "moesim calibrate --device cpu --out x"}


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def expert_rows(seconds: dict[int, float], dtype: str = "bf16") -> list[dict]:
    return [{"rows": r, "hidden": 2048, "ffn": 1408, "dtype": dtype, "impl": "torch", "device": "cpu",
             "seconds_median": s, "repeats": 5} for r, s in seconds.items()]


def test_cpu_tables_carry_the_cpu_header(tmp_path: Path) -> None:
    text = render_table("cpu_expert", CPU_HEAD, expert_rows({1: 1e-3}))
    table = parse_table(text)
    assert table.header["cpu"] == CPU_HEAD["cpu"] and table.rows[0]["rows"] == 1
    gpu_head = {"gpu": "NVIDIA H100", "driver": "x", "cuda": "x", "torch": "x", "triton": "x", "date": "x"}
    with pytest.raises(UserError, match="header lacks"):
        render_table("cpu_expert", gpu_head, expert_rows({1: 1e-3}))
    with pytest.raises(UserError, match=r"missing \['cpu'"):
        parse_table(text.replace("# cpu: ", "# processor: "))


def test_a_folder_may_hold_one_gpu_and_one_cpu(tmp_path: Path) -> None:
    write_table(tmp_path / "cpu_expert.csv", "cpu_expert", CPU_HEAD, expert_rows({1: 1e-3, 8: 2e-3}))
    cal = load_calibration(tmp_path)
    assert cal.cpu == CPU_HEAD["cpu"] and cal.device == ""
    write_table(tmp_path / "host_copy.csv", "host_copy", {**CPU_HEAD, "cpu": "AMD EPYC 9654"},
                [{"bytes": 1e6, "threads": 1, "device": "cpu", "seconds_median": 1e-4, "repeats": 3}])
    with pytest.raises(UserError, match="one CPU model"):
        load_calibration(tmp_path)


def test_cpu_tables_apply_to_matching_cpus_only(tmp_path: Path) -> None:
    write_table(tmp_path / "cpu_expert.csv", "cpu_expert", CPU_HEAD, expert_rows({1: 1e-3, 64: 9e-3}))
    model = load_model("deepseek-v2-lite")
    cost = CostModel(load_cluster("rtx4090-workstation"), model, calibration=load_calibration(tmp_path))
    assert cost.calibrated_devices == frozenset()  # no GPU tables
    assert cost.sources()["cpu_expert"] == "table"
    assert cost.cpu.kernel("n0.cpu0").name == "torch-bf16"  # the table measured torch
    with pytest.raises(UserError, match=r"6454S.*xeon-platinum-8480"):
        CostModel(load_cluster("h100x8"), model, calibration=load_calibration(tmp_path))


def test_cpu_expert_time_follows_the_measured_curve() -> None:
    """The committed example table: seconds at measured rows, log-log interpolation between them."""
    table = read_table(EXAMPLE / "cpu_expert.csv")
    measured = {r["rows"]: r["seconds_median"] for r in table.rows if r["dtype"] == "bf16"}
    model = load_model("deepseek-v2-lite")  # the table's expert shape, bf16 weights
    # one socket
    cost = CostModel(load_cluster("rtx3090-desktop"), model, calibration=load_calibration(EXAMPLE))
    assert cost.cpu.kernel("n0.cpu0").name == "torch-bf16"
    rows = sorted(measured)
    for r in rows:
        assert cost.cpu_expert_s("n0.cpu0", np.array([r])) == pytest.approx(measured[r])
    for lo, hi in itertools.pairwise(rows):
        mid = math.sqrt(lo * hi)
        f = math.log(mid / lo) / math.log(hi / lo)
        expect = math.exp(math.log(measured[lo]) + f * math.log(measured[hi] / measured[lo]))
        assert cost.cpu_expert_s("n0.cpu0", np.array([mid])) == pytest.approx(expect)
    # along the measured curve, time grows with rows from a GEMV to a prefill-sized GEMM
    times = [cost.cpu_expert_s("n0.cpu0", np.array([r])) for r in (rows[0], 64, 512, rows[-1])]
    assert times[-1] > 3 * times[0] and times[-1] > times[-2] > times[1]
    # several experts run one after another; outside the table the kernel's roofline takes over
    assert cost.cpu_expert_s("n0.cpu0", np.array([4, 64])) == pytest.approx(measured[4] + measured[64])
    cost.cpu_expert_s("n0.cpu0", np.array([rows[-1] * 4]))
    assert cost.sources()["cpu_expert"] == "table+roofline"


def test_committed_table_is_used_by_simulate() -> None:
    args = ["simulate", "--hw", "rtx4090-workstation", "--model", "deepseek-v2-lite", "--trace",
            "deepseek-v2-lite-synth", "--cache", "lru", "--cache-size", "8", "--miss", "cpu", "--steps", "3",
            "--batch", "8", "--json"]
    code, text = run_cli(*args, "--calibration", str(EXAMPLE))
    assert code == 0
    assert json.loads(text)["cost_sources"]["cpu_expert"] == "table"
    head = read_table(EXAMPLE / "cpu_expert.csv").header
    for key in ("cpu", "cores", "threads", "torch", "date", "command", "duration_s", "loadavg_start"):
        assert key in head, key
    assert head["duration_s"] < 120 and head["sweep"] == "quick"


def test_cli_cpu_mode_rejects_gpu_only_flags(tmp_path: Path) -> None:
    cases = ((["--validate", str(EXAMPLE)], "--validate"), (["--out", str(tmp_path), "--tune"], "--tune"),
             (["--out", str(tmp_path), "--threads", "0"], "--threads"),
             (["--out", str(tmp_path), "--models", "mixtral-8x7b,deepseek-v2-lite"], "--models"))
    for extra, field in cases:
        code = main(["calibrate", "--device", "cpu", *extra])
        assert code == 2, field


def test_a_small_real_measurement_writes_both_tables(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from moesim.calibration import cpu_runner

    result = cpu_runner.run_cpu_calibration(
        tmp_path, hidden=256, ffn=128, model="tiny", quick=True, repeats=3, dtypes=("bf16", "int8"),
        command="test", rows=(1, 64), copy_sizes=(2**20,), rotate_bytes=2**22)
    cal = load_calibration(tmp_path)
    assert cal.ops == ("cpu_expert", "host_copy") and cal.cpu == result["header"]["cpu"]
    seconds = {(r["dtype"], r["rows"]): r["seconds_median"] for r in cal.tables["cpu_expert"].rows}
    assert set(seconds) == {("bf16", 1), ("bf16", 64), ("int8", 1), ("int8", 64)}
    assert all(s > 0 for s in seconds.values())
    copy = cal.tables["host_copy"].rows
    assert {r["threads"] for r in copy} >= {1} and all(r["gbytes_per_s"] > 0 for r in copy)
    assert cal.tables["cpu_expert"].header["rotated_weight_bytes_bf16"] >= 2**22
