"""A plain (non-editable) install carries the built-in data: profiles, model specs, shipped traces."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
         str(REPO)],
        check=True,
        capture_output=True,
    )
    (whl,) = out.glob("moesim-*.whl")
    return whl


def test_wheel_holds_builtin_data_and_mapped_packages(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.name for p in (REPO / "hardware").glob("*.yaml")}
    assert expected, "no hardware profiles in the repository"
    assert {n.rsplit("/", 1)[-1] for n in names if n.startswith("moesim/data/hardware/")} >= expected
    models = {p.name for p in (REPO / "moesim" / "specs" / "models").glob("*.yaml")}
    assert {n.rsplit("/", 1)[-1] for n in names if n.startswith("moesim/specs/models/")} >= models
    traces = {p.name for p in (REPO / "traces").glob("*.npz")}
    assert {n.rsplit("/", 1)[-1] for n in names if n.startswith("moesim/data/traces/")} >= traces
    assert "moesim/planners/__init__.py" in names
    assert "moesim/kernels/__init__.py" in names
    assert {"moesim/serving/schedulers/__init__.py", "moesim/serving/workloads/chat.yaml"} <= names
    assert not any(n.startswith(("planners/", "kernels/", "hardware/", "traces/")) for n in names)
