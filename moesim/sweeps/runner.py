"""Run cells: hash each, skip those already stored, load large inputs once, execute the rest on an
executor and append their rows to the store in batches, with a progress bar and an ETA.

Both ``moesim sweep`` and ``moesim report`` run their cells here, so a report's cells get the same
hashing, executors, failure handling and resumability as a sweep's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from moesim.errors import UserError
from moesim.progress import progress
from moesim.sweeps.cells import Cell, Hasher
from moesim.sweeps.dataset import ERROR, EXECUTION_COLUMNS, FAILED, FIXED_COLUMNS, OK, Dataset
from moesim.sweeps.executors import Executor, SerialExecutor
from moesim.sweeps.schema import CellKind
from moesim.sweeps.worker import InputKey, Outcome, Task


@dataclass
class CellsRun:
    """Every cell's row (computed now or read back from the store), and what happened to them."""

    rows: dict[Cell, dict[str, Any]] = field(default_factory=dict)
    keys: dict[Cell, str] = field(default_factory=dict)
    skipped: int = 0
    """Cells already in the store (computed or refused by an earlier run)."""
    computed: int = 0
    refused: int = 0
    """Cells computed now whose workflow refused the inputs (``status == "error"``)."""
    failed: int = 0
    """Cells computed now that crashed or whose worker died (``status == "failed"``)."""


@dataclass
class _Writer:
    """Buffers finished rows and appends them to the store every ``every_s`` seconds or ``rows`` rows."""

    store: Dataset | None
    types: Mapping[str, str]
    every_s: float
    rows: int
    buffer: list[dict[str, Any]] = field(default_factory=list)
    last: float = field(default_factory=time.monotonic)

    def add(self, row: dict[str, Any]) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= self.rows or time.monotonic() - self.last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if self.store is not None and self.buffer:
            self.store.append(self.buffer, self.types)
        self.buffer, self.last = [], time.monotonic()


def column_types(kinds: Sequence[CellKind]) -> dict[str, str]:
    """Declared column types of the kinds' parameters and metrics."""
    out: dict[str, str] = {}
    for k in kinds:
        out.update({p.name: p.type for p in k.params or ()})
        out.update({m.name: m.type for m in k.metrics or ()})
    return out


def make_row(key: str, kind: CellKind, params: Mapping[str, Any], out: Outcome) -> dict[str, Any]:
    """One dataset row: identity, outcome, every declared parameter, the metrics, then how it ran."""
    row: dict[str, Any] = {"cell_hash": key, "kind": kind.name, "status": out.status, "error": out.error,
                           "command": kind.command(params), "result": out.result,
                           "params": json.dumps(dict(params), sort_keys=True, default=str)}
    row.update({p.name: params.get(p.name) for p in kind.params or ()})
    row.update(out.metrics or {})
    row.update(wall_s=out.wall_s, attempts=out.attempts, worker=out.worker,
               finished_at=datetime.now(UTC).isoformat(timespec="milliseconds"))
    assert set(row) >= set(FIXED_COLUMNS) | set(EXECUTION_COLUMNS)
    return row


def load_inputs(cells: Sequence[tuple[Cell, CellKind]]) -> tuple[dict[InputKey, Any], dict[InputKey, str]]:
    """Each distinct large input of ``cells`` loaded once: ``(loaded, errors)`` by (parameter, value)."""
    loaded: dict[InputKey, Any] = {}
    errors: dict[InputKey, str] = {}
    for cell, kind in cells:
        for name, load in kind.large.items():
            value = cell.p.get(name)
            k = (name, value)
            if value is None or k in loaded or k in errors:
                continue
            try:
                loaded[k] = load(value)
            except UserError as e:
                errors[k] = str(e)
    return loaded, errors


def run_cells(cells: Sequence[Cell], kinds: Mapping[str, CellKind], *, store: Dataset | None,
              executor: Executor | None = None, hasher: Hasher | None = None, show_progress: bool = True,
              desc: str = "cells", flush_every_s: float = 10.0, flush_rows: int = 64) -> CellsRun:
    """Compute every cell of ``cells`` not already in ``store`` and append its row there.

    Rows are written in batches, each batch one part file; on ``KeyboardInterrupt`` (or any exception)
    the rows finished so far are written before it propagates, so a rerun computes only the rest."""
    executor = executor or SerialExecutor()
    hasher = hasher or Hasher()
    run = CellsRun()
    for cell in cells:
        if cell.kind not in kinds:
            raise ValueError(f"no cell kind {cell.kind!r}")
        run.keys.setdefault(cell, hasher.key(cell, kinds[cell.kind].files))
    done = store.finished() if store is not None else {}
    todo = [c for c in run.keys if done.get(run.keys[c]) not in (OK, ERROR)]
    todo_set = set(todo)
    stored = store.rows(run.keys[c] for c in run.keys if c not in todo_set) if store is not None else {}
    for c, k in run.keys.items():
        if k in stored:
            run.rows[c] = stored[k]
            run.skipped += 1
    by_key = {run.keys[c]: c for c in todo}
    loaded, load_errors = load_inputs([(c, kinds[c.kind]) for c in todo])
    tasks, early = [], []
    for c in todo:
        kind = kinds[c.kind]
        inputs = tuple((n, c.p[n]) for n in kind.large if c.p.get(n) is not None)
        failed_input = next((load_errors[i] for i in inputs if i in load_errors), None)
        task = Task(run.keys[c], kind, c.p, inputs)
        if failed_input is None:
            tasks.append(task)
        else:
            early.append((task, Outcome(ERROR, error=failed_input)))
    writer = _Writer(store, column_types(list(kinds.values())), flush_every_s, flush_rows)
    stream = executor.run(tasks, loaded)
    try:
        results = progress(_chain(early, stream), desc=desc, total=len(todo), enabled=show_progress)
        for task, out in results:
            row = make_row(task.key, task.kind, task.params, out)
            writer.add(row)
            run.rows[by_key[task.key]] = row
            run.computed += 1
            run.refused += out.status == ERROR
            run.failed += out.status == FAILED
    finally:
        stream.close()  # stops the workers (a pool's processes, a local Ray instance)
        writer.flush()
    if store is not None:
        store.compact()
    return run


def _chain(first: list[tuple[Task, Outcome]], rest: Any) -> Any:
    yield from first
    yield from rest


def result_of(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's outcome as the report reads it: the JSON result, or ``{"error": ...}``."""
    if row.get("status") == OK:
        return json.loads(row["result"]) if row.get("result") else {}
    if row.get("status") == FAILED:
        return {"error": f"internal error ({row.get('error')})"}
    return {"error": row.get("error") or "no result"}
