"""Shared fixtures. The real traces are read from ../shared/traces (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TRACES = Path(os.environ.get("MOESIM_SHARED_TRACES", REPO.parent / "shared" / "traces"))


@pytest.fixture(scope="session")
def shared_traces() -> Path:
    """The shared real-trace folder; tests that need it skip with a reason when it is absent."""
    if not SHARED_TRACES.is_dir():
        pytest.skip(f"shared traces not found at {SHARED_TRACES} (set MOESIM_SHARED_TRACES)")
    return SHARED_TRACES


def shared_trace(name: str) -> Path:
    """Path of one shared trace file, relative to the shared traces folder; skips if missing."""
    path = SHARED_TRACES / name
    if not path.exists():
        pytest.skip(f"shared trace {path} not found")
    return path
