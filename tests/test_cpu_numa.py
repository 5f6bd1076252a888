"""CPU experts on a dual-socket host (NUMA modes, UPI costs) and pinned vs pageable host copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.cost import CostModel
from moesim.cost.cpu_experts import TP_SOCKET_GAIN, CpuOptions
from moesim.cost.transfers import HOST_MEMCPY_BYTES_PER_S
from moesim.errors import UserError
from moesim.specs import load_cluster, load_model
from moesim.vocab import CpuNuma

MODEL = load_model("deepseek-v3")
HOST, OTHER = "n0.cpu0", "n0.cpu1"


def cost(numa: str, hw: str = "rtx4090-workstation", kernel: str | None = "amx-int8") -> CostModel:
    return CostModel(load_cluster(hw), MODEL, cpu=CpuOptions.of(kernel, numa))


def test_single_socket_host_ignores_the_numa_mode() -> None:
    t = np.full(8, 40.0)
    one = [cost(m, "rtx3090-desktop", None).cpu_expert_s(HOST, t) for m in CpuNuma]
    assert len(set(one)) == 1 and one[0] > 0
    assert cost("partition", "rtx3090-desktop", None).cpu.numa(HOST) == CpuNuma.ONE_SOCKET


def test_tensor_parallel_splits_each_expert_over_both_sockets() -> None:
    prefill = np.full(256, 60.0)  # compute-bound rows: the second socket adds TP_SOCKET_GAIN of one
    one = cost("one-socket").cpu_expert_s(HOST, prefill)
    tp = cost("tensor-parallel").cpu_expert_s(HOST, prefill)
    c = cost("tensor-parallel")
    rows_bytes = prefill.sum() * MODEL.activation_bytes_per_token
    upi = float(c.transfer_s(HOST, OTHER, rows_bytes) + c.transfer_s(OTHER, HOST, rows_bytes))
    assert tp == pytest.approx(one / (1 + TP_SOCKET_GAIN) + upi, rel=1e-6)
    assert upi > 0 and tp < one


def test_partition_runs_whole_experts_on_their_home_socket_and_pays_upi_for_remote_ones() -> None:
    c = cost("partition")
    one = cost("one-socket")
    t = np.array([30.0])
    local = c.cpu_expert_s(HOST, t, experts=np.array([2]))  # even id: home socket 0, the host
    remote = c.cpu_expert_s(HOST, t, experts=np.array([3]))  # odd id: socket 1, rows cross UPI
    assert local == pytest.approx(one.cpu_expert_s(HOST, t))
    rows = 30 * MODEL.activation_bytes_per_token
    upi = float(c.transfer_s(HOST, OTHER, rows) + c.transfer_s(OTHER, HOST, rows))
    assert remote == pytest.approx(local + upi)
    # two experts, one per socket, run side by side
    both = c.cpu_expert_s(HOST, np.array([30.0, 30.0]), experts=np.array([2, 3]))
    assert both == pytest.approx(remote)
    with pytest.raises(ValueError, match="experts must match"):
        c.cpu_expert_s(HOST, t, experts=np.array([1, 2]))


def test_interleaved_pages_stream_half_the_bytes_over_upi() -> None:
    decode = np.ones(8)  # memory-bound: one row per expert
    one = cost("one-socket").cpu_expert_s(HOST, decode)
    inter = cost("interleave").cpu_expert_s(HOST, decode)
    cluster = load_cluster("rtx4090-workstation")
    upi = cluster.bottleneck_bandwidth(HOST, OTHER)  # upi-x3: 96 GB/s x 0.8
    c = cost("interleave")
    half = c.cpu.kernel(HOST).weight_bits / 8 * MODEL.expert_params / 2
    per_expert = half / upi + cluster.path_latency(HOST, OTHER)
    assert inter == pytest.approx(8 * per_expert, rel=0.02)  # UPI is slower than the local DDR half
    assert inter > one
    assert cost("interleave").with_infinite_bandwidth().cpu_expert_s(HOST, decode) < inter


def test_numa_mode_reaches_the_simulator_through_the_cli(tmp_path: Path) -> None:
    from moesim.cli import main

    args = ["simulate", "--hw", "rtx4090-workstation", "--model", "deepseek-v2-lite", "--trace",
            "deepseek-v2-lite-synth", "--cache", "lru", "--cache-size", "8", "--miss", "cpu", "--steps", "4",
            "--batch", "64", "--json"]
    import contextlib
    import io
    import json

    def run(*extra: str) -> float:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main([*args, *extra]) == 0
        return json.loads(out.getvalue())["step_latency_s"]["mean"]

    tp, one = run("--cpu-numa", "tensor-parallel"), run("--cpu-numa", "one-socket")
    assert tp < one
    assert run("--cpu-kernel", "torch-bf16") > run("--cpu-kernel", "amx-bf16")


# ------------------------------------------------------------------ pinned vs pageable host copies

PAGEABLE = """\
kind: cluster
source: test
node:
  devices:
    gpu: {model: h100-sxm5, count: 2}
    cpu: {model: xeon-platinum-8480, count: 1}
  links:
    - {link: pcie-gen5-x16, from: gpu0, to: cpu0}
    - {link: pcie-gen5-x16, from: gpu1, to: cpu0, host_memory: pageable}
