"""Every built-in hardware profile loads, validates, and has the topology its datasheet says."""

from __future__ import annotations

import pytest

from moesim.errors import UserError
from moesim.resources import builtin_names, resolve
from moesim.specs import load_cluster
from moesim.specs.hardware_file import validate_file

CLUSTERS = [
    "h100x8",
    "h100x8x4",
    "h200x8",
    "b200x8",
    "a100x8",
    "mi300x8",
    "rtx4090-workstation",
    "rtx3090-desktop",
    "l4-server",
    "h100-duplex",
    "h800x8",
]


@pytest.mark.parametrize("name", builtin_names("hardware") + builtin_names("catalog"))
def test_every_hardware_file_validates(name: str) -> None:
    assert validate_file(resolve("hardware", name))


def test_builtin_profiles_are_the_clusters_and_catalogs_are_listed_apart() -> None:
    assert sorted(builtin_names("hardware")) == sorted(CLUSTERS)  # every one loads below
    assert builtin_names("catalog") == ["devices", "links"]
    assert resolve("catalog", "devices").name == "devices.yaml"
    with pytest.raises(UserError, match="unknown hardware catalog 'h100x8'"):
        resolve("catalog", "h100x8")
    with pytest.raises(UserError) as e:
        resolve("hardware", "no-such-profile")
    assert "h100x8" in str(e.value) and "devices" not in str(e.value) and "links" not in str(e.value)


@pytest.mark.parametrize("name", CLUSTERS)
def test_builtin_cluster_loads(name: str) -> None:
    cluster = load_cluster(name)
    assert cluster.name == name
    assert cluster.gpus


def test_h100x8_matches_dgx_h100() -> None:
    c = load_cluster("h100x8")
    assert len(c.gpus) == 8
    for gpu in c.gpus:
        assert gpu.spec.memory_bytes == 81559 * 2**20  # what nvidia-smi reports for an H100 80GB
        assert gpu.spec.memory_bandwidth_bytes_per_s == pytest.approx(3.35e12)
        assert gpu.spec.peak_flops("bf16") == pytest.approx(989.4e12)
    assert len(c.devices_of("cpu")) == 2
    assert [ln.spec.kind for ln in c.path("n0.gpu0", "n0.gpu7")] == ["nvlink4", "nvlink4"]


def kinds(cluster, src: str, dst: str) -> list[str]:
    return [ln.spec.kind for ln in cluster.path(src, dst)]


@pytest.mark.parametrize(
    ("name", "link", "per_direction"),
    [
        ("h100x8", "nvlink4", 450e9),
        ("h200x8", "nvlink4", 450e9),
        ("b200x8", "nvlink5", 900e9),
        ("a100x8", "nvlink3", 300e9),
        ("h100-duplex", "nvlink4", 450e9),
        ("h800x8", "nvlink4-h800", 200e9),
    ],
)
def test_gpu_to_gpu_inside_a_node_crosses_nvswitch(name: str, link: str, per_direction: float) -> None:
    c = load_cluster(name)
    for a in c.gpus:
        for b in c.gpus:
            if a.id != b.id:
                assert kinds(c, a.id, b.id) == [link, link]
    spec = c.path("n0.gpu0", "n0.gpu7")[0].spec
    assert spec.bandwidth_bytes_per_s == pytest.approx(per_direction)
    assert c.bottleneck_bandwidth("n0.gpu0", "n0.gpu7") == pytest.approx(per_direction * spec.efficiency)
    assert c.path_latency("n0.gpu0", "n0.gpu7") == pytest.approx(2 * spec.latency_s)


def test_mi300x_gpus_are_a_full_xgmi_mesh() -> None:
    c = load_cluster("mi300x8")
    assert all(kinds(c, a.id, b.id) == ["xgmi-mi300x"] for a in c.gpus for b in c.gpus if a.id != b.id)
    assert c.bottleneck_bandwidth("n0.gpu0", "n0.gpu1") == pytest.approx(64e9 * 0.8)


def test_l4_server_gpus_talk_over_pcie() -> None:
    c = load_cluster("l4-server")
    assert kinds(c, "n0.gpu0", "n0.gpu3") == ["pcie-gen4-x16", "pcie-gen4-x16"]
    far = kinds(c, "n0.gpu0", "n0.gpu7")
    assert "upi-x3" in far and all(k.startswith(("pcie", "upi")) for k in far)
    assert c.bottleneck_bandwidth("n0.gpu0", "n0.gpu7") == pytest.approx(31.5e9 * 0.82)


def test_gpu_to_gpu_across_nodes_crosses_infiniband() -> None:
    c = load_cluster("h100x8x4")
    assert c.nodes == 4 and len(c.gpus) == 32
    assert kinds(c, "n0.gpu0", "n3.gpu5") == ["pcie-gen5-x16", "ib-ndr", "ib-ndr", "pcie-gen5-x16"]
    assert [v for ln in c.path("n0.gpu0", "n3.gpu5") for v in (ln.src, ln.dst)].count("ib") == 2
    assert c.bottleneck_bandwidth("n0.gpu0", "n3.gpu5") == pytest.approx(400e9 / 8 * 0.97)
    assert c.path_latency("n0.gpu0", "n3.gpu5") == pytest.approx(0.5e-6 + 1.35e-6 + 1.35e-6 + 0.5e-6)
    # Inside one node the NVLink path is still chosen.
    assert kinds(c, "n2.gpu1", "n2.gpu6") == ["nvlink4", "nvlink4"]


