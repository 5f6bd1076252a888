"""Online re-placement in the simulator (``moesim.sim.replan*``): invariants and behaviour."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from moesim.errors import UserError
from moesim.sim.engine import simulate
from moesim.sim.replan import ReplanConfig
from moesim.sim.replan_history import LoadHistory, step_counts
from moesim.sim.replan_migration import align_devices, migration_cost
from moesim.sim.replan_policies import POLICIES, ReplanSettings, make_policy, total_variation
from moesim.vocab import Replan
from moesim.workflows.replan import ReplanOptions, inner_planner, replan_config
from tests.replan_streams import setting, switching_trace, with_replan


@pytest.fixture(scope="module")
def small():
    """60 decode steps of 64 tokens whose hot experts move half-way, with an EPLB plan on the start."""
    return setting(switching_trace(64 * 60))


def _rc(cfg, cost, plan, **kw) -> ReplanConfig:
    return replan_config(ReplanOptions(**{"interval_steps": 10, "window_steps": 10, **kw}), plan, cfg.model,
                         cfg.cluster, cost)


def _comparable(summary: dict) -> dict:
    out = {k: v for k, v in summary.items() if k not in ("replan", "timing")}
    return json.loads(json.dumps(out, default=str))


def test_static_policy_is_the_run_without_replan_bit_for_bit(small):
    cfg, cost, plan = small
    plain = simulate(cfg, cost)
    static = simulate(with_replan(cfg, _rc(cfg, cost, plan, policy="static")), cost)
    assert np.array_equal(plain.step_latency_s, static.step_latency_s)
    assert np.array_equal(plain.rec.tokens, static.rec.tokens)
    assert np.array_equal(plain.rec.phase_s, static.rec.phase_s)
    assert _comparable(plain.summary()) == _comparable(static.summary())
    rp = static.summary()["replan"]
    assert rp["checks"] == 0 and rp["rebalances"] == [] and rp["migration_bytes"] == 0.0
    assert (static.rec.plan_index == 0).all() and (static.rec.migration_s == 0).all()


@pytest.mark.parametrize("policy", ["periodic", "drift"])
def test_same_seed_same_run(small, policy):
    cfg, cost, plan = small
    a, b = (simulate(with_replan(cfg, _rc(cfg, cost, plan, policy=policy, threshold=0.05)), cost)
            for _ in range(2))
    assert np.array_equal(a.step_latency_s, b.step_latency_s)
    assert json.dumps(a.summary()["replan"], default=str) == json.dumps(b.summary()["replan"], default=str)
    assert a.summary()["replan"]["applied"] >= 1  # something did re-plan: its result is what repeats


def test_blocking_migration_bytes_are_the_moved_experts_weights_and_stall_the_check_step(small):
    cfg, cost, plan = small
    r = simulate(with_replan(cfg, _rc(cfg, cost, plan, policy="periodic")), cost)
    rp, eb = r.summary()["replan"], cfg.model.expert_bytes()
    assert rp["applied"] == len(rp["rebalances"]) == 5  # checks at 10, 20, ..., 50
    for e in rp["rebalances"]:
        assert e["bytes"] == e["experts_moved"] * eb and e["effective_step"] == e["step"]
        assert e["stall_s"] == e["copy_s"] > 0
        assert r.rec.migration_s[e["step"]] == e["stall_s"]
    assert rp["migration_bytes"] == sum(e["bytes"] for e in rp["rebalances"])
    assert r.rec.migration_s.sum() == pytest.approx(rp["stall_s"])
    per_step = r.summary()["op_class_s"]["mean_per_step_s"]["migration"]
    assert per_step * len(r.step_latency_s) == pytest.approx(rp["stall_s"])
    assert r.op_class_s().sum(axis=1) == pytest.approx(r.step_latency_s, rel=1e-12)  # stalls included
    # every copy crosses at least one link; on one node each crosses exactly one NVLink direction pair
    assert sum(x["bytes"] for x in rp["migration_link_bytes"]) >= rp["migration_bytes"]
    # the plans change where the events say
    assert list(np.flatnonzero(np.diff(r.rec.plan_index)) + 1) == [e["step"] for e in rp["rebalances"]]


def test_migration_bytes_equal_the_moved_layer_experts_weights(small):
    """Swap experts 0 and 63 in every layer: two copies per layer, whatever the GPUs' numbering."""
    cfg, cost, plan = small
    L = cfg.model.num_moe_layers
    old = np.broadcast_to(np.arange(64).reshape(8, 8), (L, 8, 8)).copy()  # 8 experts on each GPU
    new = old.copy()
    a, b = new == 0, new == 63
    new[a], new[b] = 63, 0
    devices = tuple(plan.devices)
    node_of = np.zeros(len(devices), dtype=np.int64)
    shuffled = new[:, ::-1]  # the planner numbers GPUs the other way round: alignment undoes it
    aligned = align_devices(old, shuffled, node_of)
    move = migration_cost(old, aligned, devices, cost, cfg.model.expert_bytes())
    moved = sum(len(set(aligned[m, g].tolist()) - set(old[m, g].tolist()))
                for m in range(L) for g in range(8))
    assert move.experts_moved == moved == 2 * new.shape[0]
    assert move.bytes == moved * cfg.model.expert_bytes()
    assert move.layers_changed == new.shape[0]
    # the unaligned numbering would copy (nearly) everything
    assert migration_cost(old, shuffled, devices, cost, 1.0).experts_moved > 10 * moved
    # one copy per NVLink direction it crosses, at that link's bandwidth: the busiest link's time
    assert sum(move.link_bytes.values()) >= move.bytes and move.copy_s > 0


