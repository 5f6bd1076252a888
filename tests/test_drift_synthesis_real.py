"""Issue 14's done-when on the shared real traces: a synthetic trace fitted to a real stream gives a
static plan's next-window imbalance within 20% (of the excess over 1) of the real one's, and a
stationary real stream stays stationary. Long streams are cut to their first ~24,000 tokens here;
``benchmarks/bench_drift_synth.py`` measures the whole ones."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.planners.decay import default_slots, static_plan_imbalance
from moesim.traces import RoutingTrace
from moesim.traces.drift import window_bounds, window_counts
from moesim.traces.regimes import fit_drift
from moesim.traces.synth import generate
from moesim.traces.synth_fit import fit_trace
from moesim.workflows.drift import drift_stats
from tests import drift_streams

CASES = {  # stream -> tokens (None: all)
    "deepseek puffin": 48000,
    "deepseek code | text prompts": 24000,
    "deepseek puffin shuffled (stationary)": 48000,
    "deepseek puffin | test set | puffin": 6000,
    "mixtral gsm8k | humaneval": None,
    "qwen1.5 gsm8k stream": None,
    "olmoe gsm8k stream (layer 0)": None,
    "flame 4x512 | 64x10": None,
}
SEEDS = (0, 1, 2, 3)


def _real(shared_traces, name: str) -> RoutingTrace:
    return drift_streams.STREAMS[name](shared_traces, CASES[name])


def _synth(params, real: RoutingTrace, seed: int) -> RoutingTrace:
    seq, chunks = generate(params, real.num_tokens, seed=seed)
    return RoutingTrace.build(np.concatenate(list(chunks)), num_experts=real.num_experts, seq_id=seq)


def _next(trace: RoutingTrace, gpus: int) -> float:
    counts = window_counts(trace, window_bounds(trace.num_tokens, 8, None))
    nxt, _ = static_plan_imbalance(counts, gpus=gpus, slots=default_slots(trace.num_experts, gpus))
    return float(nxt.mean())


_FITTED: dict[str, tuple] = {}


def _fitted(shared_traces, name: str) -> tuple:
    """``(real, params, synthetic traces)``, fitted once per stream for all tests of the module."""
    if name not in _FITTED:
        real = _real(shared_traces, name)
        params = fit_trace(real, seed=0)
        _FITTED[name] = (real, params, [_synth(params, real, s) for s in SEEDS])
    return _FITTED[name]


@pytest.mark.parametrize("name", list(CASES))
def test_static_plan_decays_on_synthetic_traffic_as_on_the_real(shared_traces, name):
    real, _, synth = _fitted(shared_traces, name)
    for gpus in (8, 32) if real.num_experts >= 32 else (4, 8):
        r = _next(real, gpus)
        s = float(np.mean([_next(t, gpus) for t in synth]))
        assert abs(s - r) <= 0.2 * (r - 1), f"{gpus} GPUs: real {r:.3f}, synthetic {s:.3f}"


def test_a_stationary_real_stream_stays_stationary(shared_traces):
    real, params, synth = _fitted(shared_traces, "deepseek puffin shuffled (stationary)")
    assert params.drift.num_regimes == 1
    r, s = drift_stats(real), drift_stats(synth[0])
    for d in (r, s):  # the two halves differ as little as two interleaved halves do
        assert d["tv_halves"] < 1.5 * d["tv_halves_interleaved"]
    # consecutive windows move about as far beyond the noise floor (> 1 for both: a window holds
    # few of these long prompts, and its interleaved halves are pieces of the same ones)
    assert s["drift_ratio"] == pytest.approx(r["drift_ratio"], rel=0.25)


@pytest.mark.parametrize(("name", "tokens", "regimes"), [
    ("deepseek code | text prompts", 60000, 2),  # the switch from code prompts to the others
    ("deepseek puffin | test set | puffin", 3000, 2),  # A | B | A: the two Puffin parts are one regime
    ("mixtral gsm8k | humaneval", None, 3),
    ("deepseek puffin shuffled (stationary)", 60000, 1),
    ("deepseek puffin", 60000, 1),
])
def test_changes_of_subject_are_found_as_regimes(shared_traces, name, tokens, regimes):
    real = drift_streams.STREAMS[name](shared_traces, tokens)
    model = fit_drift(real, np.arange(real.num_layers))
    assert model.num_regimes == regimes
    if name.startswith("deepseek code"):  # cut where the code prompts end
        first = real.meta["concatenated_rows"][0]
        assert abs(model.durations_rows[0][0] - first) < model.block_rows
