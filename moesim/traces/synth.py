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
from moesim.limits import SYNTH_TOKENS
from moesim.traces import regime_draws, regimes
from moesim.traces.synth_switch import HotDraws, SubjectSwitch

SRP_M = 16
"""Segment length whose SRP the locality parameter is fitted to."""
BANK = 1024
"""Pre-sampled draws per distribution row."""
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
    switch: SubjectSwitch | None = None
    """A hot set of experts that moves (``moesim.traces.synth_switch``); None = no subject switches."""

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
             regime: np.ndarray | None = None, hot: tuple[HotDraws, tuple] | None = None) -> np.ndarray:
        """int16 ``[n, L, K]`` for ``n`` rows; ``starts`` marks rows that begin a sequence; ``regime``
        (int ``[n]``, with a drift model) is each row's regime; ``hot`` (with subject switches) the
        switch state and these rows' draws (``HotDraws.for_rows``)."""
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
            if hot is not None:  # the subject's hot experts, before copies: a copied slot stays hot
                base = hot[0].apply(base, layer, hot[1],
                                    lambda c, lay=layer: self._pop(lay, (c,)))
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

    hot = None
    if params.switch is not None:
        params.switch.check(params.num_experts, params.top_k)
        hot = HotDraws.make(params.switch, seed=seed, seq_id=seq_id, popularity=params.popularity,
                            top_k=params.top_k)

    def chunks() -> Iterator[np.ndarray]:
        for a in range(0, tokens, chunk_tokens):
            b = min(tokens, a + chunk_tokens)
            s = starts[a:b].copy()
            s[0] = True  # a chunk cut inside a sequence restarts the copy chains (rare; chunks are large)
            yield gen.rows(s, b - a, pos[a:b], None if regime is None else regime[a:b],
                           None if hot is None else (hot, hot.for_rows(a, b, params.top_k)))

    return seq_id, chunks()


def check_seed(seed: int) -> int:
    """A seed numpy accepts: a whole number >= 0."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"expected a whole number >= 0, got {seed!r}", field="--seed")
    return int(seed)


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
    switch = {}
    if params.switch is not None:  # the hot sets drawn for this stream (the same draws as generate's)
        hot = HotDraws.make(params.switch, seed=seed, seq_id=seq_id, popularity=params.popularity,
                            top_k=params.top_k)
        switch = {"switch": params.switch.summary(hot.sets)}
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
            **switch,
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


__all__ = ["Generator", "SynthParams", "check_seed", "generate", "write_synthetic"]
