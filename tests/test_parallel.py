"""Attention TP x DP with EP experts (moesim.parallel), the ring collectives (moesim.cost.allreduce), the
TP all-reduce on the timeline, and the time of each step by op class."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from moesim.cli import main
from moesim.cost import CostModel
from moesim.cost.allreduce import RING_BASE_LATENCY_S
from moesim.errors import UserError
from moesim.memory import MemoryModel, non_expert_weights
from moesim.parallel import Parallelism
from moesim.sim import SimConfig, simulate
from moesim.specs import load_cluster, load_model
from moesim.specs.sizes import tensor_sizes
from moesim.traces import RoutingTrace


@pytest.fixture(scope="module")
def h100x8():
    return load_cluster("h100x8")


@pytest.fixture(scope="module")
def mixtral():
    return load_model("mixtral-8x7b")


@pytest.fixture(scope="module")
def mixtral_trace(mixtral):
    return RoutingTrace.load("mixtral-8x7b-synth", model=mixtral).rows(0, 256)


def test_degrees_multiply_to_the_gpu_count():
    assert Parallelism.of(8) == Parallelism(tp=1, dp=8, ep=8)
    assert Parallelism.of(8, tp=8) == Parallelism(tp=8, dp=1, ep=8)
    assert Parallelism.of(8, dp=2) == Parallelism(tp=4, dp=2, ep=8)
    cases = (({"tp": 3}, "--tp"), ({"tp": 2, "dp": 2}, "--tp"), ({"ep": 3}, "--ep"), ({"ep": 16}, "--ep"),
             ({"tp": 0}, "--tp"))
    for kw, flag in cases:
        with pytest.raises(UserError) as e:
            Parallelism.of(8, **kw)
        assert e.value.field == flag and "\n" not in e.value.message


def test_tp_must_split_the_heads(mixtral):
    Parallelism(tp=8, dp=1, ep=8).check_model(mixtral)  # 32 heads, 8 KV heads
    with pytest.raises(UserError, match="does not divide the 12 attention heads"):
        Parallelism(tp=8, dp=1, ep=8).check_model(load_model("switch-base-128"))
    qwen = load_model("qwen3-30b-a3b")  # 4 KV heads: each replicated on 2 of 8 GPUs (vLLM)
    Parallelism(tp=8, dp=1, ep=8).check_model(qwen)
    six = replace(mixtral, attention=replace(mixtral.attention, num_heads=48, num_kv_heads=6))
    with pytest.raises(UserError, match="neither divides nor is a multiple of the 6 KV heads"):
        Parallelism(tp=4, dp=2, ep=8).check_model(six)


def test_ring_all_reduce_on_nvswitch(h100x8, mixtral):
    """nccl-tests: t = S/B x 2(n-1)/n; here B is the NVLink4 port's effective rate and the latency NCCL's
    ring base latency plus 2(n-1) GPU->switch->GPU hops of the profile."""
    cost = CostModel(h100x8, mixtral)
    gpus = [d.id for d in h100x8.gpus]
    link = h100x8.path("n0.gpu0", "n0.gpu1")
    bw = min(ln.spec.effective_bandwidth_bytes_per_s for ln in link)
    hop = sum(ln.spec.latency_s for ln in link)
    s = 1 << 30
    want = RING_BASE_LATENCY_S + 14 * hop + s * 2 * 7 / 8 / bw
    assert cost.all_reduce_s(gpus, s) == pytest.approx(want, rel=1e-12)
    assert cost.all_reduce_s(gpus, s, "all_gather") == pytest.approx(
        RING_BASE_LATENCY_S + 7 * hop + s * 7 / 8 / bw, rel=1e-12)
    assert cost.all_reduce_s(gpus[:1], s) == 0.0 and cost.all_reduce_s(gpus, 0.0) == 0.0
    bus = s * 2 * 7 / 8 / (cost.all_reduce_s(gpus, s) - RING_BASE_LATENCY_S - 14 * hop)
    assert bus == pytest.approx(0.822 * 450e9)  # the ~370 GB/s busbw NCCL reaches on NVLink4


def test_a_ring_across_nodes_is_bound_by_the_nics():
    c = load_cluster("h100x8x4")
    cost = CostModel(c, load_model("mixtral-8x7b"))
    within = [f"n0.gpu{i}" for i in range(8)]
    across = within[:4] + [f"n1.gpu{i}" for i in range(4)]
    assert cost.all_reduce_s(across, 1 << 28) > 5 * cost.all_reduce_s(within, 1 << 28)


def test_tp_shards_in_memory(mixtral):
    """Mixtral, 32 query and 8 KV heads: one GPU of TP 8 holds 1/8 of q/o and one KV head of k/v, i.e.
    1/8 of the attention, 1/8 of the vocabulary, the whole router; the GPUs together hold it once."""
    full = non_expert_weights(mixtral)
    one = non_expert_weights(mixtral, 8)
    assert one.attention_bytes * 8 == full.attention_bytes
    assert one.embeddings_bytes * 8 == full.embeddings_bytes and one.router_bytes == full.router_bytes
    mla = load_model("deepseek-v3")
    t = tensor_sizes(mla)
    # MLA's down-projections (q_a 7168 x 1536, kv_a 7168 x 576) stay whole on every GPU
    down = 7168 * 1536 + 7168 * 576
    assert non_expert_weights(mla, 8).attention_bytes == pytest.approx(
        (down + (t["attention"].params_per_layer - down) / 8) * 61)
    dp = MemoryModel(mixtral, gpus=8, batch_size=64, parallel=Parallelism(tp=1, dp=8, ep=8)).device("g", 80e9)
    tp = MemoryModel(mixtral, gpus=8, batch_size=64, parallel=Parallelism(tp=8, dp=1, ep=8)).device("g", 80e9)
    assert dp.attention_bytes == full.attention_bytes  # data-parallel attention: every GPU all heads
    assert tp.kv_cache_bytes == dp.kv_cache_bytes  # 8x the sequences, 1/8 of the KV heads


def test_tp8_attention_simulates_with_the_all_reduce_on_nvlink(tmp_path, capsys):
    """Issue 12's done-when: --tp 8 attention + EP experts on h100x8, the all-reduce on NVLink in the
    timeline."""
    timeline, steps = tmp_path / "tp8.json", tmp_path / "steps.csv"
    code = main(["simulate", "--hw", "h100x8", "--model", "mixtral-8x7b", "--trace", "mixtral-8x7b-synth",
                 "--batch", "64", "--steps", "3", "--tp", "8", "--timeline", str(timeline),
                 "--step-out", str(steps), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    s = json.loads(out)
    assert s["parallel"] == {"tp": 8, "dp": 1, "ep": 8}
    assert s["op_class_s"]["mean_per_step_s"]["communication"] > 0
    events = json.loads(timeline.read_text())["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    ar = [e for e in events if e.get("ph") == "X" and e["name"].startswith("allreduce L")]
    tracks = {names[e["tid"]] for e in ar if e["pid"] == 2}
    assert {f"n0.gpu{i}->n0.nvswitch" for i in range(8)} <= tracks
    assert all("nvswitch" in t for t in tracks)
    assert {names[e["tid"]] for e in ar if e["pid"] == 1} == {f"n0.gpu{i}" for i in range(8)}
    assert all(e["args"]["bytes"] > 0 for e in ar if e["pid"] == 2)
    assert steps.read_text().splitlines()[0].startswith("step,start_s,latency_s,tokens,attention_s")


def test_tp_not_dividing_the_heads_is_one_line(capsys):
    code = main(["simulate", "--hw", "h100x8", "--model", "mixtral-8x7b", "--trace", "mixtral-8x7b-synth",
                 "--steps", "1", "--tp", "3"])
    err = capsys.readouterr().err
    assert code == 2 and "--tp" in err and err.count("\n") == 1


def test_tp8_versus_data_parallel_attention(h100x8, mixtral, mixtral_trace):
    """TP reads each GPU's 1/8 of the attention weights once for 8x the tokens and pays all-reduces;
    the experts' work is the same in both layouts."""
    dp = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=64, steps=2))
    tp = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=64, steps=2, tp=8))
    a, b = dp.op_class_s(), tp.op_class_s()
    i = {c: n for n, c in enumerate(("attention", "dense", "router", "lm_head", "experts_gpu", "experts_cpu",
                                     "communication", "overhead"))}
    assert np.array_equal(a[:, i["experts_gpu"]], b[:, i["experts_gpu"]])
    assert b[:, i["communication"]].sum() > a[:, i["communication"]].sum()
    assert not np.array_equal(a[:, i["attention"]], b[:, i["attention"]])


