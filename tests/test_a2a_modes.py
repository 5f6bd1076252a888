"""All-to-all modes: hierarchical copies against a per-token reference, fewer InfiniBand bytes than
flat, ``moesim bench a2a`` equal to a simulated step with the same routing, payload bytes from the
model's dtypes, and the predictions against DeepEP's published figures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cli import main
from moesim.cost import CostModel
from moesim.cost.a2a import AllToAllSpec, default_mode, forwarding, payload_bytes, uniform_dedup
from moesim.sim import SimConfig, simulate
from moesim.sim.a2abench import BenchSetup, bench_all_to_all, bench_routing
from moesim.sim.forwarding import Forwarding, forwarded_pairs, node_aggregates
from moesim.specs import load_cluster, load_model
from moesim.traces import RoutingTrace
from moesim.vocab import AllToAll


def _reference(dst: np.ndarray, owner: np.ndarray, G: int, node_of: np.ndarray,
               peer: np.ndarray) -> np.ndarray:
    """Per token, in plain Python: once to each other node's rail peer, then once to each GPU."""
    S, B, L, _ = dst.shape
    out = np.zeros((S, L, G, G), dtype=np.int64)
    for s in range(S):
        for b in range(B):
            i = owner[s, b]
            for layer in range(L):
                gpus = {int(g) for g in dst[s, b, layer] if g < G}
                for n in {int(node_of[g]) for g in gpus} - {int(node_of[i])}:
                    out[s, layer, i, peer[i, n]] += 1
                for g in gpus:
                    f = peer[i, node_of[g]]
                    if f != g:
                        out[s, layer, f, g] += 1
    return out


@pytest.fixture(scope="module")
def four_nodes():
    return load_cluster("h100x8x4", nodes=4)


def test_forwarded_copies_equal_the_per_token_reference(four_nodes):
    from moesim.sim import counting

    devices = tuple(d.id for d in four_nodes.gpus)
    fw = Forwarding(*forwarding(four_nodes, devices))
    rng = np.random.default_rng(1)
    G = len(devices)
    dst = rng.integers(0, G + 1, size=(3, 40, 2, 6))  # G = "none"
    dst[:, :5, :, 1] = dst[:, :5, :, 0]  # the same GPU twice for some tokens
    owner = rng.integers(0, G, size=(3, 40))
    ref = _reference(dst, owner, G, fw.node_of, fw.peer)
    assert ref.sum() > 0
    assert np.array_equal(forwarded_pairs(dst, owner, G, fw), ref)
    if counting.available():
        rows, cols, total, head = counting.count_forwarded(dst, owner, fw.node_of, fw.peer, G, 2)
        r_ref, c_ref = node_aggregates(ref, fw.node_of, fw.num_nodes)
        assert np.array_equal(rows, r_ref) and np.array_equal(cols, c_ref)
        assert np.array_equal(total, ref.sum(axis=(0, 1))) and np.array_equal(head, ref[:2])


def test_rail_peers_are_the_same_local_gpu_on_each_node(four_nodes):
    devices = tuple(d.id for d in four_nodes.gpus)
    node_of, peer = forwarding(four_nodes, devices)
    assert peer.shape == (32, 4)
    assert devices[peer[devices.index("n0.gpu3"), 2]] == "n2.gpu3"
    assert all(peer[i, node_of[i]] == i for i in range(32))


def test_hierarchical_moves_fewer_infiniband_bytes_than_flat(four_nodes):
    """Same routing on four DGX H100 nodes: once per node over the fabric beats once per expert."""
    model = load_model("deepseek-v2-lite")
    trace = RoutingTrace.load("deepseek-v2-lite-synth", model=model).rows(0, 2048)
    ib = {}
    for mode in ("flat", "hierarchical"):
        r = simulate(SimConfig(four_nodes, model, trace, batch_size=512, phase="prefill", a2a=mode))
        ib[mode] = sum(v for (a, b), v in r.rec.link_bytes.items() if a == "ib" or b == "ib")
        assert r.summary()["a2a"] == mode
    assert 0 < ib["hierarchical"] < 0.8 * ib["flat"]


@pytest.mark.parametrize("mode", ["low-latency", "hierarchical", "flat"])
def test_simulator_and_bench_agree(four_nodes, mode):
    """A simulated step routed like ``moesim bench a2a`` takes the bench's dispatch and combine."""
    model = load_model("deepseek-v3")
    devices = tuple(d.id for d in four_nodes.gpus)
    cost = CostModel(four_nodes, model)
    setup = BenchSetup(16, model.hidden_size, model.top_k, model.num_experts, model.dispatch_dtype,
                       model.combine_dtype, AllToAll(mode), topk_groups=2 if mode == "hierarchical" else None)
    bench = bench_all_to_all(setup, cost, devices)
    ids = bench_routing(setup, cost, devices)  # [32 * 16, 8]
    trace = RoutingTrace.build(np.repeat(ids[:, None, :], model.num_moe_layers, axis=1).astype(np.int16),
                               num_experts=model.num_experts, layer_ids=list(model.moe_layers))
    r = simulate(SimConfig(four_nodes, model, trace, batch_size=len(ids), steps=1, a2a=mode), cost)
    col = model.moe_layers[0]
    assert r.rec.phase_s[0, col, 1] == pytest.approx(bench["dispatch"]["time_s"], rel=1e-9)
    assert r.rec.phase_s[0, col, 3] == pytest.approx(bench["combine"]["time_s"], rel=1e-9)
    assert r.rec.phase_s[0, model.moe_layers[-1], 1] == pytest.approx(bench["dispatch"]["time_s"], rel=1e-9)


