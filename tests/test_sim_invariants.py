"""The simulator's numbered invariants (docs/invariants.md), each with the test named there."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.errors import UserError
from moesim.sim import SimConfig, default_plan, invariants, simulate
from moesim.sim.engine import Machine
from moesim.sim.invariants import InvariantViolation
from moesim.sim.recorder import Recorder
from moesim.specs import load_cluster, load_model, with_weight_dtype
from moesim.traces import RoutingTrace
from moesim.traces.cache import ExpertCache


@pytest.fixture(scope="module")
def mixtral():
    return load_model("mixtral-8x7b")


@pytest.fixture(scope="module")
def mixtral_trace(mixtral):
    return RoutingTrace.load("mixtral-8x7b-synth", model=mixtral).rows(0, 256)


@pytest.fixture(scope="module")
def h100x8():
    return load_cluster("h100x8")


def test_inv1_token_conservation(h100x8, mixtral, mixtral_trace):
    """INV-1: per (step, MoE layer), pairs computed over all devices = valid ids of the step's tokens."""
    r = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=16))
    got = r.rec.tokens.sum(axis=2)[:, list(mixtral.moe_layers)]
    ids = np.asarray(mixtral_trace.expert_ids)
    want = np.stack([(ids[s * 16:(s + 1) * 16] >= 0).sum(axis=(0, 2)) for s in range(16)])
    assert np.array_equal(got, want)
    assert r.summary()["tokens"] == 256


def test_inv1_token_conservation_offloaded(mixtral_trace):
    """INV-1 with offloading and CPU execution of misses: GPU + CPU pairs = valid ids."""
    model = load_model("mixtral-8x7b")
    r = simulate(SimConfig(load_cluster("rtx4090-workstation"), model, mixtral_trace.rows(0, 40),
                           batch_size=4, cache_policy="static", cache_size=1, miss="cpu"))
    ids = np.asarray(mixtral_trace.expert_ids[:40])
    assert r.rec.tokens.sum() == int((ids >= 0).sum())
    assert "n0.cpu0" in r.rec.devices


def test_inv2_memory_refused(mixtral):
    """INV-2: a plan that does not fit is refused, naming device, need and capacity."""
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=mixtral).rows(0, 8)
    with pytest.raises(UserError) as err:
        simulate(SimConfig(load_cluster("rtx4090-workstation"), mixtral, trace, cache_policy="lru",
                           cache_size=4))
    msg = str(err.value)
    # 4 x 32 bf16 experts of 352.3 MB = 45.10 GB, + attention, embedding and router weights 3.21 GB
    assert "n0.gpu0" in msg and re.search(r"needs 48\.3\d GB", msg) and "25.76 GB" in msg
    assert "45.10 GB for its expert cache" in msg and "non-expert weights 3.211 GB" in msg


def _long_context(trace: RoutingTrace, position: int) -> RoutingTrace:
    """The first 64 rows of ``trace`` as if every token sat at ``position`` of its sequence."""
    return RoutingTrace.build(np.asarray(trace.expert_ids[:64]), num_experts=trace.num_experts,
                              pos=np.full(64, position), layer_ids=trace.layer_ids)


# Hand-derived for Mixtral-8x7B (bf16) on h100x8 (80 GB per GPU), contiguous plan, decode batch 64:
EXPERTS_PER_GPU_B = 32 * 352_321_536  # one expert of each of the 32 MoE layers: 3 x 4096 x 14336 x 2 B
KV_PER_TOKEN_B = 131_072  # K and V: 2 x 8 KV heads x 128 x 2 B x 32 layers
TOKENS_PER_GPU = 64 // 8


