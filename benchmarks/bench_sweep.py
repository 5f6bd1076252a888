"""Benchmark: ``moesim sweep`` wall time on 1 vs 2 local workers, and the per-cell overhead of Ray vs the
local process pool.

    python benchmarks/bench_sweep.py [--repeat 3] [--cells-overhead 200] [--no-ray]

1. A 64-cell simulate sweep (Mixtral-8x7B fp8 offloaded from one H100 + PIM, 2 cache policies x 4 miss
   modes x 2 batches x 4 cache sizes, 64 decode steps each) run three times into fresh datasets:
   ``--workers 1`` (cells in this process), ``--workers 2`` (a local pool), and ``--ray`` on a local
   Ray instance with 2 CPUs (its start-up timed apart), ``--repeat`` times, interleaved, so that load
   from other jobs on a shared machine falls on every executor alike; the best and the median wall
   times are shown, with the load average and the CPU seconds the run used (CPU / wall = the cores it
   kept busy: on a machine shared with other jobs, the cores the sweep actually got). Speed-up =
   wall(1 worker) / wall(2 workers).
   A control follows: 32 cells of 0.2 CPU seconds of pure Python on 1 and 2 workers, whose ratio is the
   most a second worker can gain on this machine at that moment (1.0x when other jobs hold the cores).
2. Per-cell overhead: ``--cells-overhead`` cells of a kind that does nothing, so the wall time per cell
   is the machinery alone (hashing, shipping the task, the outcome and its row, the Parquet parts):
   this process, the pool of 2, and Ray with 2 CPUs already started.

The three datasets of part 1 are checked equal (up to row order and the timing columns) before any
figure is printed: a faster executor that computed something else would not be a speed-up.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from moesim.sweeps import Cell, CellKind, Dataset, Hasher, Metric, Param, run_cells, run_sweep, spec_from_dict
from moesim.sweeps.dataset import EXECUTION_COLUMNS
from moesim.sweeps.executors import Executor, PoolExecutor, SerialExecutor
from moesim.sweeps.kinds import KINDS

REPO = Path(__file__).resolve().parents[1]
SPEC = {
    "kind": "simulate",
    "title": "bench_sweep: 64 cells",
    "fixed": {"hw": str(REPO / "reports" / "profiles" / "h100-pim-workstation.yaml"), "model": "mixtral-8x7b",
              "weight_dtype": "fp8", "trace": "mixtral-8x7b-synth", "steps": 64, "seed": 0},
    "grid": {"cache": ["lru", "lfu"], "miss": ["fetch", "cpu", "lowbit", "pim"], "batch": [1, 4],
             "cache_size": [2, 4, 6, 8]},
}


def nothing(p: dict[str, Any]) -> dict[str, Any]:
    """A cell that does no work: its wall time is the machinery's."""
    return {"y": p["x"]}


NOTHING = CellKind("nothing", nothing, "no work", params=(Param("x", "int", "index"),),
                   metrics=(Metric("y", "int", "", "the index"),))


def spin(p: dict[str, Any]) -> dict[str, Any]:
    """A cell of 0.2 CPU seconds of pure Python: the control for how many cores the machine gives us."""
    t0, n = time.process_time(), 0
    while time.process_time() - t0 < 0.2:
        n += 1
    return {"y": n}


SPIN = CellKind("spin", spin, "0.2 CPU s", params=(Param("x", "int", "index"),),
                metrics=(Metric("y", "int", "", "loop turns"),))


def _control(root: Path) -> tuple[float, float]:
    """Wall seconds of 32 spin cells (6.4 CPU s) in this process and on a pool of 2: their ratio is the
    most any 2-worker sweep could gain on this machine at this moment."""
    walls = []
    for i, executor in enumerate((SerialExecutor(), PoolExecutor(2))):
        cells = [Cell.make("spin", x=x) for x in range(32)]
        t0 = time.perf_counter()
        run_cells(cells, {"spin": SPIN}, store=Dataset(root / f"spin{i}"), executor=executor,
                  show_progress=False)
        walls.append(time.perf_counter() - t0)
    return walls[0], walls[1]


def _cpu_s() -> float:
    """CPU seconds of this process and its finished children (a pool's workers, once shut down)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _timed_sweep(executor: Executor, out: Path, hasher: Hasher) -> tuple[float, float]:
    """(wall s, CPU s) of the sweep; Ray's workers are not our children, so its CPU is not counted."""
    t0, c0 = time.perf_counter(), _cpu_s()
    done = run_sweep(spec_from_dict(SPEC, KINDS), out, executor=executor, show_progress=False, hasher=hasher)
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    assert done.cells == 64 and done.run.computed == 64 and done.run.failed == 0, done.run
    return wall, cpu


