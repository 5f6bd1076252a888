"""The cost model on the built-in hardware profiles and model specs: the shape checks a user does."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.specs import load_cluster, load_model
from tests.test_hw_profiles import CLUSTERS
from tests.test_model_specs import BUILTIN as MODELS


@pytest.mark.parametrize("hw", CLUSTERS)
def test_every_profile_gives_finite_positive_op_times(hw: str) -> None:
    cluster = load_cluster(hw)
    for name in ("mixtral-8x7b", "deepseek-v3", "gpt-oss-20b"):
        cost = CostModel(cluster, load_model(name))
        gpu = cluster.gpus[0].id
        tokens = np.zeros(8)
        tokens[:3] = [1, 7, 300]
        times = [
            cost.expert_compute_s(gpu, tokens),
            cost.attention_s(gpu, 16, 2048, "decode"),
            cost.attention_s(gpu, 2048, 1024, "prefill"),
            cost.router_s(gpu, 16),
            cost.permute_combine_s(gpu, 16),
            cost.weight_fetch_s(gpu, 1e8),
        ]
        for cpu in cluster.devices_of("cpu")[:1]:
            times.append(cost.cpu_expert_s(cpu.id, tokens))
        for pim in cluster.devices_of("pim")[:1]:
            times.append(cost.pim_expert_s(pim.id, tokens))
        assert all(math.isfinite(t) and t > 0 for t in times), times


@pytest.mark.parametrize("name", MODELS)
def test_every_model_has_sane_expert_and_attention_times(name: str) -> None:
    model = load_model(name)
    cost = CostModel(load_cluster("h100x8"), model)
    one = cost.expert_compute_s("n0.gpu0", np.array([1]))
    # decode of one token through one expert reads its weights: within 2x of bytes / HBM bandwidth
    floor = model.expert_bytes() / 3.35e12
    assert floor < one < 2 * floor + 30e-6
    assert cost.attention_s("n0.gpu0", 64, 4096, "decode") > cost.attention_s("n0.gpu0", 64, 512, "decode")


def test_ep_across_nodes_is_slower_than_inside_one() -> None:
    model = load_model("deepseek-v3")
    nodes8 = CostModel(load_cluster("h100x8x4", nodes=8), model)
    ids = [d.id for d in nodes8.cluster.gpus]
    assert len(ids) == 64
    rng = np.random.default_rng(0)
    per_pair = rng.poisson(4, size=(8, 8)) * model.activation_bytes_per_token
    inside = np.zeros((64, 64))
    inside[:8, :8] = per_pair
    across = np.zeros((64, 64))
    across[:8, 8:16] = per_pair  # the same bytes from node 0 to node 1
    assert nodes8.all_to_all_s(ids, across) > 3 * nodes8.all_to_all_s(ids, inside)
    # uniform EP64 decode dispatch, 256 tokens per GPU x top-8 spread over 64 GPUs: 32 tokens per pair
    uniform = np.full((64, 64), 256 * 8 / 64 * model.activation_bytes_per_token)
    np.fill_diagonal(uniform, 0)
    t = nodes8.all_to_all_s(ids, uniform)
    assert 20e-6 < t < 2e-3
    assert nodes8.all_to_all_s(ids, nodes8.hierarchical_matrix(ids, uniform)) > 0


def test_cpu_beats_pcie_fetch_at_batch_one_on_the_workstation() -> None:
    # Fiddler (Kamahori et al., ICLR 2025, arXiv 2402.07033): on a PCIe-attached consumer GPU, running
    # a missed Mixtral expert on the CPU beats copying its weights to the GPU at batch 1.
    model = load_model("mixtral-8x7b")
    cost = CostModel(load_cluster("rtx4090-workstation"), model)
    cpu = cost.cpu_expert_s("n0.cpu0", np.array([1]))
    fetch = cost.weight_fetch_s("n0.gpu0", model.expert_bytes()) + cost.expert_compute_s(
        "n0.gpu0", np.array([1])
    )
    assert cpu < fetch / 3
    lowbit = cost.weight_fetch_s("n0.gpu0", model.expert_bytes(), lowbit_dtype="int4")
    assert lowbit == pytest.approx(cost.weight_fetch_s("n0.gpu0", model.expert_bytes() / 4), rel=1e-9)


def test_pim_beats_the_gpu_on_low_intensity_experts_only() -> None:
    model = load_model("mixtral-8x7b")
    cost = CostModel(load_cluster("h100-duplex"), model)
    one = np.array([1])
    assert cost.pim_expert_s("n0.pim0", one) < cost.expert_compute_s("n0.gpu0", one)
    many = np.array([4096])
    assert cost.pim_expert_s("n0.pim0", many) > cost.expert_compute_s("n0.gpu0", many)


def test_faster_memory_makes_decode_experts_faster() -> None:
    model = load_model("mixtral-8x7b")
    t = np.array([1, 1])
    h100 = CostModel(load_cluster("h100x8"), model).expert_compute_s("n0.gpu0", t)
    h200 = CostModel(load_cluster("h200x8"), model).expert_compute_s("n0.gpu0", t)
    assert h200 < h100


def test_sliding_window_layers_attend_at_most_the_window() -> None:
    cost = CostModel(load_cluster("h100x8"), load_model("gpt-oss-20b"))
    sliding = cost.attention_s("n0.gpu0", 64, 8192, "decode", layer=0)
    full = cost.attention_s("n0.gpu0", 64, 8192, "decode", layer=1)
    mean = cost.attention_s("n0.gpu0", 64, 8192, "decode")
    assert sliding < mean < full
    assert cost.attention_s("n0.gpu0", 64, 100, "decode", layer=0) == cost.attention_s(
        "n0.gpu0", 64, 100, "decode", layer=1
    )
    mixtral = CostModel(load_cluster("h100x8"), load_model("mixtral-8x7b"))
    assert mixtral.attention_s("n0.gpu0", 8, 8192, "decode", layer=0) == mixtral.attention_s(
        "n0.gpu0", 8, 8192
    )