def test_inv2_kv_cache_counts_against_memory(h100x8, mixtral, mixtral_trace):
    """INV-2: experts that fit alone (11.3 GB per GPU) are refused when the largest step's KV cache
    does not fit beside them: 8 tokens per GPU x 100,001 keys x 128 KiB = 104.9 GB > 80 GB."""
    with pytest.raises(UserError) as err:
        simulate(SimConfig(h100x8, mixtral, _long_context(mixtral_trace, 100_000), batch_size=64))
    assert "n0.gpu0" in str(err.value) and "85.52 GB" in str(err.value)
    ok = simulate(SimConfig(h100x8, mixtral, _long_context(mixtral_trace, 1_000), batch_size=64))
    kv = TOKENS_PER_GPU * 1_001 * KV_PER_TOKEN_B  # 1.05 GB
    for d in ok.summary()["per_device"]:
        assert d["peak_memory_bytes"] >= EXPERTS_PER_GPU_B + kv


def test_inv2_resident_bytes_within_capacity(h100x8, mixtral, mixtral_trace):
    """INV-2: every device's reported peak memory holds at least its experts and KV cache, and at
    most its capacity."""
    s = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=64)).summary()
    for d in s["per_device"]:
        assert EXPERTS_PER_GPU_B < d["peak_memory_bytes"] <= h100x8.device(d["id"]).spec.memory_bytes


def test_inv3_time_never_decreases(h100x8, mixtral, mixtral_trace):
    """INV-3: step and layer start times are non-decreasing; every step ends after it starts."""
    for overlap in ("none", "layer", "chunked"):
        r = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=32, overlap=overlap))
        starts = r.rec.layer_start_s.ravel()
        assert np.all(np.diff(starts) >= 0)
        assert np.all(r.rec.step_end_s >= r.rec.step_start_s)
        assert np.all(r.rec.step_start_s[1:] >= r.rec.step_end_s[:-1])


def test_inv3_no_expert_before_its_weights(tmp_path):
    """INV-3: with offloading, no GPU expert call starts before its experts' weights arrived."""
    spec = tmp_path / "fp8.yaml"
    spec.write_text("extends: mixtral-8x7b\nname: mixtral-8x7b-fp8\nweight_dtype: fp8\n")
    model = load_model(str(spec))
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=model).rows(0, 60)
    for miss, prefetch in (("fetch", "oracle"), ("lowbit", "predictor"), ("cpu", "none")):
        r = simulate(SimConfig(load_cluster("rtx4090-workstation"), model, trace, batch_size=1,
                               cache_policy="lru", cache_size=3, miss=miss, prefetch=prefetch))
        assert r.causality
        assert all(start >= arrived for start, arrived in r.causality)


def _canonical(summary: dict) -> str:
    summary = dict(summary)
    summary.pop("timing")
    return json.dumps(summary, sort_keys=True)


def test_inv4_determinism(h100x8, mixtral, mixtral_trace):
    """INV-4: same inputs and seed give a byte-identical summary (wall time excluded), in one process."""
    cfg = SimConfig(h100x8, mixtral, mixtral_trace, batch_size=8, replica_split="random", seed=3,
                    plan=default_plan(mixtral, h100x8))
    assert _canonical(simulate(cfg).summary()) == _canonical(simulate(cfg).summary())
    a = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=8))
    b = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=8))
    assert _canonical(a.summary()) == _canonical(b.summary())
    assert a.frame.equals(b.frame)


