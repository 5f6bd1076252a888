"""Report machinery without the simulator: sweep validation, the cell cache, rendering, the browser check."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from moesim.errors import UserError
from moesim.reports import plots, render
from moesim.reports.browser import check_page, find_chromium, screenshot
from moesim.reports.document import Document, Figure, Record, Section, Table
from moesim.reports.grid import Cell, run_grid
from moesim.reports.sweep import default_sweep, load_sweep, sweep_from_dict
from moesim.sweeps.cells import cell_key, file_digest
from moesim.sweeps.dataset import Dataset
from moesim.sweeps.schema import CellKind


def test_default_sweep_compares_enough() -> None:
    s = default_sweep()
    assert len(s.placement[0].planners) >= 4
    assert len(s.offload[0].policies) >= 4
    assert len({st.hw for st in (*s.placement, *s.offload)}) >= 2


@pytest.mark.parametrize(
    ("data", "field_part", "message_part"),
    [
        ({"placement": [{"hw": "h100x8", "model": "m"}]}, "placement[0].trace", "missing"),
        (
            {"placement": [{"hw": "h100x8", "model": "m", "trace": "t", "planners": ["best"]}]},
            "placement[0].planners[0]",
            "expected one of",
        ),
        (
            {"offload": [{"hw": "x", "model": "m", "trace": "t", "expert_cache": ["20"]}]},
            "offload[0].expert_cache[0]",
            "",
        ),
        (
            {"offload": [{"hw": "x", "model": "m", "trace": "t", "gpu_memory": ["20 GiB"]}]},
            "offload[0].gpu_memory",
            "now expert_cache",
        ),
        ({"offload": [{"hw": "x", "model": "m", "trace": "t", "batch": 0}]}, "offload[0].batch", ">= 1"),
        ({"offload": [{"hw": "x", "model": "m", "trace": "t", "colour": 1}]}, "offload[0]", "unknown key"),
        ({"placment": []}, "placment", "unknown key"),
        ({}, "placement", "nothing to compare"),
        ([1, 2], "", "expected a mapping"),
    ],
)
def test_sweep_errors_name_the_field(data: object, field_part: str, message_part: str) -> None:
    with pytest.raises(UserError) as e:
        sweep_from_dict(data, file="sweep.yaml")
    assert e.value.file == "sweep.yaml"
    assert field_part in (e.value.field or "")
    assert message_part in e.value.message


def test_sweep_yaml_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cfg = tmp_path / "sub" / "sweep.yaml"
    cfg.write_text("offload:\n  - {hw: rtx4090-workstation, model: mixtral-8x7b, trace: ../t.npz}\n")
    s = load_sweep(cfg)
    assert Path(s.offload[0].trace).resolve() == tmp_path / "t.npz"
    assert s.offload[0].hw == "rtx4090-workstation"
    cfg.write_text("offload: [\n")
    with pytest.raises(UserError, match="expected valid YAML"):
        load_sweep(cfg)
    with pytest.raises(UserError, match="no such"):
        load_sweep(tmp_path / "absent.yaml")


def test_cell_key_hashes_contents_not_paths(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("x: 1\n")
    b.write_text("x: 1\n")
    assert file_digest(a) == file_digest(b)
    k1 = cell_key("k", {"p": 1}, {"hw": file_digest(a)}, "code")
    b.write_text("x: 2\n")
    assert cell_key("k", {"p": 1}, {"hw": file_digest(b)}, "code") != k1
    assert cell_key("k", {"p": 2}, {"hw": file_digest(a)}, "code") != k1
    assert cell_key("k", {"p": 1}, {"hw": file_digest(a)}, "other code") != k1


CALLS: list[dict] = []


def square(p: dict) -> dict:
    CALLS.append(p)
    if p["x"] < 0:
        raise UserError("negative")
    return {"y": p["x"] ** 2, "nan": float("nan")}


def test_run_grid_computes_each_cell_once(tmp_path: Path) -> None:
    CALLS.clear()
    kinds = {"sq": CellKind("sq", square, "square")}
    cells = [Cell.make("sq", x=x) for x in (1, 2, -1)]
    store = Dataset(tmp_path / "cells")
    first = run_grid(cells, kinds, store, show_progress=False)
    assert (first.computed, first.cached) == (3, 0)
    assert first.get(cells[1]) == {"y": 4, "nan": None}
    assert first.error(cells[2]) == "negative" and first.get(cells[2]) is None
    second = run_grid([*cells, Cell.make("sq", x=3)], kinds, store, show_progress=False)
    assert (second.computed, second.cached) == (1, 3)
    assert second.results[cells[1]] == first.results[cells[1]]
    assert second.error(cells[2]) == "negative"  # a refused cell is kept: the same inputs are refused again
    assert len(CALLS) == 4


def _small_document() -> Document:
    hit = plots.lines(
        [2, 4, 8],
        {"lru": [0.3, 0.5, 1.0], "belady": [0.4, 0.7, 1.0]},
        xlabel="experts cached",
        ylabel="hit rate",
        title="hit rate",
        emphasise="belady",
    )
    bar = plots.bars(["contiguous", "ilp"], [1.0, 1.25], ylabel="speedup", title="speedup", ref_y=1.0)
    tl = plots.timeline(
        ["gpu0", "gpu1"],
        [("gpu0", 0.0, 1e-3, "attention"), ("gpu1", 1e-3, 2e-3, "experts")],
        title="one step",
    )
    table = Table(
        "t_speed",
        "Speedup",
        "speedup over `contiguous`",
        ("planner", "speedup"),
        (("contiguous", 1.0), ("ilp", 1.25)),
    )
    figs = tuple(
        Figure(n, n, f"caption of {n} <b>escaped</b>", f"moesim report --out x # {n}", p)
        for n, p in (("hit", hit), ("speedup", bar), ("timeline", tl))
    )
    recs = (
        Record("placement", "t_speed", "h100x8", "m", "t", "ilp", "", "", "speedup", 1.25),
        Record("offload", "hit", "h", "m", "t", "lru", "cache_experts", 2, "hit_rate", 0.1 + 0.2),
    )
    return Document(
        "Small report", "moesim report --out x", (Section("S", ("text with `code`",), (table,), figs),), recs
    )


def test_render_writes_all_outputs(tmp_path: Path) -> None:
    doc = _small_document()
    written = render.write(doc, tmp_path)
    assert {"index.html", "report.md", "results.csv", "hit.png", "speedup.png", "timeline.png"} <= set(
        written
    )
    html = (tmp_path / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert "&lt;b&gt;escaped&lt;/b&gt;" in html and "<b>escaped</b>" not in html
    md = (tmp_path / "report.md").read_text()
    assert "![hit](hit.png)" in md and "| ilp | 1.25 |" in md
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert float(rows[1]["value"]) == 0.1 + 0.2  # exact digits survive
    for name in ("hit", "speedup", "timeline"):
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Same document, same bytes (no timestamps anywhere).
    again = tmp_path / "again"
    render.write(_small_document(), again)
    for name in ("index.html", "hit.png", "results.csv"):
        assert (again / name).read_bytes() == (tmp_path / name).read_bytes()


def test_page_self_check_in_chromium(tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium not installed (apt-get install chromium)")
    render.write(_small_document(), tmp_path)
    check = check_page(tmp_path / "index.html", chromium=chromium)
    assert check.status == "ok", check.text
    assert check.images == "3/3" and check.tables == 1 and check.rows == 2
    # A broken image and an empty table are caught by the same check.
    html = (tmp_path / "index.html").read_text()
    broken = (
        html.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
        .replace("<tbody><tr><td>contiguous", "<tbody><tr hidden><td>contiguous")
        .replace("</tbody>", "</tbody>", 1)
    )
    broken = broken.replace(
        '<table id="t_speed"><thead>',
        '<table id="empty"><thead></thead><tbody></tbody></table><table id="t_speed"><thead>',
    )
    (tmp_path / "broken.html").write_text(broken)
    bad = check_page(tmp_path / "broken.html", chromium=chromium)
    assert bad.status == "fail"
    assert "image not rendered" in bad.text and "empty table: empty" in bad.text
    shot = screenshot(tmp_path / "index.html", tmp_path / "shot.png", chromium=chromium)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cached_results_are_plain_json(tmp_path: Path) -> None:
    kinds = {"sq": CellKind("sq", square, "square")}
    store = Dataset(tmp_path)
    run_grid([Cell.make("sq", x=3)], kinds, store, show_progress=False)
    (row,) = Dataset(tmp_path).frame().to_dict("records")
    assert json.loads(row["result"]) == {"y": 9, "nan": None} and json.loads(row["params"]) == {"x": 3}
    assert row["status"] == "ok" and row["kind"] == "sq"


def broken(p: dict) -> dict:
    raise RuntimeError("boom")


def test_a_cell_bug_is_reported_and_computed_again(tmp_path: Path) -> None:
    kinds = {"b": CellKind("b", broken, "broken")}
    store = Dataset(tmp_path)
    res = run_grid([Cell.make("b", x=1)], kinds, store, show_progress=False)
    assert res.failed == 1 and res.computed == 1
    assert "internal error (RuntimeError: boom)" in res.error(Cell.make("b", x=1))
    assert Dataset(tmp_path).frame()["status"].tolist() == ["failed"]
    again = run_grid([Cell.make("b", x=1)], kinds, store, show_progress=False)
    assert again.cached == 0 and again.failed == 1  # a crash is not a result: the next run tries again


def test_sweep_from_flags_builds_the_grid() -> None:
    from moesim.reports.sweep import sweep_from_flags

    s = sweep_from_flags(
        hw=["h100x8", "rtx4090-workstation"],
        model=["mixtral-8x7b"],
        trace=["mixtral-8x7b-synth"],
        planners=["contiguous", "eplb"],
        cache_policies=["lru", "belady"],
        expert_cache=["21GiB"],
        cache_sizes=[2, 4],
        time_limit_s=5,
    )
    # Placement only where there are GPUs to place on; offloading on every profile.
    assert [(p.hw, p.planners, p.time_limit_s) for p in s.placement] == [
        ("h100x8", ("contiguous", "eplb"), 5.0)
    ]
    assert [o.hw for o in s.offload] == ["h100x8", "rtx4090-workstation"]
    assert all(
        o.policies == ("lru", "belady") and o.cache_sizes == (2, 4) and o.expert_cache == ("21GiB",)
        for o in s.offload
    )
    assert s.source == "flags"
    with pytest.raises(UserError, match="as many --trace as --model"):
        sweep_from_flags(
            hw=None,
            model=["a", "b"],
            trace=["x", "y", "z"],
            planners=None,
            cache_policies=None,
            expert_cache=None,
        )
    with pytest.raises(UserError, match="give --model with --trace"):
        sweep_from_flags(
            hw=None, model=None, trace=["x"], planners=None, cache_policies=None, expert_cache=None
        )


def test_committed_default_sweep_starts_with_the_built_in_defaults() -> None:
    cfg = Path(__file__).resolve().parents[1] / "reports" / "default.yaml"
    committed, built_in = load_sweep(cfg), default_sweep()
    assert committed.placement == built_in.placement
    assert committed.offload[: len(built_in.offload)] == built_in.offload
    assert committed.seed == built_in.seed


def test_calibration_folder_and_its_validation_error_are_reported(tmp_path: Path) -> None:
    from moesim.calibration import write_table
    from moesim.reports.build import make_report

    cal = tmp_path / "cal"
    cal.mkdir()
    header = {
        "gpu": "NVIDIA GeForce RTX 4090",
        "driver": "test",
        "cuda": "test",
        "torch": "test",
        "triton": "test",
        "date": "2026-11-23",
    }
    rows = [
        {"bytes": b, "pinned": True, "device": "cuda:0", "seconds_median": b / 25e9, "repeats": 5}
        for b in (1e6, 1e8, 1e9)
    ]
    write_table(cal / "h2d.csv", "h2d", header, rows)
    (cal / "validation.json").write_text(
        json.dumps({"summary": {"cases": 12, "median_abs_error": 0.043, "p90_abs_error": 0.091}})
    )
    sweep = sweep_from_dict(
        {
            "offload": [
                {
                    "hw": "rtx4090-workstation",
                    "model": "mixtral-8x7b",
                    "trace": "mixtral-8x7b-synth",
                    "policies": [],
                    "calibration": "cal",
                }
            ]
        },
        base_dir=tmp_path,
    )
    run = make_report(
        sweep, tmp_path / "out", command="moesim report --config x --out out", show_progress=False
    )
    recs = {r.metric: r.value for r in run.document.records if r.section == "calibration"}
    assert recs == {"median_abs_error": 0.043, "p90_abs_error": 0.091}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "median absolute relative error is 4.3%, 90th percentile 9.1%" in md
    assert "measured on NVIDIA GeForce RTX 4090" in md
