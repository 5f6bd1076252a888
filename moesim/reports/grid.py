"""The experiment grid: a sweep expanded into cells, each computed once and cached on disk.

A *cell* is one call of a workflow (:mod:`moesim.workflows`, the functions behind ``moesim plan`` /
``moesim simulate`` / ``moesim trace stats``; see :mod:`moesim.reports.cells`), named by its kind and
parameters. Cells
are computed in a stable order with a progress bar; finished cells are read back from the
:class:`~moesim.reports.cellcache.CellCache`, so a rerun only computes what changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.jsonable import to_jsonable
from moesim.progress import progress
from moesim.reports.cellcache import CellCache, cell_key, code_digest
from moesim.reports.sweep import OffloadStudy, PlacementStudy, Sweep
from moesim.resources import resolve


@dataclass(frozen=True)
class Cell:
    """One unit of work: ``kind`` (a key of :data:`moesim.reports.cells.COMPUTE`) and its parameters."""

    kind: str
    params: tuple[tuple[str, Any], ...]
    """Sorted (name, value) pairs; values are plain JSON scalars or tuples."""

    @classmethod
    def make(cls, kind: str, **params: Any) -> Cell:
        return cls(
            kind, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()))
        )

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def label(self) -> str:
        return f"{self.kind}(" + ", ".join(f"{k}={v}" for k, v in self.params if v is not None) + ")"


@dataclass
class GridResult:
    """Results by cell; a cell that raised a :class:`UserError` has ``{"error": message}``."""

    results: dict[Cell, dict[str, Any]] = field(default_factory=dict)
    computed: int = 0
    cached: int = 0
    failed: int = 0
    """Cells that raised something other than a UserError (a bug); not cached."""

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
    return cells


_FILE_KINDS = {"hw": "hardware", "model": "model", "trace": "trace"}


def input_digests(cell: Cell, cache: CellCache) -> dict[str, str]:
    """Content hashes of the cell's input files (hardware profile, model spec, trace)."""
    out = {}
    for key, kind in _FILE_KINDS.items():
        value = cell.p.get(key)
        if value is not None:
            out[key] = cache.digest(resolve(kind, value))
    folder = cell.p.get("calibration")
    if folder is not None and Path(folder).is_dir():  # every table and the validation summary
        for f in sorted(Path(folder).iterdir()):
            if f.is_file() and f.suffix in (".csv", ".json", ".yaml"):
                out[f"calibration/{f.name}"] = cache.digest(f)
    return out


def run_grid(
    cells: Iterable[Cell],
    compute: Mapping[str, Callable[[dict[str, Any]], dict[str, Any]]],
    cache: CellCache,
    *,
    show_progress: bool = True,
) -> GridResult:
    """Compute (or read back) every cell; :class:`UserError` in a cell is recorded, not raised."""
    cells = list(cells)
    code = code_digest()
    out = GridResult()
    for cell in progress(cells, desc="report cells", total=len(cells), enabled=show_progress):
        params = dict(cell.params)
        key = cell_key(cell.kind, params, input_digests(cell, cache), code)
        hit = cache.get(key)
        if hit is not None:
            out.results[cell] = hit
            out.cached += 1
            continue
        try:
            result = to_jsonable(compute[cell.kind](params))
        except UserError as e:
            result = {"error": str(e)}
        except Exception as e:  # a bug in one cell: report it, keep the others, never cache it
            out.results[cell] = {"error": f"internal error ({type(e).__name__}: {e})"}
            out.failed += 1
            continue
        # Round-trip through JSON so a fresh result and a cached one are the same Python values.
        result = json.loads(json.dumps(result, allow_nan=False))
        cache.put(key, cell.kind, params, result)
        out.results[cell] = result
        out.computed += 1
    return out
