"""What a sweep cell can be: a *kind* is one workflow (:mod:`moesim.workflows`) with the schema of its
parameters and metrics, so a spec is checked field by field, every parameter and metric becomes a
typed column, and every row carries the equivalent ``moesim`` command line.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from moesim.errors import UserError

PARAM_TYPES = ("str", "int", "float", "bool", "bytes")
"""``bytes`` is a size: ``"16 GiB"`` or a number of bytes in a spec, a float number of bytes in a row."""

GiB = float(1 << 30)


@dataclass(frozen=True)
class Param:
    """One parameter of a kind: its column type, the flag that sets it, the values it may take."""

    name: str
    type: str
    doc: str
    flag: str | None = None
    """The command-line flag (``--expert-cache``); a ``bool`` parameter is the bare flag when true."""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    """Smallest allowed value (inclusive) of a number."""
    maximum: float | None = None
    """Largest allowed value (exclusive) of a number."""
    file: str | None = None
    """What the value names (``hardware``, ``model``, ``trace`` or ``path``): its contents enter the cell's
    hash, and a relative path is relative to the spec file."""
    required: bool = False
    load: Callable[[str], Any] | None = field(default=None, compare=False)
    """For large inputs (traces): load the named file once in the driver and hand workers the loaded
    object by reference, never the file name to load again nor a copy per cell."""

    def check(self, value: Any, *, file: str | None, fld: str) -> Any:
        """``value`` validated and canonical (sizes in bytes), or a :class:`UserError` naming ``fld``."""
        if value is None:
            return None
        t = self.type
        if t == "bytes":
            out: Any = _bytes(value, file, fld)
        elif t == "bool":
            if not isinstance(value, bool):
                raise UserError(f"expected true or false, got {value!r}", file=file, field=fld)
            return value
        elif t in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (t == "int" and not float(value).is_integer()) or not math.isfinite(value):
                raise UserError(f"expected {'an integer' if t == 'int' else 'a number'}, got {value!r}",
                                file=file, field=fld)
            out = int(value) if t == "int" else float(value)
        else:
            if not isinstance(value, str) or not value.strip():
                raise UserError(f"expected a non-empty string, got {value!r}", file=file, field=fld)
            if self.choices and value not in self.choices:
                raise UserError(f"expected one of {', '.join(self.choices)}, got {value!r}", file=file,
                                field=fld)
            return value
        lo, hi = self.minimum, self.maximum
        if (lo is not None and out < lo) or (hi is not None and out >= hi):
            rng = " and ".join(s for s in (f">= {lo:g}" if lo is not None else "",
                                           f"< {hi:g}" if hi is not None else "") if s)
            raise UserError(f"expected a value {rng}, got {value!r}", file=file, field=fld)
        return out


def _bytes(value: Any, file: str | None, fld: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"expected a size such as '16 GiB' (or a number of bytes), got {value!r}",
                        file=file, field=fld)
    if isinstance(value, str):
        from moesim.units import parse_quantity

        return parse_quantity(value, "bytes", file=file, field=fld)
    if not math.isfinite(value) or value < 0:
        raise UserError(f"expected a non-negative number of bytes, got {value!r}", file=file, field=fld)
    return float(value)


@dataclass(frozen=True)
class Metric:
    """One documented result column of a kind (other scalar results become columns too)."""

    name: str
    type: str
    """``int``, ``float``, ``str`` or ``bool``."""
    unit: str
    doc: str
    timing: bool = False
    """A measurement of this machine (wall time), not of the simulated system: differs run to run."""


@dataclass(frozen=True)
class CellKind:
    """A workflow a cell runs: ``run(params)`` returns its metrics (flat scalars), or, for kinds without
    declared metrics (the report's cells), any JSON result kept whole in the row's ``result`` column.

    ``params=None`` accepts any JSON parameters (the report builds them itself); ``files`` then says which
    of them name files (``hw``: ``hardware``...)."""

    name: str
    run: Callable[[dict[str, Any]], dict[str, Any]]
    doc: str
    verb: tuple[str, ...] = ()
    """The command words (``("simulate",)``) of the equivalent command line; empty: no command line."""
    params: tuple[Param, ...] | None = None
    metrics: tuple[Metric, ...] | None = None
    headline: tuple[str, ...] = ()
    """The metrics a report of the sweep plots and tabulates."""
    files: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.params is not None:
            names = [p.name for p in self.params]
            clash = set(names) & {m.name for m in self.metrics or ()}
            if len(set(names)) != len(names) or clash:
                raise ValueError(f"kind {self.name}: duplicate or clashing column names {sorted(clash)}")
            object.__setattr__(self, "files", {p.name: p.file for p in self.params if p.file})

    @property
    def schema(self) -> Mapping[str, Param]:
        return {p.name: p for p in self.params or ()}

    @property
    def large(self) -> Mapping[str, Callable[[str], Any]]:
        """Parameters loaded once in the driver and passed by reference, with their loaders."""
        return {p.name: p.load for p in self.params or () if p.load is not None}

    def command(self, params: Mapping[str, Any]) -> str:
        """The ``moesim ...`` command line that computes the same cell (empty when the kind has none)."""
        if not self.verb or self.params is None:
            return ""
        argv = ["moesim", *self.verb]
        for p in self.params:
            value = params.get(p.name)
            if value is None or p.flag is None:
                continue
            if p.type == "bool":
                argv += [p.flag] if value else []
            else:
                argv += [p.flag, format_bytes(value) if p.type == "bytes" else str(value)]
        return shlex.join([*argv, "--json"])


def format_bytes(n: float) -> str:
    """A size as the command line takes it: ``16GiB`` when that reads back exactly, else ``...B``."""
    from moesim.units import parse_quantity

    gib = n / GiB
    text = f"{gib!r}GiB"
    if gib >= 1 and len(repr(gib)) <= 8 and parse_quantity(text, "bytes") == n:
        return text.replace(".0GiB", "GiB")
    return f"{int(n)}B" if float(n).is_integer() else f"{n!r}B"
