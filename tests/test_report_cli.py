"""``moesim report`` end to end on a small sweep: files, numbers equal to the CLI's JSON, the cell cache,
the page in headless Chromium, and one-line errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.reports.browser import check_page, find_chromium, screenshot

PLACEMENT = {
    "hw": "h100x8",
    "model": "deepseek-v2-lite",
    "trace": "deepseek-v2-lite-synth",
    "planners": ["engine-default", "contiguous", "greedy", "eplb", "ilp"],
    "slots_per_gpu": 9,
    "train_fraction": 0.5,
    "time_limit_s": 2,
    "batch_tokens": 1024,
    "steps": 2,
}
OFFLOAD = {
    "hw": "rtx4090-workstation",
    "model": "mixtral-8x7b",
    "weight_dtype": "fp8",
    "trace": "mixtral-8x7b-synth",
    "policies": ["lru", "lfu", "belady", "static"],
    "cache_sizes": [2, 4, 8],
    "expert_cache": ["12 GiB", "16 GiB"],
    "miss_modes": ["fetch", "cpu"],
    "batch": 1,
    "steps": 4,
}


def _moesim_json(*argv: str) -> dict:
    """``moesim ARGV --json`` in a fresh process (independent of the report's in-process runs)."""
    proc = subprocess.run(
        [sys.executable, "-m", "moesim", *argv, "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _write_config(path: Path, placement: dict, offload: dict) -> Path:
    import yaml

    path.write_text(
        yaml.safe_dump(
            {"title": "small test report", "seed": 0, "placement": [placement], "offload": [offload]},
            sort_keys=False,
        )
    )
    return path


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("report")
    cfg = _write_config(root / "sweep.yaml", PLACEMENT, OFFLOAD)
    out = root / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "moesim", "report", "--config", str(cfg), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    rows = list(csv.DictReader((out / "results.csv").open()))
    return {"root": root, "cfg": cfg, "out": out, "summary": summary, "rows": rows}


def _value(rows: list[dict], **match: str) -> float | None:
    hits = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(hits) == 1, (match, len(hits))
    return None if hits[0]["value"] == "" else float(hits[0]["value"])


def test_report_files(report: dict) -> None:
    out = report["out"]
    for name in ("index.html", "report.md", "results.csv"):
        assert (out / name).stat().st_size > 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 4, [p.name for p in pngs]
    md = (out / "report.md").read_text()
    for p in pngs:
        assert f"({p.name})" in md
    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == len(pngs)
    assert html.count("Command: <code>moesim report --config") == len(pngs)  # every figure names its command
    assert report["summary"]["cells_computed"] == report["summary"]["cells"]
    assert report["summary"]["not_computed"] == []


def test_placement_numbers_equal_moesim_plan_json(report: dict) -> None:
    p = PLACEMENT
    rows = [
        r for r in report["rows"] if r["item"].endswith("_table") and r["section"].startswith("placement")
    ]
    base = None
    # The deterministic planners; the ILP stops at a wall-clock time limit, so its plan may differ run to run.
    for planner in ("engine-default", "contiguous", "greedy", "eplb"):
        ref = _moesim_json(
            "plan",
            "--hw",
            p["hw"],
            "--model",
            p["model"],
            "--trace",
            p["trace"],
            "--planner",
            planner,
            "--slots-per-gpu",
            "9",
            "--train-fraction",
            "0.5",
            "--time-limit",
            "2.0",
            "--batch-size",
            "1024",
            "--steps",
            "2",
            "--seed",
            "0",
        )["planners"][planner]
        for metric in (
            "gpu_imbalance_train",
            "gpu_imbalance_eval",
            "predicted_moe_step_s_eval",
            "step_time_s_eval",
            "tokens_per_s_eval",
        ):
            assert _value(rows, series=planner, metric=metric) == ref[metric], (planner, metric)
        for cls, v in (ref.get("a2a_bytes") or {}).items():
            assert _value(rows, series=planner, metric="all_to_all_bytes", x=cls) == v
        if planner == "engine-default" and ref["step_time_s_eval"]:
            base = ref["step_time_s_eval"]
    if base:
        st = _value(rows, series="eplb", metric="step_time_s_eval")
        assert _value(rows, series="eplb", metric="speedup_vs_baseline") == base / st
    # The per-layer curve averages to the table's imbalance.
    per_layer = [
        float(r["value"])
        for r in report["rows"]
        if r["item"].endswith("_imbalance") and r["series"] == "eplb"
    ]
    assert len(per_layer) == 26
    assert sum(per_layer) / 26 == pytest.approx(
        _value(rows, series="eplb", metric="gpu_imbalance_eval"), rel=1e-12
    )


def test_hit_rates_equal_moesim_trace_stats(report: dict) -> None:
    ref = _moesim_json(
        "trace", "stats", OFFLOAD["trace"], "--cache-sizes", "2,4,8", "--policies", "lru,lfu,belady"
    )
    rows = [r for r in report["rows"] if r["metric"] == "hit_rate" and r["item"].endswith("_hitrate")]
    for policy in ("lru", "lfu", "belady"):
        for c in (2, 4, 8):
            assert _value(rows, series=policy, x=str(c)) == ref["cache_hit_rate"][policy][str(c)]
    for c in (2, 4, 8):  # Belady is the ceiling of the caches that start empty
        for policy in ("lru", "lfu"):
            assert _value(rows, series=policy, x=str(c)) <= _value(rows, series="belady", x=str(c)) + 1e-12
    # The static pin is loaded before the first token: with every expert pinned nothing misses.
    assert _value(rows, series="static", x="8") == 1.0
    assert 0.0 < _value(rows, series="static", x="2") < 1.0


def test_offload_numbers_equal_moesim_simulate_json(report: dict) -> None:
    o = OFFLOAD
    rows = [r for r in report["rows"] if r["item"].endswith("_memory")]
    assert len(rows) == 4  # 2 budgets x 2 miss modes
    ref = _moesim_json(
        "simulate",
        "--hw",
        o["hw"],
        "--model",
        o["model"],
        "--weight-dtype",
        o["weight_dtype"],
        "--trace",
        o["trace"],
        "--batch",
        "1",
        "--steps",
        "4",
        "--phase",
        "decode",
        "--cache",
        "lru",
        "--expert-cache",
        "16GiB",
        "--miss",
        "cpu",
        "--seed",
        "0",
    )
    assert _value(rows, series="cpu", x=str(16.0), metric="tokens_per_s") == ref["tokens_per_s"]


def _report_json(cfg: Path, out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "moesim", "report", "--config", str(cfg), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_rerun_only_computes_what_changed(tmp_path: Path) -> None:
    from moesim.sweeps.cells import code_digest
    from moesim.sweeps.dataset import Dataset

    placement = {**PLACEMENT, "planners": ["contiguous", "greedy"]}
    offload = {**OFFLOAD, "policies": ["lru", "belady"], "expert_cache": [], "cache_sizes": [2, 4]}
    cfg1 = _write_config(tmp_path / "sweep1.yaml", placement, offload)
    cfg2 = _write_config(
        tmp_path / "sweep2.yaml", {**placement, "planners": ["contiguous", "greedy", "eplb"]}, offload
    )
    # The key includes moesim's source: retry if the working tree changed under the test.
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        digest = code_digest()
        first = _report_json(cfg1, out)
        before = (out / "results.csv").read_bytes()
        again = _report_json(cfg1, out)
        after = (out / "results.csv").read_bytes()
        more = _report_json(cfg2, out)
        if code_digest() == digest:
            break
    assert first["cells_computed"] == first["cells"] and first["cells_cached"] == 0
    assert again["cells_computed"] == 0 and again["cells_cached"] == first["cells"]
    assert after == before  # from the cache, byte for byte
    assert len(Dataset(out / ".cells").frame()) == first["cells"] + 1  # the cell store is a sweep dataset
    assert more["cells_computed"] == 1 and more["cells_cached"] == first["cells"]


def test_page_renders_in_chromium(report: dict) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    html = report["out"] / "index.html"
    check = check_page(html, chromium=chromium)
    assert check.status == "ok", check.text
    shown, total = map(int, check.images.split("/"))
    assert shown == total == len(list(report["out"].glob("*.png")))
    assert check.tables >= 4 and check.rows >= check.tables
    shot = screenshot(html, report["root"] / "screenshot.png", chromium=chromium)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000  # a blank page compresses to a few KB


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--config", "absent.yaml"], "no such sweep config file"),
        (["--config", "x.yaml", "--hw", "h100x8"], "--config excludes --hw"),
        (["--hw", "no-such-gpu-box"], "no-such-gpu-box"),
        (
            ["--model", "mixtral-8x7b", "--trace", "a.npz", "b.npz", "--hw", "h100x8", "--planners", "x"],
            "expected one of",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "moesim", "report", "--out", str(tmp_path / "o"), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "index.html").exists()
