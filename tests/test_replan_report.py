"""The report's re-placement section: studies read from a sweep file, one cell per (policy, migration),
the table and the stream plot built from the cells, and each row's command printing the row's numbers."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shlex
from pathlib import Path

import pytest

from moesim.cli import main
from moesim.errors import UserError
from moesim.reports.build import make_report
from moesim.reports.cells import cell_replan
from moesim.reports.grid import replan_cell
from moesim.reports.sweep import sweep_from_dict

STUDY = {"hw": "h100x8", "model": "deepseek-v2-lite", "trace": "deepseek-v2-lite-switch",
         "policies": ["static", "periodic", "drift"], "interval": 4, "migration": ["overlapped"],
         "batch_tokens": 1024, "slots_per_gpu": 9}
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "deepseek-v2-lite-chat-prefill"


def _json_of(cmd: str) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(shlex.split(cmd)[1:]) == 0
    return json.loads(buf.getvalue())


def test_replan_study_fields_and_errors(tmp_path: Path) -> None:
    s = sweep_from_dict({"replan": [STUDY]}).replan[0]
    assert s.trace == ("deepseek-v2-lite-switch",) and s.window is None and s.planner == "eplb"
    assert s.series() == [("static", "overlapped"), ("periodic", "overlapped"), ("drift", "overlapped")]
    for bad, field in (({"policies": ["sometimes"]}, "policies"), ({"interval": 0}, "interval"),
                       ({"threshold": 1.5}, "threshold"), ({"migration": "teleport"}, "migration"),
                       ({"planner": "magic"}, "planner"), ({"trace": []}, "trace"),
                       ({"train_fraction": 1}, "train_fraction"), ({"colour": 1}, "colour")):
        with pytest.raises(UserError) as err:
            sweep_from_dict({"replan": [{**STUDY, **bad}]}, file="s.yaml")
        assert f"replan[0].{field}" in str(err.value) and "s.yaml" in str(err.value)
    (tmp_path / "bad.yaml").write_text("replan:\n  - {hw: h100x8, model: deepseek-v2-lite, "
                                       "trace: deepseek-v2-lite-switch, interval: -1}\n")
    err_out = io.StringIO()
    with contextlib.redirect_stderr(err_out):
        code = main(["report", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o")])
    assert code == 2 and "replan[0].interval" in err_out.getvalue()
    assert len(err_out.getvalue().strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_replan_section_shows_the_cells_numbers(tmp_path: Path) -> None:
    sweep = sweep_from_dict({"title": "t", "replan": [STUDY]})
    run = make_report(sweep, tmp_path / "out", command="moesim report", show_progress=False)
    assert run.failed == 0 and run.cells == 3
    section = next(s for s in run.document.sections if s.title.startswith("Re-placement on"))
    table = section.tables[0]
    assert [r[0] for r in table.rows] == ["static", "periodic, overlapped", "drift, overlapped"]
    static, periodic = table.rows[0], table.rows[1]
    assert static[3] == 1 and static[4] == 0 and periodic[4] >= 1 and periodic[5] > 0
    assert periodic[1] < static[1]  # re-planning after the switch balances the stream better
    assert len(section.figures) == 1 and section.figures[0].png.startswith(b"\x89PNG")
    # a row's command prints the row's numbers under the row's candidate label
    cell = cell_replan(replan_cell(sweep.replan[0], "periodic", "overlapped", 0).p)
    assert cell["command"] in table.caption
    out = _json_of(cell["command"])["candidates"][cell["label"]]
    assert (out["imbalance"], out["step_time_s"] * 1e3, out["rebalances"]) == (*periodic[1:3], periodic[4])
    assert out["migration_bytes"] / 1e9 == periodic[5] and out["stall_s"] * 1e3 == periodic[6]
    assert out["in_flight_bytes"] / 1e9 == periodic[7] and table.columns[7] == "in flight GB"
    assert len(cell["imbalance_per_step"]) == cell["stream_steps"] == len(cell["step_time_per_step_s"])
    with open(tmp_path / "out" / "results.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["section"] == "replan h100x8"]
    assert {r["metric"] for r in rows} >= {"imbalance", "step_time_ms", "speedup_vs_static", "migration_gb"}
    assert sum(r["x_name"] == "step" for r in rows) == 2 * 3 * cell["stream_steps"]


def test_a_blocking_row_slower_than_static_is_said_with_its_stalls_against_its_savings() -> None:
    from moesim.reports.section_replan import _verdict

    base = {"step_time_s": 6e-3, "stall_s": 0.0}
    cells = {("static", "blocking"): base,
             ("drift", "blocking"): {"step_time_s": 7e-3, "stall_s": 20e-3},  # served 10 steps at 5 ms
             ("drift", "overlapped"): {"step_time_s": 5.5e-3, "stall_s": 0.0},  # faster: nothing to say
             ("hedged", "overlapped"): {"step_time_s": 6.2e-3, "stall_s": 0.0}}
    lines = _verdict(cells, base, 10)
    assert len(lines) == 1
    text = lines[0]
    assert text.startswith("Slower than `static` over the 10 steps of this stream: ")
    assert "`drift, blocking` (stalls 20.0 ms against 10.0 ms its steps saved)" in text
    assert "`hedged, overlapped` (no stalls; its plans served slower steps: 2.0 ms lost)" in text
    assert "`drift, overlapped`" not in text and "blocking re-balancing pays only" in text
    assert _verdict({("static", "blocking"): base}, base, 10) == ()


def test_a_list_of_traces_is_one_stream_and_its_command_concatenates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    study = {**STUDY, "trace": ["deepseek-v2-lite-synth", "deepseek-v2-lite-switch"], "policies": ["static"],
             "train_fraction": 0.5}
    s = sweep_from_dict({"replan": [study]}).replan[0]
    cell = cell_replan(replan_cell(s, "static", "overlapped", 0).p)
    concat, plan = cell["command"].split(" && ")
    assert concat.startswith("moesim trace concat deepseek-v2-lite-synth deepseek-v2-lite-switch --out ")
    assert cell["warmup_tokens"] + cell["stream_tokens"] == 20000 + 32000
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(shlex.split(concat)[1:]) == 0
    assert _json_of(plan)["candidates"]["static"]["imbalance"] == cell["imbalance"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared DeepSeek-V2-Lite traces absent (../shared/traces)")
def test_shared_spec_reads_the_real_traces_in_place() -> None:
    from moesim.reports.sweep import load_sweep

    root = Path(__file__).resolve().parents[1]
    (s,) = load_sweep(root / "reports" / "shared.yaml").replan
    assert len(s.trace) == 2 and all(Path(t).is_file() and "shared/traces" in t for t in s.trace)
    assert not any((root / "traces").glob("deepseek_v2_lite_*"))  # never copied into the repository
