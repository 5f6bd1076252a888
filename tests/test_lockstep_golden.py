"""The lockstep path gives, bit for bit, what the engine before the speed-up (30bbe03; 22f1b3c for
re-placement and expert TP) gave on every case of :mod:`tests.lockstep_cases` (one SimPy event per
(step, layer), the timeline built eagerly): the summary, the per-step and per-(step, layer, device)
tables and the timeline."""

from __future__ import annotations

import json

import pytest

from tests.lockstep_cases import GOLDEN, Case, cases, fingerprint

GOLDEN_PRINTS: dict[str, str] = json.loads(GOLDEN.read_text())


def test_golden_covers_every_case():
    assert sorted(GOLDEN_PRINTS) == sorted(c.name for c in cases())


@pytest.mark.parametrize("case", list(cases()), ids=lambda c: c.name)
def test_lockstep_run_unchanged(case: Case):
    assert fingerprint(case) == GOLDEN_PRINTS[case.name]
