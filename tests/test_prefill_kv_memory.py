"""The prefill memory check: a prefill step's KV cache is the sum of its prompts' lengths, not
tokens x mean context (issue 11: one 969-token Mixtral prompt on a 24 GB GPU was refused as 61 GB)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moesim.cli import main
from moesim.sim import SimConfig, simulate
from moesim.specs import load_cluster, load_model, with_weight_dtype
from moesim.traces.trace import PREFILL, RoutingTrace

KV_PER_TOKEN_B = 131_072  # Mixtral: 2 x 8 KV heads x 128 x 2 B x 32 layers
FP8_EXPERT_B = 176_160_768  # 3 x 4096 x 14336 x 1 B
NON_EXPERT_B = (32 * 4096 * 128 * (2 * 32 + 2 * 8) + 2 * 32000 * 4096 + 32 * 4096 * 8) * 2
"""Attention, embeddings + LM head and router, in bf16 (only the routed experts are fp8; moesim.memory)."""


def _prompts(lengths: list[int], seed: int = 0) -> RoutingTrace:
    """Mixtral prefill rows of prompts of ``lengths`` tokens (random routing)."""
    n = sum(lengths)
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.permutation(8)[:2] for _ in range(n * 32)]).reshape(n, 32, 2)
    return RoutingTrace.build(ids, num_experts=8, seq_id=np.repeat(np.arange(len(lengths)), lengths),
                              phase=PREFILL)


@pytest.fixture(scope="module")
def mixtral_fp8():
    return with_weight_dtype(load_model("mixtral-8x7b"), "fp8")


def _activations(tokens: int) -> float:
    return tokens * (2 * 4096 + 2 * (2 * 4096 + 2 * 14336)) * 2


def test_969_token_prompt_fits_a_24gb_gpu(mixtral_fp8):
    """fp8 experts, 3 per layer in an LRU cache, CPU misses: 16.91 GB of experts + 3.2 GB of bf16 weights +
    969 x 128 KiB = 0.127 GB of KV fit 24 GB (the old check counted 969 x 485 keys = 61.5 GB)."""
    cluster = load_cluster("rtx4090-workstation")
    cfg = SimConfig(cluster, mixtral_fp8, _prompts([969]), phase="prefill", batch_size=1,
                    cache_policy="lru", expert_cache_bytes=17e9, miss="cpu", check_invariants=True)
    peak = simulate(cfg).memory_bytes["n0.gpu0"]
    expected = 3 * 32 * FP8_EXPERT_B + NON_EXPERT_B + 969 * KV_PER_TOKEN_B + _activations(969)
    assert peak == pytest.approx(expected, rel=1e-12)


def test_prefill_kv_is_the_sum_of_prompt_lengths(mixtral_fp8):
    """Two prompts per step on one GPU hold 300 + 700 tokens of KV (not 1000 x the mean context)."""
    cluster = load_cluster("h100x8")
    trace = _prompts([300, 700, 100])
    plan_gpus = simulate(SimConfig(cluster, mixtral_fp8, trace, phase="prefill", batch_size=2))
    # 8 GPUs: the step's 1000 tokens in blocks of 125; GPU 2 holds rows 250..374, which are
    # positions 250..299 of prompt 0 and 0..74 of prompt 1: KV of 300 + 75 keys.
    experts = 32 * FP8_EXPERT_B
    per_gpu = NON_EXPERT_B + experts + _activations(1000)  # every GPU holds the whole attention (DP)
    assert plan_gpus.memory_bytes["n0.gpu2"] == pytest.approx(per_gpu + 375 * KV_PER_TOKEN_B, rel=1e-12)
    assert plan_gpus.memory_bytes["n0.gpu7"] == pytest.approx(per_gpu + 700 * KV_PER_TOKEN_B, rel=1e-12)


def test_969_token_prompt_on_the_command_line(capsys, tmp_path):
    """The issue's command: ``moesim simulate`` on rtx4090-workstation, fp8 experts, CPU misses."""
    path = tmp_path / "prompt969.npz"
    _prompts([969]).save(path)
    code = main(["simulate", "--hw", "rtx4090-workstation", "--model", "mixtral-8x7b", "--weight-dtype",
                 "fp8", "--trace", str(path), "--phase", "prefill", "--batch", "1", "--cache", "lru",
                 "--gpu-memory", "24GB", "--miss", "cpu", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    s = json.loads(out.out)
    assert s["tokens"] == 969 and s["cache"]["capacity_experts"] == [3]
    gpu = next(d for d in s["per_device"] if d["id"] == "n0.gpu0")
    assert gpu["peak_memory_bytes"] < 24e9
