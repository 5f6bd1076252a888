"""The sweep spec (``moesim sweep SPEC.yaml``): one cell kind, parameters fixed for every cell, a grid of
axes, and optional random or Latin-hypercube samples; checked field by field (docs/sweeps.md).

Cells are every grid point (the product of the axes, in the file's order) times every sample point
(or just the grid points), merged with ``fixed``; identical cells are kept once.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.sweeps.cells import Cell
from moesim.sweeps.sampling import METHODS, Range, sample
from moesim.sweeps.schema import CellKind, Param

EXAMPLE = """\
# A moesim sweep spec (docs/sweeps.md): run it with  moesim sweep THIS.yaml --out DIR
kind: simulate                  # one 'moesim simulate' run per cell (or: plan)
title: "tokens/s vs expert cache on one RTX 4090"
fixed:                          # the same in every cell
  hw: rtx4090-workstation       # built-in names, or paths relative to this file
  model: mixtral-8x7b
  weight_dtype: fp8
  trace: mixtral-8x7b-synth
  steps: 16
grid:                           # every combination: 2 x 2 x 2 = 8 cells
  cache: [lru, belady]
  expert_cache: [11 GiB, 16 GiB]
  miss: [fetch, cpu]
# sample:                       # or draw points over ranges (each combined with every grid point)
#   method: lhs                 # Latin hypercube (or random)
#   n: 16
#   seed: 0
#   params:
#     batch: {min: 1, max: 64, log: true}
"""
"""What ``moesim sweep --init FILE`` writes: a small spec to start from."""

MAX_CELLS = 100_000
"""More cells than this is a mistake in the spec (or a study for a database, not a folder of Parquet)."""
TOP_KEYS = ("kind", "title", "fixed", "grid", "sample")
SAMPLE_KEYS = ("method", "n", "seed", "params")


@dataclass(frozen=True)
class Sample:
    method: str
    n: int
    seed: int
    ranges: Mapping[str, Range]


@dataclass(frozen=True)
class SweepSpec:
    """A checked spec; :meth:`cells` expands it."""

    kind: CellKind
    title: str
    fixed: Mapping[str, Any]
    axes: tuple[tuple[str, tuple[Mapping[str, Any], ...]], ...]
    """(axis name, points): a point sets one parameter, or several that vary together."""
    sample: Sample | None = None
    file: str | None = None

    @property
    def size(self) -> int:
        return math.prod(len(points) for _, points in self.axes) * (self.sample.n if self.sample else 1)

    def cells(self) -> list[Cell]:
        s, schema = self.sample, self.kind.schema
        draws = [{}] if s is None else [
            {k: schema[k].check(v, file=self.file, fld=f"sample.params.{k}") for k, v in d.items()}
            for d in sample(s.method, s.n, s.seed, s.ranges)]
        cells: dict[Cell, None] = {}
        for point in itertools.product(*(points for _, points in self.axes)):
            for d in draws:
                merged = {**self.fixed, **{k: v for p in point for k, v in p.items()}, **d}
                cells[Cell.make(self.kind.name, **{k: v for k, v in merged.items() if v is not None})] = None
        return list(cells)


def _fail(msg: str, file: str | None, fld: str) -> UserError:
    return UserError(msg, file=file, field=fld)


def spec_path(text: str, base: Path, what: str) -> str:
    """A file parameter as written in a spec: names stay names; relative paths are relative to the spec's
    folder, shown relative to the working directory (so command lines stay short and portable)."""
    here = base.resolve() / text
    is_path = "/" in text or text.endswith((".yaml", ".yml", ".npz", ".json")) or \
        (what == "path" and here.exists())
    if not is_path or Path(text).is_absolute():
        return text
    return os.path.relpath(os.path.normpath(here))


def _value(param: Param, value: Any, file: str | None, fld: str, base: Path) -> Any:
    out = param.check(value, file=file, fld=fld)
    if param.file is not None and out is not None:
        out = spec_path(out, base, param.file)
        if param.file != "path":
            from moesim.resources import resolve

            try:
                resolve(param.file, out)
            except UserError as e:
                raise _fail(e.message, file, fld) from None
    return out


def _param(kind: CellKind, name: Any, file: str | None, fld: str) -> Param:
    if name not in kind.schema:
        raise _fail(f"unknown parameter {name!r} of {kind.name}; expected one of "
                    f"{', '.join(kind.schema)}", file, fld)
    return kind.schema[name]


def _mapping(v: Any, file: str | None, fld: str, what: str) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise _fail(f"expected {what}, got {v!r}", file, fld)
    return v


def _axis(kind: CellKind, name: str, values: Any, file: str | None,
          base: Path) -> tuple[Mapping[str, Any], ...]:
    fld = f"grid.{name}"
    if not isinstance(values, list) or not values:
        raise _fail(f"expected a non-empty list of values, got {values!r}", file, fld)
    if name in kind.schema:
        param = kind.schema[name]
        return tuple({name: _value(param, v, file, f"{fld}[{i}]", base)} for i, v in enumerate(values))
    if not all(isinstance(v, Mapping) for v in values):
        _param(kind, name, file, fld)  # names the unknown parameter
    points = []
    for i, point in enumerate(values):
        if set(point) != set(values[0]):
            raise _fail(f"expected the same parameters as {fld}[0] ({', '.join(map(str, values[0]))})", file,
                        f"{fld}[{i}]")
        points.append({k: _value(_param(kind, k, file, f"{fld}[{i}].{k}"), v, file, f"{fld}[{i}].{k}", base)
                       for k, v in point.items()})
    return tuple(points)


def _range(param: Param, d: Any, file: str | None, fld: str, base: Path) -> Range:
    d = _mapping(d, file, fld, "a mapping with min: and max: (and log:), or choices:")
    unknown = set(d) - {"min", "max", "log", "choices"}
    if unknown:
        raise _fail(f"unknown key {sorted(unknown)[0]!r}; expected min, max, log or choices", file, fld)
    if "choices" in d:
        if set(d) != {"choices"} or not isinstance(d["choices"], list) or not d["choices"]:
            raise _fail("expected choices: a non-empty list, alone", file, f"{fld}.choices")
        return Range(choices=tuple(_value(param, v, file, f"{fld}.choices[{i}]", base)
                                   for i, v in enumerate(d["choices"])))
    if param.type not in ("int", "float", "bytes"):
        raise _fail(f"{param.name} is a {param.type}: sample it with choices: [...]", file, fld)
    for key in ("min", "max"):
        if key not in d:
            raise _fail("missing field", file, f"{fld}.{key}")
    lo, hi = (param.check(d[k], file=file, fld=f"{fld}.{k}") for k in ("min", "max"))
    if not lo <= hi:
        raise _fail(f"expected min <= max, got {d['min']!r} > {d['max']!r}", file, fld)
    log = d.get("log", False)
    if not isinstance(log, bool) or (log and lo <= 0):
        raise _fail("expected log: true or false (true needs min > 0)", file, f"{fld}.log")
    return Range(low=lo, high=hi, log=log, integer=param.type != "float")


def _sample(kind: CellKind, d: Any, file: str | None, base: Path) -> Sample:
    d = _mapping(d, file, "sample", "a mapping with method:, n:, seed: and params:")
    for key in d:
        if key not in SAMPLE_KEYS:
            raise _fail(f"unknown key {key!r}; expected some of {', '.join(SAMPLE_KEYS)}", file, "sample")
    method = d.get("method", "lhs")
    if method not in METHODS:
        raise _fail(f"expected one of {', '.join(METHODS)}, got {method!r}", file, "sample.method")
    n, seed = d.get("n"), d.get("seed", 0)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CELLS:
        raise _fail(f"expected a number of points in [1, {MAX_CELLS}], got {n!r}", file, "sample.n")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _fail(f"expected an integer >= 0, got {seed!r}", file, "sample.seed")
    params = _mapping(d.get("params"), file, "sample.params", "a mapping of parameter: range")
    if not params:
        raise _fail("expected at least one parameter to sample", file, "sample.params")
    ranges = {str(k): _range(_param(kind, k, file, f"sample.params.{k}"), v, file, f"sample.params.{k}", base)
              for k, v in params.items()}
    return Sample(method, n, seed, ranges)


def spec_from_dict(d: Any, kinds: Mapping[str, CellKind], *, file: str | None = None,
                   base_dir: str | Path = ".") -> SweepSpec:
    """Check a parsed spec; every mistake is one :class:`UserError` naming the file and the field."""
    base = Path(base_dir)
    d = _mapping(d, file, "", "a mapping with kind:, fixed:, grid: and sample:")
    for key in d:
        if key not in TOP_KEYS:
            raise _fail(f"unknown key {key!r}; expected some of {', '.join(TOP_KEYS)}", file, str(key))
    if d.get("kind") not in kinds:
        raise _fail(f"expected one of {', '.join(kinds)}, got {d.get('kind')!r}", file, "kind")
    kind = kinds[d["kind"]]
    title = d.get("title", f"moesim sweep: {kind.name}")
    if not isinstance(title, str) or not title.strip():
        raise _fail(f"expected a non-empty string, got {title!r}", file, "title")
    given: dict[str, str] = {}

    def claim(name: str, fld: str) -> None:
        if name in given:
            raise _fail(f"{name} is also set in {given[name]}", file, fld)
        given[name] = fld

    fixed = {}
    for k, v in _mapping(d.get("fixed") or {}, file, "fixed", "a mapping of parameter: value").items():
        claim(str(k), "fixed")
        fixed[str(k)] = _value(_param(kind, k, file, f"fixed.{k}"), v, file, f"fixed.{k}", base)
    axes = []
    for name, values in _mapping(d.get("grid") or {}, file, "grid", "a mapping of axis: list").items():
        points = _axis(kind, str(name), values, file, base)
        for k in points[0]:
            claim(k, f"grid.{name}")
        axes.append((str(name), points))
    smp = _sample(kind, d["sample"], file, base) if d.get("sample") is not None else None
    for k in smp.ranges if smp else ():
        claim(k, f"sample.params.{k}")
    for p in kind.params or ():
        if p.required and p.name not in given:
            raise _fail(f"missing: every {kind.name} cell needs {p.name} (in fixed:, grid: or sample:)", file,
                        f"fixed.{p.name}")
    spec = SweepSpec(kind, title, fixed, tuple(axes), smp, file)
    if spec.size > MAX_CELLS:
        raise _fail(f"{spec.size} cells; at most {MAX_CELLS} per spec (split it)", file, "grid")
    return spec


def load_spec(path: str | Path, kinds: Mapping[str, CellKind] | None = None) -> SweepSpec:
    """Read a spec file (:mod:`moesim.safe_yaml`: bounded size, depth and aliases; no code runs);
    relative paths inside are relative to its folder."""
    from moesim.safe_yaml import read_yaml_file

    if kinds is None:
        from moesim.sweeps.kinds import KINDS

        kinds = KINDS
    path = Path(path)
    if not path.exists():
        raise UserError("no such sweep spec file", file=path)
    return spec_from_dict(read_yaml_file(path), kinds, file=str(path), base_dir=path.resolve().parent)
