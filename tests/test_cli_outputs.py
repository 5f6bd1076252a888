"""CLI output contracts: ``schema`` in every ``--json``, ``plan --csv``, ``trace fit --json``, and a
missing Parquet engine refused before the run."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
from pathlib import Path

import pytest

from moesim.cli import main

CLI = Path(__file__).resolve().parents[1] / "moesim" / "cli"


def test_every_print_json_call_names_its_verb():
    """Static: each ``print_json(...)`` in the CLI passes ``verb=`` (so ``schema`` is never missing)."""
    missing = []
    for path in sorted(CLI.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            is_call = isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print_json"
            if is_call and not any(k.arg == "verb" for k in node.keywords):
                missing.append(f"{path.name}:{node.lineno}")
    assert not missing, missing


@pytest.mark.parametrize(("argv", "schema"), [
    (["hw", "show", "h100x8"], "moesim-hw-show/1"),
    (["hw", "list"], "moesim-hw-list/1"),
    (["model", "show", "mixtral-8x7b"], "moesim-model-show/1"),
    (["model", "list"], "moesim-model-list/1"),
    (["trace", "info", "deepseek-v2-lite-synth"], "moesim-trace-info/1"),
    (["simulate", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", "deepseek-v2-lite-synth",
      "--batch", "8", "--steps", "2"], "moesim-simulate/1"),
])
def test_json_carries_schema(capsys, argv, schema):
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["schema"] == schema


def test_trace_fit_json(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert main(["trace", "fit", "deepseek-v2-lite-synth", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "moesim-trace-fit/1" and doc["path"] == str(out) and out.exists()
    assert doc["num_experts"] == 64


def test_plan_csv(tmp_path, capsys):
    out = tmp_path / "cmp.csv"
    assert main(["plan", "--hw", "h100x8", "--planner", "eplb", "--steps", "2", "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["planner"] for r in rows] == ["eplb"]
    assert float(rows[0]["gpu_imbalance_eval"]) >= 1.0 and "a2a_bytes.nvlink" in rows[0]


def test_parquet_without_pyarrow_refused_before_the_run(tmp_path, capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pyarrow", "fastparquet") else real(name, *a))
    argv = ["simulate", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", "deepseek-v2-lite-synth",
            "--out", str(tmp_path / "x.parquet")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install pyarrow" in err and "\n" not in err
    assert not (tmp_path / "x.parquet").exists()
