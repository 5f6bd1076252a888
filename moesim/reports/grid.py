"""The experiment grid: a report's studies expanded into cells, run by the sweep machinery.

A *cell* is one call of a workflow (:mod:`moesim.workflows`, the functions behind ``moesim plan`` /
``moesim simulate`` / ``moesim trace stats``; see :mod:`moesim.reports.cells`), named by its kind and
parameters. The cells run through :func:`moesim.sweeps.run_cells`, as a sweep's do: content-hashed,
on this process, a local pool or Ray, each finished cell a row of the report's cell store (a sweep
dataset in ``DIR/.cells``), so a rerun only computes what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moesim.reports.replan_study import ReplanStudy
from moesim.reports.serving_study import ServingStudy
from moesim.reports.sweep import OffloadStudy, PlacementStudy, Sweep
from moesim.sweeps.cells import Cell
from moesim.sweeps.dataset import FAILED, Dataset
from moesim.sweeps.executors import Executor
from moesim.sweeps.runner import result_of, run_cells
from moesim.sweeps.schema import CellKind

__all__ = ["Cell", "GridResult", "expand", "run_grid"]


@dataclass
class GridResult:
    """Results by cell; a cell the workflow refused (a :class:`UserError`) has ``{"error": message}``."""

    results: dict[Cell, dict[str, Any]] = field(default_factory=dict)
    computed: int = 0
    cached: int = 0
    failed: int = 0
    """Cells that crashed (a bug) or whose worker died: recorded, and computed again by the next run."""

    def get(self, cell: Cell) -> dict[str, Any] | None:
        r = self.results.get(cell)
        return None if r is None or "error" in r else r

    def error(self, cell: Cell) -> str | None:
        r = self.results.get(cell)
        return None if r is None else r.get("error")


def setup_cell(hw: str, model: str, trace: str, nodes: int | None = None) -> Cell:
    return Cell.make("setup", hw=hw, model=model, trace=trace, nodes=nodes)


def _placement_params(s: PlacementStudy, seed: int) -> dict[str, Any]:
    return {
        "hw": s.hw,
        "model": s.model,
        "trace": s.trace,
        "slots_per_gpu": s.slots_per_gpu,
        "train_fraction": s.train_fraction,
        "time_limit_s": s.time_limit_s,
        "nodes": s.nodes,
        "batch_tokens": s.batch_tokens,
        "steps": s.steps,
        "seed": seed,
        "dispatch": s.dispatch,
    }


def plan_cell(s: PlacementStudy, planner: str, seed: int, *, timeline: bool = False) -> Cell:
    """One planner of a placement study; ``timeline`` also simulates one step of its plan with a timeline."""
    return Cell.make("plan", planner=planner, timeline=timeline, **_placement_params(s, seed))


def study_plan_cells(sweep: Sweep, index: int) -> dict[str, Cell]:
    """The plan cells of placement study ``index``, by planner (the first study draws the timeline)."""
    s = sweep.placement[index]
    drawn = timeline_planner(sweep, s) if index == 0 else None
    return {p: plan_cell(s, p, sweep.seed, timeline=p == drawn) for p in s.planners}


def hitrate_cell(s: OffloadStudy, sizes: tuple[int, ...]) -> Cell:
    return Cell.make(
        "hitrate",
        model=s.model,
        trace=s.trace,
        policies=tuple(p for p in s.policies if p != "static"),
        sizes=sizes,
    )


def static_cell(s: OffloadStudy, size: int, seed: int) -> Cell:
    return Cell.make("static", hw=s.hw, model=s.model, trace=s.trace, size=size, seed=seed,
                     weight_dtype=s.weight_dtype)


def offload_cell(s: OffloadStudy, expert_cache: str, miss: str, seed: int) -> Cell:
    return Cell.make(
        "offload",
        hw=s.hw,
        model=s.model,
        trace=s.trace,
        expert_cache=expert_cache,
        miss=miss,
        policy=s.memory_policy,
        batch=s.batch,
        steps=s.steps,
        seed=seed,
        calibration=s.calibration,
        weight_dtype=s.weight_dtype,
    )


def serving_cell(s: ServingStudy, series: str, rate: float, seed: int) -> Cell:
    """One point of a serving curve: ``series`` (a placement planner or ``disaggregated``) at ``rate``."""
    return Cell.make("serve", hw=s.hw, model=s.model, trace=s.trace, nodes=s.nodes, workload=s.workload,
                     series=series, rate=rate, requests=s.requests, slots_per_gpu=s.slots_per_gpu,
                     train_fraction=s.train_fraction, slo=s.slo, seed=seed)


def replan_cell(s: ReplanStudy, policy: str, migration: str, seed: int) -> Cell:
    """One row of a re-placement study: ``policy`` with ``migration`` copies over the study's stream."""
    return Cell.make("replan", hw=s.hw, model=s.model, trace=s.trace, nodes=s.nodes, policy=policy,
                     interval=s.interval, window=s.window or s.interval, threshold=s.threshold,
                     hedge_windows=s.hedge_windows, migration=migration, planner=s.planner, moves=s.moves,
                     batch_tokens=s.batch_tokens, train_fraction=s.train_fraction,
                     slots_per_gpu=s.slots_per_gpu, seed=seed)


