"""Synthetic routing traces from a generator fitted to a real trace's statistics.

The generator, per MoE layer column l and top-k slot, for sequences of tokens:

1. *cross-layer*: at l > 0 the slot's candidate follows the expert the same slot chose at l - 1:
   fitted mode draws it from the measured conditional P(e_l | e_{l-1}) (all K x K co-occurrences of
   adjacent layers); profile mode takes, with probability ``follow[l]``, a fixed partner expert of the
   previous one (a seeded permutation), else a popularity draw. At l = 0: a popularity draw.
2. *segment locality*: with probability ``locality`` a slot draws from its segment's working set
   (2K experts per layer, fresh every ``segment_tokens`` tokens of a sequence, following the previous
   layer's working set like tokens do).
3. *temporal locality*: with probability ``reuse[l]`` a slot copies its value at the previous token of
   the same sequence (chains of copies are resolved at once with a running maximum).
4. duplicates inside a token's K slots are redrawn from the layer's popularity.

Popularity draws and conditional draws use pre-sampled banks (``bank[rows, M]``, M ids drawn with
the right probabilities), so a draw is one random integer and one gather: 10M tokens of 61 layers
generate in chunks. ``reuse`` is calibrated on trials so that the consecutive-token overlap matches
the target, ``locality`` so that SRP(16) does, and ``follow`` (profile mode) or the transition
sharpening (fitted mode) so that the cross-layer top-K mass does.
A *profile* (JSON) holds only statistics: sorted popularity curves, overlap and affinity targets,
sequence lengths; it rescales to any number of experts and layers.

With a drift model (``SynthParams.drift``, fitted by ``moesim.traces.regimes``) the stream also
changes regime (each with its own popularity and tilted transitions, for run lengths seen in the
real trace) and each sequence leans on a request set of its own, so that a static placement decays
on the next window as on the real trace. Without one, output is exactly the stationary generator's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.limits import EXPERTS, LAYERS, SYNTH_TOKENS, TRACE_ROWS
from moesim.safe_yaml import read_yaml_file
from moesim.traces import drift_calibration, drift_profile, regime_draws, regimes
from moesim.traces.stats import affinity_summary, cross_layer, trace_stats
from moesim.traces.trace import UNKNOWN, RoutingTrace

SRP_M = 16
"""Segment length whose SRP the locality parameter is fitted to."""
BANK = 1024
"""Pre-sampled draws per distribution row."""
PROFILE_SCHEMA = "moesim-synth-profile/v1"
MIN_TRIAL_TOKENS = 64
"""Fewer tokens per calibration trial cannot measure SRP(16) and overlap."""


@dataclass(frozen=True, eq=False)
class SynthParams:
    """Fitted generator parameters for L layer columns of E experts, top-K."""

    num_experts: int
    top_k: int
    popularity: np.ndarray
    """float64 ``[L, E]``, rows sum to 1."""
    reuse: np.ndarray
    """``[L]`` probability that a slot copies the previous token's value."""
    follow: np.ndarray
    """``[L]`` probability of following the previous layer (1 in fitted mode)."""
    conditional: np.ndarray | None
    """``[L, E, E]`` P(e_l | e_{l-1}) (row 0 unused), or None: partner permutations instead."""
    seq_len_log_mean: float
    seq_len_log_std: float
    seq_len_max: int
    phase: int
    fitted_to: dict[str, Any]
    locality: float = 0.0
    """Probability that a slot draws from its sequence segment's working set (segment-level locality)."""
    segment_tokens: int = 16
    """Tokens per segment; each segment of a sequence gets a fresh working set."""
    working_set: int = 0
    """Experts per working set and layer (0 = 2 x top_k)."""
    drift: regimes.DriftModel | None = None
    """Regimes over time and topics per request (``moesim.traces.regimes``); None = stationary."""

    @property
    def num_layers(self) -> int:
        return int(self.popularity.shape[0])


