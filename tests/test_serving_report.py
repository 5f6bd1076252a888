"""The report's serving section: studies read from a sweep file, one cell per (series, rate), the
curves and table built from the cells (the numbers are the workflow's)."""

from __future__ import annotations

import csv

import pytest

from moesim.errors import UserError
from moesim.reports.build import make_report
from moesim.reports.cells import cell_serve
from moesim.reports.grid import serving_cell
from moesim.reports.sweep import sweep_from_dict

STUDY = {"hw": "h100x8", "model": "deepseek-v2-lite", "trace": "deepseek-v2-lite-synth", "rates": [20, 5],
         "requests": 12, "placements": ["contiguous"], "slo": "ttft=50ms"}


def test_serving_study_fields_and_errors(tmp_path):
    s = sweep_from_dict({"serving": [STUDY]}).serving[0]
    assert s.rates == (5.0, 20.0) and s.series == ("contiguous", "disaggregated") and s.workload == "chat"
    for bad, field in (({"rates": []}, "rates"), ({"placements": ["magic"]}, "placements"),
                       ({"slo": "fast"}, "slo"), ({"requests": 0}, "requests"), ({"colour": 1}, "colour"),
                       ({"placements": [], "disaggregated": False}, "placements")):
        with pytest.raises(UserError) as err:
            sweep_from_dict({"serving": [{**STUDY, **bad}]}, file="s.yaml")
        assert f"serving[0].{field}" in str(err.value)
    (tmp_path / "w.yaml").write_text("requests: 3\n")
    rel = sweep_from_dict({"serving": [{**STUDY, "workload": "w.yaml"}]}, base_dir=tmp_path).serving[0]
    assert rel.workload.endswith("w.yaml")


def test_serving_section_shows_the_cells_numbers(tmp_path):
    sweep = sweep_from_dict({"title": "t", "serving": [STUDY]})
    run = make_report(sweep, tmp_path / "out", command="moesim report", show_progress=False)
    assert run.failed == 0 and run.cells == 1 + 2 * 2  # setup + (2 series x 2 rates)
    section = next(s for s in run.document.sections if s.title == "Serving on h100x8")
    table = section.tables[0]
    assert [r[:2] for r in table.rows] == [("colocated, contiguous", 5.0), ("colocated, contiguous", 20.0),
                                           ("disaggregated (contiguous groups)", 5.0),
                                           ("disaggregated (contiguous groups)", 20.0)]
    assert len(section.figures) == 2  # TTFT and TPOT, colocated vs disaggregated
    cell = cell_serve(serving_cell(sweep.serving[0], "disaggregated", 20.0, 0).p)
    row = table.rows[3]
    assert row[3] == cell["summary"]["ttft_s"]["p50"] * 1e3
    assert row[5] == cell["summary"]["tpot_s"]["p50"] * 1e3
    assert "--scheduler disaggregated" in cell["command"]
    with open(tmp_path / "out" / "results.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["section"] == "serving h100x8"]
    assert {r["metric"] for r in rows} >= {"ttft_p50", "tpot_p99", "output_tokens_per_s_per_gpu"}
