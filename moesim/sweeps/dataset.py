"""A sweep dataset: a folder of Parquet part files, one row per finished cell.

Rows are appended as whole part files, each written atomically (:func:`moesim.io.atomic_open`), so a
reader, or a sweep interrupted at any moment, only ever sees complete parts: the folder *is* the
dataset. A cell's row may appear in several parts (a crash retried by a later run, a cell computed
again after a change of code or input file, a compaction half done); readers keep one row per cell
(its kind and parameters), preferring a finished outcome, then the newest.
``pyarrow.dataset`` and ``pandas.read_parquet`` skip the ``_sweep.json`` manifest and the ``.``
temporary files; :meth:`Dataset.frame` also unifies parts whose columns differ.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.io import atomic_open, atomic_write_text

DATASET_SCHEMA = "moesim-sweep/1"
MANIFEST = "_sweep.json"
PART_GLOB = "part-*.parquet"

OK, ERROR, FAILED = "ok", "error", "failed"
"""A row's ``status``: computed; refused by the workflow (a :class:`UserError`: the same inputs are
refused again, so the row is kept); failed (a crash or a worker that died: computed again next run)."""

FIXED_COLUMNS = {"cell_hash": "str", "kind": "str", "status": "str", "error": "str", "command": "str",
                 "params": "str", "result": "str"}
EXECUTION_COLUMNS = {"wall_s": "float", "attempts": "int", "worker": "str", "finished_at": "str"}
"""How and when a row was computed: they differ between runs of the same cells."""

_ARROW = {"str": "string", "int": "int64", "float": "float64", "bytes": "float64", "bool": "bool_"}


def require_pyarrow(what: str, *, file: str | Path | None = None, field: str | None = None) -> None:
    import importlib.util

    if importlib.util.find_spec("pyarrow") is None:
        raise UserError(f"{what} needs pyarrow: pip install 'moesim[parquet]'", file=file, field=field)


@dataclass(frozen=True)
class Dataset:
    """The dataset in ``folder`` (created on the first append)."""

    folder: Path

    def parts(self) -> list[Path]:
        """Part files in the order they were written."""
        return sorted(self.folder.glob(PART_GLOB)) if self.folder.is_dir() else []

    # ---- writing ------------------------------------------------------------------------------

    def append(self, rows: Sequence[Mapping[str, Any]],
               types: Mapping[str, str] | None = None) -> Path | None:
        """Write ``rows`` as one new part file (atomically); ``types`` gives declared column types."""
        if not rows:
            return None
        import pyarrow.parquet as pq

        table = _table(rows, {**FIXED_COLUMNS, **EXECUTION_COLUMNS, **(types or {})})
        name = f"part-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}.parquet"
        path = self.folder / name
        with atomic_open(path, "wb") as fh:
            pq.write_table(table, fh)
        return path

    def compact(self) -> None:
        """Rewrite the parts as one (one row per cell). Safe at any moment: until the old parts are gone,
        their rows are duplicates of the new part's, which readers collapse."""
        parts = self.parts()
        if len(parts) < 2:
            return
        import pyarrow.parquet as pq

        table = self._read(parts)
        path = self.folder / f"part-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(3)}.parquet"
        with atomic_open(path, "wb") as fh:
            pq.write_table(table, fh)
        for p in parts:
            p.unlink(missing_ok=True)

    def write_manifest(self, info: Mapping[str, Any]) -> None:
        atomic_write_text(self.folder / MANIFEST, json.dumps({"schema": DATASET_SCHEMA, **info}, indent=1,
                                                             sort_keys=True) + "\n")

    # ---- reading ------------------------------------------------------------------------------

    def manifest(self) -> dict[str, Any] | None:
        path = self.folder / MANIFEST
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError("not a moesim sweep manifest (invalid JSON)", file=path) from None
        if not isinstance(data, dict) or data.get("schema") != DATASET_SCHEMA:
            raise UserError(f"expected schema {DATASET_SCHEMA!r}", file=path, field="schema")
        return data

    def finished(self) -> dict[str, str]:
        """``{cell hash: status}`` of the rows the dataset holds (one per cell, as :meth:`table`)."""
        t = self._read(self.parts(), columns=["cell_hash", "kind", "params", "status"])
        if t is None:
            return {}
        return dict(zip(t.column("cell_hash").to_pylist(), t.column("status").to_pylist(), strict=True))

    def table(self) -> Any:
        """All rows as one ``pyarrow.Table`` (one per cell), or None for an empty dataset."""
        return self._read(self.parts())

    def frame(self) -> Any:
        """All rows as a ``pandas.DataFrame`` (one per cell hash; empty when there are none)."""
        import pandas as pd

        t = self.table()
        return pd.DataFrame(columns=list(FIXED_COLUMNS)) if t is None else t.to_pandas()

    def rows(self, hashes: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The rows of the given cell hashes that are in the dataset, as plain dicts."""
        import pyarrow.compute as pc

        keys = sorted(set(hashes))
        t = self.table() if keys else None
        if t is None:
            return {}
        wanted = t.filter(pc.is_in(t.column("cell_hash"), value_set=_pa().array(keys, type=_pa().string())))
        return {r["cell_hash"]: r for r in wanted.to_pylist()}

    def _read(self, parts: Sequence[Path], columns: list[str] | None = None) -> Any:
        """The parts' rows, one per cell: a cell is its kind and parameters, so a row computed by older
        code (or from an edited input file: another hash) gives way to the newer one. A finished row
        (``ok``, ``error``) beats a ``failed`` one; otherwise the later row wins."""
        import pyarrow.parquet as pq

        if not parts:
            return None
        table = _pa().concat_tables([_read_part(pq, p, columns) for p in parts], promote_options="permissive")
        kinds, params = table.column("kind").to_pylist(), table.column("params").to_pylist()
        status = table.column("status").to_pylist()
        best: dict[tuple[str, str], int] = {}
        for i, cell in enumerate(zip(kinds, params, strict=True)):
            j = best.get(cell)
            if j is None or status[i] != FAILED or status[j] == FAILED:
                best[cell] = i
        return table.take(sorted(best.values()))


def _pa() -> Any:
    import pyarrow

    return pyarrow


def _read_part(pq: Any, path: Path, columns: list[str] | None = None) -> Any:
    try:
        return pq.read_table(path, columns=columns)
    except Exception as e:  # a foreign or damaged file: name it instead of a pyarrow traceback
        raise UserError(f"not a readable sweep part ({type(e).__name__}: {e})", file=path) from None


def _table(rows: Sequence[Mapping[str, Any]], types: Mapping[str, str]) -> Any:
    """Rows as a ``pyarrow.Table``: declared columns typed (fixed first), others inferred; an undeclared
    column with no value in this batch is left out (absent reads as null)."""
    pa = _pa()
    names = list(dict.fromkeys([*FIXED_COLUMNS, *types, *sorted({k for r in rows for k in r})]))
    names = [n for n in names if n not in EXECUTION_COLUMNS] + list(EXECUTION_COLUMNS)  # timing last
    arrays, fields = [], []
    for name in names:
        values = [r.get(name) for r in rows]
        declared = types.get(name)
        if declared is None and all(v is None for v in values):
            continue
        if declared is not None:
            arr = pa.array(values, type=getattr(pa, _ARROW[declared])())
        else:
            try:
                arr = pa.array(values)
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds of value: keep them as JSON text
                arr = pa.array([None if v is None else json.dumps(v) for v in values], type=pa.string())
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))
