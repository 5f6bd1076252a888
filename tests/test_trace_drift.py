"""Drift statistics: window total variation, its noise floor, a static plan's next-window imbalance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import UserError
from moesim.planners.base import gpu_imbalance
from moesim.planners.decay import load_only_request, static_plan_imbalance
from moesim.planners.greedy import plan_greedy
from moesim.traces import LoadCounts, RoutingTrace
from moesim.traces.drift import interleaved_halves, range_counts, total_variation
from moesim.workflows.drift import compare_drift, drift_stats


def iid_trace(n: int, popularity: np.ndarray, *, layers: int = 2, k: int = 2, seq_len: int = 16,
              seed: int = 0) -> RoutingTrace:
    """Tokens drawing k distinct experts from ``popularity`` ([E] or [n, E] per row), independently."""
    rng = np.random.default_rng(seed)
    pop = np.broadcast_to(np.asarray(popularity, np.float64), (n, np.shape(popularity)[-1]))
    keys = np.log(rng.random((n, layers, pop.shape[1]))) / pop[:, None, :]  # Efraimidis-Spirakis
    ids = np.argsort(-keys, axis=-1)[..., :k]
    return RoutingTrace.build(ids, num_experts=pop.shape[1], seq_id=np.arange(n) // seq_len)


def switching_trace(n: int = 8000, e: int = 16, seed: int = 0) -> RoutingTrace:
    """The first half prefers experts 0-3, the second half experts 8-11: a change of subject."""
    a, b = np.ones(e), np.ones(e)
    a[:4], b[8:12] = 8.0, 8.0
    pop = np.where(np.arange(n)[:, None] < n // 2, a / a.sum(), b / b.sum())
    return iid_trace(n, pop, seed=seed)


def test_total_variation_of_shares():
    assert total_variation(np.array([3, 0]), np.array([0, 5])) == 1.0
    assert total_variation(np.array([2, 2]), np.array([5, 5])) == 0.0
    assert total_variation(np.array([[1, 3]]), np.array([[3, 1]]))[0] == pytest.approx(0.5)
    assert np.isnan(total_variation(np.array([0, 0]), np.array([1, 0])))


def test_interleaved_halves_partition_the_window_by_whole_sequences():
    t = iid_trace(640, np.ones(8) / 8, seq_len=20)
    a, b = interleaved_halves(t, 100, 500)
    assert np.array_equal(a + b, range_counts(t, 100, 500))
    assert abs(int(a.sum()) - int(b.sum())) <= 2 * 20 * 2 * 2  # about half each (sequences of 20 rows)
    one = RoutingTrace.build(np.asarray(t.expert_ids), num_experts=8)  # one sequence: runs of 32 rows
    a1, b1 = interleaved_halves(one, 0, 640)
    assert np.array_equal(a1 + b1, range_counts(one, 0, 640))


def test_stationary_traffic_moves_like_its_noise_floor_and_a_switch_does_not():
    flat = drift_stats(iid_trace(8000, np.r_[np.full(4, 4.0), np.ones(12)] / 28), gpus=4)
    assert 0.75 < flat["drift_ratio"] < 1.35
    assert flat["tv_halves"] < 2 * flat["tv_halves_interleaved"]
    sw = drift_stats(switching_trace(), gpus=4)
    assert sw["tv_halves"] > 5 * sw["tv_halves_interleaved"]
    per = sw["next_window_imbalance_per_window"]
    assert int(np.argmax(per)) == 3  # the plan of window 3 meets the other subject in window 4
    assert per[3] > 1.5 and sw["same_window_imbalance"] < 1.1
    assert sw["next_window_imbalance"] > flat["next_window_imbalance"]


def test_next_window_imbalance_is_the_planners_imbalance_on_the_next_window():
    t = switching_trace(2000)
    d = drift_stats(t, windows=4, gpus=4, slots_per_gpu=5)
    load = np.stack([range_counts(t, a, a + 500) for a in range(0, 2000, 500)]).astype(float)
    manual = [gpu_imbalance(plan_greedy(load_only_request(load[w], gpus=4, slots=5)), load[w + 1])
              for w in range(3)]
    assert d["next_window_imbalance_per_window"] == pytest.approx(manual)
    assert d["window_rows"] == 500 and d["slots_per_gpu"] == 5 and d["planner"] == "greedy"
    nxt, same = static_plan_imbalance(load, gpus=4, slots=5, planner="engine-default")
    assert len(nxt) == 3 and len(same) == 4 and (np.asarray(same) >= 1).all()


def test_window_rows_and_counts_sources():
    t = switching_trace(2000)
    d = drift_stats(t, window_rows=300, gpus=4)
    assert d["windows"] == 6 and d["rows_used"] == 1800
    counts = LoadCounts(np.stack([range_counts(t, a, a + 100) for a in range(0, 2000, 100)]),
                        layer_ids=np.arange(2))
    c = drift_stats(counts, windows=4, gpus=4)
    assert c["window_rows"] == 5 and c["tv_halves"] > 3 * c["tv_halves_interleaved"]


@pytest.mark.parametrize(("kw", "field"), [({"windows": 5000}, "windows"), ({"gpus": 0}, "devices"),
                                           ({"planner": "nope"}, "planner"),
                                           ({"slots_per_gpu": 1}, "slots_per_device")])
def test_bad_drift_arguments_are_user_errors(kw, field):
    with pytest.raises(UserError) as err:
        drift_stats(switching_trace(1000), **{"gpus": 4, **kw})
    assert err.value.field == field


def test_compare_drift_uses_the_real_window_size():
    real, synth = switching_trace(4000), switching_trace(8000, seed=1)
    rows = compare_drift(real, synth, gpus=4)
    assert set(rows) >= {"drift_tv_consecutive", "drift_ratio", "drift_next_window_imbalance_greedy_4gpu"}
    recorded = drift_stats(real, gpus=4)
    assert compare_drift(recorded, synth) == rows  # a profile's recorded statistics give the same rows
    assert compare_drift(real, switching_trace(600), gpus=4) == {}  # shorter than two real windows


def test_cli_stats_drift(tmp_path, capsys):
    path = tmp_path / "sw.npz"
    switching_trace(4000).save(path)
    assert main(["trace", "stats", str(path), "--drift", "--gpus", "4", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)["drift"]
    assert d["gpus"] == 4 and d["windows"] == 8 and max(d["next_window_imbalance_per_window"]) > 1.5
    assert main(["trace", "stats", str(path), "--drift", "--gpus", "4", "--window-tokens", "1000"]) == 0
    assert "drift over 4 windows of 1000 rows" in capsys.readouterr().out
    assert main(["trace", "stats", str(path), "--drift", "--slots-per-gpu", "1"]) == 2
    assert "--slots-per-gpu" in capsys.readouterr().err
    assert main(["trace", "stats", str(path), "--drift", "--windows", "2", "--window-tokens", "9"]) == 2
