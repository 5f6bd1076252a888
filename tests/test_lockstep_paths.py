"""The lockstep fast paths equal the paths they replace on the same inputs, bit for bit: the clock
as a running sum per chunk vs one SimPy event per (step, layer) (``Machine(events=True)``), and the
compiled count-and-time pass (:mod:`moesim.sim.nodetimes`) vs node tables timed afterwards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.sim import nodetimes
from moesim.sim.engine import Machine
from moesim.sim.results import SimResult
from tests.lockstep_cases import Case, cases, config
from tests.offload_cases import outputs

ARRAYS = ("busy_s", "phase_s", "bytes_sent", "bytes_received", "tokens", "step_start_s", "step_end_s",
          "layer_start_s", "migration_s", "plan_index", "pre_parts_s", "expert_gpu_s")
PICKED = [c for i, c in enumerate(cases()) if i % 3 == 0 or c.replan or c.model == "deepseek-v3"]


def _result(case: Case, events: bool) -> SimResult:
    cfg, cost = config(case)
    m = Machine(cfg, cost, events=events)
    m.run()
    return SimResult(rec=m.rec, layer_ids=m.layer_ids, info=m.info(), memory_bytes=m.memory,
                     lockstep=m.lockstep_timeline())


@pytest.mark.parametrize("case", PICKED, ids=lambda c: c.name)
def test_fast_lockstep_equals_events_and_node_tables(case: Case, monkeypatch):
    fast = _result(case, events=False)
    monkeypatch.setattr(nodetimes, "_count_timed", None)  # node tables, timed by AllToAllTimer
    slow = _result(case, events=True)
    for name in ARRAYS:
        assert np.array_equal(getattr(fast.rec, name), getattr(slow.rec, name)), name
    assert fast.rec.link_bytes == slow.rec.link_bytes
    a, b = outputs(fast), outputs(slow)
    assert json.dumps(a, sort_keys=True, default=repr) == json.dumps(b, sort_keys=True, default=repr)


def test_the_fast_paths_are_taken():
    """The EP64 DeepSeek-V3 case runs without SimPy events and, with numba, counts and times in one pass."""
    case = next(c for c in cases() if c.model == "deepseek-v3" and c.nodes == 8 and c.batch == 256)
    cfg, cost = config(case)
    m = Machine(cfg, cost)
    m.run()
    assert m.env.now == 0.0 and m.rec.step_end_s[-1] > 0  # the clock ran without the SimPy environment
    if nodetimes.available():
        assert m.coster.node_timing() is not None


@pytest.mark.skipif(not nodetimes.available(), reason="numba not installed (the [fast] extra)")
@pytest.mark.parametrize("nodes", [2, 8])
@pytest.mark.parametrize("batch", [1, 3, 40])
@pytest.mark.parametrize("layout", ["blocks", "interleaved"])
def test_sparse_and_dense_passes_agree(nodes, batch, layout, monkeypatch):
    """The pass over touched entries only and the one over whole tables give the same counts and the
    same link seconds, in every way of timing the combine, with and without packed keys, on tiles of
    a power of two rows and not; and both equal the node tables timed by
    :class:`moesim.sim.a2atimes.AllToAllTimer`. ``interleaved`` numbers the nodes round robin (the
    dense pass's fold by contiguous node blocks does not apply)."""
    from dataclasses import replace

    from moesim.sim import counting
    from moesim.sim.dispatch import owners
    from moesim.sim.replica_routing import node_index

    case = Case("deepseek-v3", "h100x8x4", nodes, batch, 3)
    cfg, cost = config(case)
    m = Machine(cfg, cost)
    timing = m.coster.node_timing()
    assert timing is not None
    S = 3
    ids = np.array(cfg.trace.expert_ids[:S * batch]).reshape(S, batch, *cfg.trace.expert_ids.shape[1:])
    ids[0, :, 0] = -1  # a (step, layer) with no copies: every link idle
    owner = np.broadcast_to(owners(batch, m.G), (S, batch)).copy()
    node_of = node_index(cfg.cluster, m.devices)
    if layout == "interleaved":
        node_of = np.arange(m.G) % nodes
    dev, slot, J = m.table.device[:, :, 0], m.table.slot[:, :, 0], m.table.slots_per_device
    ref = counting.count_nodes_single(ids, dev, slot, owner, node_of, m.G, J, 2)
    rows, cols = ref[1], ref[2]
    tiles = np.asarray(timing.tile_rows)
    same, scaled, transposed = nodetimes.COMBINE_SAME, nodetimes.COMBINE_SCALED, nodetimes.COMBINE_TRANSPOSED
    variants = [(same, True, tiles), (scaled, False, tiles), (transposed, True, tiles),
                (scaled, False, tiles * 3 // 4), (transposed, False, np.ones_like(tiles) * 3)]
    for mode, keys, tile in variants:
        t = replace(timing, combine=mode, keys=keys, tile_rows=tile)
        out = {}
        for sparse in (True, False):
            monkeypatch.setattr(nodetimes, "sparse", lambda *_a, s=sparse: s)
            out[sparse] = nodetimes.count_timed(ids, dev, slot, owner, node_of, m.G, J, 2, t)
        a, b = out[True], out[False]
        assert (a.expert_keys is None) == (not keys or a.slot_tokens.max() >= 1 << (62 // J))
        padded = ((a.slot_tokens + tile[None, None, :, None] - 1) // tile[None, None, :, None]
                  * tile[None, None, :, None]).sum(axis=3)
        active = (a.slot_tokens > 0).sum(axis=3)
        assert np.array_equal(a.tokens, a.slot_tokens.sum(axis=3))
        if keys:  # packed slot counts asked for: no aggregates
            assert a.aggregate_keys is None
        else:
            assert np.array_equal(a.aggregate_keys, (padded << 31) | (active << 21) | a.tokens)
        for name in ("slot_tokens", "tokens", "expert_keys", "sent", "received", "total", "head",
                     "aggregate_keys"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (mode, name)
        assert np.array_equal(a.link_s[0], b.link_s[0])
        assert (a.link_s[1] is None) == (b.link_s[1] is None) == (mode == nodetimes.COMBINE_SAME)
        if mode != nodetimes.COMBINE_SAME:
            assert np.array_equal(a.link_s[1], b.link_s[1])
        assert np.array_equal(a.slot_tokens, ref[0]) and np.array_equal(a.total, ref[3])
        assert np.array_equal(a.sent, rows.sum(axis=3)) and np.array_equal(a.received, cols.sum(axis=2))
        L = rows.shape[1]
        flat = (rows.reshape(S * L, m.G, -1), cols.reshape(S * L, -1, m.G))
        expect = cost.all_to_all_node_s(m.devices, *flat, t.dispatch_bytes).reshape(S, L)
        assert np.array_equal(a.link_s[0], expect)
        if mode == nodetimes.COMBINE_TRANSPOSED:
            back = (flat[1].transpose(0, 2, 1), flat[0].transpose(0, 2, 1))
            expect = cost.all_to_all_node_s(m.devices, *back, t.combine_bytes).reshape(S, L)
            assert np.array_equal(a.link_s[1], expect)


@pytest.mark.parametrize(("model_name", "dtype"), [("deepseek-v3", None), ("deepseek-v2-lite", None),
                                                   ("mixtral-8x7b", "int4"), ("deepseek-v2-lite", "fp8")])
def test_expert_aggregates_equal_the_priced_rows(model_name, dtype):
    """A grouped expert call priced from (padded rows, active experts, tokens) is, bit for bit, the
    call priced from its token rows, in any order of the rows' entries."""
    from moesim.cost import CostModel
    from moesim.specs import load_cluster, load_model

    cluster = load_cluster("h100x8")
    cost = CostModel(cluster, load_model(model_name))
    dev = cluster.gpus[0].id
    rng = np.random.default_rng(7)
    rows = rng.integers(0, 300, size=(500, 16)) * (rng.random((500, 16)) < 0.6)
    rows[:3] = 0
    rows[3, :] = 1
    tile = cost.expert_tile_rows(dev, dtype)
    padded = ((rows + tile - 1) // tile * tile).sum(axis=1)
    agg = cost.expert_aggregates_s(dev, padded, (rows > 0).sum(axis=1), rows.sum(axis=1), dtype)
    assert agg is not None
    assert np.array_equal(agg, cost.expert_compute_batch_s([dev] * len(rows), rows, dtype))
    assert np.array_equal(agg, cost.expert_compute_batch_s([dev] * len(rows), np.sort(rows, axis=1)[:, ::-1],
                                                           dtype))


@pytest.mark.skipif(not nodetimes.available(), reason="numba not installed (the [fast] extra)")
def test_a_closed_form_that_disagrees_is_dropped(monkeypatch):
    """When the cost object's aggregates differ from its priced rows, the run keeps the memo of rows."""
    from moesim.cost import CostModel

    case = next(c for c in cases() if c.model == "deepseek-v3" and c.nodes == 2 and c.batch == 256)
    cfg, cost = config(case)
    want = Machine(cfg, cost, events=True)
    monkeypatch.setattr(nodetimes, "_count_timed", None)
    want.run()
    monkeypatch.undo()
    true = CostModel.expert_aggregates_s
    monkeypatch.setattr(CostModel, "expert_aggregates_s", lambda *a, **k: true(*a, **k) * (1 + 1e-9))
    got = Machine(cfg, cost)
    got.run()
    assert got.coster._aggregates_ok == {0: False}
    for name in ARRAYS:
        assert np.array_equal(getattr(got.rec, name), getattr(want.rec, name)), name


@pytest.mark.parametrize("compiled", [True, False])
def test_keyed_times_price_each_new_key_once_in_ascending_order(compiled, monkeypatch):
    from moesim.sim import expert_memo

    if not compiled:
        monkeypatch.setattr(expert_memo, "_lookup", expert_memo._lookup_py)
        monkeypatch.setattr(expert_memo, "_insert", expert_memo._insert_py)
    asked: list[np.ndarray] = []

    def price(keys: np.ndarray) -> np.ndarray:
        asked.append(keys.copy())
        return keys * 0.5 + 1.0

    memo = expert_memo.KeyedTimes(price, capacity=4)
    rng = np.random.default_rng(3)
    for _ in range(6):  # the table grows past its first capacity several times
        keys = rng.integers(0, 3000, size=(7, 5)) << rng.integers(0, 40)
        assert np.array_equal(memo(keys), keys * 0.5 + 1.0)
    seen = np.concatenate(asked)
    assert len(np.unique(seen)) == len(seen)  # each key priced once
    assert all(np.array_equal(a, np.unique(a)) for a in asked)  # new keys, ascending


@pytest.mark.skipif(not nodetimes.available(), reason="numba not installed (the [fast] extra)")
@pytest.mark.parametrize("batch", [1, 40])
def test_passes_without_slot_counts_give_the_same_rest(batch: int):
    """Asked to keep no per-slot counts, both passes give None for them and the same everything else."""
    from dataclasses import replace

    from moesim.sim.dispatch import owners
    from moesim.sim.replica_routing import node_index

    cfg, cost = config(Case("deepseek-v3", "h100x8x4", 2, batch, 3))
    m = Machine(cfg, cost)
    timing = m.coster.node_timing()
    assert timing is not None and not timing.keys
    S = 3
    ids = np.array(cfg.trace.expert_ids[:S * batch]).reshape(S, batch, *cfg.trace.expert_ids.shape[1:])
    owner = np.broadcast_to(owners(batch, m.G), (S, batch)).copy()
    node_of = node_index(cfg.cluster, m.devices)
    args = (ids, m.table.device[:, :, 0], m.table.slot[:, :, 0], owner, node_of, m.G,
            m.table.slots_per_device, 2, replace(timing, combine=nodetimes.COMBINE_TRANSPOSED))
    kept, lean = nodetimes.count_timed(*args), nodetimes.count_timed(*args, keep_slots=False)
    assert kept.slot_tokens is not None and lean.slot_tokens is None
    for name in ("tokens", "sent", "received", "total", "head", "aggregate_keys"):
        assert np.array_equal(getattr(kept, name), getattr(lean, name)), name
    assert all(np.array_equal(a, b) for a, b in zip(kept.link_s, lean.link_s, strict=True))


@pytest.mark.skipif(not nodetimes.available(), reason="numba not installed (the [fast] extra)")
@pytest.mark.parametrize("overflow", [False, True])
def test_slot_counts_dropped_once_the_closed_form_is_checked(overflow: bool, monkeypatch):
    """The first chunk keeps its slot counts (the closed form is checked on them), later chunks do not,
    and the run equals one that keeps them throughout; a chunk whose aggregates do not fit their bits
    is counted again with its slots."""
    from dataclasses import replace

    from moesim.sim import engine, stepcost

    case = Case("deepseek-v3", "h100x8x4", 2, 4, 40)
    monkeypatch.setattr(engine, "CHUNK_ENTRIES", 40_000)  # several chunks
    kept: list[bool] = []
    count_timed = nodetimes.count_timed

    def spy(*a):
        keep = a[9] if len(a) > 9 else True
        kept.append(keep)
        out = count_timed(*a)
        return replace(out, aggregate_keys=None) if overflow and not keep else out

    monkeypatch.setattr(nodetimes, "count_timed", spy)
    lean = _result(case, events=False)
    assert kept[0] and not all(kept) and len(kept) > 3
    if overflow:  # every slotless count was followed by a count with slots
        assert all(kept[i + 1] for i, k in enumerate(kept) if not k)
    monkeypatch.setattr(stepcost.StepCoster, "aggregates_settled", lambda self: False)
    kept.clear()
    full = _result(case, events=False)
    assert all(kept)
    for name in ARRAYS:
        assert np.array_equal(getattr(lean.rec, name), getattr(full.rec, name)), name
