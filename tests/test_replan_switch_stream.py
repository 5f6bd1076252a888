"""On the shipped subject-switch stream (`trace synth --switches 1`), re-balancing beats a static plan
after paying its migration, as the default report's re-placement study shows (reports/default.yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.reports.sweep import load_sweep
from moesim.workflows.replan_stream import StreamSetting, replay_stream

STREAM = "deepseek-v2-lite-switch"


@pytest.fixture(scope="module")
def study():
    """The default report's study of the shipped stream (its settings, not a copy of them)."""
    sweep = load_sweep(Path(__file__).resolve().parents[1] / "reports" / "default.yaml")
    (s,) = [r for r in sweep.replan if r.trace == (STREAM,)]
    return s


def _run(s, policy: str, migration: str) -> dict:
    return replay_stream(StreamSetting(
        hw=s.hw, model=s.model, traces=s.trace, policy=policy, interval_steps=s.interval,
        window_steps=s.window or s.interval, threshold=s.threshold, migration=migration, planner=s.planner,
        batch_tokens=s.batch_tokens, train_fraction=s.train_fraction, slots_per_gpu=s.slots_per_gpu))


def test_periodic_and_drift_beat_static_in_balance_and_step_time_after_migration(study):
    static = _run(study, "static", "blocking")
    for policy in ("periodic", "drift"):
        r = _run(study, policy, "overlapped")
        assert r["rebalances"] >= 1 and r["migration_bytes"] > 0  # the copies were paid for
        assert r["imbalance"] < static["imbalance"] - 0.05, (policy, r["imbalance"], static["imbalance"])
        assert r["step_time_s"] < 0.98 * static["step_time_s"], (policy, r["step_time_s"])
    # blocking copies stop serving: on a stream this short the stalls outweigh the better balance
    blocking = _run(study, "drift", "blocking")
    assert blocking["stall_s"] > 0 and blocking["imbalance"] < static["imbalance"] - 0.05
