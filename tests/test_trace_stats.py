"""Trace statistics: known values, internal identities, the CLI JSON, every shared trace."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cli import main
from moesim.traces import RoutingTrace
from moesim.traces.stats import entropy_bits, gini, local_consistency, trace_stats


def test_gini_and_entropy_known_values():
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    assert gini(np.array([0, 0, 0, 8])) == pytest.approx(0.75)
    assert entropy_bits(np.array([1, 1, 1, 1])) == pytest.approx(2.0)
    assert entropy_bits(np.array([0, 3, 0, 0])) == pytest.approx(0.0)


def test_reuse_overlap_and_affinity_on_a_known_trace():
    # one layer pair, k=1: layer 0 = 0 1 0 1 ..., layer 1 = layer 0 + 2 (a perfect cross-layer map)
    l0 = np.array([0, 1] * 10)
    ids = np.stack([l0, l0 + 2], axis=1)[:, :, None]
    t = RoutingTrace.build(ids, num_experts=4)
    st = trace_stats(t, cache_sizes=[1, 2], segment_lengths=[2, 20])
    assert st["per_layer"]["reuse_distance_mean"] == [2.0, 2.0]
    assert st["per_layer"]["consecutive_overlap"] == [0.0, 0.0]
    assert st["cross_layer"]["topk_mass"] == [1.0]
    assert st["cross_layer"]["mutual_information_bits"][0] == pytest.approx(1.0)
    assert st["reuse_distance_histogram"]["2"] == pytest.approx(36 / 40)
    assert st["cache_hit_rate"]["lru"]["1"] == 0.0 and st["cache_hit_rate"]["lru"]["2"] == pytest.approx(
        36 / 40
    )
    # a segment of 2 tokens uses 2 experts per layer: the best single expert covers half
    assert st["local_consistency"]["srp"]["2"] == pytest.approx(0.5)
    assert st["local_consistency"]["sch"]["2"]["2"] == pytest.approx(1.0)


def test_hit_rate_at_capacity_k_equals_distance_one_reuse():
    rng = np.random.default_rng(3)
    ids = np.stack([[rng.choice(6, 2, replace=False) for _ in range(3)] for _ in range(200)])
    t = RoutingTrace.build(ids, num_experts=6)
    st = trace_stats(t, cache_sizes=[2])
    for policy in ("lru", "lfu", "belady"):
        assert st["cache_hit_rate"][policy]["2"] == pytest.approx(st["reuse_distance_histogram"]["1"])


def test_segments_respect_sequences_and_gate_weights():
    ids = np.array([[0, 1], [0, 2], [3, 1], [3, 2]])[:, None, :]
    w = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3]])[:, None, :]
    t = RoutingTrace.build(ids, num_experts=4, seq_id=[0, 0, 1, 1], gate_weights=w)
    lc = local_consistency(t, [4], [1, 2])
    # best 2-sets by weight: seq 0 {0: 1.7, 2: 0.2}, seq 1 {3: 1.3, 1: 0.4}, of 2.0 weight each
    assert lc["srp"]["4"] == pytest.approx((1.9 + 1.7) / 4.0)
    assert lc["sch"]["4"]["1"] == pytest.approx(4 / 8)
    assert lc["sch"]["4"]["2"] == pytest.approx(6 / 8)


def test_stats_json_keys(capsys):
    assert main(["trace", "stats", "mixtral-8x7b-synth", "--cache-sizes", "2,4", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    for key in ("tokens", "layers", "top_k", "num_experts", "load", "cache_hit_rate"):
        assert key in st
    assert set(st["cache_hit_rate"]) == {"lru", "lfu", "belady"} and set(st["cache_hit_rate"]["lru"]) == {
        "2",
        "4",
    }
    assert np.asarray(st["load"]).shape == (st["layers"], st["num_experts"])
    assert np.asarray(st["load"]).sum() == st["tokens"] * st["layers"] * st["top_k"]
    assert main(["trace", "stats", "mixtral-8x7b-synth", "--cache-sizes", "1"]) == 2


def test_stats_on_every_shared_trace(shared_traces, capsys):
    for path in sorted(shared_traces.glob("*/*.npz")):
        if "aggregate" in str(path):
            continue
        assert (
            main(
                [
                    "trace",
                    "stats",
                    str(path),
                    "--cache-sizes",
                    "8",
                    "--cache-tokens",
                    "3000",
                    "--segment-lengths",
                    "16",
                    "--json",
                ]
            )
            == 0
        ), path
        st = json.loads(capsys.readouterr().out)
        t = RoutingTrace.load(path)
        assert np.asarray(st["load"]).sum() == int((np.asarray(t.expert_ids) >= 0).sum())
        rates = st["cache_hit_rate"]
        assert rates["belady"]["8"] >= max(rates["lru"]["8"], rates["lfu"]["8"]) - 1e-12


def test_stats_on_shared_aggregate_counts(capsys):
    from tests.conftest import shared_trace

    agg = str(shared_trace("olmoe-mixtral-aggregate-counts/olmoe_mixtral_expert_counts.npz"))
    assert main(["trace", "stats", agg]) == 2
    assert "--key" in capsys.readouterr().err
    assert main(["trace", "stats", agg, "--key", "olmoe__expert_counts__c4", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["kind"] == "load-counts" and np.asarray(st["load"]).shape == (3, 64)
    assert np.asarray(st["load"]).sum() == 208896 * 8 * 3
