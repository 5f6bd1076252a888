"""``moesim plan``: the comparison workflow on a real trace, what the CLI prints of it, plan files,
determinism across processes, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from moesim.cli import main
from moesim.plans.plan import Plan
from tests.conftest import shared_trace

V2 = "deepseek-v2-lite-chat-prefill/deepseek_v2_lite_puffin_prefill.npz"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def v2_trace(tmp_path_factory) -> str:
    """The first 300 prompts of the shared DeepSeek-V2-Lite trace (keeps the test fast)."""
    from moesim.traces.trace import RoutingTrace

    full = RoutingTrace.load(str(shared_trace(V2)))
    stop = int(np.searchsorted(np.asarray(full.seq_id), 300))
    path = tmp_path_factory.mktemp("trace") / "v2.npz"
    full.rows(0, stop).save(path)
    return str(path)


def rows_speedup(data: dict) -> float:
    """The baseline's own speedup (1 by definition) after checking every speedup is its step ratio."""
    rows = data["planners"]
    base = rows[data["baseline_planner"]]["step_time_s_eval"]
    for row in rows.values():
        assert row["speedup_vs_baseline"] == pytest.approx(base / row["step_time_s_eval"])
    return rows[data["baseline_planner"]]["speedup_vs_baseline"]


def test_plan_compares_planners_as_json(capsys, v2_trace, tmp_path):
    out_file = tmp_path / "plan.yaml"
    code, out, err = run(capsys, "plan", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", v2_trace,
                         "--slots-per-gpu", "9", "--planner", "all", "--time-limit", "6", "--batch-size",
                         "2048", "--out", str(out_file), "--json")
    assert code == 0, err
    data = json.loads(out)
    names = {"engine-default", "contiguous", "round-robin", "greedy", "eplb", "eplb-hierarchical", "ilp"}
    assert set(data["planners"]) == names
    assert data["baseline_planner"] == "engine-default"
    assert rows_speedup(data) == pytest.approx(1.0)
    for row in data["planners"].values():
        for key in ("gpu_imbalance_eval", "gpu_imbalance_train", "step_time_s_eval", "tokens_per_s_eval",
                    "gap"):
            assert key in row
        assert "solve_s" not in row  # wall time lives under "timing" only
        assert row["gpu_imbalance_train"] >= 1.0 and row["gpu_imbalance_eval"] >= 1.0
    assert set(data["timing"]["solve_s"]) == names and all(v >= 0 for v in data["timing"]["solve_s"].values())
    rows = data["planners"]
    assert rows["ilp"]["gap"] is not None and 0 <= rows["ilp"]["gap"] < 0.15
    assert rows["eplb"]["gap"] is None
    assert rows["eplb"]["eplb_duplicate_slots"] >= 0
    # load-aware planners balance the evaluation tokens far better than the default layout
    assert rows["ilp"]["gpu_imbalance_eval"] < rows["contiguous"]["gpu_imbalance_eval"] - 0.05
    assert rows["ilp"]["gpu_imbalance_train"] < 1.02
    plan = Plan.load(out_file)
    assert plan.planner == "ilp" and plan.placement.shape == (26, 8, 9)
    from moesim.specs import load_model

    plan.validate(load_model("deepseek-v2-lite"))


def test_plan_prints_a_table(capsys, v2_trace):
    code, out, err = run(capsys, "plan", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", v2_trace,
                         "--planner", "eplb")
    assert code == 0, err
    assert "imb eval" in out and "eplb" in out
    assert "9 slots" in out  # default: ceil(64 / 8) + 1


@pytest.mark.parametrize("argv, needle", [
    (("--slots-per-gpu", "7"), "--slots-per-gpu: 8 GPUs x 7 slots = 56 slots cannot hold the 64 experts"),
    (("--replicas", "70"), "--replicas: 70 replicas do not divide evenly over 8 GPUs"),
    (("--train-fraction", "1.5"), "--train-fraction: expected a fraction between 0 and 1"),
    (("--slots-per-gpu", "65"), "a GPU may hold at most one copy of each expert"),
])
def test_infeasible_inputs_give_one_line_and_exit_2(capsys, v2_trace, argv, needle):
    code, _, err = run(capsys, "plan", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", v2_trace,
                       "--planner", "greedy", *argv)
    assert code == 2
    assert err.startswith("moesim: error: ") and needle in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_memory_too_small_is_one_line(capsys, tmp_path):
    """DeepSeek-V3's experts (58 layers x 33 slots x 44 MB in fp8) do not fit an 80 GB H100."""
    from moesim.specs import load_model
    from moesim.traces.trace import RoutingTrace

    m = load_model("deepseek-v3")
    rng = np.random.default_rng(0)
    ids = np.stack([rng.permutation(m.num_experts)[: m.top_k] for _ in range(400 * m.num_moe_layers)])
    trace = RoutingTrace.build(ids.reshape(400, m.num_moe_layers, m.top_k), num_experts=m.num_experts,
                               layer_ids=np.array(m.moe_layers))
    path = tmp_path / "v3.npz"
    trace.save(path)
    code, _, err = run(capsys, "plan", "--hw", "h100x8", "--model", "deepseek-v3", "--trace", str(path),
                       "--planner", "contiguous")
    assert code == 2
    assert "needs" in err and "GB" in err and err.count("\n") == 1


