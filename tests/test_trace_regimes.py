"""Non-stationary synthesis: regimes found in a stream, reproduced, dialled, saved in profiles."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moesim.traces import RoutingTrace
from moesim.traces.regime_draws import fast_bank, tilt_conditionals
from moesim.traces.regimes import DriftModel, find_regimes, fit_drift
from moesim.traces.synth import generate
from moesim.traces.synth_fit import fit_trace, from_profile, profile_from_trace
from moesim.traces.synth_profile import load_profile
from moesim.workflows.drift import drift_stats, synthesis_profile
from tests.test_trace_drift import iid_trace, switching_trace


def _synth(params, tokens, seed=0, num_experts=16):
    seq, chunks = generate(params, tokens, seed=seed, chunk_tokens=1500)
    return RoutingTrace.build(np.concatenate(list(chunks)), num_experts=num_experts, seq_id=seq)


def _blocks(pops: list[np.ndarray], per: int, tokens: int = 400, seed: int = 0) -> np.ndarray:
    """``[len(pops) * per, 1, E]`` multinomial block counts, ``per`` blocks from each popularity."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.multinomial(tokens, p)[None] for p in pops for _ in range(per)])


def test_find_regimes_cuts_only_real_changes():
    e = 16
    flat = np.ones(e) / e
    hot = np.r_[np.full(4, 4.0), np.ones(e - 4)] / (16 + e - 4)
    assert find_regimes(_blocks([flat], 32)).tolist() == [0] * 32  # noise: one regime
    assert find_regimes(_blocks([flat, hot], 16)).tolist() == [0] * 16 + [1] * 16
    # a short change in the middle, then back: the two outer runs are one regime
    aba = find_regimes(_blocks([flat, hot, flat], 10))
    assert aba.tolist() == [0] * 10 + [1] * 10 + [0] * 10
    assert find_regimes(_blocks([flat], 32), regimes=3).max() == 2  # forced


def test_fitted_regimes_durations_and_the_real_movement_target():
    m = fit_drift(switching_trace(8000), np.arange(2))
    assert m.num_regimes == 2 and [len(d) for d in m.durations_rows] == [1, 1]
    assert abs(m.durations_rows[0][0] - 4000) <= 250 and sum(map(sum, m.durations_rows)) == 8000
    assert m.transitions.tolist() == [[0.0, 1.0], [1.0, 0.0]]
    assert m.initial == pytest.approx([0.5, 0.5], abs=0.04)
    assert m.regime_popularity[0, 0, :4].sum() > 0.5 and m.regime_popularity[1, 0, 8:12].sum() > 0.5
    assert 0 < m.fitted["tv_block"] < 0.5
    assert fit_drift(iid_trace(8000, np.ones(16) / 16), np.arange(2)).num_regimes == 1


def test_schedule_strings_runs_of_the_observed_lengths():
    m = DriftModel(np.full((2, 1, 4), 0.25), ((100,), (50,)), np.array([[0.0, 1.0], [1.0, 0.0]]),
                   np.array([1.0, 0.0]), block_rows=10, request_rows=10, request_set=2)
    r = m.schedule(400, np.random.default_rng(0))
    assert r.tolist() == ([0] * 100 + [1] * 50) * 2 + [0] * 100


def test_drift_scale_moves_regimes_from_the_overall_popularity():
    base = np.full((1, 4), 0.25)
    reg = np.array([[[0.7, 0.1, 0.1, 0.1]]])
    m = DriftModel(reg, ((),), np.ones((1, 1)), np.ones(1), 10, 10, 2)
    assert np.allclose(replace(m, scale=0.0).popularity(base), base)
    assert np.allclose(m.popularity(base), reg)
    assert replace(m, scale=2.0).popularity(base)[0, 0, 0] > 0.9


def test_synthetic_trace_switches_like_the_real_one_and_stays_put_at_scale_zero():
    real = switching_trace(8000)
    r = drift_stats(real, gpus=4)
    params = fit_trace(real, seed=0, trial_tokens=1024)
    assert params.drift is not None and params.drift.num_regimes == 2
    s = drift_stats(_synth(params, 8000), gpus=4)
    assert s["tv_halves"] > 4 * s["tv_halves_interleaved"]
    for d in (r, s):  # one pair of consecutive windows straddles the switch
        tv = np.sort(d["tv_consecutive_per_window"])
        assert tv[-1] > 3 * tv[-2]
    still = drift_stats(_synth(replace(params, drift=replace(params.drift, scale=0.0)), 8000), gpus=4)
    assert still["tv_halves"] < 2 * still["tv_halves_interleaved"]
    assert max(still["tv_consecutive_per_window"]) < 0.5 * max(s["tv_consecutive_per_window"])
    stat = fit_trace(iid_trace(8000, np.ones(16) / 16), seed=0, trial_tokens=1024)
    assert stat.drift.num_regimes == 1  # a stationary trace stays stationary
    assert fit_trace(real, seed=0, trial_tokens=1024, drift=False).drift is None


def test_generation_is_deterministic_with_a_drift_model():
    params = fit_trace(switching_trace(4000), seed=0, trial_tokens=1024)
    a, b = _synth(params, 3000, seed=3), _synth(params, 3000, seed=3)
    assert np.array_equal(a.expert_ids, b.expert_ids)
    assert not np.array_equal(a.expert_ids, _synth(params, 3000, seed=4).expert_ids)


