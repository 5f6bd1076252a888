"""Running sweeps: the same dataset on every executor, resuming after an interruption, failures as rows,
retried dead workers, large inputs by reference, and the dataset's atomic parts."""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import pandas as pd
import pytest

from moesim.errors import UserError
from moesim.sweeps import Cell, CellKind, Dataset, Metric, Param, run_cells, run_sweep, spec_from_dict
from moesim.sweeps.dataset import EXECUTION_COLUMNS
from moesim.sweeps.executors import PoolExecutor, SerialExecutor
from moesim.sweeps.kinds import KINDS
from moesim.sweeps.worker import Task

SPEC = {
    "kind": "simulate",
    "title": "executors agree",
    "fixed": {"hw": "rtx4090-workstation", "model": "mixtral-8x7b", "weight_dtype": "fp8",
              "trace": "mixtral-8x7b-synth", "steps": 8},
    # 30 GiB does not fit the 24 GB card: refused cells are rows too.
    "grid": {"cache": ["lru", "belady"], "expert_cache": ["11 GiB", "16 GiB", "30 GiB"],
             "miss": ["fetch", "cpu"]},
}


def _comparable(folder: Path) -> pd.DataFrame:
    """The dataset without the columns that say how and when a row was computed, in hash order."""
    df = Dataset(folder).frame().drop(columns=list(EXECUTION_COLUMNS))
    return df.sort_values("cell_hash").reset_index(drop=True)


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "serial"
    done = run_sweep(spec_from_dict(SPEC, KINDS), out, executor=SerialExecutor(), show_progress=False)
    assert (done.cells, done.run.computed, done.run.refused, done.run.failed) == (12, 12, 4, 0)
    return out


def test_serial_rows_hold_parameters_metrics_command_and_hash(serial: Path) -> None:
    df = Dataset(serial).frame()
    assert len(df) == 12 and df["cell_hash"].is_unique
    ok = df[df.status == "ok"]
    assert (ok.tokens_per_s > 0).all() and ok.cache_hit_rate.between(0, 1).all()
    assert set(df.expert_cache / 2**30) == {11.0, 16.0, 30.0}
    refused = df[df.status == "error"]
    assert (refused.expert_cache == 30 * 2**30).all() and refused.error.str.contains("has 25.76 GB").all()
    assert df.command.str.startswith("moesim simulate --hw rtx4090-workstation").all()
    # The cell's command line gives the row's numbers.
    from moesim.cli import main

    row = ok.iloc[0]
    argv = row.command.split()[1:]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(argv) == 0
    summary = json.loads(buf.getvalue())
    assert summary["tokens_per_s"] == row.tokens_per_s and summary["cache_hit_rate"] == row.cache_hit_rate


def test_two_workers_give_the_same_dataset(serial: Path, tmp_path: Path) -> None:
    run_sweep(spec_from_dict(SPEC, KINDS), tmp_path / "pool", executor=PoolExecutor(2), show_progress=False)
    pd.testing.assert_frame_equal(_comparable(serial), _comparable(tmp_path / "pool"))
    assert Dataset(tmp_path / "pool").frame().worker.nunique() == 2


def test_local_ray_gives_the_same_dataset(serial: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'moesim[ray]')")
    from moesim.sweeps.ray_executor import RayExecutor

    # A local instance of 2 CPUs without the dashboard (ray.init(num_cpus=2, include_dashboard=False)),
    # stopped again when the sweep ends.
    run_sweep(spec_from_dict(SPEC, KINDS), tmp_path / "ray", executor=RayExecutor(workers=2),
              show_progress=False)
    pd.testing.assert_frame_equal(_comparable(serial), _comparable(tmp_path / "ray"))
    import ray

    assert not ray.is_initialized()


# ---- test kinds (module level, so that worker processes find them by name) -------------------------

def _append(path: str, x: int) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f"{x}\n")


def counted(p: dict) -> dict:
    """Logs each call; stops the sweep like Ctrl-C at ``x == 5`` while the ``stop`` file exists."""
    if p["x"] == 5 and Path(p["stop"]).exists():
        raise KeyboardInterrupt
    _append(p["log"], p["x"])
    return {"y": p["x"] * 10}