def _simulate_in_process(hash_seed: int, out: Path, *args: str) -> tuple[str, bytes, bytes]:
    """``moesim simulate ... --json`` in a fresh interpreter with ``PYTHONHASHSEED=hash_seed``:
    (summary without its timing, timeline bytes, table bytes)."""
    out.mkdir()
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed)}
    argv = [sys.executable, "-m", "moesim", "simulate", *args, "--json",
            "--timeline", str(out / "t.json"), "--out", str(out / "r.csv")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert set(summary.pop("timing")) == {"wall_seconds"}
    return json.dumps(summary), (out / "t.json").read_bytes(), (out / "r.csv").read_bytes()


@pytest.mark.parametrize("args", [
    # 16 GPUs on two nodes, replicas used locality-first, LRU caches with predictor prefetch, CPU misses
    ("--hw", "h100x8x4", "--nodes", "2", "--model", "mixtral-8x7b", "--trace", "mixtral-8x7b-synth",
     "--batch", "16", "--steps", "12", "--dispatch", "local", "--cache", "lru", "--cache-size", "3",
     "--prefetch", "predictor", "--miss", "cpu"),
    # the same cluster in lockstep with overlapped all-to-alls (timeline spans rebuilt per link)
    ("--hw", "h100x8x4", "--nodes", "2", "--model", "deepseek-v2-lite", "--trace", "deepseek-v2-lite-synth",
     "--batch", "64", "--steps", "6", "--dispatch", "local", "--overlap", "layer"),
], ids=["offload", "lockstep"])
def test_inv4_determinism_across_hash_seeds(tmp_path, args):
    """INV-4 across processes: string hashing (set and dict order of device and link names) differs
    with PYTHONHASHSEED; the JSON (timing excluded), the timeline and the table must not."""
    one = _simulate_in_process(1, tmp_path / "one", *args)
    two = _simulate_in_process(2, tmp_path / "two", *args)
    assert one[0] == two[0]
    assert one[1] == two[1] and one[2] == two[2]


def test_inv5_invalid_plan_refused(h100x8, mixtral, mixtral_trace):
    """INV-5: a plan with an expert that has no replica is refused."""
    plan = default_plan(mixtral, h100x8)
    placement = plan.placement.copy()
    placement[0, 0, 0] = 1  # expert 0 gone from layer 0, expert 1 twice (on two devices)
    with pytest.raises(UserError, match="expert 0 has no replica"):
        simulate(SimConfig(h100x8, mixtral, mixtral_trace, plan=replace(plan, placement=placement)))


def test_inv6_one_device_equals_sum_of_op_times():
    """INV-6: one GPU, no contention -> simulated time = the sum of the cost model's op times."""
    model = load_model("deepseek-v2-lite")
    cluster = load_cluster("h100x8")
    trace = RoutingTrace.load("deepseek-v2-lite-synth", model=model).rows(0, 24)
    from moesim.planners.base import PlanRequest
    from moesim.planners.contiguous import plan_contiguous

    plan = plan_contiguous(PlanRequest(model, cluster, ("n0.gpu0",), model.num_experts,
                                       np.zeros((1, model.num_moe_layers, model.num_experts))))
    cost = CostModel(cluster, model)
    r = simulate(SimConfig(cluster, model, trace, plan=plan, batch_size=8), cost)
    want = 0.0
    gpu = "n0.gpu0"
    ids = np.asarray(trace.expert_ids)
    for s in range(3):
        rows = ids[s * 8:(s + 1) * 8]
        context = max(1, round(float(np.asarray(trace.pos[s * 8:(s + 1) * 8]).mean()) + 1))
        want += cost.embedding_s(gpu, 8) + cost.lm_head_s(gpu, 8)  # layer 0 and the last layer
        for layer in range(model.num_layers):
            want += cost.attention_s(gpu, 8, context, "decode")
            if layer not in model.moe_layers:
                want += cost.dense_ffn_s(gpu, 8)
                continue
            col = model.moe_layers.index(layer)
            tokens = np.bincount(rows[:, col][rows[:, col] >= 0], minlength=model.num_experts)
            want += cost.router_s(gpu, 8) + cost.permute_combine_s(gpu, 8) + cost.shared_expert_s(gpu, 8)
            want += cost.expert_compute_s(gpu, tokens)
    assert r.simulated_seconds == pytest.approx(want, rel=1e-9)


def test_inv6_infinite_bandwidth_costs_only_latency(h100x8, mixtral, mixtral_trace):
    """INV-6: with infinite link bandwidth every all-to-all takes exactly a path latency."""
    cost = CostModel(h100x8, mixtral).with_infinite_bandwidth()
    r = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=64), cost)
    gpus = [d.id for d in h100x8.gpus]
    latencies = {0.0} | {h100x8.path_latency(a, b) for a in gpus for b in gpus if a != b}
    comm = r.rec.phase_s[:, list(mixtral.moe_layers)][:, :, [1, 3]].ravel()
    assert all(min(abs(c - la) for la in latencies) < 1e-15 for c in comm)
    finite = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=64))
    assert finite.summary()["time_breakdown_s"]["dispatch"] > r.summary()["time_breakdown_s"]["dispatch"]


