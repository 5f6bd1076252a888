"""Synthesis: determinism, shapes at any scale, fit quality against the trace it was fitted to."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cli import main
from moesim.traces import RoutingTrace
from moesim.traces.stats import trace_stats
from moesim.traces.synth import generate
from moesim.traces.synth_fit import fit_trace, from_profile, profile_from_trace
from moesim.traces.synth_profile import load_profile
from tests.conftest import shared_trace


def _rows(params, tokens, seed):
    seq, chunks = generate(params, tokens, seed=seed, chunk_tokens=700)
    return seq, np.concatenate(list(chunks))


def test_profile_rescales_to_deepseek_v3_shape():
    params = from_profile(
        load_profile("deepseek-v2-lite"), num_layers=58, num_experts=256, top_k=8, seed=1, trial_tokens=256
    )
    seq, ids = _rows(params, 2000, seed=1)
    assert ids.shape == (2000, 58, 8) and ids.dtype == np.int16
    assert ids.min() >= 0 and ids.max() < 256
    s = np.sort(ids, axis=-1)
    assert not (s[..., 1:] == s[..., :-1]).any()  # K distinct experts per token and layer
    assert (np.diff(seq) >= 0).all()


def test_same_seed_same_trace_and_different_seed_differs():
    params = from_profile(
        load_profile("mixtral-8x7b"), num_layers=32, num_experts=8, top_k=2, seed=0, trial_tokens=1024
    )
    a, b, c = _rows(params, 1500, 5), _rows(params, 1500, 5), _rows(params, 1500, 6)
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[0], b[0])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize(("drift", "min_corr"), [(False, 0.8), (True, 0.75)])
def test_fit_matches_real_statistics(drift, min_corr):
    # with the drift model the synthetic stream spends its own share of time in each of the real
    # trace's three regimes (GSM8K, HumanEval), so its overall popularity follows a little less
    real = RoutingTrace.load(shared_trace("mixtral-8x7b-instruct-vllm/mixtral_gsm8k_humaneval_decode.npz"))
    params = fit_trace(real, seed=0, drift=drift)
    seq, ids = _rows(params, 4000, seed=0)
    synth = RoutingTrace.build(ids, num_experts=8, seq_id=seq)
    r, s = trace_stats(real, cache_sizes=[4]), trace_stats(synth, cache_sizes=[4])
    assert s["summary"]["consecutive_overlap"] == pytest.approx(r["summary"]["consecutive_overlap"], abs=0.05)
    assert s["summary"]["gini"] == pytest.approx(r["summary"]["gini"], abs=0.04)
    assert s["summary"]["cross_layer_topk_mass"] == pytest.approx(
        r["summary"]["cross_layer_topk_mass"], abs=0.1
    )
    assert s["cache_hit_rate"]["lru"]["4"] == pytest.approx(r["cache_hit_rate"]["lru"]["4"], abs=0.08)
    # per-layer popularity follows the real one
    corr = np.corrcoef(np.asarray(r["load"]).ravel(), np.asarray(s["load"]).ravel())[0, 1]
    assert corr > min_corr


def test_fit_records_the_fitted_trace_by_name_not_its_path():
    path = shared_trace("mixtral-8x7b-instruct-vllm/mixtral_gsm8k_humaneval_decode.npz").resolve()
    params = fit_trace(RoutingTrace.load(path), seed=0, trial_tokens=512)
    assert params.fitted_to["trace"] == "mixtral_gsm8k_humaneval_decode.npz"


def test_shipped_traces_and_profiles_record_no_absolute_path():
    from moesim.resources import builtin_dir, builtin_names

    folder = builtin_dir("trace")
    texts = [json.dumps(RoutingTrace.load(name).meta) for name in builtin_names("trace")]
    texts += [p.read_text() for p in folder.glob("synth-profile-*.json")]
    assert len(texts) >= 4
    for text in texts:
        assert "/work/" not in text and '"/' not in text and " /" not in text


def test_profile_holds_statistics_only():
    real = RoutingTrace.load(shared_trace("flame-moe-290m/flame_moe_290m_prefill_4x512.npz"))
    prof = profile_from_trace(real)
    assert set(prof) >= {"popularity_sorted", "consecutive_overlap", "cross_layer_topk_mass", "schema"}
    text = json.dumps(prof)
    assert "expert_ids" not in text and len(text) < 60_000


def test_cli_synth_writes_model_meta(tmp_path, capsys):
    out = tmp_path / "v3.npz"
    args = ["trace", "synth", "--model", "olmoe-1b-7b", "--tokens", "600", "--seed", "2", "--out", str(out)]
    assert main([*args, "--trial-tokens", "512", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tokens"] == 600
    t = RoutingTrace.load(out)
    assert t.model_name == "olmoe-1b-7b" and t.num_experts == 64 and t.top_k == 8 and t.num_layers == 16
    assert main(["trace", "synth", "--model", "olmoe-1b-7b", "--tokens", "0", "--out", str(out)]) == 2