def test_alignment_only_renumbers_gpus_inside_a_node():
    rng = np.random.default_rng(0)
    old = np.stack([rng.permutation(16).reshape(4, 4) for _ in range(3)])
    new = np.stack([rng.permutation(16).reshape(4, 4) for _ in range(3)])
    node_of = np.array([0, 0, 1, 1])
    out = align_devices(old, new, node_of)
    for m in range(3):
        for n in (0, 1):
            g = np.flatnonzero(node_of == n)
            assert sorted(map(sorted, out[m, g].tolist())) == sorted(map(sorted, new[m, g].tolist()))
        # kept experts keep their slots
        keep = (out[m] == old[m])
        assert keep.sum() == sum(len(set(out[m, g]) & set(old[m, g])) for g in range(4))


def test_overlapped_copies_switch_the_plan_when_they_land_without_a_stall(small):
    cfg, cost, plan = small
    r = simulate(with_replan(cfg, _rc(cfg, cost, plan, policy="periodic", migration="overlapped")), cost)
    rp = r.summary()["replan"]
    assert rp["stall_s"] == 0 and (r.rec.migration_s == 0).all()
    landed = [e for e in rp["rebalances"] if e["effective_step"] is not None]
    assert landed
    for e in landed:
        assert e["effective_step"] > e["step"]  # the old plan serves while the weights move
        assert r.rec.plan_index[e["effective_step"]] == r.rec.plan_index[e["effective_step"] - 1] + 1
    # no check while a copy is in flight: checks are at most one per interval, never overlapping copies
    steps = [e["step"] for e in rp["rebalances"]]
    for e, nxt in zip(rp["rebalances"], steps[1:], strict=False):
        assert e["effective_step"] is not None and e["effective_step"] <= nxt


def test_a_copy_in_flight_at_the_end_is_counted_apart_not_as_migration(small):
    """The stream ends two steps after a check: the overlapped copy decided there never lands."""
    from moesim.workflows.replan_search import _candidate

    cfg, cost, plan = small
    short = replace(cfg, trace=cfg.trace.rows(0, 64 * 52))
    r = simulate(with_replan(short, _rc(short, cost, plan, policy="periodic", migration="overlapped")), cost)
    rp = r.summary()["replan"]
    landed = [e for e in rp["rebalances"] if e["effective_step"] is not None]
    late = [e for e in rp["rebalances"] if e["effective_step"] is None]
    assert landed and len(late) == 1 and late[0]["step"] == 50 and late[0]["bytes"] > 0
    assert rp["applied"] == len(landed)
    assert rp["migration_bytes"] == sum(e["bytes"] for e in landed)
    assert rp["experts_moved"] == sum(e["experts_moved"] for e in landed)
    assert rp["in_flight_bytes"] == late[0]["bytes"] and rp["in_flight_experts"] == late[0]["experts_moved"]
    link = sum(x["bytes"] for x in rp["migration_link_bytes"])
    assert link >= rp["migration_bytes"]
    c = _candidate("periodic", ReplanOptions(policy="periodic"), r).as_dict()
    assert (c["migration_bytes"], c["in_flight_bytes"]) == (rp["migration_bytes"], rp["in_flight_bytes"])
    blocking = simulate(with_replan(short, _rc(short, cost, plan, policy="periodic")), cost)
    assert blocking.summary()["replan"]["in_flight_bytes"] == 0.0  # a blocking copy always lands


