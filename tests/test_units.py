"""The unit parser: every unit of every dimension, wrong dimensions, bare numbers, negatives."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moesim.errors import UserError
from moesim.units import DIMENSIONS, PHYSICAL, format_quantity, parse_physical, parse_quantity

_DEC = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BIN = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ns": 1e-9, "ps": 1e-12, "min": 60.0}


def expected_factor(dimension: str, unit: str) -> float:
    """SI factor of ``unit``, worked out independently of moesim.units' tables."""
    if dimension == "time":
        return _TIME[unit]

    def prefixed(stem: str, base: str, allow_binary: bool) -> float:
        assert stem.endswith(base), (unit, base)
        prefix = stem[: len(stem) - len(base)]
        if allow_binary and prefix in _BIN:
            return _BIN[prefix]
        return _DEC[prefix]

    if dimension == "bytes":
        return prefixed(unit, "B", True) if unit.endswith("B") else prefixed(unit, "b", False) / 8
    if dimension == "bandwidth":
        if unit.endswith("bps"):
            return prefixed(unit[:-3], "", False) / 8
        if unit.endswith("Bps"):
            return prefixed(unit[:-3], "", False)
        stem = unit.removesuffix("/s")
        return prefixed(stem, "B", True) if stem.endswith("B") else prefixed(stem, "b", False) / 8
    if dimension == "flops":
        for base in ("FLOP/s", "FLOPS", "OP/s", "OPS"):
            if unit.endswith(base):
                return prefixed(unit, base, False)
    if dimension == "flop":
        return prefixed(unit, "FLOP", False)
    if dimension == "frequency":
        return prefixed(unit, "Hz", False)
    raise AssertionError(f"unexpected unit {unit} of {dimension}")


ALL_UNITS = [(dim, unit) for dim, (_, _, units) in DIMENSIONS.items() for unit in units]


@pytest.mark.parametrize(("dimension", "unit"), ALL_UNITS)
def test_every_unit_parses_to_its_si_factor(dimension: str, unit: str) -> None:
    assert parse_quantity(f"2.5 {unit}", dimension) == pytest.approx(2.5 * expected_factor(dimension, unit))
    assert parse_quantity(f"2.5{unit}", dimension) == pytest.approx(2.5 * expected_factor(dimension, unit))


def test_the_common_units_cover_what_profiles_use() -> None:
    needed = {
        "bytes": {"GB", "GiB", "TB", "MB", "MiB"},
        "bandwidth": {"TB/s", "GB/s", "Gb/s", "GiB/s"},
        "flops": {"TFLOP/s", "TOPS", "PFLOP/s"},
        "time": {"us", "ns", "ms", "s"},
        "flop": {"GFLOP"},
        "frequency": {"GHz"},
    }
    for dim, units in needed.items():
        assert units <= set(DIMENSIONS[dim][2]), dim


@pytest.mark.parametrize(
    ("text", "dimension", "value"),
    [
        ("3.35 TB/s", "bandwidth", 3.35e12),
        ("80 GiB", "bytes", 80 * 2**30),
        ("80 GB", "bytes", 80e9),
        ("400 Gb/s", "bandwidth", 50e9),
        ("400 Gbps", "bandwidth", 50e9),
        ("989.4 TFLOP/s", "flops", 989.4e12),
        ("1978.9 TOPS", "flops", 1978.9e12),
        ("2 us", "time", 2e-6),
        ("1.5 min", "time", 90.0),
        ("1.98 GHz", "frequency", 1.98e9),
        ("2 GFLOP", "flop", 2e9),
        ("1e3 GB", "bytes", 1e12),
        (".5 s", "time", 0.5),
        ("  7 ms  ", "time", 7e-3),
        ("+3 ns", "time", 3e-9),
        ("0 B", "bytes", 0.0),
    ],
)
def test_known_values(text: str, dimension: str, value: float) -> None:
    assert parse_quantity(text, dimension) == pytest.approx(value)


def _wrong_dimension_cases() -> list[tuple[str, str, str]]:
    cases = []
    for dim, (_, _, units) in DIMENSIONS.items():
        for other, (other_what, _, other_units) in DIMENSIONS.items():
            if other == dim:
                continue
            for unit in sorted(other_units):
                if unit not in units:
                    cases.append((dim, unit, other_what))
    return cases


@pytest.mark.parametrize(("dimension", "unit", "what"), _wrong_dimension_cases())
def test_a_unit_of_another_dimension_is_named(dimension: str, unit: str, what: str) -> None:
    with pytest.raises(UserError) as err:
        parse_quantity(f"3 {unit}", dimension, file="f.yaml", field="a.b")
    assert f"which is {what}" in str(err.value)
    assert str(err.value).startswith("f.yaml: a.b: expected ")


