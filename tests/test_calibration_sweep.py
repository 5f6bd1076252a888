"""The calibration run without a GPU: sweep planning, table writing from a stand-in timer,
derived roofline figures, and the CLI's one-line refusal when no GPU is present.

The stand-in timer returns SYNTHETIC times from a formula; nothing here is a measurement and
nothing is written outside tmp_path.
"""

from __future__ import annotations

import json

import pytest

from moesim.calibration import load_calibration
from moesim.calibration.roofline import kernel_figures, peaks_for, roofline_row, summarise
from moesim.calibration.sweep import (
    QUICK,
    Case,
    ModelShape,
    compare_impls,
    model_shapes,
    plan_cases,
    run_sweep,
)
from moesim.calibration.validate import ValidationCase, cluster_for, error_summary
from moesim.cli import main
from moesim.errors import UserError
from moesim.kernels.bench import Timing

HEADER = {"gpu": "SYNTHETIC-TEST-GPU", "driver": "none", "cuda": "none", "torch": "none", "triton": "none",
          "date": "2026-01-01T00:00:00Z", "memory_bytes": 80e9}
SMALL = ModelShape("tiny", 256, 128, 8, 2, (512,))


def _no_gpu() -> bool:
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()


def test_model_shapes_come_from_the_model_specs():
    shapes = {s.name: s for s in model_shapes()}
    assert {"mixtral-8x7b", "deepseek-v3", "qwen3-30b-a3b"} <= set(shapes)
    mix = shapes["mixtral-8x7b"]
    assert (mix.hidden, mix.ffn, mix.num_experts, mix.top_k) == (4096, 14336, 8, 2)
    assert shapes["deepseek-v2-lite"].shared_width == 2 * 1408
    assert "switch-base-128" not in shapes  # not a SwiGLU model: the kernels do not apply
    with pytest.raises(UserError, match="unknown model spec 'no-such-model'"):
        model_shapes(["mixtral-8x7b", "no-such-model"])


def test_plan_cases_covers_every_op_and_respects_limits():
    cases = plan_cases([SMALL], QUICK, gpu_count=1)
    ops = {c.op for c in cases}
    assert ops == {"fused_moe", "grouped_gemm", "gemm", "moe_align", "combine", "hbm_copy", "h2d", "d2h"}
    assert "p2p" in {c.op for c in plan_cases([SMALL], QUICK, gpu_count=2)}
    impls = {c.params["impl"] for c in cases if c.op == "fused_moe"}
    assert impls == {"triton", "torch_loop", "torch_grouped_mm"}
    no_gmm = plan_cases([SMALL], QUICK, grouped_mm=False)
    assert "torch_grouped_mm" not in {c.params.get("impl") for c in no_gmm}
    loop_tokens = [c.params["tokens"] for c in cases if c.params.get("impl") == "torch_loop"]
    assert max(loop_tokens) <= QUICK.max_loop_tokens
    for c in cases:
        if c.op == "grouped_gemm":
            assert c.params["tokens_per_expert"] * c.params["num_experts"] <= QUICK.max_grouped_rows
    assert {c.params["pinned"] for c in cases if c.op == "h2d"} == {True, False}
    # A model whose weights do not fit is left to the roofline.
    big = ModelShape("huge", 7168, 2048, 256, 8)
    assert not [c for c in plan_cases([big], QUICK, memory_bytes=16e9) if c.op == "fused_moe"]


def _synthetic_measure(case: Case):
    """Stand-in timer: t = 5 us + work / fake rate (SYNTHETIC)."""
    p = case.params
    if p.get("impl") == "torch_grouped_mm":
        raise RuntimeError("not supported on this synthetic device")
    work = {"fused_moe": lambda: p.get("tokens", 0) * 6 * p.get("hidden", 0) * p.get("ffn", 0),
            "grouped_gemm": lambda: p["tokens_per_expert"] * p["num_experts"] * 6 * p["hidden"] * p["ffn"],
            "gemm": lambda: 2 * p["m"] * p["n"] * p["k"]}.get(case.op, lambda: p.get("bytes", 1e3))()
    t = 5e-6 + work / 1e12 * (3.0 if p.get("impl") == "torch_loop" else 1.0)
    kernel = case.op in ("fused_moe", "grouped_gemm", "gemm")
    extra = {"flops": float(work), "bytes_moved": 1e6} if kernel else {}
    return Timing(t, t * 0.95, t * 1.1, 7, "synthetic"), extra


