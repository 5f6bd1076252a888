"""The load a re-balancing policy may see: per-step (layer, expert) counts of the steps already run.

This is what the engines' expert-distribution recorders keep (SGLang's ``stat`` recorder with a
buffer of ``--expert-distribution-recorder-buffer-size`` passes; vLLM's ``expert_load_window`` of
``window_size`` steps): one ``[L, E]`` count per forward pass, the last N passes. Steps are appended
only after they were dispatched, and a query past the last appended step is refused, so a policy
cannot read the future.
"""

from __future__ import annotations

import numpy as np

MAX_BINCOUNT = 4_000_000
"""Entries one ``np.bincount`` fills at most (bounds the int64 temporary of a large chunk)."""


def step_counts(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """``[S, L, E]`` int32 (token, top-k) selections per step, layer and expert of ``ids`` ``[S, B, L, K]``
    (``-1``: padding or not recorded, not counted)."""
    S, _B, L, _K = ids.shape
    E1 = num_experts + 1
    out = np.zeros((S, L, num_experts), dtype=np.int32)
    per_step = L * E1
    block = max(1, MAX_BINCOUNT // per_step)
    layer = np.arange(L, dtype=np.int64)[None, None, :, None] * E1
    for a in range(0, S, block):
        part = ids[a:a + block].astype(np.int64) + 1  # -1 -> bin 0, dropped below
        n = part.shape[0]
        flat = (part + layer + np.arange(n, dtype=np.int64)[:, None, None, None] * per_step).ravel()
        counts = np.bincount(flat, minlength=n * per_step).reshape(n, L, E1)
        out[a:a + n] = counts[:, :, 1:]
    return out


class LoadHistory:
    """Per-step ``[L, E]`` counts of steps ``[start, end)``, keeping at least the last ``keep`` steps."""

    def __init__(self, num_layers: int, num_experts: int, keep: int):
        self.shape = (num_layers, num_experts)
        self.keep = max(1, int(keep))
        self._blocks: list[tuple[int, np.ndarray]] = []
        self.end = 0
        """One past the last step appended: nothing at or after it can be read."""

    def append(self, first: int, counts: np.ndarray) -> None:
        """Add steps ``first ..`` (``counts`` ``[n, L, E]``); steps arrive in order, without gaps."""
        if first != self.end:
            raise ValueError(f"history: expected step {self.end} next, got {first}")
        self._blocks.append((first, counts))
        self.end = first + counts.shape[0]
        # drop blocks that end before the oldest step still kept
        while len(self._blocks) > 1 and self._blocks[1][0] <= self.end - self.keep:
            self._blocks.pop(0)

    @property
    def start(self) -> int:
        """The oldest step still held."""
        return self._blocks[0][0] if self._blocks else self.end

    def steps(self, a: int, b: int) -> np.ndarray:
        """``[b - a, L, E]`` int64 counts of steps ``[a, b)`` (``a`` clipped to what is held)."""
        if b > self.end:
            raise ValueError(f"history: step {b - 1} has not run yet (only steps before {self.end})")
        a = max(a, self.start)
        if b <= a:
            return np.zeros((0, *self.shape), dtype=np.int64)
        parts = [c[max(0, a - s):max(0, b - s)] for s, c in self._blocks if s < b and s + c.shape[0] > a]
        return np.concatenate(parts).astype(np.int64)

    def total(self, a: int, b: int) -> np.ndarray:
        """``[L, E]`` counts of steps ``[a, b)`` summed."""
        return self.steps(a, b).sum(axis=0)

    def windows(self, a: int, b: int, count: int) -> np.ndarray:
        """``[W, L, E]``: steps ``[a, b)`` cut into ``count`` (or as many as there are steps) equal
        consecutive windows, each summed."""
        per = self.steps(a, b)
        n = max(1, min(int(count), per.shape[0]))
        if not per.shape[0]:
            return per.sum(axis=0)[None]
        return np.stack([p.sum(axis=0) for p in np.array_split(per, n)])