@pytest.mark.parametrize("kw", [{}, {"tp": 4}, {"overlap": "layer"}, {"runtime": "vllm"}])
def test_op_classes_add_up_to_the_step_latency(kw, h100x8, mixtral, mixtral_trace):
    from moesim.specs.runtime import load_runtime

    if "runtime" in kw:
        kw = {**kw, "runtime": load_runtime(kw["runtime"])}
    r = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=32, steps=4, **kw))
    assert r.op_class_s().sum(axis=1) == pytest.approx(r.step_latency_s, rel=1e-12)


def test_op_classes_of_an_offloaded_run_add_up(mixtral):
    m = load_model("mixtral-8x7b")
    ws = load_cluster("rtx4090-workstation")
    from moesim.specs import with_weight_dtype

    fp8 = with_weight_dtype(m, "fp8")
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=fp8).rows(0, 6)
    for miss in ("cpu", "fetch"):
        r = simulate(SimConfig(ws, fp8, trace, cache_policy="lru", cache_size=2, miss=miss))
        classes = r.op_class_s()
        assert classes.sum(axis=1) == pytest.approx(r.step_latency_s, rel=1e-9)
        s = r.summary()["op_class_s"]["mean_per_step_s"]
        assert (s["experts_cpu"] > 0) == (miss == "cpu")
        assert s["communication"] > 0  # PCIe: activations to the CPU, or weights to the GPU