def calibration_cell(hw: str, model: str, nodes: int | None = None, calibration: str | None = None) -> Cell:
    return Cell.make("calibration", hw=hw, model=model, nodes=nodes, calibration=calibration)


def cache_sizes(s: OffloadStudy, num_experts: int, top_k: int) -> tuple[int, ...]:
    """The study's cache sizes, or top-k .. all experts (at most 12 points, evenly spread)."""
    if s.cache_sizes:
        return tuple(sorted(set(s.cache_sizes)))
    lo, hi = top_k, num_experts
    n = min(12, hi - lo + 1)
    return tuple(sorted({round(lo + i * (hi - lo) / max(1, n - 1)) for i in range(n)}))


def timeline_planner(sweep: Sweep, s: PlacementStudy) -> str:
    return sweep.timeline_planner if sweep.timeline_planner in s.planners else s.planners[0]


def expand(sweep: Sweep, shape: Callable[[str, str], tuple[int, int]]) -> list[Cell]:
    """All cells of ``sweep`` in a stable order; ``shape(model, trace)`` gives (num_experts, top_k)."""
    cells: list[Cell] = []
    seen: set[Cell] = set()

    def add(c: Cell) -> None:
        if c not in seen:
            seen.add(c)
            cells.append(c)

    for s in sweep.placement:
        add(setup_cell(s.hw, s.model, s.trace, s.nodes))
        add(calibration_cell(s.hw, s.model, s.nodes))
    for o in sweep.offload:
        add(setup_cell(o.hw, o.model, o.trace))
        add(calibration_cell(o.hw, o.model, None, o.calibration))
    for v in sweep.serving:
        add(setup_cell(v.hw, v.model, v.trace, v.nodes))
    for i in range(len(sweep.placement)):
        for c in study_plan_cells(sweep, i).values():
            add(c)
    for o in sweep.offload:
        sizes = cache_sizes(o, *shape(o.model, o.trace))
        if any(p != "static" for p in o.policies):
            add(hitrate_cell(o, sizes))
        if "static" in o.policies:
            for c in sizes:
                add(static_cell(o, c, sweep.seed))
        for mem in o.expert_cache:
            for miss in o.miss_modes:
                add(offload_cell(o, mem, miss, sweep.seed))
    for v in sweep.serving:
        for series in v.series:
            for rate in v.rates:
                add(serving_cell(v, series, rate, sweep.seed))
    for r in sweep.replan:
        for policy, migration in r.series():
            add(replan_cell(r, policy, migration, sweep.seed))
    return cells


def run_grid(cells: Iterable[Cell], kinds: Mapping[str, CellKind], store: Dataset | None, *,
             executor: Executor | None = None, show_progress: bool = True) -> GridResult:
    """Compute (or read back from ``store``) every cell; a cell's error is recorded, not raised."""
    run = run_cells(list(cells), kinds, store=store, executor=executor, show_progress=show_progress,
                    desc="report cells")
    out = GridResult(computed=run.computed, cached=run.skipped)
    for cell, row in run.rows.items():
        out.results[cell] = result_of(row)
        out.failed += row.get("status") == FAILED
    return out