def test_a_policy_never_reads_the_future(small):
    """The plans made on a trace cut at step 40 are the plans the full trace gets up to step 40."""
    cfg, cost, plan = small
    calls: dict[str, list] = {}

    def run(trace, key):
        inner = inner_planner("eplb", cfg.model, cfg.cluster, tuple(plan.devices), plan.slots_per_device,
                              cost=cost)
        log = calls.setdefault(key, [])

        def spy(load, serving):
            out = inner(load, serving)
            log.append((load.copy(), out.placement.copy()))
            return out

        rc = replace(_rc(cfg, cost, plan, policy="periodic"), planner=spy)
        return simulate(replace(cfg, trace=trace, replan=rc), cost)

    full = run(cfg.trace, "full")
    cut = run(cfg.trace.rows(0, 40 * 64), "cut")
    assert len(calls["cut"]) == 3 and len(calls["full"]) == 5  # checks at 10, 20, 30 (40 is the end)
    for (la, pa), (lb, pb) in zip(calls["cut"], calls["full"], strict=False):
        assert np.array_equal(la, lb) and np.array_equal(pa, pb)
    assert np.array_equal(cut.step_latency_s, full.step_latency_s[:40])


def test_history_refuses_steps_that_have_not_run():
    h = LoadHistory(2, 4, keep=3)
    ids = np.array([[[[0], [1]]], [[[2], [3]]]], dtype=np.int16)  # [S=2, B=1, L=2, K=1]
    h.append(0, step_counts(ids, 4))
    assert h.total(0, 2).tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    with pytest.raises(ValueError, match="has not run"):
        h.steps(0, 3)
    with pytest.raises(ValueError):
        h.append(5, step_counts(ids, 4))


def test_step_counts_skip_padding():
    ids = np.array([[[[0, 1]], [[-1, -1]]]], dtype=np.int16)  # one step, 2 rows, 1 layer, k 2
    assert step_counts(ids, 3).tolist() == [[[1, 1, 0]]]


def test_every_policy_name_is_registered():
    assert set(POLICIES) == set(Replan)
    for name in Replan:
        assert type(make_policy(name, ReplanSettings())).__name__.lower() == str(name)


def test_drift_triggers_only_when_the_load_moved():
    settings = ReplanSettings(interval_steps=2, window_steps=2, threshold=0.2)
    same = np.array([[10, 10, 0, 0]])
    policy = make_policy("drift", settings, initial_load=same)
    h = LoadHistory(1, 4, keep=4)
    h.append(0, np.array([[[9, 11, 0, 0]], [[10, 10, 0, 0]]]))
    assert policy.decide(2, h) is None
    h.append(2, np.array([[[0, 0, 10, 10]], [[0, 0, 10, 10]]]))
    ask = policy.decide(4, h)
    assert ask is not None and ask.reason.startswith("drift: tv 1.000")
    assert ask.load.tolist() == [[[0, 0, 20, 20]]]
    assert total_variation(same, same) == 0.0


def test_hedged_plans_once_for_several_windows():
    policy = make_policy("hedged", ReplanSettings(interval_steps=4, window_steps=4, hedge_windows=2))
    h = LoadHistory(1, 2, keep=8)
    h.append(0, np.array([[[1, 0]], [[1, 0]], [[0, 1]], [[0, 1]]]))
    ask = policy.decide(4, h)
    assert ask is not None and ask.load.tolist() == [[[2, 0]], [[0, 2]]]
    assert policy.decide(8, h) is None and policy.next_check(4) > 10**9


def test_settings_out_of_range_are_refused():
    with pytest.raises(UserError, match="--replan-threshold"):
        ReplanSettings(threshold=1.5).check()
    with pytest.raises(UserError, match="--replan-interval"):
        ReplanSettings(interval_steps=0).check()
    with pytest.raises(UserError, match="--replan-planner"):
        ReplanConfig(policy="periodic").check()
    with pytest.raises(UserError, match="--replan-planner"):
        ReplanOptions(planner="nope").check()


