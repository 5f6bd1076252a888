"""How a serving step is priced: the simulator's step costing on the batch's routed rows, attention per
request with its own context, KV moved between GPU groups, speculative decoding and prefix hits."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.errors import UserError
from moesim.plans.default import default_plan
from moesim.serving import Lengths, ServeConfig, Speculative, WorkloadSpec, serve
from moesim.serving.requests import make_requests
from moesim.serving.stepprice import AttentionLoad, StepPricer
from moesim.sim import SimConfig, simulate
from moesim.sim.dispatch import owners
from moesim.specs import load_cluster, load_model
from moesim.specs.runtime import load_runtime
from moesim.traces.trace import DECODE, PREFILL, RoutingTrace


@pytest.fixture(scope="module")
def lite():
    return load_cluster("h100x8"), load_model("deepseek-v2-lite"), RoutingTrace.load("deepseek-v2-lite-synth")


def _load(G: int, **parts: np.ndarray) -> AttentionLoad:
    z = np.zeros(G)
    dt = parts.get("dt", z)
    return AttentionLoad(parts.get("pt", z), parts.get("pk", z), dt, parts.get("dk", z), parts.get("ot", dt))


@pytest.mark.parametrize("runtime", [None, "vllm"])
def test_decode_step_equals_the_simulators_step(lite, runtime):
    """A decode step of 64 requests, 8 per GPU, all at context 700, costs exactly what ``moesim
    simulate`` costs for the same 64 trace rows at position 699 (same dispatch, same ops), also under
    a runtime profile (vLLM's step overhead and CUDA-graph launches)."""
    cluster, model, trace = lite
    rt = None if runtime is None else load_runtime(runtime)
    rows = np.arange(64)
    at = RoutingTrace.build(np.asarray(trace.expert_ids[:64]), num_experts=64, pos=np.full(64, 699),
                            layer_ids=trace.layer_ids, phase=DECODE)
    sim = simulate(SimConfig(cluster, model, at, batch_size=64, steps=1, runtime=rt),
                   CostModel(cluster, model, runtime=rt))
    cost = CostModel(cluster, model, runtime=rt)
    pricer = StepPricer(cost, cluster, default_plan(model, cluster), at.expert_ids, runtime=rt)
    G = 8
    tokens = np.full(G, 8.0)
    price = pricer.price(rows, owners(64, G), _load(G, dt=tokens, dk=tokens * 700))
    assert price.seconds == pytest.approx(float(sim.step_latency_s[0]), rel=1e-12)


def test_mixed_attention_reads_the_projection_weights_once(lite):
    """A GPU with prefill and decode tokens pays both attentions less one lone token's (its weights and
    launches); a GPU with only one kind pays exactly that kind's."""
    cluster, model, trace = lite
    cost = CostModel(cluster, model)
    pricer = StepPricer(cost, cluster, default_plan(model, cluster), trace.expert_ids)
    G, dev = 8, "n0.gpu0"
    pt, pk = np.zeros(G), np.zeros(G)
    dt, dk = np.zeros(G), np.zeros(G)
    pt[0], pk[0] = 512, 512 * 513 / 2
    dt[[0, 1]], dk[[0, 1]] = 16, 16 * 900
    att = pricer.attention(_load(G, pt=pt, pk=pk, dt=dt, dk=dk))
    prefill = cost.attention_s(dev, 512, 256.5, "prefill")
    decode = cost.attention_s(dev, 16, 900, "decode")
    lone = cost.attention_s(dev, 1, 1, "decode")
    assert att[0] == pytest.approx(prefill + decode - lone, rel=1e-12)
    assert att[1] == pytest.approx(decode, rel=1e-12) and att[2] == 0.0
    assert max(prefill, decode) < att[0] < prefill + decode


def test_chunked_prompt_attends_causally(lite, monkeypatch):
    """A 1000-token prompt in chunks of 400, 400, 200: chunk k of n tokens after a computed tokens
    attends n a + n (n + 1) / 2 keys; then each decode step one key more than the last; every
    position is routed by the request's own rows."""
    cluster, model, trace = lite
    seen: list[tuple[np.ndarray, AttentionLoad]] = []
    price = StepPricer.price

    def spy(self, rows, owner, load):
        seen.append((rows.copy(), load))
        return price(self, rows, owner, load)

    monkeypatch.setattr(StepPricer, "price", spy)
    w = WorkloadSpec(prompt_tokens=Lengths(value=1000), output_tokens=Lengths(value=4), requests=1)
    r = serve(ServeConfig(cluster, model, trace, w, token_budget=400))
    keys = [float(ld.prefill_keys.sum() + ld.decode_keys.sum()) for _, ld in seen]
    assert keys == [400 * 401 / 2, 400 * 400 + 400 * 401 / 2, 200 * 800 + 200 * 201 / 2, 1001, 1002, 1003]
    assert [float(ld.prefill_tokens.sum()) for _, ld in seen] == [400, 400, 200, 0, 0, 0]
    routed = np.concatenate([rows for rows, _ in seen])
    reqs = make_requests(w, trace)
    assert np.array_equal(routed, reqs.rows(np.zeros(1003, dtype=np.int64), np.arange(1003)))
    assert r.requests["prefill_s"][0] == pytest.approx(r.requests["first_token_s"][0], rel=1e-12)


def test_prefix_hits_skip_prefill_compute(lite):
    """Half of every prompt found in the prefix cache: half the prefill tokens are computed, TTFT is
    shorter, the KV still holds whole prompts."""
    cluster, model, trace = lite
    w = WorkloadSpec(prompt_tokens=Lengths(value=1024), output_tokens=Lengths(value=8), requests=10)
    cold = serve(ServeConfig(cluster, model, trace, w)).summary()
    warm_r = serve(ServeConfig(cluster, model, trace, w.with_(prefix_hit_fraction=0.5)))
    warm = warm_r.summary()
    assert warm["instances"][0]["prefill_tokens"] == cold["instances"][0]["prefill_tokens"] // 2 == 5120
    assert warm["ttft_s"]["mean"] < cold["ttft_s"]["mean"]
    assert np.all(warm_r.requests["prefix_hit_tokens"] == 512)


def test_speculative_decoding_takes_fewer_steps(lite):
    """Three draft tokens accepted with probability 0.8: each decode step emits (1 - 0.8^4) / 0.2 =
    2.95 tokens on average (Leviathan et al. 2023, eq. 1), so fewer, slightly dearer steps; the same
    tokens come out."""
    cluster, model, trace = lite
    w = WorkloadSpec(prompt_tokens=Lengths(value=64), output_tokens=Lengths(value=1200), requests=1)
    plain = serve(ServeConfig(cluster, model, trace, w))
    spec = serve(ServeConfig(cluster, model, trace, w.with_(speculative=Speculative(3, 0.8))))
    steps_plain = len(plain.steps["start_s"]) - 1
    steps_spec = len(spec.steps["start_s"]) - 1
    assert steps_plain / steps_spec == pytest.approx((1 - 0.8**4) / 0.2, rel=0.08)
    assert spec.summary()["tpot_s"]["mean"] < plain.summary()["tpot_s"]["mean"]
    assert np.array_equal(spec.requests["emitted_tokens"], plain.requests["emitted_tokens"])


def test_disaggregated_moves_each_kv_cache_once(lite):
    """Disaggregated: every request with more than one output token has its prompt's KV moved from a
    prefill GPU (0-3) to a decode GPU (4-7) over NVLink; its first token comes from the prefill group,
    so its TTFT holds no decode step, and the decode group never prefills."""
    cluster, model, trace = lite
    w = WorkloadSpec(prompt_tokens=Lengths(kind="uniform", min=100, max=900),
                     output_tokens=Lengths(kind="uniform", min=1, max=30), requests=30)
    w = w.with_(arrival_rate=50.0)
    r = serve(ServeConfig(cluster, model, trace, w, scheduler="disaggregated"))
    s = r.summary()
    req = r.requests
    many = req["output_tokens"] > 1
    pre, dec = s["instances"]
    assert pre["devices"] == [f"n0.gpu{i}" for i in range(4)]
    assert dec["devices"] == [f"n0.gpu{i}" for i in range(4, 8)]
    assert s["kv_transfer"]["count"] == int(many.sum())
    assert s["kv_transfer"]["bytes"] == pytest.approx(float(req["prompt_tokens"][many].sum())
                                                       * model.kv_cache_bytes_per_token())
    assert pre["decode_tokens"] == 0 and dec["prefill_tokens"] == 0
    assert pre["prefill_tokens"] == int(req["prompt_tokens"].sum())
    spans = [sp for sp in r.spans if sp.name == "kv transfer"]
    assert len(spans) == int(many.sum()) and all(sp.track.startswith("n0.gpu") for sp in spans)


def test_same_seed_same_results(lite):
    cluster, model, trace = lite
    w = WorkloadSpec(prompt_tokens=Lengths(kind="lognormal", mean=300, sigma=0.8),
                     output_tokens=Lengths(kind="uniform", min=1, max=40), requests=25,
                     speculative=Speculative(2, 0.5)).with_(arrival_rate=40.0)
    a = serve(ServeConfig(cluster, model, trace, w)).summary()
    b = serve(ServeConfig(cluster, model, trace, w)).summary()
    a.pop("timing"), b.pop("timing")
    assert a == b
    c = serve(ServeConfig(cluster, model, trace, w.with_(seed=1))).summary()
    assert c["input_tokens"] != a["input_tokens"]


def test_sequence_routing_uses_each_sequences_own_rows():
    """A trace whose sequences hold prefill then decode rows: request i replays sequence i mod S,
    prompt positions on its prefill rows, outputs on its decode rows (each cycled)."""
    seq = np.repeat([0, 1, 2], [5, 7, 4])
    phase = np.array([PREFILL] * 3 + [DECODE] * 2 + [PREFILL] * 4 + [DECODE] * 3 + [PREFILL] * 2
                     + [DECODE] * 2)
    ids = np.zeros((16, 32, 2), dtype=np.int16)
    trace = RoutingTrace.build(ids, num_experts=8, seq_id=seq, phase=phase)
    w = WorkloadSpec(prompt_tokens=Lengths(value=5), output_tokens=Lengths(value=3), requests=4)
    reqs = make_requests(w, trace)
    assert reqs.routing.mode == "sequence"
    pos = np.arange(8)
    assert reqs.rows(np.zeros(8, dtype=np.int64), pos).tolist() == [0, 1, 2, 0, 1, 3, 4, 3]
    assert reqs.rows(np.ones(8, dtype=np.int64), pos).tolist() == [5, 6, 7, 8, 5, 9, 10, 11]
    assert reqs.rows(np.full(8, 3, dtype=np.int64), pos).tolist() == [0, 1, 2, 0, 1, 3, 4, 3]
    stream = make_requests(w, RoutingTrace.build(ids, num_experts=8, phase=PREFILL))
    assert stream.routing.mode == "stream" and "no decode rows" in stream.routing.description
    # request 1's prompt starts where request 0's ended (5 rows in)
    assert stream.rows(np.ones(5, dtype=np.int64), np.arange(5)).tolist() == [5, 6, 7, 8, 9]


def test_a_big_step_is_dispatched_in_pieces_with_the_same_counts(lite, monkeypatch):
    """Counting a step's pairs in pieces (bounded temporaries) gives the counts and the time of one
    piece."""
    import moesim.serving.stepprice as sp

    cluster, model, trace = lite
    cost = CostModel(cluster, model)
    pricer = StepPricer(cost, cluster, default_plan(model, cluster), trace.expert_ids)
    rows = np.arange(3000)
    owner = owners(3000, 8)
    tokens = np.full(8, 375.0)
    load = _load(8, pt=tokens, pk=tokens * 188)
    whole = pricer.price(rows, owner, load)
    d_whole = pricer.dispatch(rows, owner)
    monkeypatch.setattr(sp, "CHUNK_ROUTED", 26 * 6 * 7)  # pieces of 7 tokens
    d = pricer.dispatch(rows, owner)
    assert np.array_equal(d.slot_tokens, d_whole.slot_tokens)
    assert np.array_equal(d.pair_tokens, d_whole.pair_tokens)
    assert pricer.price(rows, owner, load).seconds == whole.seconds


def test_kv_pool_is_what_the_memory_model_leaves():
    """Mixtral bf16 on h100x8 (contiguous, one expert per layer per GPU), 0.9 of 81559 MiB: the KV pool
    is that - 32 experts x 352.3 MB - the whole attention, embedding and router weights (each GPU runs
    its own requests' attention) - the activations of an 8192-token step, in blocks of 16 tokens x
    128 KiB. The vllm runtime profile keeps 10% out, as gpu_memory_utilization 0.9 does: the stricter
    counts, not both."""
    from moesim.memory import kv_pool_bytes
    from moesim.serving.kv import KvLayout, make_pools

    cluster, model = load_cluster("h100x8"), load_model("mixtral-8x7b")
    plan = default_plan(model, cluster)
    non_expert = (32 * 4096 * 128 * 80 + 2 * 32000 * 4096 + 32 * 4096 * 8) * 2
    act = 8192 * (2 * 4096 + 2 * (2 * 4096 + 2 * 14336)) * 2
    memory = 81559 * 2**20  # what nvidia-smi reports for an H100 80GB (hardware/devices.yaml)
    expected = 0.9 * memory - 32 * 352_321_536 - non_expert - act
    free = kv_pool_bytes(model, cluster, plan.devices, plan.resident_expert_bytes(model), step_tokens=8192,
                         utilization=0.9)
    assert free["n0.gpu3"] == pytest.approx(expected, rel=1e-12)
    pools = make_pools(model, cluster, plan, KvLayout(131_072, 16), step_tokens=8192, utilization=0.9)
    assert pools[3].capacity_blocks == int(expected // (16 * 131_072))
    vllm, resident = load_runtime("vllm"), plan.resident_expert_bytes(model)
    tenth = 0.1 * memory
    for util, runtime, want in ((0.9, vllm, expected), (1.0, vllm, expected), (1.0, None, expected + tenth),
                                (0.8, vllm, expected - tenth)):
        free = kv_pool_bytes(model, cluster, plan.devices, resident, step_tokens=8192, utilization=util,
                             runtime=runtime)
        assert free["n0.gpu3"] == pytest.approx(want, rel=1e-12), (util, runtime)
    with pytest.raises(UserError, match=r"no device 'n9\.gpu0'"):
        kv_pool_bytes(model, cluster, ("n9.gpu0",), {}, step_tokens=1)


def test_all_to_all_mode_per_step_across_nodes(lite):
    """Across nodes a step with prefill uses DeepEP's normal (hierarchical) kernels and a decode-only
    step the low-latency ones, as SGLang's --deepep-mode auto; inside one node, flat; a run's --a2a
    fixes one mode for every step."""
    from moesim.vocab import AllToAll

    _, model, trace = lite
    two = load_cluster("h100x8x4", nodes=2)
    cost = CostModel(two, model)
    pricer = StepPricer(cost, two, default_plan(model, two), trace.expert_ids)
    G = 16
    rows, owner = np.arange(64), owners(64, G)
    tokens = np.full(G, 4.0)
    decode = pricer.price(rows, owner, _load(G, dt=tokens, dk=tokens * 100))
    prefill = pricer.price(rows, owner, _load(G, pt=tokens, pk=tokens * 2.5))
    assert set(pricer._costers) == {AllToAll.LOW_LATENCY, AllToAll.HIERARCHICAL}
    assert decode.dispatch_s != prefill.dispatch_s
    flat = StepPricer(cost, two, default_plan(model, two), trace.expert_ids, "flat")
    flat.price(rows, owner, _load(G, pt=tokens, pk=tokens * 2.5))
    assert set(flat._costers) == {AllToAll.FLAT}
    one = StepPricer(CostModel(*lite[:2]), lite[0], default_plan(model, lite[0]), trace.expert_ids)
    assert one.mode(prefill=True) == one.mode(prefill=False) == AllToAll.FLAT

