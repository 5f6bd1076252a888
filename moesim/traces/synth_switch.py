"""Subject switches for the synthetic generator: a hot set of experts per layer that moves.

Real streams change subject, and a subject has experts of its own: on OLMoE-1B-7B's routing counts
per pre-training domain (arXiv, books, C4, GitHub, Wikipedia; layers 0, 7 and 15, top-8 of 64), a
domain's 8 busiest experts carry 0.22-0.42 of its load (mean 0.35) and 0.09-0.18 (mean 0.13, about
uniform) in the other domains (``allenai/OLMoE`` ``scripts/routing_output``; docs/traces.md §7,
"Subject switches"). A
:class:`SubjectSwitch` makes the generator do that: the stream is cut into subjects of
``every_rows`` rows (each starting at the first sequence that starts at or after its point, so a
request keeps one subject), and in each subject ``hot_experts`` experts per layer, drawn at random
away from the previous subject's, carry ``hot_share`` of the layer's routed slots.

A slot is *hot* with a probability fixed per (subject, layer) so that hot draws plus the ordinary
draws that land in the hot set make ``hot_share``; a token's hot slots take distinct hot experts,
and one uniform and one hot index per (token, slot) are shared by all layers, so a hot token stays
hot from layer to layer (a subject's tokens route together through the depth). Its draws use their
own random stream: the stationary and drift draws are not shifted by it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from moesim.errors import UserError

MAX_SUBJECTS = 64
"""Most subjects of one stream (their hot sets are recorded in the trace's meta)."""
DEFAULT_HOT_SHARE = 0.35
"""OLMoE's mean share of a domain's top eighth of the experts in that domain (module docstring)."""
PERM_BLOCK = 4096
"""Rows per block when drawing each token's order of the hot set (bounds a ``[rows, K]`` temporary)."""


def default_hot_experts(num_experts: int) -> int:
    """An eighth of the experts (the OLMoE measurement's 8 of 64), at least one."""
    return max(1, num_experts // 8)


@dataclass(frozen=True)
class SubjectSwitch:
    """Where the subject changes and how hot its experts are (``trace synth --switches``)."""

    every_rows: int
    """Rows (tokens) per subject; a subject starts at the first sequence starting at or after its point."""
    hot_experts: int
    """Experts per layer in a subject's hot set."""
    hot_share: float
    """Share of a layer's routed slots that go to the hot set, in (0, 1]."""

    @classmethod
    def for_stream(cls, tokens: int, *, switches: int | None, every: int | None, hot_experts: int,
                   hot_share: float) -> SubjectSwitch:
        """From the CLI's ``--switches N`` (N equal subjects' boundaries) or ``--switch-every T``."""
        if every is None:
            every = max(1, math.ceil(tokens / ((switches or 0) + 1)))
            field = "--switches"
        else:
            field = "--switch-every"
        subjects = math.ceil(tokens / every)
        if subjects > MAX_SUBJECTS:
            raise UserError(f"{subjects} subjects in {tokens} tokens; at most {MAX_SUBJECTS}", field=field)
        return cls(every_rows=every, hot_experts=hot_experts, hot_share=hot_share)

    def check(self, num_experts: int, top_k: int) -> None:
        if not 1 <= self.hot_experts < num_experts:
            raise UserError(f"expected 1 to {num_experts - 1} hot experts (the model has {num_experts}), "
                            f"got {self.hot_experts}", field="--hot-experts")
        top = min(self.hot_experts, top_k) / top_k
        if not 0.0 < self.hot_share <= top:
            raise UserError(f"expected a share in (0, {top:g}] (a token takes at most min(hot experts, top-k)"
                            f" = {min(self.hot_experts, top_k)} of its {top_k} experts from the hot set), "
                            f"got {self.hot_share:g}", field="--hot-share")

    def subjects(self, seq_first_row: np.ndarray) -> np.ndarray:
        """int64 ``[rows]``: each row's subject, from the first row of the sequence it belongs to."""
        return np.asarray(seq_first_row, np.int64) // self.every_rows

    def hot_sets(self, rng: np.random.Generator, num_subjects: int, layers: int, experts: int) -> np.ndarray:
        """int16 ``[subjects, L, K]``: each subject's hot experts, drawn away from the previous subject's
        (all of them when there are at least 2K experts)."""
        k = self.hot_experts
        out = np.empty((num_subjects, layers, k), np.int16)
        for s in range(num_subjects):
            for layer in range(layers):
                perm = rng.permutation(experts)
                if s:  # the previous subject's experts last: the hot set moves
                    perm = np.concatenate([perm[~np.isin(perm, out[s - 1, layer])],
                                           perm[np.isin(perm, out[s - 1, layer])]])
                out[s, layer] = perm[:k]
        return out

    def slot_probability(self, popularity: np.ndarray, sets: np.ndarray, top_k: int) -> np.ndarray:
        """``[subjects, L]``: probability that an eligible slot is hot. With ``f`` of a token's slots hot
        (each on a distinct hot expert, so ``f k / K`` of the set is taken), an ordinary slot still lands
        on a free hot expert with probability ``b (1 - f k / K)`` (``b``: the set's popularity; a clash
        is redrawn), so ``f`` solves ``f + (1 - f) b (1 - f k / K) = hot_share`` (bisection)."""
        b = np.take_along_axis(popularity[None], sets.astype(np.int64), axis=2).sum(-1)
        ratio = top_k / self.hot_experts
        top = min(1.0, 1.0 / ratio)

        def share(f: np.ndarray) -> np.ndarray:
            return f + (1.0 - f) * b * (1.0 - f * ratio)

        lo, hi = np.zeros_like(b), np.full_like(b, top)
        for _ in range(50):  # share() increases on [0, top] for any b <= 1
            mid = 0.5 * (lo + hi)
            low = share(mid) < self.hot_share
            lo, hi = np.where(low, mid, lo), np.where(low, hi, mid)
        return np.minimum(hi * top_k / min(self.hot_experts, top_k), 1.0)

    def summary(self, sets: np.ndarray) -> dict[str, Any]:
        """The trace meta's ``generator.switch``."""
        return {"every_rows": self.every_rows, "hot_experts": self.hot_experts, "hot_share": self.hot_share,
                "subjects": int(sets.shape[0]), "hot_sets": sets.tolist()}


@dataclass(frozen=True, eq=False)
class HotDraws:
    """The generator's per-stream switch state: subjects of the rows, hot sets, slot probabilities."""

    subject: np.ndarray
    """int64 ``[rows]``."""
    sets: np.ndarray
    """int16 ``[subjects, L, K]``."""
    prob: np.ndarray
    """``[subjects, L]``."""
    rng: np.random.Generator

    @classmethod
    def make(cls, switch: SubjectSwitch, *, seed: int, seq_id: np.ndarray, popularity: np.ndarray,
             top_k: int) -> HotDraws:
        """The switch state of a stream whose rows belong to sequences ``seq_id`` (consecutive runs)."""
        rng = np.random.default_rng([seed, 2])  # its own stream: the other draws stay where they were
        first = np.r_[0, np.flatnonzero(np.diff(seq_id)) + 1]
        subject = switch.subjects(np.repeat(first, np.diff(np.r_[first, len(seq_id)])))
        layers, experts = popularity.shape
        sets = switch.hot_sets(rng, int(subject[-1]) + 1, layers, experts)
        return cls(subject, sets, switch.slot_probability(popularity, sets, top_k), rng)

    def for_rows(self, a: int, b: int, top_k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(subject ``[n]``, uniform ``[n, m]``, hot index ``[n, m]``) for rows ``a:b``, m = min(K, top-k):
        slot j < m of a token is hot when its uniform is below the probability, and then takes hot
        expert ``index`` (distinct within the token)."""
        n, kk = b - a, min(self.sets.shape[2], top_k)
        u = self.rng.random((n, kk))
        idx = np.empty((n, kk), np.int16)
        for c in range(0, n, PERM_BLOCK):
            m = min(n, c + PERM_BLOCK) - c
            idx[c:c + m] = np.argsort(self.rng.random((m, self.sets.shape[2])), axis=1)[:, :kk]
        return self.subject[a:b], u, idx

    def apply(self, base: np.ndarray, layer: int, rows: tuple[np.ndarray, np.ndarray, np.ndarray],
              redraw: Callable[[int], np.ndarray]) -> np.ndarray:
        """``base`` ``[n, K]`` with its hot slots at ``layer`` replaced by their hot experts; an ordinary
        slot that holds one of its token's hot experts is redrawn (``redraw(count)``) first, so the
        duplicate pass after it does not undo the hot one."""
        subject, u, idx = rows
        kk = u.shape[1]
        hot = u < self.prob[subject, layer][:, None]
        hv = self.sets[subject[:, None], layer, idx]
        out = base.copy()
        out[:, :kk] = np.where(hot, hv, base[:, :kk])
        taken = np.where(hot, hv, -1)
        clash = (out[:, :, None] == taken[:, None, :]).any(-1)
        clash[:, :kk] &= ~hot
        if clash.any():
            out[clash] = redraw(int(clash.sum()))
        return out


__all__ = ["DEFAULT_HOT_SHARE", "MAX_SUBJECTS", "HotDraws", "SubjectSwitch", "default_hot_experts"]
