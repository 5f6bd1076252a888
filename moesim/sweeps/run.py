"""``moesim sweep``: a spec's cells computed into a dataset folder, resuming what an earlier run left."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moesim.errors import UserError
from moesim.sweeps.cells import Hasher
from moesim.sweeps.dataset import Dataset, require_pyarrow
from moesim.sweeps.executors import Executor
from moesim.sweeps.runner import CellsRun, run_cells
from moesim.sweeps.spec import SweepSpec


@dataclass(frozen=True)
class SweepRun:
    spec: SweepSpec
    dataset: Dataset
    cells: int
    run: CellsRun


def open_dataset(out_dir: str | Path, spec: SweepSpec) -> Dataset:
    """The dataset in ``out_dir`` for ``spec``: new, or one of the same kind (whose cells are reused)."""
    require_pyarrow("a sweep dataset", field="--out")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise UserError("expected a folder for the sweep dataset, found a file", file=folder, field="--out")
    ds = Dataset(folder)
    manifest = ds.manifest()
    if manifest is not None and manifest.get("kind") != spec.kind.name:
        raise UserError(f"holds a sweep of {manifest.get('kind')!r} cells, this spec makes "
                        f"{spec.kind.name!r} cells: give another --out", file=folder, field="--out")
    if manifest is None and folder.is_dir() and any(folder.iterdir()):
        raise UserError("not a sweep dataset (no _sweep.json) and not empty: give a new or empty folder",
                        file=folder, field="--out")
    return ds


def run_sweep(spec: SweepSpec, out_dir: str | Path, *, executor: Executor | None = None,
              show_progress: bool = True, command: str = "", hasher: Hasher | None = None) -> SweepRun:
    """Every cell of ``spec`` not yet in the dataset ``out_dir``, computed and appended there."""
    ds = open_dataset(out_dir, spec)
    cells = spec.cells()
    ds.folder.mkdir(parents=True, exist_ok=True)
    ds.write_manifest({"kind": spec.kind.name, "title": spec.title, "spec": spec.file, "command": command})
    run = run_cells(cells, {spec.kind.name: spec.kind}, store=ds, executor=executor, hasher=hasher,
                    show_progress=show_progress, desc="sweep")
    return SweepRun(spec, ds, len(cells), run)
