"""One report end to end: check the inputs, run the grid (cached), build the document, write it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moesim.errors import UserError
from moesim.reports import grid, render
from moesim.reports.content import build_document
from moesim.reports.document import Document
from moesim.reports.sweep import Sweep
from moesim.resources import resolve
from moesim.sweeps.dataset import Dataset
from moesim.sweeps.executors import Executor

CACHE_DIRNAME = ".cells"


@dataclass(frozen=True)
class ReportRun:
    document: Document
    written: dict[str, Path]
    computed: int
    cached: int
    cells: int
    failed: int
    warning: str | None = None
    """Something the reader of the command's output should know (the cells could not be kept)."""


def check_inputs(sweep: Sweep) -> dict[tuple[str, str], tuple[int, int]]:
    """Fail early (one :class:`UserError`) on an unknown profile, model or trace; return the shape
    (num_experts, top_k) of each (model, trace)."""
    from moesim.specs import load_cluster, load_model

    shapes: dict[tuple[str, str], tuple[int, int]] = {}
    for i, s in enumerate((*sweep.placement, *sweep.offload, *sweep.serving, *sweep.replan)):
        try:
            load_cluster(s.hw)
            model = load_model(s.model)
            for t in s.trace if isinstance(s.trace, tuple) else (s.trace,):
                resolve("trace", t)
        except UserError as e:
            raise e.at(
                file=None if sweep.source in ("defaults", "flags") else sweep.source, field=f"study {i}"
            ) from None
        shapes[(s.model, s.trace)] = (model.num_experts, model.top_k)
    return shapes


def cell_store(out_dir: Path, cache_dir: str | Path | None = "auto") -> tuple[Dataset | None, str | None]:
    """Where finished cells are kept (``"auto"``: ``out_dir/.cells``; None: nowhere), and why not when
    they cannot be: the store is a sweep dataset, which needs pyarrow."""
    import importlib.util

    if cache_dir is None:
        return None, None
    if importlib.util.find_spec("pyarrow") is None:
        return None, "finished cells are not kept without pyarrow (pip install 'moesim[parquet]'): every " \
                     "cell was computed"
    return Dataset(out_dir / CACHE_DIRNAME if cache_dir == "auto" else Path(cache_dir)), None


def make_report(
    sweep: Sweep,
    out_dir: str | Path,
    *,
    command: str,
    cache_dir: str | Path | None = "auto",
    show_progress: bool = True,
    executor: Executor | None = None,
) -> ReportRun:
    """Compute every cell of ``sweep`` (reusing finished ones) and write the report into ``out_dir``.

    ``cache_dir="auto"`` keeps finished cells in ``out_dir/.cells``; ``None`` turns the cache off.
    ``executor``: where the cells run (:func:`moesim.sweeps.make_executor`; default this process).
    """
    from moesim.reports.cells import REPORT_KINDS

    shapes = check_inputs(sweep)
    out = Path(out_dir)
    store, why = cell_store(out, cache_dir)
    cells = grid.expand(sweep, lambda m, t: shapes[(m, t)])
    res = grid.run_grid(cells, REPORT_KINDS, store, executor=executor, show_progress=show_progress)
    doc = build_document(sweep, res, command=command)
    written = render.write(doc, out)
    return ReportRun(doc, written, res.computed, res.cached, len(cells), res.failed, why)