COUNTED = CellKind("counted", counted, "test", params=(
    Param("x", "int", "x"), Param("stop", "str", "stop file"), Param("log", "str", "call log")),
    metrics=(Metric("y", "int", "", "10 x"),))


def _cells(kind: str, n: int, **fixed: object) -> list[Cell]:
    return [Cell.make(kind, x=x, **fixed) for x in range(n)]


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_sweep_resumes_with_only_the_missing_cells(tmp_path: Path, workers: int) -> None:
    stop, log = tmp_path / "stop", tmp_path / "calls.log"
    stop.touch()
    cells = _cells("counted", 10, stop=str(stop), log=str(log))
    store = Dataset(tmp_path / "ds")
    executor = SerialExecutor() if workers == 1 else PoolExecutor(workers)
    with pytest.raises(KeyboardInterrupt):
        run_cells(cells, {"counted": COUNTED}, store=store, executor=executor, show_progress=False)
    saved = sorted(Dataset(tmp_path / "ds").frame().x)
    if workers == 1:
        assert saved == [0, 1, 2, 3, 4]  # every finished cell is saved, in one atomic part
    assert saved and 5 not in saved
    before = log.read_text().split()
    stop.unlink()
    again = run_cells(cells, {"counted": COUNTED}, store=store, executor=executor, show_progress=False)
    assert again.skipped == len(saved) and again.computed == 10 - len(saved)
    after = log.read_text().split()[len(before):]
    assert sorted(map(int, after)) == sorted(set(range(10)) - set(saved))  # only the missing cells ran
    final = Dataset(tmp_path / "ds").frame()
    assert sorted(final.x) == list(range(10)) and (final.y == final.x * 10).all()
    assert len(store.parts()) == 1  # compacted once complete


def troubled(p: dict) -> dict:
    """x=1 refused, x=2 crashes, x=3 kills its worker once, x=4 kills every worker it runs on."""
    x = p["x"]
    if x == 1:
        raise UserError("x=1 is not allowed", field="x")
    if x == 2:
        raise ZeroDivisionError("boom")
    if x == 3 and not Path(p["marker"]).exists():
        Path(p["marker"]).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    if x == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"y": x * 10}


TROUBLED = CellKind("troubled", troubled, "test",
                    params=(Param("x", "int", "x"), Param("marker", "str", "m")),
                    metrics=(Metric("y", "int", "", "10 x"),))


def test_failures_are_rows_and_dead_workers_are_retried(tmp_path: Path) -> None:
    cells = _cells("troubled", 6, marker=str(tmp_path / "marker"))
    store = Dataset(tmp_path / "ds")
    run = run_cells(cells, {"troubled": TROUBLED}, store=store, executor=PoolExecutor(2, retries=1),
                    show_progress=False)
    df = store.frame().set_index("x")
    assert (run.computed, run.refused, run.failed) == (6, 1, 2)
    assert df.loc[1, "status"] == "error" and df.loc[1, "error"] == "x: x=1 is not allowed"
    assert df.loc[2, "status"] == "failed" and df.loc[2, "error"] == "ZeroDivisionError: boom"
    assert df.loc[3, "status"] == "ok" and df.loc[3, "y"] == 30 and df.loc[3, "attempts"] == 2
    assert df.loc[4, "status"] == "failed" and "killed by SIGKILL" in df.loc[4, "error"]
    assert df.loc[4, "attempts"] == 2
    assert (df.loc[[0, 5], "y"] == [0, 50]).all()
    # The next run computes the failed cells again, not the refused one.
    again = run_cells(cells, {"troubled": TROUBLED}, store=store, executor=PoolExecutor(2, retries=0),
                      show_progress=False)
    assert (again.skipped, again.computed, again.failed) == (4, 2, 2)
    assert "worker process died" in store.frame().set_index("x").loc[4, "error"]


LOADS: list[str] = []


def _load(value: str) -> object:
    from moesim.traces.trace import RoutingTrace

    LOADS.append(value)
    return RoutingTrace.load(value)


def rows_of(p: dict) -> dict:
    from moesim.traces.trace import RoutingTrace

    return {"loaded": isinstance(p["trace"], RoutingTrace), "rows": p["trace"].num_tokens}