def test_payload_bytes_follow_the_model_dtypes():
    v3 = load_model("deepseek-v3")
    assert (v3.dispatch_dtype, v3.combine_dtype) == ("fp8", "bf16")
    assert payload_bytes(7168, "fp8") == 7168 + 56 * 4  # one fp32 scale per 128 channels
    ll = AllToAllSpec.for_model(v3, "low-latency")
    assert (ll.dispatch_bytes, ll.combine_bytes) == (7408, 14336)  # DeepEP's test_low_latency.py sizes
    normal = AllToAllSpec.for_model(v3, "hierarchical")
    assert normal.dispatch_bytes == 7392 + 80  # + SourceMeta and top-8 ids/weights, 16-byte aligned
    mixtral = load_model("mixtral-8x7b")
    assert mixtral.dispatch_dtype == mixtral.combine_dtype == mixtral.activation_dtype
    flat = AllToAllSpec.for_model(mixtral, "flat")
    assert flat.dispatch_bytes == flat.combine_bytes == mixtral.activation_bytes_per_token
    assert flat.kernel_s == flat.message_s == 0.0


def test_default_mode_by_phase_and_nodes():
    assert default_mode("decode", 1) == default_mode("prefill", 1) == AllToAll.FLAT
    assert default_mode("prefill", 4) == AllToAll.HIERARCHICAL
    assert default_mode("decode", 2) == AllToAll.LOW_LATENCY
    assert uniform_dedup(256, 8, 1) == 1.0 and 0 < uniform_dedup(256, 8, 8) < 1


# (EP, dispatch us, combine us), (EP, dispatch GB/s, combine GB/s): deepseek-ai/DeepEP @dd758ca docs/legacy.md
LOW_LATENCY = [(8, 77, 114), (16, 118, 195), (32, 155, 273), (64, 173, 314)]
NORMAL = [(8, 153, 158), (16, 43, 43), (32, 58, 57), (64, 51, 50)]


def _bench(ep: int, mode: str, tokens: int, groups: int | None):
    cluster = load_cluster("h800x8", nodes=max(1, ep // 8))
    cost = CostModel(cluster, load_model("deepseek-v3"))
    setup = BenchSetup(tokens, 7168, 8, 256, "fp8", "bf16", AllToAll(mode), topk_groups=groups)
    return bench_all_to_all(setup, cost, tuple(d.id for d in cluster.gpus))


@pytest.mark.parametrize(("ep", "dispatch_us", "combine_us"), LOW_LATENCY)
def test_low_latency_within_10_percent_of_deepep(ep, dispatch_us, combine_us):
    r = _bench(ep, "low-latency", 128, None)
    assert r["dispatch"]["time_s"] * 1e6 == pytest.approx(dispatch_us, rel=0.10)
    assert r["combine"]["time_s"] * 1e6 == pytest.approx(combine_us, rel=0.10)


@pytest.mark.parametrize(("ep", "dispatch_gbps", "combine_gbps"), NORMAL)
def test_hierarchical_closer_to_deepep_normal_kernels_than_flat(ep, dispatch_gbps, combine_gbps):
    """The link model alone is somewhat fast for the normal kernels (docs/cost.md); flat is ~2x slow."""
    groups, kind = min(max(1, ep // 8), 4), ("nvl" if ep == 8 else "rdma")
    hier, flat = _bench(ep, "hierarchical", 4096, groups), _bench(ep, "flat", 4096, groups)
    for name, published in (("dispatch", dispatch_gbps), ("combine", combine_gbps)):
        ratio = hier[name][f"{kind}_gbps"] / published
        assert 1.0 <= ratio < 1.3, (name, ratio)
        assert abs(np.log(ratio)) < abs(np.log(flat[name][f"{kind}_gbps"] / published))


def test_bench_cli_json_and_bad_input(capsys):
    assert main(["bench", "a2a", "--hw", "h100x8x4", "--nodes", "2", "--tokens", "32",
                 "--model", "deepseek-v3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "moesim-bench-a2a/1" and doc["mode"] == "low-latency" and doc["ep"] == 16
    assert doc["dispatch"]["time_s"] > 0 and doc["combine"]["copy_bytes"] == 14336
    assert main(["bench", "a2a", "--hw", "h100x8x4", "--nodes", "2", "--experts", "100"]) == 2
    assert "--experts" in capsys.readouterr().err
    assert main(["bench", "a2a", "--hw", "h100x8", "--tokens", "0"]) == 2
