"""Every built-in hardware profile loads, validates, and has the topology its datasheet says."""

from __future__ import annotations

import pytest

from moesim.resources import builtin_names, resolve
from moesim.specs import load_cluster
from moesim.specs.hardware_file import validate_file

CLUSTERS = [
    "h100x8", "h100x8x4", "h200x8", "b200x8", "a100x8", "mi300x8", "rtx4090-workstation", "rtx3090-desktop",
    "l4-server", "h100-duplex",
]


@pytest.mark.parametrize("name", builtin_names("hardware"))
def test_every_hardware_file_validates(name: str) -> None:
    assert validate_file(resolve("hardware", name))


@pytest.mark.parametrize("name", CLUSTERS)
def test_builtin_cluster_loads(name: str) -> None:
    cluster = load_cluster(name)
    assert cluster.name == name
    assert cluster.gpus


def test_h100x8_matches_dgx_h100() -> None:
    c = load_cluster("h100x8")
    assert len(c.gpus) == 8
    for gpu in c.gpus:
        assert gpu.spec.memory_bytes == 80e9
        assert gpu.spec.memory_bandwidth_bytes_per_s == pytest.approx(3.35e12)
        assert gpu.spec.peak_flops("bf16") == pytest.approx(989.4e12)
    assert len(c.devices_of("cpu")) == 2
    assert [ln.spec.kind for ln in c.path("n0.gpu0", "n0.gpu7")] == ["nvlink4", "nvlink4"]
