"""``replan`` sweep cells: a grid over re-placement settings gives one row per cell (its per-step series as
JSON text) whose command line (``moesim plan --replan``) prints the row's numbers."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from moesim.cli import main
from moesim.errors import UserError
from moesim.sweeps import Dataset, run_sweep, spec_from_dict
from moesim.sweeps.executors import SerialExecutor
from moesim.sweeps.kinds import KINDS

SPEC = {
    "kind": "replan",
    "fixed": {"hw": "h100x8", "model": "deepseek-v2-lite", "trace": "deepseek-v2-lite-switch",
              "interval": 4, "batch_tokens": 1024, "slots_per_gpu": 9, "train_fraction": 0.2},
    "grid": {"policy": ["static", "periodic", "drift"], "migration": ["overlapped"]},
}


def test_a_replan_sweep_is_rows_of_plan_replan_candidates(tmp_path: Path) -> None:
    done = run_sweep(spec_from_dict(SPEC, KINDS), tmp_path / "ds", executor=SerialExecutor(),
                     show_progress=False)
    assert (done.cells, done.run.computed, done.run.refused, done.run.failed) == (3, 3, 0, 0)
    df = Dataset(tmp_path / "ds").frame().set_index("policy")
    static, periodic = df.loc["static"], df.loc["periodic"]
    assert static["rebalances"] == 0 and static["migration_bytes"] == 0
    assert periodic["rebalances"] >= 1 and periodic["migration_bytes"] > 0
    steps = json.loads(periodic["imbalance_per_step"])
    assert len(steps) == periodic["stream_steps"] == len(json.loads(periodic["step_time_per_step_s"]))
    assert periodic["imbalance"] == pytest.approx(sum(steps) / len(steps))
    assert json.loads(periodic["replan_steps"]) and json.loads(static["replan_steps"]) == []
    # the row's command line prints the row's numbers under the row's label
    for row in (static, periodic):
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            assert main(row["command"].split()[1:]) == 0
        c = json.loads(buf.getvalue())["candidates"][row["label"]]
        assert row["command"].startswith("moesim plan --hw h100x8")
        assert (c["imbalance"], c["step_time_s"], c["migration_bytes"], c["rebalances"]) == (
            row["imbalance"], row["step_time_s"], row["migration_bytes"], row["rebalances"])


@pytest.mark.parametrize(("fixed", "field"), [({"policy": "sometimes"}, "fixed.policy"),
                                              ({"threshold": 0}, "fixed.threshold"),
                                              ({"migration": "teleport"}, "fixed.migration"),
                                              ({"interval": 0}, "fixed.interval")])
def test_replan_spec_errors_name_the_field(fixed: dict, field: str) -> None:
    spec = {"kind": "replan", "fixed": {**SPEC["fixed"], "policy": "drift", **fixed}}
    with pytest.raises(UserError) as err:
        spec_from_dict(spec, KINDS, file="s.yaml")
    assert field in str(err.value) and "s.yaml" in str(err.value)


def test_a_policy_that_checks_needs_an_interval(tmp_path: Path) -> None:
    fixed = {k: v for k, v in SPEC["fixed"].items() if k != "interval"}
    done = run_sweep(spec_from_dict({"kind": "replan", "fixed": {**fixed, "policy": "periodic"}}, KINDS),
                     tmp_path / "ds", executor=SerialExecutor(), show_progress=False)
    assert done.run.refused == 1
    assert "interval" in Dataset(tmp_path / "ds").frame()["error"].iloc[0]