def test_run_sweep_writes_loadable_tables_figures_and_skips(tmp_path):
    cases = plan_cases([SMALL], QUICK, gpu_count=2)
    rows = run_sweep(cases, _synthetic_measure, tmp_path, {**HEADER, "gpu": "SYNTHETIC H100 test"},
                     device="cuda:0")
    written = sorted(p.name for p in tmp_path.glob("*.csv"))
    assert written == sorted(f"{op}.csv" for op in rows)
    cal = load_calibration(tmp_path)
    assert cal.device == "SYNTHETIC H100 test"
    shape = {"num_experts": 8, "top_k": 2, "hidden": 256, "ffn": 128, "dtype": "bf16"}
    assert cal.time_s("fused_moe", tokens=64, **shape) == pytest.approx(5e-6 + 64 * 6 * 256 * 128 / 1e12)
    assert cal.time_s("fused_moe", tokens=64, impl="torch_loop", **shape) > cal.time_s("fused_moe", tokens=64,
                                                                                        **shape)
    skipped = json.loads((tmp_path / "skipped.json").read_text())
    assert skipped and all(s["impl"] == "torch_grouped_mm" for s in skipped)
    assert "synthetic device" in skipped[0]["reason"]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["figures"] and figures["summary"]["memory_bound_cases"] >= 1
    comparison = compare_impls(rows["fused_moe"])
    assert comparison
    assert all(r["speedup_vs_torch_loop"] > 1 for r in comparison if "speedup_vs_torch_loop" in r)


def test_roofline_fractions():
    peaks = peaks_for("NVIDIA H100 80GB HBM3")
    assert peaks is not None and peaks.hbm_bytes_per_s == 3.35e12 and peaks.bf16_flops_per_s == 989.4e12
    assert peaks_for("NVIDIA H100 PCIe").hbm_bytes_per_s == 2.0e12
    assert peaks_for("Some Unknown Accelerator") is None
    # 3.35 GB in 2 ms with few FLOPs: memory-bound at half the HBM peak.
    row = {"seconds_median": 2e-3, "bytes_moved": 3.35e9, "flops": 1e9}
    fig = roofline_row(row, peaks)
    assert fig["bound"] == "memory" and fig["fraction_of_hbm_peak"] == pytest.approx(0.5)
    row = {"seconds_median": 1e-3, "bytes_moved": 1e6, "flops": 989.4e12 * 1e-3 * 0.6}
    fig = roofline_row(row, peaks, {"bf16_flops_per_s": 700e12})
    assert fig["bound"] == "compute" and fig["fraction_of_bf16_peak"] == pytest.approx(0.6)
    assert fig["fraction_of_measured_gemm"] == pytest.approx(989.4 * 0.6 / 700)
    figs = kernel_figures({"fused_moe": [{"impl": "triton", "seconds_median": 2e-3, "bytes_moved": 3.35e9,
                                          "flops": 1e9}]}, "NVIDIA H100 80GB HBM3")
    assert summarise(figs)["median_fraction_of_hbm_peak"] == pytest.approx(0.5)


def test_validation_errors_and_cluster_choice():
    cases = [ValidationCase("m", 1, 1.0, 1.04, "t"), ValidationCase("m", 2, 1.0, 0.9, "t"),
             ValidationCase("m", 4, 1.0, None, "t")]
    s = error_summary(cases)
    assert s["predicted"] == 2 and s["median_abs_error"] == pytest.approx(0.07)
    assert cluster_for("NVIDIA H100 80GB HBM3") == "h100x8"
    assert cluster_for("NVIDIA H200") == "h200x8"
    assert cluster_for("Unknown") is None


