"""The library layer (moesim.workflows): the rules it applies once for every face, checked on hand-built
inputs, and the CLI printing exactly what a workflow returns."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import UserError
from moesim.traces import RoutingTrace
from moesim.workflows import (
    replay_setting,
    simulate_run,
    static_budget_bytes,
    static_cache_pin,
    static_hit_rate,
    trace_statistics,
)
from tests.conftest import MIXTRAL_FIXED_BYTES


def _trace(lengths: list[int], phase: int) -> RoutingTrace:
    n = sum(lengths)
    ids = (np.arange(n * 2).reshape(n, 1, 2) % 4).astype(np.int16)
    seq = np.repeat(np.arange(len(lengths)), lengths)
    return RoutingTrace.build(ids, num_experts=4, seq_id=seq, phase=phase)


def test_replay_setting_is_decode_tokens_or_whole_prompts():
    # prompts of 10, 20 and 30 tokens: 20 on average, so 100 tokens per step are 5 prompts
    assert replay_setting(_trace([10, 20, 30], phase=0), 100) == ("prefill", 5)
    assert replay_setting(_trace([10, 20, 30], phase=0), 5) == ("prefill", 1)
    assert replay_setting(_trace([10, 20, 30], phase=1), 100) == ("decode", 100)
    assert replay_setting(_trace([10, 20, 30], phase=-1), 40) == ("prefill", 2)  # unknown counts as prefill
    with pytest.raises(UserError, match="--batch-size"):
        replay_setting(_trace([4], phase=1), 0)


def test_static_hit_rate_counts_distinct_experts_per_token():
    from moesim.specs.model import AttentionSpec, MoEModel

    model = MoEModel(name="t", num_layers=1, moe_layers=(0,), hidden_size=8, expert_intermediate_size=8,
                     num_experts=4, top_k=2, attention=AttentionSpec("gqa", 1, 1, 8))
    ids = np.array([[[0, 1]], [[1, 1]], [[2, -1]], [[3, 0]]], dtype=np.int16)
    trace = RoutingTrace.build(ids, num_experts=4)
    # requests: {0,1}, {1}, {2}, {3,0} = 6; pinned {0, 1} hits 0, 1, 1, 0 = 4
    assert static_hit_rate(trace, model, [[0, 1]]) == pytest.approx(4 / 6)
    assert static_hit_rate(trace, model, [[]]) == 0.0


def test_static_pin_budget_and_the_all_experts_case():
    from moesim.specs import load_model

    model = load_model("mixtral-8x7b")
    eb = 3 * 4096 * 14336 * 2
    assert static_budget_bytes(model, 3) == MIXTRAL_FIXED_BYTES + 2 * eb + 3 * 32 * eb + 0.5 * eb
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=model).rows(0, 300)
    pin = static_cache_pin(hw="rtx4090-workstation", model=model, trace=trace, size=8, time_limit_s=10)
    assert pin.resident == ((0, 1, 2, 3, 4, 5, 6, 7),) * 32 and pin.hit_rate == 1.0
    two = static_cache_pin(hw="rtx4090-workstation", model=model, trace=trace, size=2, time_limit_s=10)
    assert sum(map(len, two.resident)) == 2 * 32  # the memory of 2 per layer, spread as the MIP likes
    assert 0.25 < two.hit_rate < 1.0 and two.hit_rate == static_hit_rate(trace, model, two.resident)


def test_simulate_prints_what_the_workflow_returns(capsys):
    argv = ["simulate", "--hw", "rtx4090-workstation", "--model", "mixtral-8x7b", "--weight-dtype", "fp8",
            "--trace", "mixtral-8x7b-synth", "--steps", "6", "--cache", "lru", "--expert-cache", "16GiB",
            "--miss", "cpu", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    run = simulate_run(hw="rtx4090-workstation", model="mixtral-8x7b", weight_dtype="fp8",
                       trace="mixtral-8x7b-synth", steps=6, cache="lru", expert_cache="16GiB", miss="cpu")
    want = json.loads(json.dumps(run.summary()))
    for d in (printed, want):
        d.pop("wall_seconds", None), d.pop("timing", None)
    assert printed.pop("schema") == "moesim-simulate/1"
    assert printed == want and printed["cache"]["capacity_experts"] == [3]


def test_simulate_gpu_memory_is_the_whole_gpu(capsys):
    common = ["simulate", "--hw", "rtx4090-workstation", "--model", "mixtral-8x7b", "--weight-dtype", "fp8",
              "--trace", "mixtral-8x7b-synth", "--steps", "2", "--cache", "lru", "--json"]
    assert main([*common, "--gpu-memory", "24GB"]) == 0
    # 24 GB less Mixtral's 1.6 GB of other weights, 0.5 GB of KV cache for 4096 tokens: 3 experts per layer
    assert json.loads(capsys.readouterr().out)["cache"]["capacity_experts"] == [3]
    assert main([*common, "--gpu-memory", "1GiB"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--gpu-memory" in err and "--expert-cache 1GiB" in err
    assert main([*common, "--gpu-memory", "24GB", "--expert-cache", "1GiB"]) == 2  # one or the other
    assert "not allowed with argument" in capsys.readouterr().err


def test_trace_stats_prints_what_the_workflow_returns(capsys):
    assert main(["trace", "stats", "mixtral-8x7b-synth", "--cache-sizes", "2,4", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    from moesim.jsonable import to_jsonable

    assert printed.pop("schema") == "moesim-trace-stats/1"
    assert printed == to_jsonable(trace_statistics("mixtral-8x7b-synth", cache_sizes=[2, 4]))
    assert set(printed["cache_hit_rate"]) == {"lru", "lfu", "belady"}
