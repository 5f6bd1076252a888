"""Fuzzing the loaders (tests/fuzzing.py): 150 inputs per loader here, 5,000 under ``-m slow``.

Only UserError (one line) may escape a loader, and a loader's memory may grow by at most 512 MiB.
"""

from __future__ import annotations

import time

import pytest

from tests.fuzzing import TARGETS, run_fuzz

CI_EXAMPLES = 150
SLOW_EXAMPLES = 5_000


@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz(name: str) -> None:
    assert run_fuzz(name, CI_EXAMPLES) >= CI_EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TARGETS))
def test_fuzz_thoroughly(name: str) -> None:
    t0 = time.perf_counter()
    calls = run_fuzz(name, SLOW_EXAMPLES, derandomize=False)
    print(f"fuzz {name}: {calls} inputs in {time.perf_counter() - t0:.1f} s")
    assert calls >= SLOW_EXAMPLES