@pytest.mark.parametrize(
    ("name", "gpu", "cpu", "link", "bandwidth"),
    [
        ("h100x8", "n0.gpu0", "n0.cpu0", "pcie-gen5-x16", 63e9 * 0.88),
        ("h100x8", "n0.gpu5", "n0.cpu1", "pcie-gen5-x16", 63e9 * 0.88),
        ("rtx4090-workstation", "n0.gpu0", "n0.cpu0", "pcie-gen4-x16", 31.5e9 * 0.82),
        ("rtx3090-desktop", "n0.gpu0", "n0.cpu0", "pcie-gen4-x16", 31.5e9 * 0.82),
        ("a100x8", "n0.gpu0", "n0.cpu0", "pcie-gen4-x16", 31.5e9 * 0.82),
    ],
)
def test_gpu_to_cpu_over_pcie(name: str, gpu: str, cpu: str, link: str, bandwidth: float) -> None:
    c = load_cluster(name)
    assert kinds(c, cpu, gpu) == [link]
    assert c.bottleneck_bandwidth(gpu, cpu) == pytest.approx(bandwidth)
    assert c.path_latency(gpu, cpu) == pytest.approx(0.5e-6)


def test_host_memory_of_the_profiles() -> None:
    assert sum(d.spec.memory_bytes for d in load_cluster("h100x8").devices_of("cpu")) == 2e12
    ws = load_cluster("rtx4090-workstation")
    assert sum(d.spec.memory_bytes for d in ws.devices_of("cpu")) == 2 * 512e9  # "1T DRAM (2 NUMA nodes)"
    assert ws.devices_of("cpu")[0].spec.peak_flops("bf16") > 0


def test_h100_duplex_puts_a_pim_beside_each_xpu() -> None:
    c = load_cluster("h100-duplex")
    pims, gpus = c.devices_of("pim"), c.gpus
    assert len(pims) == len(gpus) == 8
    for i, pim in enumerate(pims):
        assert kinds(c, pim.id, f"n0.gpu{i}") == ["hbm3-logic-die"]
        assert pim.spec.estimated
        assert pim.spec.internal_bandwidth_bytes_per_s >= 3 * gpus[i].spec.memory_bandwidth_bytes_per_s
        assert pim.spec.memory_bytes + gpus[i].spec.memory_bytes == 80e9  # one H100's HBM, split
    assert "estimated" in gpus[0].spec.sources["memory"]


@pytest.mark.parametrize("name", CLUSTERS)
def test_every_number_has_a_source(name: str) -> None:
    c = load_cluster(name)
    for d in c.devices:
        for section in ("device", "memory", "compute"):
            assert d.spec.sources[section].strip(), (d.id, section)
    for ln in c.links:
        assert ln.spec.source.strip(), ln.spec.kind


MIB = 1 << 20
"""GPU capacities are the usable bytes nvidia-smi / rocminfo report (hardware/devices.yaml cites them)."""


@pytest.mark.parametrize(
    ("model", "bf16", "memory", "bandwidth"),
    [
        ("h100-sxm5", 989.4e12, 81559 * MIB, 3.35e12),
        ("h100-pcie", 756e12, 80e9, 2.0e12),
        ("h200-sxm", 989.4e12, 141e9, 4.8e12),
        ("a100-sxm4-80gb", 312e12, 81920 * MIB, 2.039e12),
        ("b200", 2250e12, 183359 * MIB, 8e12),
        ("l40s", 362.05e12, 46068 * MIB, 864e9),
        ("rtx-4090", 165.2e12, 24564 * MIB, 1008e9),
        ("rtx-3090", 71e12, 24576 * MIB, 936e9),
        ("l4", 121e12, 23034 * MIB, 300e9),
        ("t4", 65e12, 15360 * MIB, 320e9),
        ("mi300x", 1307.4e12, 201310208 * 1024, 5.3e12),
        ("xeon-platinum-8480", 114.7e12, 1e12, 307.2e9),
        ("xeon-gold-6454s", 72.1e12, 512e9, 307.2e9),
        ("epyc-9654", 14.7e12, 768e9, 460.8e9),
    ],
)
def test_catalog_numbers_match_the_reference(
    model: str, bf16: float, memory: float, bandwidth: float
) -> None:
    from moesim.specs import load_device_spec

    spec = load_device_spec(model)
    assert spec.peak_flops("bf16") == pytest.approx(bf16)
    assert spec.memory_bytes == pytest.approx(memory)
    assert spec.memory_bandwidth_bytes_per_s == pytest.approx(bandwidth)


def test_unverified_datasheet_values_say_so() -> None:
    from moesim.specs import load_device_spec

    for name in ("l4", "t4"):
        spec = load_device_spec(name)
        assert "verified: U" in spec.sources["memory"] and "unverified" in spec.sources["compute"]
    assert load_device_spec("duplex-logic-pim").estimated
    assert not load_device_spec("h100-sxm5").estimated