def test_profiles_carry_the_drift_model_and_old_ones_load_stationary():
    real = switching_trace(6000)
    prof = synthesis_profile(real, trial_tokens=1024)
    d = prof["drift"]
    assert len(d["regimes"]) == 2 and d["fitted"]["real"]["windows"] == 8
    assert all(sorted(reg["durations_rows"]) == reg["durations_rows"] for reg in d["regimes"])
    same = from_profile(prof, num_layers=2, num_experts=16, top_k=2, trial_tokens=512)
    assert same.drift.num_regimes == 2 and same.drift.request_set == d["request_set"]
    big = from_profile(prof, num_layers=5, num_experts=64, top_k=4, trial_tokens=512, drift_scale=0.5)
    assert big.drift.regime_popularity.shape == (2, 5, 64) and big.drift.scale == 0.5
    assert big.drift.request_set == 2 * d["request_set"]  # scales with k
    ids = _synth(big, 2000, num_experts=64).expert_ids
    assert ids.shape == (2000, 5, 4) and ids.min() >= 0 and ids.max() < 64
    shipped = load_profile("mixtral-8x7b")
    assert shipped["drift"]["regimes"]  # the shipped profiles carry their drift model
    old_style = {k: v for k, v in shipped.items() if k != "drift"}
    old = from_profile(old_style, num_layers=4, num_experts=8, top_k=2, trial_tokens=256)
    assert old.drift is None  # a profile without drift (any written before it): the stationary generator
    assert "drift" not in profile_from_trace(real, drift=False)


def test_tilted_transitions_carry_each_regime_popularity_and_banks_sample_it():
    rng = np.random.default_rng(0)
    cond = rng.random((3, 6, 6)) + 0.1
    cond /= cond.sum(-1, keepdims=True)
    pop = rng.random((2, 3, 6)) + 0.2
    pop /= pop.sum(-1, keepdims=True)
    t = tilt_conditionals(cond, pop)
    for layer in (1, 2):
        flow = np.einsum("ri,rij->rj", pop[:, layer - 1], t[:, layer])
        assert np.allclose(flow, pop[:, layer], atol=1e-3)
    bank = fast_bank(rng, pop, 4096)
    assert bank.shape == (2, 3, 4096)
    freq = np.stack([[np.bincount(bank[r, layer], minlength=6) / 4096 for layer in range(3)]
                     for r in range(2)])
    assert np.allclose(freq, pop, atol=2e-3)


def test_cli_synth_report_shows_drift_and_dials_it(tmp_path, capsys):
    import json

    from moesim.cli import main

    real = tmp_path / "real.npz"
    switching_trace(6000).save(real)
    out = tmp_path / "syn.npz"
    base = ["trace", "synth", "--model", "mixtral-8x7b", "--tokens", "6000", "--fit", str(real),
            "--trial-tokens", "1024", "--out", str(out), "--gpus", "4", "--json"]
    # mixtral-8x7b has 8 experts, the toy trace 16: the fit goes through the profile (drift kept)
    assert main([*base, "--report"]) == 0
    rows = json.loads(capsys.readouterr().out)["fit_quality"]
    assert "drift_tv_halves" in rows and "drift_next_window_imbalance_greedy_4gpu" in rows
    gen = json.loads(str(np.load(out)["meta_json"]))["generator"]
    assert gen["drift"]["regimes"] == 2 and gen["drift"]["scale"] == 1.0
    assert main([*base, "--drift-scale", "0"]) == 0
    capsys.readouterr()
    assert json.loads(str(np.load(out)["meta_json"]))["generator"]["drift"]["scale"] == 0.0
    assert main([*base, "--stationary"]) == 0
    capsys.readouterr()
    assert "drift" not in json.loads(str(np.load(out)["meta_json"]))["generator"]
    assert main([*base, "--drift-scale", "-1"]) == 2
    assert "--drift-scale" in capsys.readouterr().err
    assert main([*base, "--regimes", "0"]) == 2
    prof = tmp_path / "p.json"
    assert main(["trace", "fit", str(real), "--out", str(prof), "--stationary"]) == 0
    assert "drift" not in json.loads(prof.read_text())


@pytest.mark.parametrize(("path", "value", "field"), [
    (("request_set",), 0, "drift.request_set"),
    (("request_affinity",), 1.5, "drift.request_affinity"),
    (("regimes",), [], "drift.regimes"),
    (("regimes", 0, "popularity"), [[0.5, 0.5]], "drift.regimes[0].popularity"),
    (("regimes", 0, "next"), [2.0, 0.0, 0.0], "drift.regimes[0].next"),
    (("regimes", 1, "durations_rows"), [-3], "drift.regimes[1].durations_rows"),
    (("regimes", 2, "length_log_quantiles"), [3.0, 1.0], "drift.regimes[2].length_log_quantiles"),
    (("fitted", "real"), {"gpus": "eight"}, "drift.fitted.real"),
])
def test_a_bad_drift_object_is_one_line_naming_its_field(tmp_path, path, value, field):
    import json

    from moesim.errors import UserError

    prof = load_profile("mixtral-8x7b")
    node = prof["drift"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    bad = tmp_path / "p.json"
    bad.write_text(json.dumps(prof))
    with pytest.raises(UserError) as err:
        load_profile(bad)
    assert err.value.field == field and str(bad) in str(err.value)
