"""``serve`` sweep cells: a grid over serving parameters (arrival rate, scheduler) gives one row per
cell whose command line (``moesim simulate --workload``) reproduces its numbers."""

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
    "kind": "serve",
    "fixed": {"hw": "h100x8", "model": "deepseek-v2-lite", "trace": "deepseek-v2-lite-synth",
              "workload": "chat", "requests": 8, "slo": "ttft=200ms,tpot=20ms"},
    "grid": {"arrival_rate": [5, 50], "scheduler": ["chunked", "disaggregated"]},
}


def test_a_serving_sweep_is_rows_of_simulate_workload_runs(tmp_path: Path) -> None:
    done = run_sweep(spec_from_dict(SPEC, KINDS), tmp_path / "ds", executor=SerialExecutor(),
                     show_progress=False)
    assert (done.cells, done.run.computed, done.run.refused, done.run.failed) == (4, 4, 0, 0)
    df = Dataset(tmp_path / "ds").frame().set_index(["scheduler", "arrival_rate"]).sort_index()
    assert (df["requests.finished"] == 8).all() and (df["ttft_s.p99"] > 0).all()
    assert df["goodput.fraction"].between(0, 1).all()
    dis, col = df.loc[("disaggregated", 50.0)], df.loc[("chunked", 50.0)]
    assert dis["kv_transfer.bytes"] > 0 and col["kv_transfer.bytes"] == 0
    assert dis["ttft_s.p99"] != col["ttft_s.p99"]
    # the row's command line gives the row's numbers
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(dis["command"].split()[1:]) == 0
    s = json.loads(buf.getvalue())
    assert dis["command"].startswith("moesim simulate --hw h100x8") and "--workload chat" in dis["command"]
    assert s["ttft_s"]["p99"] == dis["ttft_s.p99"] and s["tpot_s"]["p50"] == dis["tpot_s.p50"]
    assert s["throughput"]["output_tokens_per_s"] == dis["throughput.output_tokens_per_s"]
    assert s["goodput"]["fraction"] == dis["goodput.fraction"]


@pytest.mark.parametrize(("fixed", "field"), [({"scheduler": "fifo"}, "fixed.scheduler"),
                                              ({"arrival_rate": 0}, "fixed.arrival_rate"),
                                              ({"workload": None}, "workload")])
def test_serve_spec_errors_name_the_field(fixed: dict, field: str) -> None:
    spec = {**SPEC, "fixed": {**SPEC["fixed"], **fixed}}
    if fixed.get("workload", "") is None:
        del spec["fixed"]["workload"]
    with pytest.raises(UserError) as err:
        spec_from_dict(spec, KINDS, file="s.yaml")
    assert field in str(err.value)


def test_an_edited_workload_file_is_a_new_cell(tmp_path: Path) -> None:
    """A workload YAML's contents enter the cell hash, as a trace's or a profile's do."""
    from moesim.sweeps.cells import Hasher

    w = tmp_path / "w.yaml"
    w.write_text("requests: 3\n")
    (cell,) = spec_from_dict({"kind": "serve", "fixed": {**SPEC["fixed"], "workload": str(w)}}, KINDS).cells()
    hasher, files = Hasher(code="x"), KINDS["serve"].files
    before = hasher.key(cell, files)
    w.write_text("requests: 4\n")
    assert Hasher(code="x").key(cell, files) != before
    builtin = spec_from_dict({"kind": "serve", "fixed": SPEC["fixed"]}, KINDS).cells()[0]
    assert "workload" in Hasher(code="x").inputs(builtin.p, files)