def test_offloaded_runs_refuse_replan(small):
    cfg, cost, plan = small
    with pytest.raises(UserError, match="--replan"):
        simulate(with_replan(replace(cfg, cache_policy="lru", cache_size=16),
                             _rc(cfg, cost, plan, policy="periodic")), cost)


def test_step_frame_has_imbalance_and_plan(small):
    cfg, cost, plan = small
    r = simulate(with_replan(cfg, _rc(cfg, cost, plan, policy="periodic")), cost)
    frame = r.step_frame
    assert frame["plan"].tolist() == r.rec.plan_index.tolist() and frame["plan"].max() == 5
    assert (frame["imbalance"] >= 1.0).all()
    assert frame["migration_s"].sum() == pytest.approx(r.summary()["replan"]["stall_s"])
    segs = r.summary()["replan"]["segments"]
    assert [s["first_step"] for s in segs] == [0, 10, 20, 30, 40, 50]


def test_replanning_beats_static_after_migration_on_a_switching_stream():
    """Large steps (4096 tokens), hot experts moving half-way: ``drift`` and ``periodic`` (with few
    moves) end better balanced and faster than ``static``, blocking copies included."""
    cfg, cost, plan = setting(switching_trace(4096 * 24, seed=1))
    cfg = replace(cfg, batch_size=4096)
    static = simulate(cfg, cost)
    static_imbalance = float(static.step_frame["imbalance"].mean())
    for kw in ({"policy": "drift"}, {"policy": "periodic", "moves": "min"}):
        r = simulate(with_replan(cfg, _rc(cfg, cost, plan, interval_steps=6, window_steps=6, **kw)), cost)
        rp = r.summary()["replan"]
        assert rp["applied"] >= 1 and rp["stall_s"] > 0
        assert rp["imbalance_mean"] < static_imbalance - 0.05
        assert rp["step_time_mean_s"] < float(np.mean(static.step_latency_s))


def test_min_moves_keeps_experts_in_place_with_the_new_counts():
    from moesim.planners.sticky import keep_layer

    old = np.array([[0, 1], [2, 3]])
    new = np.array([[3, 0], [1, 0]])  # expert 0 gains a replica, 2 loses its own: reshuffled by the planner
    w = np.array([4.0, 1.0, 0.0, 1.0])
    out = keep_layer(old, new, w, tolerance=0.01)
    assert np.bincount(out[out >= 0], minlength=4).tolist() == [2, 1, 0, 1]  # the planner's counts
    assert out[0].tolist() == [0, 1]  # GPU 0 keeps both of its experts
    assert 3 in out[1] and 0 in out[1]  # 3 stays; the new replica of 0 fills the slot 2 left
    # a kept layout far worse than the planner's is repaired by swaps off the slowest GPU: the planner's
    # balance (6 and 6) with two slots changed, as the planner's own layout changes two
    skew = keep_layer(np.array([[0, 1], [2, 3]]), np.array([[0, 2], [1, 3]]), np.array([5.0, 5.0, 1.0, 1.0]),
                      tolerance=0.01)
    assert sorted(map(sorted, skew.tolist())) == [[0, 3], [1, 2]] or sorted(map(sorted, skew.tolist())) == [
        [0, 2], [1, 3]]
    assert (skew != np.array([[0, 1], [2, 3]])).sum() == 2


def test_min_moves_swaps_off_the_slowest_gpu_and_falls_back_when_no_swap_helps():
    from moesim.planners.sticky import _swap_down, keep_layer

    per = np.array([4.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    old = np.array([[0, 1, 2], [3, 4, 5]])  # loads 8 and 3: one swap with a 1-token expert
    load = np.array([8.0, 3.0])
    out = old.copy()
    assert _swap_down(out, load, per, target=6.0, max_swaps=6)
    assert sorted(load.tolist()) == [5.0, 6.0] and (out != old).sum() == 2
    # GPU 1 holds the other copy of expert 0 and only a cold one: no swap lowers GPU 0
    stuck = np.array([[0, 1], [0, 2]])
    assert not _swap_down(stuck.copy(), np.array([10.0, 5.0]), np.array([5.0, 5.0, 0.0]), 7.0, max_swaps=4)
    new = np.array([[0, 2], [1, 3]])
    # a tolerance below what any layout with these counts reaches: the planner's layer is returned
    assert keep_layer(np.array([[0, 1], [2, 3]]), new, np.array([5.0, 5.0, 1.0, 1.0]),
                      tolerance=-0.5).tolist() == new.tolist()
