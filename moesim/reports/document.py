"""The report as plain data: sections of prose, tables and figures, plus every number as a record.

The renderers (:mod:`moesim.reports.render`) turn one :class:`Document` into HTML, Markdown and
CSV, so the three always show the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RECORD_COLUMNS = (
    "section",
    "item",
    "hw",
    "model",
    "trace",
    "series",
    "x_name",
    "x",
    "metric",
    "value",
    "unit",
)


@dataclass(frozen=True)
class Record:
    """One number shown in the report (one row of ``results.csv``)."""

    section: str
    item: str
    """The table or figure (file stem) that shows it."""
    hw: str
    model: str
    trace: str
    series: str
    """Planner, cache policy, miss mode, device ... (what a line or bar stands for)."""
    x_name: str
    x: Any
    metric: str
    value: Any
    unit: str = ""

    def row(self) -> tuple[Any, ...]:
        return tuple(getattr(self, c) for c in RECORD_COLUMNS)


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    caption: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]


@dataclass(frozen=True)
class Figure:
    name: str
    """File stem of the PNG (``name.png``)."""
    title: str
    caption: str
    command: str
    """The exact command that produced the figure."""
    png: bytes = field(repr=False)


@dataclass(frozen=True)
class Section:
    title: str
    paragraphs: tuple[str, ...] = ()
    """Plain text; text between backticks is shown as code."""
    tables: tuple[Table, ...] = ()
    figures: tuple[Figure, ...] = ()


@dataclass(frozen=True)
class Document:
    title: str
    command: str
    sections: tuple[Section, ...]
    records: tuple[Record, ...]
    notes: tuple[str, ...] = ()
    """Cells that could not be computed (with the reason), shown at the end."""

    @property
    def figures(self) -> tuple[Figure, ...]:
        return tuple(f for s in self.sections for f in s.figures)

    @property
    def tables(self) -> tuple[Table, ...]:
        return tuple(t for s in self.sections for t in s.tables)


def fmt(value: Any, digits: int = 4) -> str:
    """A number as shown in tables: ``digits`` significant digits; ``None`` as ``n/a``."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        if value != 0 and (abs(value) >= 1e7 or abs(value) < 1e-3):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)
