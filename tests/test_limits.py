"""moesim.limits, moesim.safe_yaml and the flag types of moesim.cli.common, one behaviour at a time."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from moesim import limits, safe_yaml
from moesim.cli import common
from moesim.errors import UserError
from moesim.units import PHYSICAL

REPO = Path(__file__).resolve().parents[1]


def test_a_limit_names_itself_and_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOESIM_MAX_LAYERS", raising=False)
    assert limits.LAYERS.check(1024) == 1024
    with pytest.raises(UserError) as err:
        limits.LAYERS.check(1025, file="m.yaml", field="num_layers")
    assert str(err.value) == ("m.yaml: num_layers: 1,025 layers exceed the limit of 1,024 "
                              "(set MOESIM_MAX_LAYERS to raise it)")
    monkeypatch.setenv("MOESIM_MAX_LAYERS", "2000")
    assert limits.LAYERS.check(1025) == 1025
    monkeypatch.setenv("MOESIM_MAX_LAYERS", "1e4")
    assert limits.LAYERS.value() == 10_000
    for bad in ("many", "0", "-3", "1e999"):
        monkeypatch.setenv("MOESIM_MAX_LAYERS", bad)
        with pytest.raises(UserError, match="MOESIM_MAX_LAYERS: expected a whole number >= 1"):
            limits.LAYERS.value()


def test_the_int16_format_bound_cannot_be_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOESIM_MAX_EXPERTS", "100000")
    assert limits.EXPERTS.value() == 32_768
    with pytest.raises(UserError, match="the most the format allows is 32,768"):
        limits.EXPERTS.check(40_000)


def test_checked_int16() -> None:
    assert limits.checked_int16([-1, 0, 32767], "expert_ids").dtype == np.int16
    for values, message in (([70000], "found 70000..70000"), ([-2, 3], "found -2..3"),
                            ([1.5], "whole numbers"), ([np.nan], "whole numbers"), ([True], "integers")):
        with pytest.raises(UserError, match=message) as err:
            limits.checked_int16(values, "layer", "a.jsonl", minimum=-1)
        assert str(err.value).startswith("a.jsonl: layer: ")
    with pytest.raises(UserError, match="from 0 to 32767"):
        limits.checked_int16(np.array([-1], np.int16), "layer_ids", minimum=0)


def test_npz_inflation_allowance(monkeypatch: pytest.MonkeyPatch) -> None:
    floor = limits.INFLATION_FLOOR_BYTES
    assert limits.inflated_bytes_allowed(1000) == floor
    assert limits.inflated_bytes_allowed(10**9) == 16 * 2**30  # capped by MOESIM_MAX_ARRAY_BYTES
    assert limits.inflated_bytes_allowed(10**7) == 10**9
    monkeypatch.setenv("MOESIM_MAX_INFLATION", "1000")
    assert limits.inflated_bytes_allowed(10**7) == 10**10


def test_docs_list_every_limit_and_range() -> None:
    text = (REPO / "docs" / "limits.md").read_text(encoding="utf-8")
    for limit in limits.ALL:
        assert f"`{limit.env}`" in text, limit.env
    for kind in PHYSICAL.values():
        assert kind.what.split(" ", 1)[1] in text, kind.what
    assert "docs/limits.md" in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", sorted((REPO / "hardware").glob("*.yaml")) + sorted(
    (REPO / "moesim" / "specs" / "models").glob("*.yaml")) + [REPO / "reports" / "default.yaml"],
    ids=lambda p: p.name)
def test_safe_yaml_reads_shipped_files_as_pyyaml_does(path: Path) -> None:
    assert safe_yaml.read_yaml_file(path) == yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("text", "message"), [
    ("a: [1\n", "expected valid YAML, got a syntax error at line 2, column 1"),
    ("a: !!timestamp x", "got !!timestamp 'x' at line 1"),
    ("a: !!python/object:os.system x", "could not determine a constructor"),
    ("a: &a [*a]", "alias to its own parent"),
    ("[" * 70 + "]" * 70, "65 levels of YAML/JSON nesting exceed the limit of 64"),
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)),
     "YAML values (aliases expanded) exceed the limit of 2,000,000"),
    ("\x1f", "unacceptable character"),
    ("x: 1\n---\ny: 2\n", "but found another document"),
])
def test_safe_yaml_refuses_in_one_line(text: str, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)) as err:
        safe_yaml.parse_yaml(text, file="f.yaml")
    assert str(err.value).startswith("f.yaml: ") and "\n" not in str(err.value)


def test_safe_yaml_without_libyaml_gives_the_same_values(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (REPO / "hardware" / "devices.yaml").read_text(encoding="utf-8")
    fast = safe_yaml.parse_yaml(text)
    monkeypatch.setattr(safe_yaml, "_CLoader", None)
    assert safe_yaml.parse_yaml(text) == fast
    with pytest.raises(UserError, match="alias to its own parent"):
        safe_yaml.parse_yaml("a: &a [*a]")


def test_safe_yaml_file_size_is_checked_before_reading(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 2000, encoding="utf-8")
    monkeypatch.setenv("MOESIM_MAX_YAML_BYTES", "1000")
    with pytest.raises(UserError, match="bytes of YAML/JSON text exceed the limit of 1,000"):
        safe_yaml.read_yaml_file(path)


@pytest.mark.parametrize(("parse", "text", "value"), [
    (common.positive_int, "3", 3), (common.nonnegative_int, "0", 0),
    (common.finite_positive_float, "2.5", 2.5), (common.open_fraction, "0.5", 0.5),
    (common.int_list(1), "2,4", [2, 4]), (common.int_range(1, 10), "10", 10),
    (common.quantity("budget"), "20GiB", "20GiB"),
])
def test_flag_types_accept(parse, text: str, value: object) -> None:
    assert parse(text) == value


@pytest.mark.parametrize(("parse", "text"), [
    (common.positive_int, "0"), (common.positive_int, "-1"), (common.positive_int, "1.5"),
    (common.positive_int, "1e3"), (common.nonnegative_int, "-1"), (common.finite_positive_float, "nan"),
    (common.finite_positive_float, "inf"), (common.finite_positive_float, "0"), (common.open_fraction, "1"),
    (common.open_fraction, "nan"), (common.int_list(1), ""), (common.int_list(1), "1,0"),
    (common.int_list(0, 5), "6"), (common.int_range(1, 10), "11"),
    (common.int_range(1, limits.NODES), "5000"), (common.quantity("budget"), "-5GiB"),
    (common.quantity("budget"), "inf GiB"), (common.quantity("budget"), "5"),
])
def test_flag_types_refuse(parse, text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected|exceed"):
        parse(text)


def test_output_paths(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert common.check_output(tmp_path / "new" / "deeper" / "out.csv", flag="--out")
    assert common.check_output(tmp_path / "report", flag="--out", folder=True)
    for path, folder, message in ((tmp_path, False, "got a folder"), (tmp_path / "file", True, "got a file"),
                                  (tmp_path / "file" / "x.csv", False, "which is a file")):
        with pytest.raises(UserError, match=message):
            common.check_output(path, flag="--out", folder=folder)


def test_negative_values_reach_their_flag() -> None:
    parser = common.ArgumentParser(prog="t")
    parser.add_argument("--gpu-memory")
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(["--gpu-memory", "-5GiB", "--seed", "-1"])
    assert args.gpu_memory == "-5GiB" and args.seed == -1
