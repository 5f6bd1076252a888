"""``moesim report --from DIR``: a report of a sweep dataset (``moesim sweep``'s output folder).

One table of every cell (the parameters that vary, the kind's headline metrics) and one figure per
headline metric: against the numeric parameter with the most values (else the first that varies),
one line per combination of the other varying parameters, or the points alone when there are too
many combinations to tell apart (random or Latin-hypercube samples). Every number shown is a record.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.reports import plots, render
from moesim.reports.builder import GiB, short, slug, spread
from moesim.reports.document import Document, Figure, Record, Section, Table
from moesim.sweeps.dataset import ERROR, FAILED, OK, Dataset, require_pyarrow
from moesim.sweeps.schema import CellKind

MAX_TABLE_ROWS = 500
MAX_SERIES = 10
SECTION = "sweep"


def load_dataset(folder: str | Path) -> tuple[Dataset, dict[str, Any], CellKind, list[dict[str, Any]]]:
    """The dataset in ``folder``, its manifest, its kind and its rows (one per cell); one-line errors."""
    from moesim.sweeps.kinds import KINDS

    require_pyarrow("reading a sweep dataset", field="--from")
    ds = Dataset(Path(folder))
    if not ds.folder.is_dir():
        raise UserError("no such sweep dataset folder", file=folder, field="--from")
    manifest = ds.manifest()
    if manifest is None:
        raise UserError("not a sweep dataset (no _sweep.json; make one with moesim sweep)", file=folder,
                        field="--from")
    kind = KINDS.get(str(manifest.get("kind")))
    if kind is None:
        raise UserError(f"unknown cell kind {manifest.get('kind')!r}; expected one of {', '.join(KINDS)}",
                        file=ds.folder / "_sweep.json", field="kind")
    table = ds.table()
    rows = [] if table is None else table.to_pylist()
    return ds, manifest, kind, rows


def _label(v: Any, ptype: str) -> str:
    if v is None:
        return "default"
    return f"{v / GiB:g} GiB" if ptype == "bytes" else short(str(v))


def _order(v: Any) -> tuple[int, Any]:
    """Sort key of a parameter value: defaults first, then numbers by value, then text."""
    if v is None:
        return (0, 0)
    return (1, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (2, str(v))


def _varying(kind: CellKind, rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """Parameters with more than one value over the rows, and the others' single values."""
    vary, fixed = [], {}
    for p in kind.params or ():
        values = {json.dumps(r.get(p.name)) for r in rows}
        if len(values) > 1:
            vary.append(p.name)
        elif rows and rows[0].get(p.name) is not None:
            fixed[p.name] = rows[0][p.name]
    return vary, fixed


