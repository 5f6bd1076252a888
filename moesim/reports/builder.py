"""What every report section shares: the finished cells, the records behind each number shown, the
notes on cells that could not be computed, and short names for files and titles."""

from __future__ import annotations

from typing import Any

from moesim.reports import grid as g
from moesim.reports.document import Figure, Record
from moesim.reports.sweep import Sweep

GiB = float(1 << 30)


def slug(*parts: Any) -> str:
    """A file stem from names or paths (each path by its file name without suffix)."""
    names = []
    for p in parts:
        if p is None:
            continue
        name = str(p).rsplit("/", 1)[-1]
        for suffix in (".npz", ".yaml", ".yml"):
            name = name.removesuffix(suffix)
        names.append(name)
    return "".join(c if c.isalnum() else "-" for c in "_".join(names)).strip("-")


def spread(series: dict[str, list[float | None]]) -> float:
    """max / min of the positive values of all series (1.0 when there are none)."""
    vals = [v for vs in series.values() for v in vs if v is not None and v > 0]
    return max(vals) / min(vals) if vals else 1.0


def short(name: str) -> str:
    """A path shows as its file name in tables and titles."""
    return name.rsplit("/", 1)[-1]


class Builder:
    """Collects a report's records and notes while its sections are built from the grid's cells."""

    def __init__(self, sweep: Sweep, res: g.GridResult, command: str):
        self.sweep, self.res, self.command = sweep, res, command
        self.records: list[Record] = []
        self.notes: list[str] = []

    def rec(self, section: str, item: str, where: tuple[str, str, str], series: str, x_name: str, x: Any,
            metric: str, value: Any, unit: str = "") -> Any:
        """Record one number the page shows (``where``: hardware, model, trace); returns ``value``."""
        hw, model, trace = where
        self.records.append(Record(section, item, short(hw), short(model), short(trace), series, x_name, x,
                                   metric, value, unit))
        return value

    def cell(self, cell: g.Cell) -> dict[str, Any] | None:
        """The cell's result, or None (and a note saying why) when it was not computed."""
        r = self.res.get(cell)
        if r is None:
            err = self.res.error(cell) or "not computed"
            self.notes.append(f"`{cell.label}`: {err}")
        return r

    def figure(self, name: str, title: str, caption: str, png: bytes) -> Figure:
        return Figure(name, title, caption, self.command, png)
