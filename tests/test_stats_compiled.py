"""The compiled trace-statistics loops (numba, the [fast] extra) give exactly the numpy paths'
integers: transition counts, reuse-distance histograms, cold selections, consecutive overlap."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.traces import RoutingTrace, stats, stats_compiled
from moesim.traces.transitions import Transitions

pytestmark = pytest.mark.skipif(not stats_compiled.available(), reason="numba not installed ([fast] extra)")


def _trace(seed: int, n: int, layers: int, k: int, e: int, missing: float, seqs: int) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    dup = seed % 2 == 1  # some traces with an expert twice in one token (counted per selection)
    ids = np.stack([[rng.choice(e, size=k, replace=dup) for _ in range(layers)] for _ in range(n)])
    ids = np.where(rng.random(ids.shape) < missing, -1, ids).astype(np.int16)
    seq = np.sort(rng.integers(0, seqs, n))
    return RoutingTrace.build(ids, num_experts=e, seq_id=seq)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 60), layers=st.integers(1, 4), k=st.integers(1, 3),
       extra=st.integers(0, 5), missing=st.sampled_from([0.0, 0.2]), seqs=st.integers(1, 5),
       chunk_rows=st.integers(1, 7))
def test_compiled_equals_numpy(seed, n, layers, k, extra, missing, seqs, chunk_rows):
    """Small row chunks: the state carried between chunks (last row of each expert, previous row)."""
    tr = _trace(seed, n, layers, k, k + extra, missing, seqs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stats, "row_chunks", lambda rows, *_: ((a, min(rows, a + chunk_rows))
                                                          for a in range(0, rows, chunk_rows)))
        fast, slow = (stats._reuse_and_overlap(tr, compiled=c) for c in (True, False))
    for a, b in zip(fast, slow, strict=True):
        np.testing.assert_array_equal(a, b)
    columns = [None if i == 1 else i for i in range(layers)] if layers > 2 else None
    fits = [Transitions.fit(tr.expert_ids, tr.num_experts, start=1, columns=columns, compiled=c).counts
            for c in (True, False)]
    np.testing.assert_array_equal(*fits)


def test_reuse_by_hand():
    """One layer, K = 2, rows [0 1] [1 2] | [0 1] (a new sequence): distances 1, 1 (expert 1) and 2
    (expert 0); cold 0, 1, 2; overlap 1 of 2 selections over the one same-sequence pair."""
    tr = RoutingTrace.build(np.array([[[0, 1]], [[1, 2]], [[0, 1]]], np.int16), num_experts=3,
                            seq_id=np.array([0, 0, 1]))
    for compiled in (True, False):
        hist, cold, overlap, pairs = stats._reuse_and_overlap(tr, compiled=compiled)
        assert hist[0, 1] == 2 and hist[0, 2] == 1 and hist[0].sum() == 3
        assert cold.tolist() == [3] and overlap.tolist() == [0.5] and pairs.tolist() == [1]
