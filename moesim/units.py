"""Quantities with units: ``"3.35 TB/s"``, ``"80 GiB"``, ``"989.4 TFLOP/s"``, ``"2 us"`` → SI floats.

Every quantity in a user file carries its unit as text. A bare number, an unknown unit, a unit of
the wrong dimension, a negative, infinite or NaN value (``1e400 GB`` overflows to infinity) is a
:class:`~moesim.errors.UserError`. Decimal prefixes are powers of 1000, binary ones (``KiB``,
``GiB``) powers of 1024; a lower-case ``b`` is a bit, ``B`` a byte. :data:`PHYSICAL` bounds each
kind of hardware quantity to a generous physical range (docs/limits.md), so that ``bf16: 0 TFLOP/s``
or ``1e-300 GB/s`` cannot simulate to ``inf s``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from moesim.errors import UserError

# dimension -> (name used in messages, example, {unit: factor to SI})
_DEC = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}


def _bytes_units() -> dict[str, float]:
    units = {f"{p}B": f for p, f in {**_DEC, **_BIN}.items()}
    units.update({f"{p}b": f / 8 for p, f in _DEC.items()})
    return units


def _rate_units() -> dict[str, float]:
    units = {f"{u}/s": f for u, f in _bytes_units().items()}
    units.update({f"{p}bps": f / 8 for p, f in _DEC.items()})
    units.update({f"{p}Bps": f for p, f in _DEC.items()})
    return units


def _flops_units() -> dict[str, float]:
    units: dict[str, float] = {}
    for p, f in _DEC.items():
        for name in ("FLOP/s", "FLOPS", "OP/s", "OPS"):
            units[f"{p}{name}"] = f
    return units


DIMENSIONS: dict[str, tuple[str, str, dict[str, float]]] = {
    "bytes": ("a size", "80 GiB", _bytes_units()),
    "bandwidth": ("a bandwidth", "3.35 TB/s", _rate_units()),
    "flops": ("a compute rate", "989.4 TFLOP/s", _flops_units()),
    "time": (
        "a time",
        "2 us",
        {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9, "ps": 1e-12, "min": 60.0},
    ),
    "frequency": ("a frequency", "1.98 GHz", {f"{p}Hz": f for p, f in _DEC.items()}),
    "flop": ("an amount of work", "2 GFLOP", {f"{p}FLOP": f for p, f in _DEC.items()}),
}

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?inf"
_QUANTITY = re.compile(rf"^\s*({_NUMBER})\s*(\S.*?)?\s*$")


def parse_quantity(
    value: object, dimension: str, *, file: str | None = None, field: str | None = None
) -> float:
    """Parse ``value`` (text with a unit) as a non-negative quantity of ``dimension``, in SI units."""
    if dimension not in DIMENSIONS:
        raise ValueError(f"unknown dimension {dimension!r}")
    what, example, units = DIMENSIONS[dimension]
    expected = f"expected {what} with its unit, such as '{example}'"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise UserError(f"{expected}, got {value!r}", file=file, field=field)
    if isinstance(value, (int, float)):
        raise UserError(f"{expected}, got {value!r} (a bare number)", file=file, field=field)
    m = _QUANTITY.match(value)
    if not m:
        raise UserError(f"{expected}, got {value!r}", file=file, field=field)
    number, unit = float(m.group(1)), m.group(2)
    if unit is None:
        raise UserError(f"{expected}, got {value!r} (a bare number)", file=file, field=field)
    if unit not in units:
        for other, (other_what, _, other_units) in DIMENSIONS.items():
            if other != dimension and unit in other_units:
                raise UserError(f"{expected}, got {value!r}, which is {other_what}", file=file, field=field)
        raise UserError(f"{expected}, got {value!r} (unknown unit {unit!r})", file=file, field=field)
    if number < 0 or math.isnan(number):
        raise UserError(f"{expected}, got {value!r} (must not be negative)", file=file, field=field)
    si = number * units[unit]
    if not math.isfinite(si):
        raise UserError(f"{expected}, got {value!r} (must be finite)", file=file, field=field)
    return si


@dataclass(frozen=True)
class PhysicalRange:
    """The values one kind of quantity may take: ``low <= x <= high`` in SI units of ``dimension``."""

    dimension: str
    low: float
    high: float
    what: str
    """In messages: ``a memory capacity``."""

    def describe(self) -> str:
        low = "0" if self.low == 0 else format_quantity(self.low, self.dimension)
        return f"from {low} to {format_quantity(self.high, self.dimension)}"


PHYSICAL: dict[str, PhysicalRange] = {
    "memory": PhysicalRange("bytes", 1e6, 1e15, "a memory capacity"),
    "bandwidth": PhysicalRange("bandwidth", 1e6, 1e15, "a bandwidth"),
    "compute": PhysicalRange("flops", 1e6, 1e18, "a peak compute rate"),
    "latency": PhysicalRange("time", 0.0, 1.0, "a latency"),
    "overhead": PhysicalRange("time", 0.0, 1.0, "an overhead"),
    "work": PhysicalRange("flop", 1.0, 1e21, "an amount of work"),
    "size": PhysicalRange("bytes", 1.0, 1e15, "a size"),
    "budget": PhysicalRange("bytes", 1.0, 1e15, "a memory budget"),
}
"""Generous physical ranges: a link or HBM above 1 PB/s, a device above 1e18 FLOP/s or 1 PB, a latency
above 1 s is a typo (or an attack), as is anything at or near zero where a rate divides a size."""


def parse_physical(value: object, kind: str, *, file: str | None = None, field: str | None = None) -> float:
    """Parse ``value`` as a quantity of ``kind`` (a key of :data:`PHYSICAL`) and check its range."""
    rng = PHYSICAL[kind]
    si = parse_quantity(value, rng.dimension, file=file, field=field)
    if not rng.low <= si <= rng.high:
        raise UserError(f"expected {rng.what} {rng.describe()}, got {value!r}", file=file, field=field)
    return si


def format_quantity(value: float, dimension: str) -> str:
    """Human-readable text for an SI value, the inverse of :func:`parse_quantity` up to rounding."""
    if math.isinf(value):
        return {"bytes": "inf B", "bandwidth": "inf B/s", "flops": "inf FLOP/s", "time": "inf s"}.get(
            dimension, "inf"
        )
    if dimension == "time":
        for unit, f in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
            if value >= f or unit == "ns":
                return f"{value / f:.4g} {unit}"
    suffixes = {"bytes": "B", "bandwidth": "B/s", "flops": "FLOP/s", "frequency": "Hz", "flop": "FLOP"}
    suffix = suffixes[dimension]
    if dimension == "bytes" and value >= 2**30 and value % 2**30 == 0:
        return f"{value / 2**30:g} Gi{suffix}"
    for prefix, f in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3), ("", 1.0)):
        if value >= f or prefix == "":
            return f"{value / f:.4g} {prefix}{suffix}"
    raise AssertionError("unreachable")