HAS_GPU = "this machine has a CUDA GPU: the no-GPU refusal cannot be observed"


@pytest.mark.skipif(not _no_gpu(), reason=HAS_GPU)
@pytest.mark.parametrize("argv", [["calibrate", "--out", "OUT"], ["calibrate", "--out", "OUT", "--quick"]])
def test_calibrate_without_gpu_exits_2_with_one_line(argv, tmp_path, capsys):
    argv = [a.replace("OUT", str(tmp_path / "calib")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moesim: error: no CUDA GPU available")
    assert not (tmp_path / "calib").exists()


@pytest.mark.skipif(not _no_gpu(), reason=HAS_GPU)
def test_validate_without_gpu_exits_2(tmp_path, capsys):
    from moesim.calibration import write_table

    write_table(tmp_path / "hbm_copy.csv", "hbm_copy", HEADER,
                [{"bytes": 1e6, "device": "cuda:0", "seconds_median": 1e-6, "repeats": 3}])
    assert main(["calibrate", "--validate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA GPU available" in err[0]


def test_calibrate_bad_input_exits_2(tmp_path, capsys):
    assert main(["calibrate"]) == 2
    assert "expected --out DIR" in capsys.readouterr().err
    assert main(["calibrate", "--validate", str(tmp_path / "absent")]) == 2
    assert "no such calibration" in capsys.readouterr().err
    assert main(["calibrate", "--out", str(tmp_path), "--repeats", "1"]) == 2
    assert "--repeats" in capsys.readouterr().err
    (tmp_path / "afile").write_text("x")
    assert main(["calibrate", "--out", str(tmp_path / "afile")]) == 2
    assert "found a file" in capsys.readouterr().err


@pytest.mark.gpu
@pytest.mark.skipif(_no_gpu(), reason="needs a CUDA GPU")
def test_gpu_quick_benchmark_writes_real_rows(tmp_path):
    from moesim.calibration.gpu_runner import GpuRunner
    from moesim.kernels.runtime import interpreter_active

    if interpreter_active():
        pytest.skip("TRITON_INTERPRET is on in this process; run with TRITON_INTERPRET=0")

    runner = GpuRunner("cuda:0", repeats=5)
    cases = [c for c in plan_cases([SMALL], QUICK) if c.op in ("fused_moe", "hbm_copy")][:6]
    rows = run_sweep(cases, runner, tmp_path, HEADER, device="cuda:0")
    assert rows["fused_moe"] and all(r["seconds_median"] > 0 for r in rows["fused_moe"])


def test_benchmarks_refuse_the_interpreter(monkeypatch):
    """Interpreter timings must never become calibration: the harness refuses before measuring."""
    from moesim.errors import UserError
    from moesim.kernels import bench, runtime

    monkeypatch.setattr(runtime, "interpreter_active", lambda: True)
    with pytest.raises(UserError, match="TRITON_INTERPRET"):
        bench.require_cuda("cuda:0")


def test_validation_prediction_uses_the_cost_model_or_says_it_used_the_table(tmp_path):
    import numpy as np

    from moesim.calibration.validate import _predict

    (mixtral,) = model_shapes(["mixtral-8x7b"])
    run_sweep(plan_cases([mixtral], QUICK), _synthetic_measure, tmp_path,
              {**HEADER, "gpu": "SYNTHETIC H100 test"}, device="cuda:0")
    cal = load_calibration(tmp_path)
    t, source = _predict(cal, "mixtral-8x7b", 64, np.full(8, 16), "h100x8")
    assert t > 0 and source.startswith("cost-model(") and "expert=table" in source
    t, source = _predict(cal, "mixtral-8x7b", 64, np.full(8, 16), None)
    assert t == pytest.approx(cal.time_s("fused_moe", tokens=64, num_experts=8, top_k=2, hidden=4096,
                                         ffn=14336, dtype="bf16"))
    assert source == "table(fused_moe only; no built-in cluster for this GPU)"
