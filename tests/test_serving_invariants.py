"""The serving engine's invariants (docs/invariants.md, INV-8 to INV-13): every request finishes or is
reported unfinished, tokens out = tokens asked, Little's law, TTFT >= the request's own prefill time,
single-request latency at low load, throughput that rises then saturates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moesim.memory import kv_pool_bytes
from moesim.serving import Arrivals, Lengths, ServeConfig, WorkloadSpec, serve
from moesim.serving.engine import group_plan
from moesim.serving.workload import Speculative
from moesim.specs import load_cluster, load_model
from moesim.traces.trace import RoutingTrace

SMALL = dict(max_seqs=2, token_budget=256)
"""A deliberately small engine (2 requests and 256 tokens per GPU per step) that saturates at a few
hundred requests/s, so the curves below bend inside a short run."""


@pytest.fixture(scope="module")
def lite():
    return load_cluster("h100x8"), load_model("deepseek-v2-lite"), RoutingTrace.load("deepseek-v2-lite-synth")


def _uniform_trace(model, rows: int = 4096) -> RoutingTrace:
    """Every token picks the same experts at every layer: all requests cost the same."""
    ids = np.tile(np.arange(model.top_k, dtype=np.int16), (rows, model.num_moe_layers, 1))
    return RoutingTrace.build(ids, num_experts=model.num_experts, layer_ids=np.asarray(model.moe_layers))


def _utilization_for(cluster, model, gpus: int, pool_tokens: int, step_tokens: int) -> float:
    """The ``gpu_memory_utilization`` that leaves ``pool_tokens`` of KV per GPU on a contiguous plan
    over the first ``gpus`` GPUs."""
    devices = tuple(d.id for d in cluster.gpus)[:gpus]
    plan = group_plan(model, devices)
    capacity = cluster.device(devices[0]).spec.memory_bytes
    free = kv_pool_bytes(model, cluster, devices, plan.resident_expert_bytes(model), step_tokens=step_tokens)
    return (capacity - free[devices[0]] + pool_tokens * model.kv_cache_bytes_per_token()) / capacity


def _workload(**kw) -> WorkloadSpec:
    base = dict(prompt_tokens=Lengths(kind="uniform", min=32, max=256),
                output_tokens=Lengths(kind="uniform", min=4, max=24), requests=60)
    base.update(kw)
    return WorkloadSpec(**base)


def test_inv8_every_request_finishes_or_is_reported(lite):
    """INV-8: requests too long for a GPU's KV pool are reported unfinished with the reason; all the
    others finish, and every KV block is given back at the end."""
    cluster, model, trace = lite
    w = _workload(prompt_tokens=Lengths(kind="uniform", min=100, max=3000), requests=40)
    # a share of 80 GB that leaves, beside the weights, experts and activations, 100 blocks (1600 tokens)
    u = _utilization_for(cluster, model, 8, 1600, SMALL["token_budget"])
    r = serve(ServeConfig(cluster, model, trace, w, gpu_memory_utilization=u, **SMALL))
    req = r.requests
    per_gpu = r.info["instances"][0]["kv_capacity_tokens"] / 8
    assert per_gpu == 1600
    too_long = req["prompt_tokens"] + req["output_tokens"] > per_gpu
    assert too_long.any() and not too_long.all()
    assert set(r.unfinished) == set(np.flatnonzero(too_long).tolist())
    assert all("more than a GPU's pool" in why for why in r.unfinished.values())
    assert np.array_equal(req["finished"], ~too_long)
    assert r.summary()["requests"]["finished"] + r.summary()["requests"]["unfinished"] == 40
    assert all(i["kv_blocks_left_in_use"] == 0 for i in r.info["instances"])


@pytest.mark.parametrize("scheduler", ["chunked", "prefill-first", "disaggregated"])
@pytest.mark.parametrize("preemption", ["recompute", "swap"])
def test_inv9_tokens_out_equal_tokens_asked(lite, scheduler, preemption):
    """INV-9: every finished request emitted exactly its output tokens, also through preemptions
    (a KV pool of a few hundred blocks per GPU forces them) and speculative decoding."""
    cluster, model, trace = lite
    w = _workload(requests=48, prompt_tokens=Lengths(kind="uniform", min=16, max=64),
                  output_tokens=Lengths(kind="uniform", min=100, max=300),
                  speculative=Speculative(draft_tokens=2, acceptance_rate=0.6)).with_(arrival_rate=400.0)
    # 900 tokens of KV per GPU: admitted with short prompts, 8 requests outgrow it as they decode
    gpus = 4 if scheduler == "disaggregated" else 8
    u = _utilization_for(cluster, model, gpus, 900, 512)
    r = serve(ServeConfig(cluster, model, trace, w, scheduler=scheduler, preemption=preemption,
                          gpu_memory_utilization=u, max_seqs=8, token_budget=512))
    req = r.requests
    assert req["finished"].all() and not r.unfinished
    assert np.array_equal(req["emitted_tokens"], req["output_tokens"])
    s = r.summary()
    assert s["output_tokens"] == int(req["output_tokens"].sum())
    assert s["preemptions"] > 0  # the pool was small enough to preempt
    assert all(i["kv_blocks_left_in_use"] == 0 for i in r.info["instances"])


def test_inv10_littles_law(lite):
    """INV-10 (Little's law): on a long steady run the time-average number of requests in the system,
    sampled from the engine's queues at every step, equals throughput x mean latency (E2E) within
    sampling error (2%)."""
    cluster, model, trace = lite
    w = _workload(requests=400).with_(arrival_rate=150.0)
    s = serve(ServeConfig(cluster, model, trace, w, **SMALL)).summary()
    little = s["little"]
    assert little["mean_in_system"] > 2  # a real queue, not an idle system
    assert little["mean_in_system"] == pytest.approx(
        little["throughput_requests_per_s"] * little["mean_latency_s"], rel=0.02)


@pytest.mark.parametrize("scheduler", ["chunked", "prefill-first", "disaggregated"])
def test_inv11_ttft_at_least_own_prefill_time(lite, scheduler):
    """INV-11: a request's first token comes no sooner than the steps that computed its prompt took;
    its E2E is at least its TTFT."""
    cluster, model, trace = lite
    w = _workload(requests=50).with_(arrival_rate=300.0)
    r = serve(ServeConfig(cluster, model, trace, w, scheduler=scheduler, **SMALL))
    req = r.requests
    ttft = req["first_token_s"] - req["arrival_s"]
    assert np.all(req["prefill_s"] > 0)
    assert np.all(ttft >= req["prefill_s"] * (1 - 1e-12))
    assert np.all(req["finish_s"] >= req["first_token_s"])


def test_inv12_low_load_latency_is_single_request_latency(lite, tmp_path):
    """INV-12: with arrivals far below capacity (one request a second, each done in under 0.1 s),
    every request's TTFT and E2E equal those of the same request served alone (a routing where all
    tokens cost the same makes the requests alike)."""
    cluster, model, _ = lite
    trace = _uniform_trace(model)
    stamps = tmp_path / "arrivals.csv"
    stamps.write_text("arrival_s\n" + "".join(f"{t}\n" for t in range(20)))
    fixed = _workload(prompt_tokens=Lengths(value=200), output_tokens=Lengths(value=20))
    alone = serve(ServeConfig(cluster, model, trace, fixed.with_(requests=1))).requests
    every_second = replace(fixed, requests=20, arrivals=Arrivals(kind="timestamps", file=str(stamps)))
    r = serve(ServeConfig(cluster, model, trace, every_second)).requests
    e2e, ttft = r["finish_s"] - r["arrival_s"], r["first_token_s"] - r["arrival_s"]
    assert np.array_equal(r["arrival_s"], np.arange(20.0)) and e2e.max() < 0.1
    assert e2e == pytest.approx(np.full(20, alone["finish_s"][0]), rel=1e-9)
    assert ttft == pytest.approx(np.full(20, alone["first_token_s"][0]), rel=1e-9)


def test_inv13_throughput_rises_then_saturates(lite):
    """INV-13: output tokens/s follows the offered load at low rates, then flattens at the engine's
    capacity (here about 250 requests/s) however many more arrive."""
    cluster, model, trace = lite
    w = _workload(prompt_tokens=Lengths(value=128), output_tokens=Lengths(value=16), requests=150)
    tput = []
    for rate in (4.0, 16.0, 64.0, 1024.0, 4096.0):
        s = serve(ServeConfig(cluster, model, trace, w.with_(arrival_rate=rate), **SMALL)).summary()
        tput.append(s["throughput"]["output_tokens_per_s"])
    assert tput[1] / tput[0] > 3.5 and tput[2] / tput[1] > 3.5  # follows the offered load
    assert tput[3] > tput[2]
    assert tput[4] / tput[3] == pytest.approx(1.0, abs=0.1)  # 4x the arrivals, the same throughput
    assert tput[4] < 64.0 * 16 * 10  # well under 10x what 64 req/s offered


def test_check_invariants_runs_the_per_run_checks_and_catches_each_break(lite):
    """``check_invariants`` checks INV-8, INV-9, INV-11 and the KV pools after the run; a result with
    one thing broken fails exactly that check."""
    import copy

    from moesim.serving.invariants import CHECKS, check, failures
    from moesim.sim.invariants import InvariantViolation

    cluster, model, trace = lite
    r = serve(ServeConfig(cluster, model, trace, _workload(requests=12), check_invariants=True, **SMALL))
    assert r.info["invariants_checked"] == list(CHECKS) and failures(r) == []

    def broken(edit) -> list[str]:
        bad = copy.deepcopy(r)
        edit(bad)
        return failures(bad)

    def short(b):
        b.requests["emitted_tokens"][3] -= 1

    def lost(b):
        b.requests["finished"][2] = False

    def early(b):
        b.requests["prefill_s"][1] = b.requests["first_token_s"][1] - b.requests["arrival_s"][1] + 1e-3

    def leak(b):
        b.info["instances"][0]["kv_blocks_left_in_use"] = 5

    for edit, words in ((short, "emitted other than"), (lost, "neither finished nor reported"),
                        (early, "shorter than its own prefill"), (leak, "KV blocks still in use")):
        (msg,) = broken(edit)
        assert words in msg
    bad = copy.deepcopy(r)
    leak(bad)
    with pytest.raises(InvariantViolation, match="serving invariants broken"):
        check(bad)
