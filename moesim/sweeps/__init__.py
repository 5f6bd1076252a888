"""Sweeps: grids and samples of workflow calls (cells) run on a local process pool or a Ray cluster,
their results a Parquet dataset with one row per cell (docs/sweeps.md).

``moesim sweep`` is :func:`run_sweep` on :func:`load_spec`; ``moesim report`` runs its own cells through
:func:`~moesim.sweeps.runner.run_cells` too. Read a dataset with ``Dataset(folder).frame()``.
"""

from __future__ import annotations

from moesim.sweeps.cells import Cell, Hasher
from moesim.sweeps.choose import make_executor
from moesim.sweeps.dataset import Dataset
from moesim.sweeps.run import SweepRun, run_sweep
from moesim.sweeps.runner import CellsRun, run_cells
from moesim.sweeps.schema import CellKind, Metric, Param
from moesim.sweeps.spec import SweepSpec, load_spec, spec_from_dict

__all__ = [
    "Cell",
    "CellKind",
    "CellsRun",
    "Dataset",
    "Hasher",
    "Metric",
    "Param",
    "SweepRun",
    "SweepSpec",
    "load_spec",
    "make_executor",
    "run_cells",
    "run_sweep",
    "spec_from_dict",
]