BY_REF = CellKind("byref", rows_of, "test", params=(
    Param("x", "int", "x"), Param("trace", "str", "trace", file="trace", load=_load)),
    metrics=(Metric("rows", "int", "", "rows"),))


def test_large_inputs_load_once_and_travel_by_reference(tmp_path: Path) -> None:
    LOADS.clear()
    cells = [*_cells("byref", 6, trace="mixtral-8x7b-synth"),
             *_cells("byref", 2, trace="deepseek-v2-lite-synth")]
    run = run_cells(cells, {"byref": BY_REF}, store=Dataset(tmp_path), executor=PoolExecutor(2),
                    show_progress=False)
    assert sorted(LOADS) == ["deepseek-v2-lite-synth", "mixtral-8x7b-synth"]  # once each, in the driver
    assert run.failed == 0 and all(r["loaded"] for r in run.rows.values())
    task = Task("k", BY_REF, cells[0].p, (("trace", "mixtral-8x7b-synth"),))
    from moesim.traces.trace import RoutingTrace

    trace = RoutingTrace.load("mixtral-8x7b-synth")
    assert len(pickle.dumps(task)) < 2000 < trace.expert_ids.nbytes  # a task names its trace, never holds it


def test_a_loaded_trace_simulates_like_its_path() -> None:
    from moesim.traces.trace import RoutingTrace
    from moesim.workflows import simulate_run

    kw = {"hw": "rtx4090-workstation", "model": "mixtral-8x7b", "weight_dtype": "fp8", "steps": 8,
          "cache": "lru", "expert_cache": "16GiB"}
    by_path = simulate_run(trace="mixtral-8x7b-synth", **kw).summary()
    by_object = simulate_run(trace=RoutingTrace.load("mixtral-8x7b-synth"), **kw).summary()
    by_path.pop("timing"), by_object.pop("timing")
    assert by_path == by_object


def test_dataset_keeps_one_row_per_cell(tmp_path: Path) -> None:
    ds = Dataset(tmp_path)
    base = {"kind": "k", "command": "", "params": "{}", "result": None, "error": None, "wall_s": 0.0,
            "attempts": 1, "worker": "w", "finished_at": "t"}
    a, b = {**base, "cell_hash": "a", "params": '{"x": 1}'}, {**base, "cell_hash": "b", "params": '{"x": 2}'}
    ds.append([{**a, "status": "failed", "error": "died"}, {**b, "status": "ok", "v": 1.0}])
    ds.append([{**a, "status": "ok", "v": 2.0}, {**b, "status": "failed", "error": "died"}])
    assert ds.finished() == {"a": "ok", "b": "ok"}  # a finished row beats a later crash of the same cell
    df = ds.frame().set_index("cell_hash")
    assert df.loc["a", "v"] == 2.0 and df.loc["b", "v"] == 1.0
    # The same cell computed again by changed code (a new hash): the newer row is the cell's row.
    ds.append([{**b, "cell_hash": "b2", "status": "ok", "v": 3.0}])
    assert ds.finished() == {"a": "ok", "b2": "ok"}
    df = ds.frame().set_index("cell_hash")
    (tmp_path / "notes.txt").write_text("not a part")
    (tmp_path / ".part-x.parquet.tmp").write_bytes(b"half written")
    ds.compact()
    assert len(ds.parts()) == 1 and ds.frame().set_index("cell_hash").equals(df)
    assert pd.read_parquet(ds.parts()[0]).shape[0] == 2
    (tmp_path / "part-9.parquet").write_bytes(b"PAR1 damaged")
    with pytest.raises(UserError, match=r"part-9\.parquet: not a readable sweep part"):
        ds.frame()


def test_out_folder_must_be_a_sweep_of_the_same_kind(tmp_path: Path, serial: Path) -> None:
    spec = spec_from_dict({"kind": "plan", "fixed": {"hw": "h100x8", "planner": "contiguous"}}, KINDS)
    with pytest.raises(UserError, match="holds a sweep of 'simulate' cells"):
        run_sweep(spec, serial, show_progress=False)
    (tmp_path / "x.txt").write_text("mine")
    with pytest.raises(UserError, match="not a sweep dataset"):
        run_sweep(spec, tmp_path, show_progress=False)
