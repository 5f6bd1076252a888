"""Fitting the synthetic-trace generator (``moesim.traces.synth``) to a real trace or a statistics profile.

``fit_trace`` keeps a real trace's shape and its measured cross-layer conditionals; ``from_profile``
rescales a statistics-only profile (``moesim.traces.synth_profile``) to any layers, experts and top-k.
Both calibrate reuse, locality and cross-layer following on short trial traces until the trial's
consecutive-token overlap, SRP(16) and cross-layer top-K mass match the targets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.limits import SYNTH_TOKENS
from moesim.traces import drift_calibration, drift_profile
from moesim.traces.stats import cross_layer, trace_stats
from moesim.traces.synth import MIN_TRIAL_TOKENS, SRP_M, SynthParams, check_seed, generate
from moesim.traces.synth_profile import PROFILE_SCHEMA, check_profile
from moesim.traces.trace import UNKNOWN, RoutingTrace


def _depth_map(target: int, source: int) -> np.ndarray:
    """Source layer column for each target column, by relative depth."""
    if target == 1 or source == 1:
        return np.zeros(target, np.int64)
    return np.round(np.arange(target) * (source - 1) / (target - 1)).astype(np.int64)


def _rescale_curve(curve: np.ndarray, e: int) -> np.ndarray:
    """A sorted (descending) popularity curve of any length resampled to ``e`` experts, sum 1."""
    x_src = (np.arange(len(curve)) + 0.5) / len(curve)
    x = (np.arange(e) + 0.5) / e
    y = np.maximum(np.interp(x, x_src, np.asarray(curve, np.float64)), 1e-12)
    return y / y.sum()


def _seq_stats(trace: RoutingTrace) -> tuple[float, float, int]:
    _, counts = np.unique(np.asarray(trace.seq_id), return_counts=True)
    logs = np.log(np.maximum(counts, 1))
    return float(logs.mean()), float(logs.std()), int(counts.max())


def _measure(params: SynthParams, seed: int, tokens: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Consecutive overlap per layer, cross-layer top-K mass and SRP(16) of a trial trace."""
    seq, chunks = generate(params, tokens, seed=seed)
    ids = np.concatenate(list(chunks))
    trial = RoutingTrace.build(ids, num_experts=params.num_experts, seq_id=seq)
    st = trace_stats(trial, segment_lengths=(SRP_M,), cache_sizes=())
    aff = np.r_[np.nan, np.asarray(st["cross_layer"]["topk_mass"], np.float64)]
    overlap = np.nan_to_num(np.asarray(st["per_layer"]["consecutive_overlap"], np.float64))
    return overlap, aff, float(st["local_consistency"]["srp"][str(SRP_M)])


def _calibrate(
    params: SynthParams,
    overlap: np.ndarray,
    affinity: np.ndarray | None,
    seed: int,
    trial_tokens: int,
    srp: float | None = None,
) -> SynthParams:
    """Set ``follow`` (when ``affinity`` is given), ``locality`` (when ``srp`` is) and ``reuse`` on trials."""
    from dataclasses import replace

    lo, hi = np.zeros(params.num_layers), np.ones(params.num_layers)
    if affinity is not None:
        for _ in range(7):  # bisection on follow, per layer (reuse 0 during this search)
            mid = (lo + hi) / 2
            _, aff, _ = _measure(replace(params, follow=mid, reuse=np.zeros_like(mid)), seed, trial_tokens)
            low = np.nan_to_num(aff, nan=np.inf) < affinity
            lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
        params = replace(params, follow=np.where(np.isnan(affinity), 0.0, (lo + hi) / 2))

    def set_reuse(p: SynthParams) -> SynthParams:
        o0, _, _ = _measure(replace(p, reuse=np.zeros(p.num_layers)), seed, trial_tokens)
        return replace(p, reuse=np.clip((overlap - o0) / np.maximum(1 - o0, 1e-9), 0.0, 0.98))

    params = set_reuse(params)
    if srp is not None and np.isfinite(srp):
        for _ in range(2):  # locality and reuse both raise SRP: alternate the two fits
            a, b = 0.0, 0.95
            for _ in range(6):
                mid = (a + b) / 2
                _, _, got = _measure(replace(params, locality=mid), seed, trial_tokens)
                a, b = (mid, b) if got < srp else (a, mid)
            params = set_reuse(replace(params, locality=(a + b) / 2))
    return params


