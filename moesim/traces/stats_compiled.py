"""Trace statistics' per-selection loops compiled (numba, the optional ``fast`` extra).

Two passes of ``moesim trace stats`` touch every (row, layer, top-k) selection: the cross-layer
transition counts (:meth:`moesim.traces.transitions.Transitions.fit`) and the reuse distances with
the consecutive-token overlap (:func:`moesim.traces.stats._reuse_and_overlap`). Their numpy
versions build [rows, layers, K, K] temporaries; these loops count in place, one chunk of rows at
a time with the state carried between chunks, and give the same integers (tests compare them).
Without numba :func:`available` is False and the numpy paths run.
"""

from __future__ import annotations

import numpy as np

try:  # optional: the [fast] extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None


def available() -> bool:
    """True when numba is installed (the compiled loops can run)."""
    return numba is not None


def _pair_counts_py(ids: np.ndarray, take: np.ndarray, present: np.ndarray, counts: np.ndarray) -> None:
    """Add to ``counts`` [pairs, E, E] every (column ``take[p]`` expert, column ``take[p + 1]``
    expert) pair of each row of ``ids`` [rows, columns, K] (pairs touching an absent column or a
    -1 slot do not count)."""
    rows, k = ids.shape[0], ids.shape[2]
    pairs = take.shape[0] - 1
    for t in range(rows):
        for p in range(pairs):
            if not (present[p] and present[p + 1]):
                continue
            a, b = take[p], take[p + 1]
            for i in range(k):
                x = ids[t, a, i]
                if x < 0:
                    continue
                for j in range(k):
                    y = ids[t, b, j]
                    if y >= 0:
                        counts[p, x, y] += 1


def _reuse_chunk_py(ids: np.ndarray, seq: np.ndarray, first_row: int, prev_ids: np.ndarray, prev_seq: int,
                    has_prev: bool, last_seen: np.ndarray, hist: np.ndarray, cold: np.ndarray,
                    inter: np.ndarray) -> int:
    """One chunk of rows ``ids`` [rows, L, K] (row ``first_row`` onwards, sequence ids ``seq``):
    per layer, each selection's distance in rows to the same expert's previous selection into
    ``hist`` [L, clip + 1] (clipped), first selections into ``cold``; the selections of a row also
    in the previous row of the same sequence into ``inter`` [L]; ``last_seen`` [L, E] carries the
    last row of each expert, ``prev_ids`` [L, K] / ``prev_seq`` the chunk's preceding row. Returns
    the consecutive same-sequence row pairs."""
    rows, layers, k = ids.shape
    clip = hist.shape[1] - 1
    pairs = 0
    for r in range(rows):
        t = first_row + r
        same = (seq[r] == seq[r - 1]) if r > 0 else (has_prev and seq[0] == prev_seq)
        if same:
            pairs += 1
        for layer in range(layers):
            for i in range(k):
                e = ids[r, layer, i]
                if e < 0:
                    continue
                seen = last_seen[layer, e]
                if seen < 0:
                    cold[layer] += 1
                else:
                    hist[layer, min(t - seen, clip)] += 1
                last_seen[layer, e] = t
                if same:
                    for j in range(k):
                        if (ids[r - 1, layer, j] if r > 0 else prev_ids[layer, j]) == e:
                            inter[layer] += 1
                            break
    return pairs


_pair_counts = numba.njit(cache=True, nogil=True)(_pair_counts_py) if numba is not None else None
_reuse_chunk = numba.njit(cache=True, nogil=True)(_reuse_chunk_py) if numba is not None else None


def pair_counts(ids: np.ndarray, take: np.ndarray, present: np.ndarray, counts: np.ndarray) -> None:
    """:func:`_pair_counts_py`, compiled."""
    assert _pair_counts is not None, "needs numba: pip install 'moesim[fast]'"
    _pair_counts(ids, take, present, counts)


def reuse_chunk(ids: np.ndarray, seq: np.ndarray, first_row: int, prev_ids: np.ndarray, prev_seq: int,
                has_prev: bool, last_seen: np.ndarray, hist: np.ndarray, cold: np.ndarray,
                inter: np.ndarray) -> int:
    """:func:`_reuse_chunk_py`, compiled."""
    assert _reuse_chunk is not None, "needs numba: pip install 'moesim[fast]'"
    return int(_reuse_chunk(ids, seq, first_row, prev_ids, prev_seq, has_prev, last_seen, hist, cold, inter))