# ---- runtime checks (SimConfig.check_invariants / moesim simulate --check-invariants) --------------

def test_runtime_checks_pass_on_correct_runs(h100x8, mixtral, mixtral_trace):
    for cfg in (SimConfig(h100x8, mixtral, mixtral_trace, batch_size=16, overlap="chunked"),
                SimConfig(load_cluster("h100x8x4", nodes=2), mixtral, mixtral_trace.rows(0, 64), batch_size=4,
                          cache_policy="lru", cache_size=3, prefetch="predictor", miss="cpu")):
        s = simulate(replace(cfg, check_invariants=True)).summary()
        assert s["invariants_checked"] == ["token_conservation", "memory", "causality"]
        assert "invariants_checked" not in simulate(cfg).summary()


def test_runtime_check_catches_an_overfull_cache(monkeypatch, mixtral_trace):
    """A cache that never evicts holds more experts than its capacity: the memory check says so (fp8:
    2 bf16 experts per layer would not fit the 24 GB card beside the attention weights)."""
    model = with_weight_dtype(load_model("mixtral-8x7b"), "fp8")
    cfg = SimConfig(load_cluster("rtx4090-workstation"), model, mixtral_trace.rows(0, 32), batch_size=4,
                    cache_policy="lru", cache_size=2)
    monkeypatch.setattr(ExpertCache, "_evict_to_capacity", lambda self, protected, now: None)
    simulate(cfg)  # unchecked, the bug goes unnoticed
    overfull = r"memory: \d+ violation.*cache held [3-8] experts, capacity 2"
    with pytest.raises(InvariantViolation, match=overfull):
        simulate(replace(cfg, check_invariants=True))


def test_runtime_check_catches_lost_tokens(monkeypatch, h100x8, mixtral, mixtral_trace):
    """One pair dropped from one (step, layer): token conservation names it."""
    record = Machine.record

    def lossy(self, a, d, c):
        record(self, a, d, c)
        if a == 0:
            self.rec.tokens[2, self.moe_cols[5], 3] -= 1

    monkeypatch.setattr(Machine, "record", lossy)
    with pytest.raises(InvariantViolation, match="step 2 MoE layer 5: computed"):
        simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=16, check_invariants=True))


def test_causality_check_names_each_violation():
    rec = Recorder(2, 2, ["g0"], 0)
    rec.layer_start_s[:] = [[0.0, 1.0], [3.0, 2.5]]  # step 1 layer 1 starts before layer 0
    rec.step_start_s[:] = [0.0, 1.5]
    rec.step_end_s[:] = [2.0, 1.0]  # step 1 starts before step 0 ends, and ends before it starts
    failures = invariants.causality(rec, [(1.0, 0.5), (2.0, 2.5)])  # the second call ran early
    assert len(failures) == 1 and failures[0].startswith("causality: 4 violation(s)")
    for part in ("step 1 layer 1 starts", "step 1 ends before it starts", "step 1 starts before step 0 ends",
                 "an expert call at 2 s ran weights that arrived at 2.5 s"):
        assert part in failures[0]
    assert invariants.causality(Recorder(1, 1, ["g0"], 0), [(1.0, 1.0)]) == []


def test_memory_check_compares_peak_with_capacity():
    assert invariants.memory({"g0": 80e9}, {"g0": 80e9}, []) == []
    assert "g0 holds 80.001 GB of 80.000 GB" in invariants.memory({"g0": 80.001e9}, {"g0": 80e9}, [])[0]
