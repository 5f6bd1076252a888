"""The offloaded path gives, bit for bit, what the SimPy implementation (one process per fetch and
per expert call) gave on every case of :mod:`tests.offload_cases`: the summary, the per-step and
per-(step, layer, device) tables, the timeline and the causality record."""

from __future__ import annotations

import json

import pytest

from tests.offload_cases import GOLDEN, Case, cases, fingerprint

GOLDEN_PRINTS: dict[str, str] = json.loads(GOLDEN.read_text())


def test_golden_covers_every_case():
    assert sorted(GOLDEN_PRINTS) == sorted(c.name for c in cases())


@pytest.mark.parametrize("case", list(cases()), ids=lambda c: c.name)
def test_offloaded_run_unchanged(case: Case):
    assert fingerprint(case) == GOLDEN_PRINTS[case.name]