def fit_trace(
    trace: RoutingTrace,
    *,
    num_layers: int | None = None,
    num_experts: int | None = None,
    top_k: int | None = None,
    seed: int = 0,
    trial_tokens: int = 4096,
    drift: bool = True,
    drift_scale: float = 1.0,
    num_regimes: int | None = None,
) -> SynthParams:
    """Parameters fitted to ``trace``; the full conditional is used when the expert count is kept.

    With ``drift`` the generator also learns the trace's regimes and request spread
    (``moesim.traces.regimes``), scaled by ``drift_scale``; ``num_regimes`` forces their number.
    """
    _check_fit_args(trace, seed, trial_tokens)
    e_src, k_src = trace.num_experts, trace.top_k
    e, k = num_experts or e_src, top_k or k_src
    layers = num_layers or trace.num_layers
    if e != e_src or k != k_src:  # different shape: go through the statistics profile
        return from_profile(
            profile_from_trace(trace, drift=drift, seed=seed, trial_tokens=trial_tokens,
                               num_regimes=num_regimes),
            num_layers=layers,
            num_experts=e,
            top_k=k,
            seed=seed,
            trial_tokens=trial_tokens,
            drift_scale=drift_scale,
        )
    st = trace_stats(trace, segment_lengths=(SRP_M,), cache_sizes=(), pair_tokens=200_000)
    m = _depth_map(layers, trace.num_layers)
    load = np.asarray(st["load"], np.float64) + 0.5
    pop = (load / load.sum(1, keepdims=True))[m]
    co = cross_layer(trace, 200_000)["cooccurrence"].astype(np.float64)
    measured = np.zeros((layers, e, e))
    for layer in range(1, layers):
        src = m[layer]
        c = co[src - 1] if src >= 1 else np.outer(pop[layer - 1], pop[layer]) * 1000
        if m[layer - 1] != src - 1:  # layers not adjacent in the source: no measured transition
            c = np.outer(pop[layer - 1], pop[layer]) * 1000
        row = c.sum(1, keepdims=True)
        measured[layer] = (c + 0.5 * pop[layer]) / (row + 0.5)
    cond = _sharpen(measured, pop, float(k))
    mu, sd, mx = _seq_stats(trace)
    phases, counts = np.unique(np.asarray(trace.phase), return_counts=True)
    params = SynthParams(
        e,
        k,
        pop,
        np.zeros(layers),
        np.ones(layers),
        cond,
        mu,
        sd,
        mx,
        int(phases[np.argmax(counts)]) if len(phases) else UNKNOWN,
        {"trace": Path(trace.source).name if trace.source else None, "model": trace.model_name,
         "mode": "fitted"},
    )
    overlap = np.nan_to_num(np.asarray(st["per_layer"]["consecutive_overlap"], np.float64))[m]
    srp = float(st["local_consistency"]["srp"][str(SRP_M)])
    params = _calibrate(params, overlap, None, seed, trial_tokens, srp)
    target = float(np.nanmean(st["cross_layer"]["topk_mass"])) if layers > 1 else float("nan")
    if np.isfinite(target):  # then sharpen the transitions until the cross-layer top-K mass matches
        from dataclasses import replace

        lo, hi = 1.0, 4.0 * k
        for _ in range(6):
            g = (lo + hi) / 2
            _, aff, _ = _measure(replace(params, conditional=_sharpen(measured, pop, g)), seed, trial_tokens)
            lo, hi = (g, hi) if np.nanmean(aff) < target else (lo, g)
        params = replace(params, conditional=_sharpen(measured, pop, (lo + hi) / 2))
    if drift:
        params = drift_calibration.fit_params(
            trace, params, m, generate=generate, num_regimes=num_regimes, scale=drift_scale, seed=seed,
            recalibrate=lambda p: _calibrate(p, overlap, None, seed, trial_tokens, srp),
        )
    return params


