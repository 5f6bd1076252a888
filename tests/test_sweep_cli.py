"""``moesim sweep`` and ``moesim report --from`` end to end, the plan kind, and the spec's reference page."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from moesim.sweeps import Dataset, run_sweep, spec_from_dict
from moesim.sweeps.executors import SerialExecutor
from moesim.sweeps.kinds import KINDS

ROOT = Path(__file__).resolve().parents[1]
SPEC = """\
kind: simulate
title: tokens/s vs expert cache
fixed: {hw: rtx4090-workstation, model: mixtral-8x7b, weight_dtype: fp8, trace: mixtral-8x7b-synth, steps: 8}
grid:
  cache: [lru, lfu]
  expert_cache: [11 GiB, 16 GiB]
"""


def _moesim(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "moesim", *argv], capture_output=True, text=True,
                          check=False, timeout=600, cwd=cwd)


def test_sweep_then_report_from_the_dataset(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    out = tmp_path / "ds"
    first = _moesim("sweep", "spec.yaml", "--out", "ds", "--workers", "2", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["schema"] == "moesim-sweep/1" and (summary["cells"], summary["computed"]) == (4, 4)
    again = json.loads(_moesim("sweep", "spec.yaml", "--out", "ds", "--json", cwd=tmp_path).stdout)
    assert (again["computed"], again["skipped"]) == (0, 4)
    rep = _moesim("report", "--from", str(out), "--out", str(tmp_path / "rep"), "--json")
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["figures"] == 3
    rows = list(csv.DictReader((tmp_path / "rep" / "results.csv").open()))
    df = Dataset(out).frame()
    shown = {(r["series"], float(r["x"])): float(r["value"]) for r in rows
             if r["metric"] == "tokens_per_s" and r["x_name"] == "expert_cache"}
    assert len(shown) == 4
    for _, row in df.iterrows():
        assert shown[(f"cache={row.cache}", row.expert_cache)] == row.tokens_per_s
    html = (tmp_path / "rep" / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "tokens/s vs expert cache" in html


@pytest.mark.parametrize(("argv", "message"), [
    (["sweep", "absent.yaml", "--out", "d"], "absent.yaml: no such sweep spec file"),
    (["sweep", "spec.yaml", "--out", "d", "--workers", "0"], "--workers: expected a whole number >= 1"),
    (["sweep", "spec.yaml"], "--out: expected SPEC.yaml and --out DIR"),
    (["sweep", "--init", "spec.yaml"], "spec.yaml: --init: exists already"),
    (["report", "--from", "nowhere", "--out", "r"], "nowhere: --from: no such sweep dataset folder"),
    (["report", "--from", "d", "--hw", "h100x8", "--out", "r"], "--from excludes --hw"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], message: str) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    proc = _moesim(*argv, cwd=tmp_path)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("moesim: error: ") and message in line


def test_ray_without_ray_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    code = ("import sys; sys.modules['ray'] = None\nfrom moesim.cli import main\n"
            "sys.exit(main(['sweep', 'spec.yaml', '--out', 'd', '--ray']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("moesim: error: --ray: --ray needs Ray, which is not installed: "
                                   "pip install 'moesim[ray]'")
    assert not (tmp_path / "d").exists()


def test_the_init_spec_is_valid_and_small() -> None:
    import yaml

    from moesim.sweeps.spec import EXAMPLE

    spec = spec_from_dict(yaml.safe_load(EXAMPLE), KINDS)
    assert len(spec.cells()) == 8 and spec.kind.name == "simulate"


def test_dry_run_lists_the_command_lines(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    proc = _moesim("sweep", "spec.yaml", "--out", "d", "--dry-run", "--json", cwd=tmp_path)
    commands = json.loads(proc.stdout)["commands"]
    assert len(commands) == 4 and commands[0].endswith("--cache lru --expert-cache 11GiB --json")
    assert not (tmp_path / "d").exists()


def test_plan_cells_are_moesim_plan_rows(tmp_path: Path) -> None:
    from moesim.workflows import PlacementRequest, compare_planners

    spec = spec_from_dict({"kind": "plan", "fixed": {"hw": "h100x8", "steps": 2, "batch_tokens": 512},
                           "grid": {"planner": ["contiguous", "greedy"]}}, KINDS)
    done = run_sweep(spec, tmp_path / "ds", executor=SerialExecutor(), show_progress=False)
    df = Dataset(tmp_path / "ds").frame().set_index("planner")
    assert done.run.computed == 2 and (df.status == "ok").all()
    ref = compare_planners(PlacementRequest(hw="h100x8", planners=("greedy",), steps=2, batch_tokens=512))
    row = ref.rows["greedy"]
    assert df.loc["greedy", "step_time_s_eval"] == row.step_time_s_eval
    assert df.loc["greedy", "gpu_imbalance_eval"] == row.gpu_imbalance_eval
    assert df.loc["greedy", "a2a_bytes.nvlink"] == row.a2a_bytes["nvlink"]
    assert df.loc["greedy", "command"].startswith("moesim plan --hw h100x8 --planner greedy")


def test_reference_page_documents_every_parameter_and_metric() -> None:
    """Each kind's table on docs/sweeps.md lists every parameter (with its flag, type and allowed values
    as the schema has them) and every declared metric (with its unit)."""
    page = (ROOT / "docs" / "sweeps.md").read_text()
    for kind in KINDS.values():
        section = page.split(f"### `{kind.name}`", 1)[1].split("\n### ", 1)[0]
        for p in kind.params or ():
            row = f"| `{p.name}` | {p.type} | `{p.flag}` | {', '.join(p.choices)}"
            assert row in section, (kind.name, row)
        for m in kind.metrics or ():
            assert f"| `{m.name}` | {m.type} | {m.unit or '—'} |" in section, (kind.name, m.name)


def test_ctrl_c_leaves_a_dataset_the_rerun_completes(tmp_path: Path) -> None:
    """A real SIGINT to the process group of ``moesim sweep --workers 2``: no worker tracebacks, every
    saved row whole, and what is left for the rerun is exactly the cells not saved."""
    import os
    import signal
    import time

    # cells of ~2 s each, so the SIGINT below lands inside them
    (tmp_path / "spec.yaml").write_text(SPEC.replace("steps: 8", "steps: 2048").replace(
        "[11 GiB, 16 GiB]", "[11 GiB, 13 GiB, 16 GiB]"))
    argv = [sys.executable, "-m", "moesim", "sweep", "spec.yaml", "--out", "ds", "--workers", "2"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "ds" / "_sweep.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # inside the cells
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "interrupted" in err and "Traceback" not in err, err
    from moesim.sweeps import Hasher, load_spec

    saved = Dataset(tmp_path / "ds").finished()
    assert all(status == "ok" for status in saved.values())
    spec = load_spec(tmp_path / "spec.yaml")
    hasher = Hasher()
    todo = [c for c in spec.cells() if hasher.key(c, spec.kind.files) not in saved]
    assert len(todo) == 6 - len(saved) > 0  # what a rerun computes: the cells not saved, no others