@pytest.mark.parametrize("dimension", list(DIMENSIONS))
@pytest.mark.parametrize("value", [3, 3.5, "3", "3.5", "1e9", 0])
def test_bare_numbers_are_rejected(dimension: str, value: object) -> None:
    with pytest.raises(UserError, match="a bare number"):
        parse_quantity(value, dimension)


@pytest.mark.parametrize("dimension", list(DIMENSIONS))
def test_negative_quantities_are_rejected(dimension: str) -> None:
    unit = sorted(DIMENSIONS[dimension][2])[0]
    with pytest.raises(UserError, match="must not be negative"):
        parse_quantity(f"-1 {unit}", dimension)


@pytest.mark.parametrize("text", ["3 parsecs", "3 TB/min", "3 tb", "3 GIB", "3 Tflops", "3 sec"])
def test_unknown_units_are_named(text: str) -> None:
    dimension = {
        "3 parsecs": "bytes",
        "3 TB/min": "bandwidth",
        "3 tb": "bytes",
        "3 GIB": "bytes",
        "3 Tflops": "flops",
        "3 sec": "time",
    }[text]
    with pytest.raises(UserError, match="unknown unit"):
        parse_quantity(text, dimension)


@pytest.mark.parametrize(
    "value", [None, True, [1, "GB"], {"a": 1}, "", "GB", "nan GB", "1..2 GB", "1,000 GB"]
)
def test_malformed_values(value: object) -> None:
    with pytest.raises(UserError, match="expected a size"):
        parse_quantity(value, "bytes", file="x.yaml", field="memory.capacity")


@pytest.mark.parametrize("text", ["inf B/s", "1e400 GB/s", "+inf B/s", "1e300 PB/s"])
def test_infinite_quantities_are_rejected(text: str) -> None:
    with pytest.raises(UserError, match="must be finite"):
        parse_quantity(text, "bandwidth", file="hw.yaml", field="links.x.bandwidth")


@pytest.mark.parametrize(
    ("text", "kind", "message"),
    [
        ("0 TFLOP/s", "compute", "a peak compute rate from 1 MFLOP/s to 1000 PFLOP/s, got '0 TFLOP/s'"),
        ("2e18 FLOP/s", "compute", "expected a peak compute rate from 1 MFLOP/s to 1000 PFLOP/s"),
        ("1e-300 GB/s", "bandwidth", "expected a bandwidth from 1 MB/s to 1 PB/s, got '1e-300 GB/s'"),
        ("2 PB/s", "bandwidth", "expected a bandwidth from 1 MB/s to 1 PB/s"),
        ("0 GB", "memory", "expected a memory capacity from 1 MB to 1 PB, got '0 GB'"),
        ("2 PB", "memory", "expected a memory capacity from 1 MB to 1 PB"),
        ("2 s", "latency", "expected a latency from 0 to 1 s, got '2 s'"),
        ("inf s", "latency", "must be finite"),
        ("1e400 GB", "memory", "must be finite"),
    ],
)
def test_physical_ranges(text: str, kind: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        parse_physical(text, kind, file="hw.yaml", field="f")
    assert str(err.value).startswith("hw.yaml: f: ") and message in str(err.value)


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [("0 s", "latency", 0.0), ("1 s", "latency", 1.0), ("1 PB/s", "bandwidth", 1e15), ("1 MB", "memory", 1e6),
     ("1000 PFLOP/s", "compute", 1e18), ("80 GiB", "memory", 80 * 2**30)],
)
def test_physical_range_bounds_are_inclusive(text: str, kind: str, value: float) -> None:
    assert parse_physical(text, kind) == pytest.approx(value)


def test_every_physical_range_is_finite_and_ordered() -> None:
    for kind, rng in PHYSICAL.items():
        assert rng.dimension in DIMENSIONS, kind
        assert 0 <= rng.low < rng.high < math.inf, kind
        assert rng.describe().startswith("from "), kind


def test_unknown_dimension_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        parse_quantity("1 B", "volume")


def test_error_names_file_and_field() -> None:
    with pytest.raises(UserError) as err:
        parse_quantity("3 TB", "bandwidth", file="hw.yaml", field="devices.h100.memory.bandwidth")
    assert str(err.value) == (
        "hw.yaml: devices.h100.memory.bandwidth: expected a bandwidth with its unit, "
        "such as '3.35 TB/s', got '3 TB', which is a size"
    )


@given(
    st.floats(min_value=1e-3, max_value=1e18, allow_nan=False, allow_infinity=False),
    st.sampled_from(["bytes", "bandwidth", "flops", "frequency"]),
)
def test_format_round_trips_within_display_precision(value: float, dimension: str) -> None:
    back = parse_quantity(format_quantity(value, dimension), dimension)
    assert back == pytest.approx(value, rel=1e-3)


@given(st.floats(min_value=1e-9, max_value=1e4, allow_nan=False))
def test_format_round_trips_times(value: float) -> None:
    assert parse_quantity(format_quantity(value, "time"), "time") == pytest.approx(value, rel=1e-3)
