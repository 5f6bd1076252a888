"""Shared fixtures. The real traces are read from ../shared/traces (never copied into the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TRACES = Path(os.environ.get("MOESIM_SHARED_TRACES", REPO.parent / "shared" / "traces"))
MIXTRAL_FIXED_BYTES = 2_684_354_560 + 524_288_000 + 2_097_152 + 536_870_912 + 163_840
"""Mixtral-8x7B in bf16 on one GPU, batch 1, by hand: attention 32 x 4096 x 128 x (2 x 32 + 2 x 8) x 2 B;
embedding + LM head 2 x 32000 x 4096 x 2 B; router 32 x 4096 x 8 x 2 B; KV cache 4096 tokens x 32 x
(2 x 8 x 128) x 2 B; activations (2 x 4096 + 2 x (2 x 4096 + 2 x 14336)) x 2 B."""


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
