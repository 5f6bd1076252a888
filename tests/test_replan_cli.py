"""``moesim simulate --replan`` and ``moesim plan --replan``: outputs and bad input."""

from __future__ import annotations

import json

import pytest

from moesim.cli import main

SIM = ("simulate", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", "deepseek-v2-lite-synth",
       "--batch", "256", "--steps", "40")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_simulate_replan_json_reports_every_rebalance(capsys):
    code, out, err = run(capsys, *SIM, "--replan", "periodic", "--replan-interval", "10", "--replan-window",
                         "10", "--json")
    assert code == 0, err
    rp = json.loads(out)["replan"]
    assert rp["policy"] == "periodic" and rp["planner"] == "eplb" and rp["interval_steps"] == 10
    assert [e["step"] for e in rp["rebalances"]] == [10, 20, 30]
    assert rp["migration_bytes"] == sum(e["bytes"] for e in rp["rebalances"]) > 0
    assert [s["plan"] for s in rp["segments"]] == [0, 1, 2, 3]
    assert rp["imbalance_mean"] >= 1.0 and rp["step_time_mean_s"] > 0


def test_simulate_replan_text_and_static(capsys):
    code, out, err = run(capsys, *SIM, "--replan", "drift", "--replan-interval", "10", "--replan-window",
                         "10", "--replan-threshold", "0.05", "--migration", "overlapped")
    assert code == 0, err
    assert "re-placement drift (eplb, every 10 steps on the last 10, threshold 0.05, overlapped)" in out
    code, out, err = run(capsys, *SIM, "--replan", "static", "--json")
    assert code == 0, err
    assert json.loads(out)["replan"]["rebalances"] == []


@pytest.mark.parametrize("argv, field", [
    (("--replan", "periodic", "--replan-threshold", "1.5"), "--replan-threshold"),
    (("--replan", "periodic", "--replan-interval", "0"), "--replan-interval"),
    (("--replan", "sometimes"), "--replan"),
    (("--replan", "periodic", "--cache", "lru", "--cache-size", "16"), "--replan"),
    (("--replan", "periodic", "--migration", "teleport"), "--migration"),
])
def test_simulate_replan_bad_input_is_one_line_exit_2(capsys, argv, field):
    code, _, err = run(capsys, *SIM, *argv)
    assert code == 2 and err.count("\n") == 1 and field in err and "Traceback" not in err


def test_plan_replan_compares_candidates_with_static_and_the_engines(capsys):
    code, out, err = run(capsys, "plan", "--hw", "h100x8", "--replan", "periodic,drift", "--batch-size",
                         "256", "--replan-interval", "14", "--replan-window", "14", "--replan-threshold",
                         "0.05", "--json")
    assert code == 0, err
    res = json.loads(out)
    cands = res["candidates"]
    assert list(cands)[:3] == ["static", "sglang-default", "vllm-default"]
    assert set(cands) == {"static", "sglang-default", "vllm-default", "periodic n=14 w=14",
                          "drift n=14 w=14 t=0.05"}
    assert res["best"] in ("periodic n=14 w=14", "drift n=14 w=14 t=0.05")
    assert cands["static"]["rebalances"] == 0 and cands["static"]["gain_vs_static"] == 1.0
    periodic = cands["periodic n=14 w=14"]
    assert periodic["rebalances"] >= 1 and periodic["migration_bytes"] > 0
    ratio = cands["static"]["step_time_s"] / periodic["step_time_s"]
    assert periodic["gain_vs_static"] == pytest.approx(ratio)


def test_plan_replan_bad_input(capsys):
    code, _, err = run(capsys, "plan", "--hw", "h100x8", "--replan", "weekly")
    assert code == 2 and err.count("\n") == 1 and "--replan" in err
    code, _, err = run(capsys, "plan", "--hw", "h100x8", "--replan", "periodic", "--replan-threshold", "0,2")
    assert code == 2 and err.count("\n") == 1 and "--replan-threshold" in err


def test_plan_ilp_target_tokens_balances_tokens_not_time(capsys):
    common = ("plan", "--hw", "h100x8", "--planner", "ilp", "--time-limit", "5", "--json")
    code, out, err = run(capsys, *common, "--ilp-target", "tokens", "--gap-limit", "0.01")
    assert code == 0, err
    tokens = json.loads(out)["planners"]["ilp"]
    assert tokens["predicted_moe_step_s_eval"] is None and tokens["objective"] > 1000  # token counts
    code, out, err = run(capsys, *common)
    assert code == 0, err
    timed = json.loads(out)["planners"]["ilp"]
    assert timed["predicted_moe_step_s_eval"] > 0 and timed["objective"] < 1.0  # seconds
    code, _, err = run(capsys, *common, "--gap-limit", "-1")
    assert code == 2 and "--gap-limit" in err