def _sharpen(measured: np.ndarray, pop: np.ndarray, gain: float) -> np.ndarray:
    """Slot-aligned transitions from all-pairs ones: ``max(g * P - (g - 1) * marginal, 0)``, renormalised.

    All K x K pairs are counted, but a slot follows only its own expert, so a measured row is about
    (1/K) own transition + (1 - 1/K) marginal; ``g = K`` undoes exactly that dilution, larger ``g``
    compensates for what reuse and locality draws dilute further.
    """
    out = np.zeros_like(measured)
    for layer in range(1, len(measured)):
        sharp = np.maximum(gain * measured[layer] - (gain - 1) * pop[layer][None, :], 0.0) + 1e-9
        out[layer] = sharp / sharp.sum(1, keepdims=True)
    return out


def profile_from_trace(trace: RoutingTrace, *, drift: bool = True, seed: int = 0, trial_tokens: int = 4096,
                       num_regimes: int | None = None) -> dict[str, Any]:
    """Statistics only (no token data): the JSON profile of a real trace.

    With ``drift`` the generator is fitted first (same shape) and its regimes and request spread,
    with the real trace's drift statistics, go into ``drift`` (arrays in descending-popularity order).
    """
    _check_fit_args(trace, seed, max(trial_tokens, MIN_TRIAL_TOKENS))
    st = trace_stats(trace, segment_lengths=(SRP_M,), cache_sizes=(), pair_tokens=200_000)
    load = np.asarray(st["load"], np.float64)
    curves = -np.sort(-load / np.maximum(load.sum(1, keepdims=True), 1), axis=1)
    mu, sd, mx = _seq_stats(trace)
    phases, counts = np.unique(np.asarray(trace.phase), return_counts=True)
    return {
        "schema": PROFILE_SCHEMA,
        "fitted_to": {
            "trace": Path(trace.source).name if trace.source else None,
            "model": trace.model_name,
            "tokens": trace.num_tokens,
        },
        "num_experts": trace.num_experts,
        "top_k": trace.top_k,
        "num_layers": trace.num_layers,
        "popularity_sorted": np.round(curves, 6).tolist(),
        "consecutive_overlap": np.round(np.nan_to_num(st["per_layer"]["consecutive_overlap"]), 6).tolist(),
        "cross_layer_topk_mass": np.round(np.nan_to_num(st["cross_layer"]["topk_mass"]), 6).tolist(),
        "seq_len_log_mean": round(mu, 6),
        "seq_len_log_std": round(sd, 6),
        "seq_len_max": mx,
        "phase": int(phases[np.argmax(counts)]) if len(phases) else UNKNOWN,
        f"srp_{SRP_M}": round(float(st["local_consistency"]["srp"][str(SRP_M)]), 6),
        **({"drift": _profile_drift(trace, seed, trial_tokens, num_regimes)} if drift else {}),
    }


def _profile_drift(trace: RoutingTrace, seed: int, trial_tokens: int, num_regimes: int | None) -> dict:
    params = fit_trace(trace, seed=seed, trial_tokens=trial_tokens, num_regimes=num_regimes)
    return drift_profile.to_profile(params.drift, params.popularity)


def _check_fit_args(trace: RoutingTrace, seed: int, trial_tokens: int) -> None:
    check_seed(seed)
    if trial_tokens < MIN_TRIAL_TOKENS:
        raise UserError(f"expected at least {MIN_TRIAL_TOKENS} tokens per trial, got {trial_tokens}",
                        field="--trial-tokens")
    SYNTH_TOKENS.check(trial_tokens, field="--trial-tokens")
    if trace.num_tokens < 2:
        raise UserError(f"expected a trace with at least 2 token rows to fit, got {trace.num_tokens}",
                        file=trace.source)


