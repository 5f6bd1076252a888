"""All-to-all and point-to-point transfers on the topology: NVLink vs IB, contention, latency only."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.cost import CostModel
from moesim.cost.transfers import HOST_MEMCPY_BYTES_PER_S
from moesim.specs import load_cluster
from moesim.specs.hardware import Cluster, Device, Link
from tests.test_cost_fixtures import H100, MIXTRAL, NDR, NVLINK4, PCIE5, make_cluster

MB = 1e8


@pytest.fixture(scope="module")
def two_nodes() -> CostModel:
    return CostModel(make_cluster(2, 4), MIXTRAL)


def one_flow(cost: CostModel, src: str, dst: str, nbytes: float) -> float:
    ids = [d.id for d in cost.cluster.gpus]
    b = np.zeros((len(ids), len(ids)))
    b[ids.index(src), ids.index(dst)] = nbytes
    return cost.all_to_all_s(ids, b)


def test_intra_node_nvlink_is_faster_than_cross_node_ib(two_nodes: CostModel) -> None:
    intra = one_flow(two_nodes, "n0.gpu0", "n0.gpu1", MB)
    inter = one_flow(two_nodes, "n0.gpu0", "n1.gpu1", MB)
    assert intra == pytest.approx(MB / NVLINK4.effective_bandwidth_bytes_per_s + 2 * NVLINK4.latency_s)
    assert inter == pytest.approx(
        MB / NDR.effective_bandwidth_bytes_per_s + 2 * PCIE5.latency_s + 2 * NDR.latency_s
    )
    assert intra < inter / 5


def test_two_flows_sharing_a_nic_take_twice_as_long(two_nodes: CostModel) -> None:
    ids = [d.id for d in two_nodes.cluster.gpus]
    b = np.zeros((8, 8))
    b[ids.index("n0.gpu0"), ids.index("n1.gpu0")] = MB
    b[ids.index("n0.gpu0"), ids.index("n1.gpu1")] = MB  # both leave through n0.nic0
    latency = 2 * PCIE5.latency_s + 2 * NDR.latency_s
    one = one_flow(two_nodes, "n0.gpu0", "n1.gpu0", MB) - latency
    assert two_nodes.all_to_all_s(ids, b) - latency == pytest.approx(2 * one)
    # two flows from different GPUs use different NICs and overlap fully
    c = np.zeros((8, 8))
    c[ids.index("n0.gpu0"), ids.index("n1.gpu0")] = MB
    c[ids.index("n0.gpu1"), ids.index("n1.gpu1")] = MB
    assert two_nodes.all_to_all_s(ids, c) - latency == pytest.approx(one)


def test_nvswitch_port_contention(two_nodes: CostModel) -> None:
    ids = [d.id for d in two_nodes.cluster.gpus]
    b = np.zeros((8, 8))
    b[0, 1] = b[0, 2] = b[0, 3] = MB  # three flows out of gpu0's NVSwitch port
    expected = 3 * MB / NVLINK4.effective_bandwidth_bytes_per_s + 2 * NVLINK4.latency_s
    assert two_nodes.all_to_all_s(ids, b) == pytest.approx(expected)


def test_infinite_bandwidth_costs_only_latency(two_nodes: CostModel) -> None:
    inf = two_nodes.with_infinite_bandwidth()
    ids = [d.id for d in two_nodes.cluster.gpus]
    b = np.full((8, 8), 1e9)
    np.fill_diagonal(b, 0)
    assert inf.all_to_all_s(ids, b) == pytest.approx(2 * PCIE5.latency_s + 2 * NDR.latency_s)
    assert inf.all_to_all_s(ids, np.zeros((8, 8))) == 0.0
    assert inf.transfer_s("n0.gpu0", "n0.gpu1", 1e12) == pytest.approx(2 * NVLINK4.latency_s)
    assert inf.weight_fetch_s("n0.gpu0", 1e12) == pytest.approx(PCIE5.latency_s)
    assert inf.expert_compute_s("n0.gpu0", np.array([1, 0])) == two_nodes.expert_compute_s(
        "n0.gpu0", np.array([1, 0])
    )
    assert two_nodes.all_to_all_s(ids, b) > 100 * inf.all_to_all_s(ids, b)


def test_diagonal_is_free_and_zero_bytes_cost_zero(two_nodes: CostModel) -> None:
    ids = [d.id for d in two_nodes.cluster.gpus]
    assert two_nodes.all_to_all_s(ids, np.diag(np.full(8, 1e9))) == 0.0
    assert two_nodes.transfer_s("n0.gpu0", "n0.gpu0", 1e9) == 0.0
    assert two_nodes.transfer_s("n0.gpu0", "n1.gpu0", 0) == 0.0


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1e8), min_size=64, max_size=64), st.booleans())
def test_link_bytes_conserve_pair_bytes_times_hops(values: list[float], hierarchical: bool) -> None:
    cost = CostModel(make_cluster(2, 4), MIXTRAL)
    ids = [d.id for d in cost.cluster.gpus]
    b = np.array(values).reshape(8, 8)
    np.fill_diagonal(b, 0)
    if hierarchical:
        b = cost.hierarchical_matrix(ids, b)
    hops = np.array([[len(cost.cluster.path(s, d)) for d in ids] for s in ids])
    total = sum(cost.link_bytes(ids, b).values())
    assert total == pytest.approx(float((b * hops).sum()), rel=1e-9)
    # a batch gives the same times as one matrix at a time
    batch = np.stack([b, 2 * b, np.zeros_like(b)])
    times = cost.all_to_all_s(ids, batch)
    singles = [cost.all_to_all_s(ids, m) for m in batch]
    np.testing.assert_allclose(times, singles, rtol=1e-12)


def test_hierarchical_goes_over_the_rail_peer_and_dedup_helps() -> None:
    cost = CostModel(make_cluster(2, 4), MIXTRAL)
    ids = [d.id for d in cost.cluster.gpus]
    b = np.zeros((8, 8))
    b[0, 5] = b[0, 6] = MB  # n0.gpu0 -> n1.gpu1 and n1.gpu2
    links = cost.link_bytes(ids, cost.hierarchical_matrix(ids, b))
    assert links[("n0.gpu0", "n0.nic0")] == pytest.approx(2 * MB)
    assert links[("n1.nic0", "n1.gpu0")] == pytest.approx(2 * MB)  # lands on the rail peer n1.gpu0
    assert links[("n1.gpu0", "n1.nvswitch")] == pytest.approx(2 * MB)  # which forwards both
    assert links[("n1.nvswitch", "n1.gpu1")] == pytest.approx(MB)  # over NVLink
    # the same token sent once to node 1 (DeepEP de-duplication) halves the fabric bytes
    node_bytes = np.zeros((8, 2))
    node_bytes[0, 1] = MB
    dedup = cost.hierarchical_matrix(ids, b, node_bytes)
    assert cost.link_bytes(ids, dedup)[("n0.nic0", "ib")] == pytest.approx(MB)
    assert cost.all_to_all_s(ids, dedup) < cost.all_to_all_s(ids, cost.hierarchical_matrix(ids, b))


def test_weight_fetch_pinned_pageable_and_lowbit() -> None:
    cost = CostModel(make_cluster(1, 2), MIXTRAL)
    nbytes = MIXTRAL.expert_bytes()
    bw = PCIE5.effective_bandwidth_bytes_per_s
    pinned = cost.weight_fetch_s("n0.gpu1", nbytes)
    assert pinned == pytest.approx(PCIE5.latency_s + nbytes / bw)
    pageable = cost.weight_fetch_s("n0.gpu1", nbytes, pinned=False)
    # the driver's staging memcpy, then the DMA over the link
    assert pageable == pytest.approx(PCIE5.latency_s + nbytes / bw + nbytes / HOST_MEMCPY_BYTES_PER_S)
    int4 = cost.weight_fetch_s("n0.gpu1", nbytes, lowbit_dtype="int4")
    assert int4 == pytest.approx(PCIE5.latency_s + nbytes / 4 / bw)
    many = cost.weight_fetch_s("n0.gpu1", np.array([0.0, nbytes]))
    np.testing.assert_allclose(many, [0.0, pinned])


def test_transfer_uses_bottleneck_and_latency(two_nodes: CostModel) -> None:
    t = two_nodes.transfer_s("n0.gpu0", "n1.gpu3", MB)
    assert t == pytest.approx(
        MB / NDR.effective_bandwidth_bytes_per_s + 2 * PCIE5.latency_s + 2 * NDR.latency_s
    )
    assert two_nodes.path_links("n0.gpu0", "n0.gpu1") == [
        ("n0.gpu0", "n0.nvswitch"),
        ("n0.nvswitch", "n0.gpu1"),
    ]
    names = {name for name, _, _ in two_nodes.directed_links()}
    assert ("n0.nvswitch", "n0.gpu0") in names and ("n0.gpu0", "n0.nvswitch") in names


def ring_cluster(n: int = 5) -> Cluster:
    """GPUs on a ring of direct NVLinks: links carry pairs with several sources and destinations."""
    devices = tuple(Device(f"n0.gpu{i}", 0, H100) for i in range(n))
    links = tuple(Link(f"n0.gpu{i}", f"n0.gpu{(i + 1) % n}", NVLINK4) for i in range(n))
    return Cluster("ring", 1, devices, (), links)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from(["ring", "two-nodes", "h100x8x4"]))
def test_link_loads_match_the_pair_hop_sum(seed: int, which: str) -> None:
    cluster = {"ring": ring_cluster, "two-nodes": lambda: make_cluster(2, 4)}.get(
        which, lambda: load_cluster("h100x8x4", nodes=2)
    )()
    cost = CostModel(cluster, MIXTRAL)
    ids = [d.id for d in cluster.gpus]
    g = len(ids)
    b = np.random.default_rng(seed).exponential(1e6, size=(3, g, g))
    r = cost.routes(ids)
    for m in b:
        expected = np.zeros(r.num_links)
        for i in range(g):
            for j in range(g):
                for hop in r.link_of_hop[r.pair_of_hop == i * g + j]:
                    expected[hop] += m[i, j] if i != j else 0.0
        np.testing.assert_allclose(r.link_loads(m), expected, rtol=1e-9, atol=1e-6)
    np.testing.assert_allclose(r.link_loads(b), [r.link_loads(m) for m in b], rtol=1e-12)