def test_only_hw_uses_the_shipped_model_and_trace(capsys):
    code, out, err = run(capsys, "plan", "--hw", "h100x8", "--planner", "greedy", "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["model"] == "deepseek-v2-lite" and data["trace"] == "deepseek-v2-lite-synth"
    assert data["planners"]["greedy"]["gpu_imbalance_train"] < 1.05


def test_the_cli_prints_what_the_workflow_returns(capsys):
    from moesim.workflows import PlacementRequest, compare_planners

    argv = ("plan", "--hw", "h100x8", "--planner", "eplb", "--steps", "2", "--batch-size", "1024", "--json")
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    printed = json.loads(out)
    result = compare_planners(PlacementRequest(hw="h100x8", planners=("eplb",), steps=2, batch_tokens=1024))
    want = json.loads(json.dumps(result.as_dict()))
    printed.pop("timing"), want.pop("timing")
    assert printed.pop("schema") == "moesim-plan/1" and printed.pop("engine_launch") == []
    assert printed == want
    row = result.rows["eplb"]
    assert printed["planners"]["eplb"]["step_time_s_eval"] == row.step_time_s_eval
    # The per-layer imbalance the report draws averages to the table's figure.
    assert np.mean(row.imbalance_per_layer_eval) == pytest.approx(row.gpu_imbalance_eval, rel=1e-12)
    assert len(row.imbalance_per_layer_eval) == len(result.moe_layers) == 26
    assert result.chosen is result.plans["eplb"] and result.inputs.evaluation.num_tokens == result.eval_tokens


def test_eplb_json_is_the_same_in_processes_with_different_hash_seeds(tmp_path):
    """``moesim plan --planner eplb --json``: byte-identical across processes once ``timing`` is left out
    (two nodes with local dispatch, so NVLink, InfiniBand and PCIe bytes are all summed)."""
    argv = [sys.executable, "-m", "moesim", "plan", "--hw", "h100x8x4", "--nodes", "2", "--planner", "eplb",
            "--dispatch", "local", "--steps", "3", "--json"]
    outs = []
    for seed in ("1", "2"):
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300,
                              env={**os.environ, "PYTHONHASHSEED": seed})
        assert proc.returncode == 0, proc.stderr
        data = json.loads(proc.stdout)
        assert list(data)[-1] == "timing" and data.pop("timing")["solve_s"]["eplb"] > 0
        outs.append(json.dumps(data, indent=1))
    assert outs[0] == outs[1]
    assert json.loads(outs[0])["planners"]["eplb"]["a2a_bytes"]["ib"] > 0


def test_gpu_memory_budget_adds_a_cache_plan_or_one_line_error(capsys, v2_trace, tmp_path):
    out_file = tmp_path / "plan.json"
    common = ("plan", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", v2_trace,
              "--planner", "contiguous", "--slots-per-gpu", "8", "--time-limit", "5")
    # every GPU holds all 27 layers' non-expert weights (2.44 GiB): 1 GiB is enough only with TP 8
    code, out, err = run(capsys, *common, "--gpu-memory", "1GiB", "--batch-size", "1", "--steps", "20",
                         "--tp", "8", "--out", str(out_file), "--json")
    assert code == 0, err
    plan = Plan.load(out_file)
    assert plan.cache is not None and plan.cache.params["memory_layout"]["tp"] == 8
    assert json.loads(out_file.read_text())["resident_experts"] == plan.resident_experts()
    assert json.loads(out)["planners"]["contiguous"]["gpu_imbalance_eval"] >= 1.0
    code, _, err = run(capsys, *common, "--gpu-memory", "1MiB")
    assert code == 2 and err.count("\n") == 1 and "budget" in err
    code, _, err = run(capsys, *common, "--gpu-memory", "1GiB", "--batch-size", "1")
    assert code == 2 and err.count("\n") == 1 and "non-expert weights 2.443 GiB" in err


def test_ilp_with_a_seed_gives_the_same_placement_twice(capsys, tmp_path):
    """The ILP is bounded by deterministic work (CP-SAT deterministic time, interleaved workers,
    a fixed number of swap-search tries), not by wall-clock: one seed, one plan."""
    from moesim.resources import builtin_names

    if "deepseek-v2-lite-synth" not in builtin_names("trace"):
        pytest.skip("shipped trace deepseek-v2-lite-synth.npz not built yet")
    plans = []
    for i in range(2):
        out = tmp_path / f"plan{i}.yaml"
        code, _, err = run(capsys, "plan", "--hw", "h100x8", "--planner", "ilp", "--seed", "1",
                           "--out", str(out), "--json")
        assert code == 0, err
        plans.append(Plan.load(out))
    assert np.array_equal(plans[0].placement, plans[1].placement)
    assert plans[0].params["layers_solved"] > 0  # CP-SAT did run: its result is what repeats
