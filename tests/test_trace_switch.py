"""Subject switches in ``trace synth``: the hot set carries its share, moves, and the stream drifts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest

from moesim.cli import main
from moesim.traces import RoutingTrace
from moesim.traces.drift import movement, window_bounds
from moesim.traces.synth import generate
from moesim.traces.synth_fit import from_profile
from moesim.traces.synth_profile import load_profile
from moesim.traces.synth_switch import SubjectSwitch

SHAPE = {"num_layers": 26, "num_experts": 64, "top_k": 6}


def _params(stationary: bool = True):
    prof = load_profile("deepseek-v2-lite")
    if stationary:
        prof = {k: v for k, v in prof.items() if k != "drift"}
    return from_profile(prof, seed=3, trial_tokens=256, **SHAPE)


@pytest.mark.parametrize(("stationary", "digest"), [
    (True, "9aca964f00ddc0640905247ae723d31ac5106e7817c3f6639e0904f178b28da4"),
    (False, "4304a41d7d7606a6a6a0c855b09c3268adfb9d775b8ff7eac7a9b40257090c00"),
])
def test_without_switches_the_output_is_the_generator_s_as_before(stationary, digest):
    # digests of the same call before subject switches existed (commit 30bbe03)
    seq, chunks = generate(_params(stationary), 1500, seed=3)
    ids = np.concatenate(list(chunks))
    assert hashlib.sha256(ids.tobytes() + seq.tobytes()).hexdigest() == digest


def _switched(tokens: int, switches: int, share: float, stationary: bool = True, seed: int = 1):
    sw = SubjectSwitch.for_stream(tokens, switches=switches, every=None, hot_experts=8, hot_share=share)
    params = replace(_params(stationary), switch=sw)
    seq, chunks = generate(params, tokens, seed=seed)
    ids = np.concatenate(list(chunks))
    trace = RoutingTrace.build(ids, num_experts=64, seq_id=seq, phase=0, layer_ids=np.arange(1, 27))
    return trace, sw


def _hot_share(trace: RoutingTrace, rows: tuple[int, int], hot: np.ndarray) -> np.ndarray:
    c = trace.rows(*rows).load_matrix(windows=1)[0].astype(float)
    return np.take_along_axis(c / c.sum(1, keepdims=True), hot.astype(np.int64), axis=1).sum(1)


@pytest.mark.parametrize("stationary", [True, False])
def test_each_subject_s_hot_set_carries_its_share_and_the_set_moves(stationary, tmp_path):
    trace, sw = _switched(6000, 2, 0.5, stationary)
    from moesim.traces.synth_switch import HotDraws
    sets = HotDraws.make(sw, seed=1, seq_id=trace.seq_id, popularity=_params(stationary).popularity,
                         top_k=6).sets
    assert sets.shape == (3, 26, 8)
    for s in range(1, 3):  # it moves: no expert of the last subject's hot set is hot again
        for layer in range(26):
            assert not set(sets[s, layer]) & set(sets[s - 1, layer])
    first = np.r_[0, np.flatnonzero(np.diff(trace.seq_id)) + 1]
    edges = [int(first[np.searchsorted(first, s * sw.every_rows)]) for s in range(3)] + [6000]
    for s in range(3):
        own = _hot_share(trace, (edges[s], edges[s + 1]), sets[s])
        assert 0.47 <= own.mean() <= 0.53 and own.min() >= 0.42, (s, own.mean(), own.min())
        for other in {0, 1, 2} - {s}:
            assert _hot_share(trace, (edges[s], edges[s + 1]), sets[other]).mean() < 0.2


def test_a_switch_moves_the_load_far_above_the_noise_floor_and_a_fixed_hot_set_does_not():
    moving, _ = _switched(6000, 1, 0.5)
    fixed, _ = _switched(6000, 0, 0.5)
    halves = window_bounds(6000, 2, None)
    m, f = movement(moving, halves), movement(fixed, halves)
    assert m["drift_ratio"] > 4.0 and m["tv_halves"] > 2 * m["tv_halves_interleaved"]
    assert f["drift_ratio"] < 1.6 and f["tv_halves"] < 1.5 * f["tv_halves_interleaved"]


def test_hot_slots_stay_hot_through_the_layers():
    trace, sw = _switched(3000, 0, 0.5)
    from moesim.traces.synth_switch import HotDraws
    sets = HotDraws.make(sw, seed=1, seq_id=trace.seq_id, popularity=_params().popularity, top_k=6).sets[0]
    ids = trace.rows(0, 3000).expert_ids
    hot = np.stack([np.isin(ids[:, layer], sets[layer]) for layer in range(26)], axis=1)  # [N, L, K]
    same = (hot[:, 1:] == hot[:, :-1]).mean()
    assert same > 0.8  # independent layers would agree on about 0.5^2 + 0.5^2 = 0.5 of the slots


def test_cli_switch_flags_meta_and_bad_values(tmp_path, capsys):
    out = tmp_path / "s.npz"
    base = ["trace", "synth", "--model", "deepseek-v2-lite", "--tokens", "1200", "--trial-tokens", "256",
            "--stationary", "--out", str(out)]
    assert main([*base, "--switch-every", "400", "--hot-experts", "4", "--hot-share", "0.4"]) == 0
    sw = RoutingTrace.load(out).meta["generator"]["switch"]
    assert (sw["every_rows"], sw["hot_experts"], sw["hot_share"], sw["subjects"]) == (400, 4, 0.4, 3)
    assert np.asarray(sw["hot_sets"]).shape == (3, 26, 4)
    capsys.readouterr()
    for extra, field in ((["--hot-share", "0.4"], "--hot-share"),
                         (["--switches", "1", "--hot-experts", "1", "--hot-share", "0.5"], "--hot-share"),
                         (["--switches", "1", "--hot-experts", "64"], "--hot-experts"),
                         (["--switch-every", "10"], "--switch-every")):
        out.unlink(missing_ok=True)
        assert main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and field in err, err
        assert not out.exists()
    assert main([*base, "--switches", "1", "--switch-every", "600"]) == 2  # one or the other
    assert main([*base, "--switches", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == 1200
    sw = RoutingTrace.load(out).meta["generator"]["switch"]
    assert (sw["every_rows"], sw["hot_experts"], sw["hot_share"]) == (600, 8, 0.35)
