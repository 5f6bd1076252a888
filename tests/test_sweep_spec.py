"""The sweep spec: field-by-field errors, grid and sample expansion, paths, sizes and command lines."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import numpy as np
import pytest

from moesim.errors import UserError
from moesim.sweeps import load_spec, spec_from_dict
from moesim.sweeps.kinds import KINDS
from moesim.sweeps.sampling import Range, sample, unit_points
from moesim.sweeps.schema import format_bytes

GiB = float(1 << 30)
BASE = {"hw": "rtx4090-workstation", "model": "mixtral-8x7b", "trace": "mixtral-8x7b-synth"}


def _spec(**top: object) -> dict:
    return {"kind": "simulate", "fixed": dict(BASE), **top}


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ([1], "", "expected a mapping"),
        ({**_spec(), "grids": {}}, "grids", "unknown key"),
        ({"kind": "simulat"}, "kind", "expected one of simulate, plan"),
        (_spec(grid={"cach": ["lru"]}), "grid.cach", "unknown parameter 'cach' of simulate"),
        (_spec(grid={"cache": ["lru", "fifo"]}), "grid.cache[1]", "expected one of"),
        (_spec(grid={"batch": [1, 0]}), "grid.batch[1]", ">= 1"),
        (_spec(grid={"batch": [1.5]}), "grid.batch[0]", "an integer"),
        (_spec(grid={"batch": []}), "grid.batch", "non-empty list"),
        (_spec(grid={"expert_cache": ["16 GHz"]}), "grid.expert_cache[0]", "a size"),
        (_spec(grid={"hw": ["h100x8"]}), "grid.hw", "also set in fixed"),
        ({"kind": "simulate", "fixed": {"hw": "h100x8", "model": "mixtral-8x7b"}}, "fixed.trace", "missing"),
        (_spec(fixed={**BASE, "hw": "no-such-box"}), "fixed.hw", "unknown hardware profile"),
        (_spec(grid={"pair": [{"cache": "lru", "miss": "cpu"}, {"cache": "lfu"}]}), "grid.pair[1]",
         "the same parameters"),
        (_spec(sample={"method": "sobol", "n": 4, "params": {"batch": {"min": 1, "max": 8}}}),
         "sample.method", "random, lhs"),
        (_spec(sample={"n": 0, "params": {"batch": {"min": 1, "max": 8}}}), "sample.n", "number of points"),
        (_spec(sample={"n": 4, "params": {"batch": {"min": 8, "max": 1}}}), "sample.params.batch",
         "min <= max"),
        (_spec(sample={"n": 4, "params": {"expert_cache": {"min": 0, "max": "8 GiB", "log": True}}}),
         "sample.params.expert_cache.log", "min > 0"),
        (_spec(sample={"n": 4, "params": {"cache": {"min": 0, "max": 8}}}), "sample.params.cache",
         "choices"),
        (_spec(sample={"n": 4, "params": {"batch": {"max": 8}}}), "sample.params.batch.min", "missing"),
        (_spec(grid={"batch": list(range(1, 1001)), "seed": list(range(101))}), "grid", "at most"),
    ],
)
def test_errors_name_the_file_and_the_field(data: object, field: str, message: str) -> None:
    with pytest.raises(UserError) as e:
        spec_from_dict(data, KINDS, file="s.yaml")
    assert e.value.file == "s.yaml"
    assert (e.value.field or "") == field, str(e.value)
    assert message in e.value.message


def test_grid_is_the_product_of_the_axes_in_order() -> None:
    spec = spec_from_dict(_spec(grid={"cache": ["lru", "lfu"], "expert_cache": ["11 GiB", 16 * GiB],
                                      "pair": [{"miss": "fetch", "prefetch": "none"},
                                               {"miss": "cpu", "prefetch": "oracle"}]}), KINDS)
    cells = spec.cells()
    assert spec.size == len(cells) == 8
    assert [(c.p["cache"], c.p["expert_cache"] / GiB, c.p["miss"], c.p["prefetch"]) for c in cells[:3]] == [
        ("lru", 11.0, "fetch", "none"), ("lru", 11.0, "cpu", "oracle"), ("lru", 16.0, "fetch", "none")]
    assert all(c.p["hw"] == BASE["hw"] for c in cells)
    # "16 GiB" and 16 * 2**30 bytes are one cell.
    same = spec_from_dict(_spec(grid={"expert_cache": ["16 GiB", 16 * GiB, "16GiB"]}), KINDS)
    assert len(same.cells()) == 1


def test_latin_hypercube_uses_each_stratum_once() -> None:
    u = unit_points("lhs", 10, 3, seed=7)
    assert ((u >= 0) & (u < 1)).all()
    for j in range(3):
        assert sorted(np.floor(u[:, j] * 10).astype(int)) == list(range(10))
    assert np.array_equal(u, unit_points("lhs", 10, 3, seed=7))
    assert not np.array_equal(u, unit_points("lhs", 10, 3, seed=8))
    ranges = {"batch": Range(1, 64, log=True, integer=True), "cache": Range(choices=("a", "b"))}
    pts = sample("lhs", 8, 0, ranges)
    assert all(isinstance(p["batch"], int) and 1 <= p["batch"] <= 64 for p in pts)
    assert sorted(p["cache"] for p in pts) == ["a"] * 4 + ["b"] * 4  # strata split the choices evenly


def test_samples_times_grid_points() -> None:
    ranges = {"batch": {"min": 1, "max": 32}, "expert_cache": {"min": "8 GiB", "max": "20 GiB"}}
    spec = spec_from_dict(_spec(grid={"cache": ["lru", "lfu"]},
                                sample={"method": "random", "n": 5, "seed": 3, "params": ranges}), KINDS)
    cells = spec.cells()
    assert spec.size == 10 and len(cells) <= 10
    draws = [(c.p["batch"], c.p["expert_cache"]) for c in cells if c.p["cache"] == "lru"]
    assert draws == [(c.p["batch"], c.p["expert_cache"]) for c in cells if c.p["cache"] == "lfu"]
    assert all(8 * GiB <= m <= 20 * GiB and float(m).is_integer() for _, m in draws)


def test_paths_are_relative_to_the_spec_and_yaml_is_safe(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    hw = Path(__file__).resolve().parents[1] / "hardware" / "h100x8.yaml"
    (tmp_path / "box.yaml").write_text(hw.read_text())
    spec = tmp_path / "sub" / "s.yaml"
    spec.write_text("kind: simulate\nfixed: {hw: ../box.yaml, model: mixtral-8x7b, "
                    "trace: mixtral-8x7b-synth}\n")
    (cell,) = load_spec(spec).cells()
    assert Path(cell.p["hw"]).resolve() == tmp_path / "box.yaml"
    spec.write_text("kind: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(UserError, match="expected valid YAML"):
        load_spec(spec)
    with pytest.raises(UserError, match="no such sweep spec"):
        load_spec(tmp_path / "absent.yaml")


@pytest.mark.parametrize(("n", "text"), [(16 * GiB, "16GiB"), (21.1 * GiB, "21.1GiB"), (12345, "12345B"),
                                         (0.5 * GiB, "536870912B")])
def test_sizes_on_the_command_line_read_back_exactly(n: float, text: str) -> None:
    from moesim.units import parse_quantity

    assert format_bytes(n) == text
    assert parse_quantity(text, "bytes") == n


def test_each_cell_command_parses_to_its_parameters() -> None:
    """The command line a row carries is the one ``moesim simulate`` / ``moesim plan`` accepts, with the
    cell's values."""
    from moesim.cli import build_parser

    parser = build_parser()
    for kind, extra in (("simulate", {"cache": "lru", "expert_cache": "21.1 GiB", "check_invariants": True,
                                      "batch": 4}),
                        ("plan", {"planner": "eplb", "time_limit_s": 5.0, "batch_tokens": 512}),
                        ("serve", {"model": "deepseek-v2-lite", "trace": "deepseek-v2-lite-synth",
                                   "workload": "chat", "arrival_rate": 12.5, "duration_s": 30.0,
                                   "scheduler": "disaggregated", "slo": "ttft=200ms", "kv_block": 32,
                                   "check_invariants": True})):
        fixed = ({**BASE, **extra} if kind == "simulate" else {"hw": "h100x8", **extra})
        (cell,) = spec_from_dict({"kind": kind, "fixed": fixed}, KINDS).cells()
        argv = shlex.split(KINDS[kind].command(cell.p))
        assert argv[0] == "moesim" and argv[-1] == "--json"
        args: argparse.Namespace = parser.parse_args(argv[1:])
        for p in KINDS[kind].params or ():
            if p.name in cell.p:
                got = getattr(args, p.flag.lstrip("-").replace("-", "_"))
                want = cell.p[p.name]
                if p.type == "bytes":
                    from moesim.units import parse_quantity

                    got = parse_quantity(got, "bytes")
                assert got == want, (p.name, got, want)