def _comparable(out: Path) -> pd.DataFrame:
    df = Dataset(out).frame().drop(columns=list(EXECUTION_COLUMNS))
    return df.sort_values("cell_hash").reset_index(drop=True)


def _overhead(executor: Executor, n: int, out: Path) -> float:
    """Seconds per no-op cell."""
    cells = [Cell.make("nothing", x=i) for i in range(n)]
    t0 = time.perf_counter()
    run = run_cells(cells, {"nothing": NOTHING}, store=Dataset(out), executor=executor, show_progress=False)
    assert run.computed == n and run.failed == 0
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of the 64-cell sweep each")
    ap.add_argument("--cells-overhead", type=int, default=200, help="no-op cells per overhead measurement")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray measurements")
    args = ap.parse_args()
    ray: Any = None
    if not args.no_ray:
        try:
            import ray
        except ImportError:
            print("ray not installed (pip install 'moesim[ray]'): Ray figures skipped")
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ray_start = None
        if ray is not None:
            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            ray_start = time.perf_counter() - t0
        executors: dict[str, Any] = {"1 worker (this process)": SerialExecutor,
                                     "2 workers (local pool)": lambda: PoolExecutor(2)}
        if ray is not None:
            from moesim.sweeps.ray_executor import RayExecutor

            executors["Ray, 2 CPUs (started)"] = RayExecutor
        hasher = Hasher()  # one code digest for every run, so that the datasets compare hash for hash
        walls: dict[str, list[float]] = {name: [] for name in executors}
        cpus: dict[str, list[float]] = {name: [] for name in executors}
        for r in range(args.repeat):
            for i, (name, make) in enumerate(executors.items()):
                wall, cpu = _timed_sweep(make(), root / f"{r}-{i}", hasher)
                walls[name].append(wall)
                cpus[name].append(cpu)
                if i:
                    pd.testing.assert_frame_equal(_comparable(root / f"{r}-0"),
                                                  _comparable(root / f"{r}-{i}"))
        print(f"64-cell simulate sweep, {args.repeat} interleaved runs each (datasets equal up to row order "
              f"and timing columns; load average {load0:.1f} before, {os.getloadavg()[0]:.1f} after):")
        for name, ws in walls.items():
            c, w = statistics.median(cpus[name]), statistics.median(ws)
            cpu = "" if name.startswith("Ray") else f"; median CPU {c:6.2f} s = {c / w:.2f} cores busy"
            print(f"  {name:28s} best {min(ws):6.2f} s  median {statistics.median(ws):6.2f} s  "
                  f"({min(ws) / 64 * 1e3:6.1f} ms/cell best{cpu})")
        w1, w2 = walls["1 worker (this process)"], walls["2 workers (local pool)"]
        print(f"  speed-up 2 workers vs 1: {min(w1) / min(w2):.2f}x best-to-best, "
              f"{statistics.median(w1) / statistics.median(w2):.2f}x median-to-median")
        s1, s2 = _control(root)
        print(f"  control, 32 cells of 0.2 CPU s of pure Python: {s1:.2f} s in this process, {s2:.2f} s on 2 "
              f"workers ({s1 / s2:.2f}x: the most 2 workers could gain on this machine just now)")
        if ray_start is not None:
            print(f"  Ray start-up (ray.init, local, 2 CPUs): {ray_start:.2f} s")
        n = args.cells_overhead
        per = {"this process": _overhead(SerialExecutor(), n, root / "o1"),
               "local pool, 2 workers": _overhead(PoolExecutor(2), n, root / "o2")}
        if ray is not None:
            from moesim.sweeps.ray_executor import RayExecutor

            per["Ray, 2 CPUs"] = _overhead(RayExecutor(), n, root / "o3")
            ray.shutdown()
        print(f"per-cell overhead ({n} cells that do nothing):")
        for name, s in per.items():
            print(f"  {name:24s} {s * 1e3:7.2f} ms/cell")
        if "Ray, 2 CPUs" in per:
            print(f"  Ray / local pool: {per['Ray, 2 CPUs'] / per['local pool, 2 workers']:.2f}x")


if __name__ == "__main__":
    main()