def from_profile(
    profile: dict[str, Any],
    *,
    num_layers: int,
    num_experts: int,
    top_k: int,
    seed: int = 0,
    trial_tokens: int = 4096,
    drift_scale: float = 1.0,
) -> SynthParams:
    """Parameters for any (layers, experts, top-k) from a statistics profile, calibrated on trials.

    A profile's ``drift`` (regimes, request spread) is rescaled like the popularity and scaled by
    ``drift_scale``; a profile without one gives a stationary generator.
    """
    check_profile(profile)
    if trial_tokens < MIN_TRIAL_TOKENS:
        raise UserError(f"expected at least {MIN_TRIAL_TOKENS} tokens per trial, got {trial_tokens}",
                        field="--trial-tokens")
    SYNTH_TOKENS.check(trial_tokens, field="--trial-tokens")
    rng = np.random.default_rng(check_seed(seed))
    curves = np.asarray(profile["popularity_sorted"], np.float64)
    m = _depth_map(num_layers, len(curves))
    # the same draws as permuting each rescaled curve: perm[l] places the l-th sorted curve's experts
    perm = [rng.permutation(num_experts) for _ in range(num_layers)]
    pop = np.stack([_rescale_curve(curves[m[layer]], num_experts)[perm[layer]]
                    for layer in range(num_layers)])
    overlap = np.asarray(profile["consecutive_overlap"], np.float64)[m]
    aff_src = np.asarray(profile["cross_layer_topk_mass"], np.float64)
    aff = (
        np.r_[np.nan, aff_src[np.minimum(m[1:], len(aff_src) - 1)]]
        if len(aff_src)
        else np.full(num_layers, np.nan)
    )
    aff = aff[:num_layers]
    params = SynthParams(
        num_experts,
        top_k,
        pop,
        np.zeros(num_layers),
        np.zeros(num_layers),
        None,
        float(profile["seq_len_log_mean"]),
        float(profile["seq_len_log_std"]),
        int(profile["seq_len_max"]),
        int(profile.get("phase", UNKNOWN)),
        {**profile.get("fitted_to", {}), "mode": "profile"},
    )
    params = _calibrate(params, overlap, aff, seed, trial_tokens, profile.get(f"srp_{SRP_M}"))
    if profile.get("drift"):
        def place(arr: np.ndarray) -> np.ndarray:  # [L, E_src] in sorted order -> [L, E] like pop
            return np.stack([_rescale_curve(arr[layer], num_experts)[perm[layer]]
                             for layer in range(num_layers)])

        from dataclasses import replace

        model = drift_profile.from_profile(profile["drift"], depth_map=m, place=place, top_k=top_k,
                                     source_top_k=int(profile.get("top_k", top_k)))
        params = replace(params, drift=replace(model, scale=drift_scale))
    return params


def compare(real: dict[str, Any], synth: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Side-by-side summary statistics (``trace_stats`` outputs) of a real and a synthetic trace."""
    rows: dict[str, dict[str, float]] = {}
    for key in real["summary"]:
        rows[key] = {"real": real["summary"][key], "synthetic": synth["summary"][key]}
    for m, v in real["local_consistency"]["srp"].items():
        rows[f"srp_m{m}"] = {"real": v, "synthetic": synth["local_consistency"]["srp"].get(m, float("nan"))}
    for pol, by in real.get("cache_hit_rate", {}).items():
        for c, v in by.items():
            rows[f"{pol}_hit_C{c}"] = {"real": v, "synthetic": synth["cache_hit_rate"][pol][c]}
    return rows


__all__ = ["compare", "fit_trace", "from_profile", "profile_from_trace"]