def _bank(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """int16 ``[rows, BANK]`` draws from each row of ``probs`` (stratified: close to exact frequencies)."""
    cdf = np.cumsum(probs, axis=-1)
    cdf /= cdf[..., -1:]
    u = (np.arange(BANK) + rng.random((probs.shape[0], BANK))) / BANK
    out = np.empty((probs.shape[0], BANK), np.int16)
    for i in range(probs.shape[0]):
        out[i] = np.minimum(np.searchsorted(cdf[i], u[i], side="right"), probs.shape[1] - 1)
    return out


def _seq_lengths(rng: np.random.Generator, p: SynthParams, tokens: int, seq_len: int | None,
                 regime: np.ndarray | None = None) -> np.ndarray:
    if seq_len is not None:  # no draws: whole sequences, then the remainder
        full, rest = divmod(tokens, seq_len)
        return np.r_[np.full(full, seq_len, np.int64), np.full(1 if rest else 0, rest, np.int64)]
    out: list[int] = []
    total = 0
    q = p.drift.length_quantiles if p.drift is not None else None
    while total < tokens:
        if q is not None and regime is not None:
            # the real lengths' quantiles in the regime the sequence starts in: the long tail matters
            qr = q[regime[total]]
            log_n = np.interp(rng.random(), np.linspace(0, 1, len(qr)), qr)
        else:
            log_n = rng.normal(p.seq_len_log_mean, p.seq_len_log_std)
        # clip before rounding: the same lengths as round-then-clip, and a huge draw never meets round(inf)
        n = round(np.clip(np.exp(log_n), 1, p.seq_len_max))
        n = min(n, tokens - total)
        out.append(n)
        total += n
    return np.array(out, np.int64)


class Generator:
    """Draws rows of expert ids from SynthParams, chunk by chunk (deterministic for a seed)."""

    def __init__(self, params: SynthParams, seed: int):
        self.p = params
        self.rng = np.random.default_rng(check_seed(seed))
        e, layers = params.num_experts, params.num_layers
        if params.top_k > e:
            raise UserError(f"top_k {params.top_k} exceeds the number of experts {e}")
        self.pop_bank = _bank(self.rng, params.popularity)
        if params.conditional is not None:
            self.cond_bank = [None] + [
                _bank(self.rng, params.conditional[layer]) for layer in range(1, layers)
            ]
        else:
            self.partner = np.stack([self.rng.permutation(e) for _ in range(layers)]).astype(np.int16)
        # with a drift model: per-regime banks of the popularity and the tilted transitions
        self.regime_bank = None if params.drift is None else regime_draws.regime_banks(self.rng, params, BANK)

    def _pop(self, layer: int, shape: tuple[int, ...], regime: np.ndarray | None = None) -> np.ndarray:
        """Popularity draws; ``regime`` (broadcast to ``shape``) selects each draw's regime bank."""
        if regime is not None and self.regime_bank is not None:
            return self.regime_bank[0][np.broadcast_to(regime, shape), layer,
                                       self.rng.integers(0, BANK, size=shape)]
        return self.pop_bank[layer, self.rng.integers(0, BANK, size=shape)]

    def _follow(self, layer: int, prev: np.ndarray, regime: np.ndarray | None = None) -> np.ndarray:
        """Layer ``layer`` candidates following ``prev`` (ids at layer - 1), popularity otherwise."""
        p, rng = self.p, self.rng
        prev = prev.astype(np.int64)
        if regime is not None and self.regime_bank is not None and self.regime_bank[1] is not None:
            cand = self.regime_bank[1][np.broadcast_to(regime, prev.shape), layer, prev,
                                       rng.integers(0, BANK, size=prev.shape)]
        elif p.conditional is not None:
            cand = self.cond_bank[layer][prev, rng.integers(0, BANK, size=prev.shape)]
        else:
            cand = self.partner[layer][prev]
        if p.follow[layer] >= 1.0:
            return cand
        return np.where(rng.random(prev.shape) < p.follow[layer], cand, self._pop(layer, prev.shape, regime))

    def rows(self, starts: np.ndarray, n: int, pos: np.ndarray | None = None,
             regime: np.ndarray | None = None) -> np.ndarray:
        """int16 ``[n, L, K]`` for ``n`` rows; ``starts`` marks rows that begin a sequence; ``regime``
        (int ``[n]``, with a drift model) is each row's regime."""
        p, rng = self.p, self.rng
        k, layers = p.top_k, p.num_layers
        out = np.empty((n, layers, k), np.int16)
        idx = np.arange(n)
        pos = np.zeros(n, np.int64) if pos is None else pos
        seg = np.cumsum(starts | (pos % p.segment_tokens == 0)) - 1
        w = p.working_set or 2 * k
        ws = None
        t_row = t_seg = t_req = rs = None
        dm = p.drift
        if regime is not None and dm is not None:
            t_row = np.asarray(regime, np.int64)[:, None]
            t_seg = t_row[np.r_[0, np.flatnonzero(np.diff(seg)) + 1]]  # a segment's first row's regime
            # request sets: a fresh set every request_rows rows of a sequence (the spread between requests)
            req = np.cumsum(starts | (pos % dm.request_rows == 0)) - 1
            t_req = t_row[np.r_[0, np.flatnonzero(np.diff(req)) + 1]]
            u_req, rs_slot = rng.random((n, k)), rng.integers(0, dm.request_set, size=(n, k))
        # one uniform per (token, slot) shared by all layers: a slot that copies its previous token (or
        # uses its segment's working set) at layer l tends to do so at l + 1 too, which keeps the
        # copied chains consistent with the cross-layer transitions
        u_copy, u_local = rng.random((n, k)), rng.random((n, k))
        ws_slot = rng.integers(0, w, size=(n, k))
        for layer in range(layers):
            # working sets of the segments follow the previous layer's like tokens do
            ws = (self._pop(layer, (int(seg[-1]) + 1, w), t_seg) if ws is None
                  else self._follow(layer, ws, t_seg))
            base = (self._pop(layer, (n, k), t_row) if layer == 0
                    else self._follow(layer, out[:, layer - 1, :], t_row))
            if t_req is not None and dm is not None and dm.request_affinity > 0:
                rs = (self._pop(layer, (len(t_req), dm.request_set), t_req) if rs is None
                      else self._follow(layer, rs, t_req))
                base = np.where(u_req < dm.request_affinity, rs[req[:, None], rs_slot], base)
            if p.locality > 0:
                base = np.where(u_local < p.locality, ws[seg[:, None], ws_slot], base)
            copy = (u_copy < p.reuse[layer]) & ~starts[:, None]
            src = np.maximum.accumulate(np.where(copy, 0, idx[:, None]), axis=0)
            val = np.take_along_axis(base, src, axis=0)
            srt = np.sort(val, axis=1)
            bad = np.flatnonzero((srt[:, 1:] == srt[:, :-1]).any(axis=1))  # rows holding a duplicate
            for j in range(1, k):
                rows = bad[(val[bad, j : j + 1] == val[bad, :j]).any(axis=1)]
                for _ in range(64):  # redraw only the rows that still hold a duplicate
                    if not len(rows):
                        break
                    val[rows, j] = self._pop(layer, (len(rows),), None if t_row is None else t_row[rows, 0])
                    rows = rows[(val[rows, j : j + 1] == val[rows, :j]).any(axis=1)]
                for r in rows:  # pathological popularity: take the lowest free id
                    val[r, j] = np.setdiff1d(np.arange(p.num_experts), val[r, :j])[0]
            out[:, layer] = val
        return out


def generate(
    params: SynthParams, tokens: int, *, seed: int = 0, seq_len: int | None = None, chunk_tokens: int = 131072
) -> tuple[np.ndarray, Iterator[np.ndarray]]:
    """``(seq_id [N], chunks of expert_ids)``; chunks end at sequence boundaries where possible."""
    if tokens < 1:
        raise UserError(f"expected at least 1 token, got {tokens}", field="--tokens")
    SYNTH_TOKENS.check(tokens, field="--tokens")
    if seq_len is not None and seq_len < 1:
        raise UserError(f"expected a sequence length >= 1, got {seq_len}", field="--seq-len")
    gen = Generator(params, seed)
    regime = None
    if params.drift is not None:  # its own stream of random numbers: the rows' draws stay aligned
        regime = params.drift.schedule(tokens, np.random.default_rng([seed, 1]))
    lengths = _seq_lengths(gen.rng, params, tokens, seq_len, regime)
    seq_id = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
    starts = np.zeros(tokens, bool)
    first = np.r_[0, np.cumsum(lengths)[:-1]]
    starts[first] = True
    pos = np.arange(tokens) - np.repeat(first, lengths)

    def chunks() -> Iterator[np.ndarray]:
        for a in range(0, tokens, chunk_tokens):
            b = min(tokens, a + chunk_tokens)
            s = starts[a:b].copy()
            s[0] = True  # a chunk cut inside a sequence restarts the copy chains (rare; chunks are large)
            yield gen.rows(s, b - a, pos[a:b], None if regime is None else regime[a:b])

    return seq_id, chunks()


# --------------------------------------------------------------------------------------------- fitting
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


def load_profile(path_or_name: str | Path) -> dict[str, Any]:
    from moesim.resources import builtin_dir

    p = Path(path_or_name)
    if not p.exists():
        p = builtin_dir("trace") / f"synth-profile-{path_or_name}.json"
    if not p.exists():
        raise UserError(f"no synthesis profile {path_or_name!r} (a JSON file or a shipped profile name)")
    prof = read_yaml_file(p)  # JSON is YAML too: bounded size, depth and one-line errors
    if not isinstance(prof, dict) or prof.get("schema") != PROFILE_SCHEMA:
        raise UserError(f"expected schema {PROFILE_SCHEMA}", file=p, field="schema")
    check_profile(prof, str(p))
    return prof


def check_profile(prof: dict[str, Any], file: str | None = None) -> None:
    """UserError naming the field unless ``prof`` has every statistic :func:`from_profile` reads, in range."""

    def bad(field: str, expected: str) -> UserError:
        if field not in prof:
            return UserError(f"missing required field ({expected})", file=file, field=field)
        got = repr(prof.get(field))
        return UserError(f"expected {expected}, got {got if len(got) <= 60 else got[:57] + '...'}", file=file,
                         field=field)

    def numbers(field: str, lo: float, hi: float, length: int | None = None) -> np.ndarray:
        value = prof.get(field)
        what = f"a list of {length or ''} numbers from {lo:g} to {hi:g}".replace("  ", " ")
        if not isinstance(value, list) or not all(_is_number(v) for v in value):
            raise bad(field, what)
        arr = np.asarray(value, np.float64)
        if (length is not None and len(arr) != length) or not np.all((arr >= lo) & (arr <= hi)):
            raise bad(field, what)
        return arr

    curves = prof.get("popularity_sorted")
    if (not isinstance(curves, list) or not curves or not all(isinstance(c, list) and c for c in curves)
            or len({len(c) for c in curves}) != 1):
        raise bad("popularity_sorted", "one non-empty list of expert shares per layer, all of one length")
    LAYERS.check(len(curves), file=file, field="popularity_sorted")
    EXPERTS.check(len(curves[0]), file=file, field="popularity_sorted")
    for i, c in enumerate(curves):
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in c):
            raise UserError("expected shares from 0 to 1", file=file, field=f"popularity_sorted[{i}]")
    numbers("consecutive_overlap", 0, 1, len(curves))
    numbers("cross_layer_topk_mass", 0, 1)
    for field, lo, hi in (("seq_len_log_mean", 0.0, 25.0), ("seq_len_log_std", 0.0, 5.0)):
        v = prof.get(field)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise bad(field, f"a number from {lo:g} to {hi:g} (natural log of tokens per sequence)")
    mx = prof.get("seq_len_max")
    if isinstance(mx, bool) or not isinstance(mx, int) or mx < 1:
        raise bad("seq_len_max", "a whole number >= 1 (tokens of the longest sequence)")
    TRACE_ROWS.check(mx, file=file, field="seq_len_max")
    if prof.get("phase", UNKNOWN) not in (0, 1, UNKNOWN) or isinstance(prof.get("phase"), bool):
        raise bad("phase", "0 (prefill), 1 (decode) or -1 (unknown)")
    if prof.get("drift") is not None:
        drift_profile.check_drift(prof["drift"], layers=len(curves), experts=len(curves[0]), file=file)
    if not isinstance(prof.get("fitted_to", {}), dict):
        raise bad("fitted_to", "a mapping")
    srp = prof.get(f"srp_{SRP_M}")
    if srp is not None and (isinstance(srp, bool) or not isinstance(srp, (int, float)) or not 0 <= srp <= 1):
        raise bad(f"srp_{SRP_M}", "a number from 0 to 1")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_seed(seed: int) -> int:
    """A seed numpy accepts: a whole number >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"expected a whole number >= 0, got {seed!r}", field="--seed")
    return int(seed)


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


def write_synthetic(
    path: str | Path,
    params: SynthParams,
    tokens: int,
    *,
    seed: int,
    meta: dict[str, Any],
    layer_ids: np.ndarray,
    seq_len: int | None = None,
    compress: bool | None = None,
) -> None:
    """Generate ``tokens`` rows in chunks straight into a v1 ``.npz`` (stored uncompressed when large)."""
    from moesim.traces.npz import write_npz
    from moesim.traces.trace import SCHEMA

    seq_id, chunks = generate(params, tokens, seed=seed, seq_len=seq_len)
    starts = np.r_[0, np.flatnonzero(np.diff(seq_id)) + 1]
    pos = (np.arange(tokens) - np.repeat(starts, np.diff(np.r_[starts, tokens]))).astype(np.int32)
    shape = (tokens, params.num_layers, params.top_k)
    full_meta = {
        "schema": SCHEMA,
        **meta,
        "num_experts": params.num_experts,
        "top_k": params.top_k,
        "n_tokens": tokens,
        "n_moe_layers": params.num_layers,
        "n_sequences": int(seq_id[-1]) + 1,
        "has_gate_weights": False,
        "synthetic": True,
        "seed": seed,
        "generator": {
            "fitted_to": params.fitted_to,
            "reuse": np.round(params.reuse, 4).tolist(),
            "follow": np.round(params.follow, 4).tolist(),
            "locality": round(params.locality, 4),
            **({"drift": params.drift.summary()} if params.drift is not None else {}),
        },
    }
    if compress is None:
        compress = tokens * params.num_layers * params.top_k * 2 < 256 * 2**20
    write_npz(
        path,
        {
            "seq_id": seq_id,
            "pos": pos,
            "phase": np.full(tokens, params.phase, np.int8),
            "layer_ids": np.asarray(layer_ids, np.int16),
            "meta_json": np.array(json.dumps(full_meta)),
        },
        compress=compress,
        streamed={"expert_ids": (shape, np.dtype(np.int16), lambda: chunks)},
    )


__all__ = [
    "Generator",
    "SynthParams",
    "affinity_summary",
    "compare",
    "fit_trace",
    "from_profile",
    "generate",
    "load_profile",
    "profile_from_trace",
    "write_synthetic",
]
