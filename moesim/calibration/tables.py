"""Measured op times as a function of shape: ``load_calibration(dir).time_s(op, **shape)``.

A lookup (i) keeps the rows whose key columns match the query — exactly, or for the keys the
time is proportional to (hidden, ffn; n, k) the nearest measured value in log distance, the
time then scaled by the ratio — and (ii) interpolates piecewise-linearly in log(time) over
log(axis) along the op's axes (tokens; tokens per expert then expert count; bytes). Outside the
measured range of an axis it returns None, so the cost model falls back to its roofline: a table
is never extrapolated. Duplicate measurements of one shape are combined by their median.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from moesim.calibration.format import OPS, Table, read_table
from moesim.errors import UserError


@dataclass(frozen=True)
class Lookup:
    """One answer of the calibration and how it was obtained."""

    seconds: float | None
    exact: bool
    """True when every key matched a measured value (no nearest-value scaling)."""
    matched: dict[str, Any] = field(default_factory=dict)
    """The measured key values used (differ from the query where the nearest was taken)."""
    reason: str = ""
    """Why ``seconds`` is None, when it is."""


def _log_interp(x: float, x0: float, x1: float, y0: float, y1: float) -> float:
    if y0 <= 0 or y1 <= 0:  # a zero time cannot be logged; fall back to linear
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    f = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + f * (math.log(y1) - math.log(y0)))


def _interpolate(rows: Sequence[dict[str, Any]], axes: Sequence[str],
                 query: dict[str, float]) -> float | None:
    """Multilinear interpolation in log-log space, outermost axis last in ``axes``."""
    if not rows:
        return None
    if not axes:
        return float(median(r["seconds_median"] for r in rows))
    axis = axes[-1]
    q = float(query[axis])
    values = sorted({float(r[axis]) for r in rows})
    if q in values:
        return _interpolate([r for r in rows if float(r[axis]) == q], axes[:-1], query)
    lower = [v for v in values if v < q]
    upper = [v for v in values if v > q]
    if not lower or not upper or lower[-1] <= 0:
        return None
    lo, hi = lower[-1], upper[0]
    t_lo = _interpolate([r for r in rows if float(r[axis]) == lo], axes[:-1], query)
    t_hi = _interpolate([r for r in rows if float(r[axis]) == hi], axes[:-1], query)
    if t_lo is None or t_hi is None:
        return None
    return _log_interp(q, lo, hi, t_lo, t_hi)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    if isinstance(a, str) or isinstance(b, str):
        return str(a).lower() == str(b).lower()
    return a == b


@dataclass(frozen=True)
class Calibration:
    """Measured tables of one GPU model and/or one CPU model (one file per op)."""

    device: str
    """GPU name as the driver reports it (``NVIDIA H100 80GB HBM3``); empty without GPU tables."""
    tables: dict[str, Table]
    path: str = ""
    cpu: str = ""
    """CPU model name from /proc/cpuinfo (``Intel(R) Xeon(R) Gold 6454S``); empty without CPU tables."""

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(sorted(self.tables))

    def header(self, op: str) -> dict[str, Any]:
        return dict(self.tables[op].header) if op in self.tables else {}

    def lookup(self, op: str, *, exact: bool = False, **shape: Any) -> Lookup:
        """Time of ``op`` at ``shape`` with the details of the match (see the module docstring)."""
        if op not in OPS:
            raise UserError(f"unknown calibration op {op!r}; expected one of {sorted(OPS)}", field="op")
        schema = OPS[op]
        unknown = set(shape) - set(schema.shape_columns)
        if unknown:
            raise UserError(f"op {op!r} has no shape fields {sorted(unknown)}; "
                            f"expected {list(schema.shape_columns)}", field="shape")
        missing = [a for a in schema.axes if shape.get(a) is None]
        if missing:
            raise UserError(f"op {op!r} needs {missing}", field="shape")
        if any(float(shape[a]) < 0 for a in schema.axes):
            raise UserError(f"expected non-negative {list(schema.axes)}, found {shape}", field="shape")
        if any(float(shape[a]) == 0 for a in schema.axes):
            return Lookup(0.0, True, {}, "no work")
        table = self.tables.get(op)
        if table is None or not table.rows:
            return Lookup(None, False, {}, f"no {op} table")
        rows = list(table.rows)
        matched: dict[str, Any] = {}
        scale = 1.0
        is_exact = True
        for key in schema.keys:
            want = shape.get(key, schema.defaults.get(key))
            present = [r[key] for r in rows if r.get(key) is not None]
            if want is None:
                if len({str(v) for v in present}) > 1:
                    return Lookup(None, False, matched, f"{op} rows differ in {key}; give {key}=")
                continue
            hits = [r for r in rows if r.get(key) is not None and _same(r[key], want)]
            if hits:
                rows, matched[key] = hits, want
                continue
            if exact or key not in schema.scaled or not present:
                return Lookup(None, False, matched, f"no {op} row with {key}={want!r}")
            # Nearest in log distance; the time scales with this key (work is linear in it).
            nearest = min({float(v) for v in present}, key=lambda v: (abs(math.log(v / float(want))), v))
            rows = [r for r in rows if r.get(key) is not None and float(r[key]) == nearest]
            scale *= float(want) / nearest
            matched[key] = nearest
            is_exact = False
        seconds = _interpolate(rows, schema.axes, {a: float(shape[a]) for a in schema.axes})
        if seconds is None:
            ranges = {a: (min(float(r[a]) for r in rows), max(float(r[a]) for r in rows))
                      for a in schema.axes}
            return Lookup(None, is_exact, matched, f"outside the measured range {ranges}")
        return Lookup(seconds * scale, is_exact, matched)

    def time_s(self, op: str, *, exact: bool = False, **shape: Any) -> float | None:
        """Seconds of one ``op`` call at ``shape``; None where the tables do not cover it.

        ``exact=True`` refuses nearest-value matches of hidden/ffn (n/k for gemm)."""
        return self.lookup(op, exact=exact, **shape).seconds

    def covers(self, op: str) -> bool:
        return op in self.tables and bool(self.tables[op].rows)


def _builtin_calibration_dir(name: str) -> Path | None:
    from moesim.resources import builtin_dir

    candidate = builtin_dir("hardware") / "calibration" / name
    return candidate if candidate.is_dir() else None


def load_calibration(path_or_name: str | Path) -> Calibration:
    """All ``*.csv`` tables of a folder (or one table file, or a name under hardware/calibration/)."""
    path = Path(path_or_name)
    if not path.exists() and "/" not in str(path_or_name):
        builtin = _builtin_calibration_dir(str(path_or_name))
        if builtin is not None:
            path = builtin
    if not path.exists():
        raise UserError("no such calibration folder or file", file=str(path_or_name))
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise UserError("expected calibration tables (*.csv) in this folder, found none", file=str(path))
    tables: dict[str, Table] = {}
    names: dict[str, set[str]] = {"gpu": set(), "cpu": set()}
    for f in files:
        table = read_table(f)
        if table.op in tables:
            raise UserError(f"a second table for op {table.op!r} (first: {tables[table.op].path})",
                            file=str(f))
        tables[table.op] = table
        kind = OPS[table.op].device
        names[kind].add(str(table.header[kind]))
    for kind, found in names.items():
        if len(found) > 1:
            raise UserError(f"expected tables of one {kind.upper()} model, found {sorted(found)}",
                            file=str(path), field=kind)
    gpu, cpu = (next(iter(names[k]), "") for k in ("gpu", "cpu"))
    return Calibration(device=gpu, tables=tables, path=str(path), cpu=cpu)