def test_runtime_overheads_and_reserve(h100x8, mixtral, mixtral_trace):
    """vllm: 4 ms per step of CPU time, CUDA-graph launches (1 us a kernel instead of 4 us), 10% of each
    GPU reserved."""
    from moesim.specs.runtime import load_runtime

    rt = load_runtime("vllm")
    base = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=32, steps=3))
    r = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=32, steps=3, runtime=rt))
    overhead = r.op_class_s()[:, 7]
    assert overhead == pytest.approx(np.full(3, 4e-3))
    assert base.op_class_s()[:, 7].sum() == 0.0
    graph = r.op_class_s()[:, 4].sum()  # experts: same bytes, cheaper launches
    assert graph < base.op_class_s()[:, 4].sum()
    mem = r.summary()["memory_breakdown_bytes"]["n0.gpu0"]
    assert mem["runtime_reserve"] == pytest.approx(0.1 * mem["capacity"])
    eager = load_runtime("vllm-eager")
    e = simulate(SimConfig(h100x8, mixtral, mixtral_trace, batch_size=32, steps=3, runtime=eager))
    assert e.op_class_s()[:, 7] == pytest.approx(np.full(3, 4e-3 + 32 * 30e-6))


def test_runtime_file_errors(tmp_path):
    from moesim.specs.runtime import load_runtime

    bad = tmp_path / "rt.yaml"
    bad.write_text("kind: runtime\ncuda_graphs: true\n")
    with pytest.raises(UserError, match="graph_launch"):
        load_runtime(bad)
    bad.write_text("kind: runtime\noverheads: {step: 3 apples}\n")
    with pytest.raises(UserError) as e:
        load_runtime(bad)
    assert e.value.field == "overheads.step"