"""


def test_pageable_link_stages_copies_through_a_host_memcpy(tmp_path: Path) -> None:
    path = tmp_path / "box.yaml"
    path.write_text(PAGEABLE, encoding="utf-8")
    cluster = load_cluster(str(path))
    c = CostModel(cluster, load_model("mixtral-8x7b"))
    nbytes = 352e6
    link = cluster.bottleneck_bandwidth("n0.cpu0", "n0.gpu0")
    lat = cluster.path_latency("n0.cpu0", "n0.gpu0")
    pinned = c.weight_fetch_s("n0.gpu0", nbytes)
    assert pinned == pytest.approx(lat + nbytes / link)
    staged = lat + nbytes / link + nbytes / HOST_MEMCPY_BYTES_PER_S
    assert c.weight_fetch_s("n0.gpu1", nbytes) == pytest.approx(staged)  # the profile says pageable
    assert c.weight_fetch_s("n0.gpu0", nbytes, pinned=False) == pytest.approx(staged)  # the caller does
    assert c.transfer_s("n0.gpu1", "n0.cpu0", nbytes) == pytest.approx(staged)  # both directions
    bad = tmp_path / "bad.yaml"
    bad.write_text(PAGEABLE.replace("host_memory: pageable", "host_memory: paged"), encoding="utf-8")
    with pytest.raises(UserError, match=r"host_memory.*pinned, pageable"):
        load_cluster(str(bad))


def test_cpu_entry_memcpy_bandwidth_sets_the_staging_rate(tmp_path: Path) -> None:
    catalog = tmp_path / "cat.yaml"
    catalog.write_text(
        "kind: catalog\nsource: test\ndevices:\n  slow-host:\n    extends: xeon-platinum-8480\n"
        "    memory: {memcpy_bandwidth: 2 GB/s, source: test}\n", encoding="utf-8")
    text = PAGEABLE.replace("xeon-platinum-8480", "slow-host").replace("source: test\n", "source: test\n"
                                                                       "catalogs: [cat.yaml]\n", 1)
    path = tmp_path / "box.yaml"
    path.write_text(text, encoding="utf-8")
    cluster = load_cluster(str(path))
    assert cluster.device("n0.cpu0").spec.memcpy_bandwidth_bytes_per_s == 2e9
    c = CostModel(cluster, load_model("mixtral-8x7b"))
    link = cluster.bottleneck_bandwidth("n0.cpu0", "n0.gpu1")
    lat = cluster.path_latency("n0.cpu0", "n0.gpu1")
    assert c.weight_fetch_s("n0.gpu1", 1e9) == pytest.approx(lat + 1e9 / link + 1e9 / 2e9)
    gpu_memcpy = catalog.read_text().replace("extends: xeon-platinum-8480", "extends: h100-sxm5")
    catalog.write_text(gpu_memcpy, encoding="utf-8")
    with pytest.raises(UserError, match="memcpy_bandwidth: expected only on a cpu device"):
        load_cluster(str(path.with_name("box.yaml")))
