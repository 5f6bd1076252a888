"""The one cross-layer transition model: counting (padding) rule, tie rule, and its three users
(trace stats, the cache planner, the simulator's predictor prefetch) agreeing with it."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.planners.cache_stats import prefetch_accuracy
from moesim.sim import SimConfig, simulate
from moesim.specs import load_cluster, load_model
from moesim.traces import RoutingTrace
from moesim.traces.stats import cross_layer
from moesim.traces.transitions import Transitions


def _ids(rows: list[list[list[int]]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.int16)


def test_padding_rule_counts_only_recorded_pairs():
    """Every (this, next) pair of recorded ids counts once; a -1 slot adds nothing, the rest of
    its token still counts (hand-counted)."""
    ids = _ids([
        [[0, 1], [2, 3]],     # pairs (0,2) (0,3) (1,2) (1,3)
        [[0, -1], [2, -1]],   # only (0,2)
        [[-1, -1], [1, 3]],   # nothing
    ])
    c = Transitions.fit(ids, 4).counts
    want = np.zeros((1, 4, 4), np.int64)
    want[0, 0] = [0, 0, 2, 1]
    want[0, 1] = [0, 0, 1, 1]
    assert np.array_equal(c, want)


def test_counts_equal_a_brute_force_count():
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 6, size=(300, 4, 3)).astype(np.int16)
    ids[rng.random(ids.shape) < 0.1] = -1
    want = np.zeros((3, 6, 6), np.int64)
    for row in ids.tolist():
        for p in range(3):
            for a in row[p]:
                for b in row[p + 1]:
                    if a >= 0 and b >= 0:
                        want[p, a, b] += 1
    assert np.array_equal(Transitions.fit(ids, 6).counts, want)
    assert np.array_equal(Transitions.fit(ids, 6, start=100, stop=200).counts,
                          Transitions.fit(ids[100:200], 6).counts)
    # a chain of columns with a missing layer: no pair touches it
    chained = Transitions.fit(ids, 6, columns=[0, None, 2, 3]).counts
    assert not chained[0].any() and not chained[1].any() and np.array_equal(chained[2], want[2])


def test_tie_rule_prior_then_lowest_id_and_no_zero_score_guess():
    # K = 1: 0 -> 1 once, 0 -> 3 once, 2 -> 3 twice. Prior of the next layer: expert 3 (3 pairs) > 1.
    t = Transitions.fit(_ids([[[0], [1]], [[0], [3]], [[2], [3]], [[2], [3]]]), 4)
    assert t.predict(0, np.array([[0]]), 1).tolist() == [[3]]  # tie 1 vs 3 on score, 3 wins on prior
    assert t.predict(0, np.array([[0]]), 3).tolist() == [[3, 1, -1]]  # zero scores are not guesses
    assert t.predict(0, np.array([[1], [-1]]), 2).tolist() == [[-1, -1], [-1, -1]]  # no evidence
    assert t.frequent(0, 2).tolist() == [3, 1]
    # equal score and equal prior: the lowest id
    even = Transitions.fit(_ids([[[0], [2]], [[0], [1]]]), 4)
    assert even.predict(0, np.array([[0]]), 1).tolist() == [[1]]
    assert even.predict_set(0, np.array([[0], [0]]), 2).tolist() == [1, 2]
    assert even.predict_set(5, np.array([[0]]), 2).size == 0  # no next layer


def test_recall_counts_recorded_next_selections():
    t = Transitions.fit(_ids([[[0], [1]], [[0], [3]], [[2], [3]], [[2], [3]]]), 4)
    prev = np.array([[0], [2], [1]])
    nxt = np.array([[3], [1], [-1]])  # hit (3 predicted for 0), miss (2 predicts 3), unrecorded
    assert t.recall(0, prev, nxt, 1) == (1, 2)


@pytest.fixture(scope="module")
def chain_trace():
    """Two MoE layers of 8 experts, top-2: the layer-1 experts are the layer-0 ones plus 4 (mod 8)."""
    rng = np.random.default_rng(0)
    first = np.stack([rng.choice(8, size=2, replace=False) for _ in range(400)])
    ids = np.stack([first, (first + 4) % 8], axis=1)
    return RoutingTrace.build(ids, num_experts=8, layer_ids=np.array([0, 1]))


def test_stats_and_planner_use_the_model(chain_trace, tmp_path):
    co = cross_layer(chain_trace)["cooccurrence"]
    assert np.array_equal(co, Transitions.fit(chain_trace.expert_ids, 8).counts)
    spec = tmp_path / "two.yaml"
    spec.write_text("extends: mixtral-8x7b\nname: two-layer\nnum_layers: 2\nmoe_layers: [0, 1]\n")
    model = load_model(str(spec))
    pred, freq = prefetch_accuracy(chain_trace, model)
    # the mapping is deterministic, so each token's two next experts are exactly its top-2
    assert pred.tolist() == [0.0, 1.0] and 0.0 < freq[1] < 1.0


def test_simulator_predictor_uses_the_model(chain_trace, tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text("extends: mixtral-8x7b\nname: two-layer\nnum_layers: 2\nmoe_layers: [0, 1]\n"
                    "weight_dtype: fp8\n")
    model = load_model(str(spec))
    r = simulate(SimConfig(load_cluster("rtx4090-workstation"), model, chain_trace, batch_size=1,
                           cache_policy="lru", cache_size=4, prefetch="predictor"))
    assert r.summary()["cache"]["prefetch_accuracy"] == {"recall": 1.0, "precision": 1.0}


def test_simulator_predictor_breaks_ties_by_the_rule(tmp_path):
    """Top-1 over 4 experts: training rows 0->1, 0->3, 2->3, 2->3 tie 1 and 3 after expert 0, and
    the prior picks 3; the rows replayed after them all go 0->1. Batch 1: predictions are right on
    steps 1-3 only, so recall = precision = 3/8 (the lowest-id rule would give 7/8)."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text("extends: mixtral-8x7b\nname: tiny\nnum_layers: 2\nmoe_layers: [0, 1]\nnum_experts: 4\n"
                    "top_k: 1\nweight_dtype: fp8\n")
    model = load_model(str(spec))
    pairs = [(0, 1), (0, 3), (2, 3), (2, 3)] + [(0, 1)] * 4
    trace = RoutingTrace.build(np.array(pairs).reshape(8, 2, 1), num_experts=4, layer_ids=np.array([0, 1]))
    r = simulate(SimConfig(load_cluster("rtx4090-workstation"), model, trace, batch_size=1,
                           cache_policy="lru", cache_size=2, prefetch="predictor"))
    assert r.summary()["cache"]["prefetch_accuracy"] == {"recall": 3 / 8, "precision": 3 / 8}