def _x_param(kind: CellKind, vary: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str | None:
    numeric = [n for n in vary if kind.schema[n].type in ("int", "float", "bytes")]
    if numeric:
        return max(numeric, key=lambda n: (len({r.get(n) for r in rows}), -vary.index(n)))
    return vary[0] if vary else None


def _where(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return tuple(short(str(row.get(k) or "")) for k in ("hw", "model", "trace"))  # type: ignore[return-value]


def _figure(kind: CellKind, metric: str, x_name: str, vary: Sequence[str], rows: Sequence[Mapping[str, Any]],
            stem: str, command: str, records: list[Record]) -> Figure | None:
    schema, units = kind.schema, {m.name: m.unit for m in kind.metrics or ()}
    ptype = schema[x_name].type
    others = [n for n in vary if n != x_name]
    ok = [r for r in rows if r["status"] == OK]
    numeric = ptype in ("int", "float", "bytes")
    xs = sorted({r.get(x_name) for r in ok if r.get(x_name) is not None}) if numeric else \
        list(dict.fromkeys(r.get(x_name) for r in rows))
    if not xs or all(r.get(metric) is None for r in ok):
        return None

    def series_of(r: Mapping[str, Any]) -> str:
        return ", ".join(f"{n}={_label(r.get(n), schema[n].type)}" for n in others) or metric

    names = list(dict.fromkeys(series_of(r) for r in rows))
    connect = len(names) <= MAX_SERIES
    if not connect:
        names = ["every cell"]
    series: dict[str, list[float | None]] = {n: [None] * len(xs) for n in names}
    for r in ok:
        if r.get(x_name) is None and numeric:
            continue
        name = series_of(r) if connect else names[0]
        i = xs.index(r.get(x_name))
        if connect or series[name][i] is None:
            series[name][i] = r.get(metric)
        records.append(Record(SECTION, stem, *_where(r), series_of(r), x_name, r.get(x_name), metric,
                              r.get(metric), units.get(metric, "")))
    unit = units.get(metric, "")
    xpos = [x / GiB for x in xs] if ptype == "bytes" else (xs if numeric else list(range(len(xs))))
    xlabel = f"{x_name} (GiB)" if ptype == "bytes" else x_name
    logy = spread(series) > 20  # as the report's own curves: a log axis when values span decades
    png = plots.lines(xpos, series, xlabel=xlabel, ylabel=f"{metric} ({unit})" if unit else metric,
                      title=f"{metric} vs {x_name}", connect=connect, logy=logy,
                      xticks=None if numeric else [_label(x, ptype) for x in xs])
    caption = (f"`{metric}` of each cell against `{x_name}`" +
               (f", one line per {', '.join(f'`{n}`' for n in others)}" if others and connect else "") +
               ("; too many combinations of the other parameters to draw apart, so every cell is a point"
                if not connect else "") + (" (log scale)" if logy else "")
               + ". Cells the workflow refused are gaps.")
    return Figure(stem, f"{metric} vs {x_name}", caption, command, png)


def sweep_document(manifest: Mapping[str, Any], kind: CellKind, rows: Sequence[Mapping[str, Any]], *,
                   folder: str, command: str) -> Document:
    """The report of a sweep dataset's rows."""
    vary, fixed = _varying(kind, rows)
    units = {m.name: m.unit for m in kind.metrics or ()}
    headline = [m for m in kind.headline if any(r.get(m) is not None for r in rows)]
    counts = {s: sum(r["status"] == s for r in rows) for s in (OK, ERROR, FAILED)}
    shown = sorted(rows, key=lambda r: [_order(r.get(n)) for n in vary])
    records: list[Record] = []
    stem = "sweep"
    table_rows = []
    for r in shown[:MAX_TABLE_ROWS]:
        table_rows.append((*(_label(r.get(n), kind.schema[n].type) for n in vary),
                           *(r.get(m) for m in headline), r["status"]))
        cell = ", ".join(f"{n}={_label(r.get(n), kind.schema[n].type)}" for n in vary) or "cell"
        for m in headline:
            records.append(Record(SECTION, f"{stem}_cells", *_where(r), cell, "", "", m, r.get(m),
                                  units.get(m, "")))
    spec = manifest.get("spec")
    paras = [
        f"{len(rows)} `{kind.name}` cells ({kind.doc}): {counts[OK]} computed, {counts[ERROR]} refused by "
        f"the workflow, {counts[FAILED]} failed. Dataset: `{folder}`"
        + (f", from the spec `{spec}` (`{manifest.get('command')}`)." if spec else "."),
        "Fixed in every cell: "
        + (", ".join(f"`{k}={_label(v, kind.schema[k].type)}`" for k, v in fixed.items()) or "nothing")
        + ". Each row of the dataset holds its cell's `moesim` command line, which reproduces its numbers.",
    ]
    if len(rows) > MAX_TABLE_ROWS:
        paras.append(f"The table shows the first {MAX_TABLE_ROWS} of {len(rows)} cells; all are in the "
                     "dataset.")
    tables = (Table(f"{stem}_cells", "Cells", "One row per cell: the parameters that vary, the headline "
                    "metrics (" + ", ".join(f"`{m}` {units.get(m, '')}".strip() for m in headline) + ").",
                    (*vary, *headline, "status"), tuple(table_rows)),) if rows else ()
    x_name = _x_param(kind, vary, rows)
    figures = tuple(f for f in (
        _figure(kind, m, x_name, vary, rows, f"{stem}_{slug(m)}", command, records) for m in headline
    ) if f is not None) if x_name else ()
    notes = tuple(f"`{r.get('command') or r['cell_hash']}`: {r.get('error')}"
                  for r in shown if r["status"] != OK)
    title = str(manifest.get("title") or f"moesim sweep: {kind.name}")
    return Document(title, command, (Section("Sweep", tuple(paras), tables, figures),), tuple(records), notes)


def make_dataset_report(folder: str | Path, out_dir: str | Path, *, command: str) -> tuple[Document, dict]:
    """Read the sweep dataset in ``folder`` and write its report into ``out_dir``."""
    _, manifest, kind, rows = load_dataset(folder)
    doc = sweep_document(manifest, kind, rows, folder=str(folder), command=command)
    return doc, render.write(doc, out_dir)
