"""Small hand-built clusters and models for the cost-model tests (datasheet-like numbers, the same as
the sourced entries of hardware/devices.yaml and links.yaml), plus sanity checks of the builders."""

from __future__ import annotations

from types import MappingProxyType

from moesim.specs.hardware import Cluster, Device, DeviceSpec, Link, LinkSpec
from moesim.specs.model import AttentionSpec, MoEModel

H100 = DeviceSpec(
    model="H100-SXM5-80GB",
    kind="gpu",
    memory_bytes=80e9,
    memory_bandwidth_bytes_per_s=3.35e12,
    peak_flops_per_s=MappingProxyType(
        {"bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12, "fp32": 66.9e12}
    ),
    memory_efficiency=0.85,
    compute_efficiency=0.7,
)
XEON = DeviceSpec(
    model="Xeon-8480C",
    kind="cpu",
    memory_bytes=1e12,
    memory_bandwidth_bytes_per_s=307.2e9,
    peak_flops_per_s=MappingProxyType({"bf16": 115e12, "fp32": 7e12}),
    memory_efficiency=0.75,
    compute_efficiency=0.18,
)
PIM = DeviceSpec(
    model="logic-pim",
    kind="pim",
    memory_bytes=32e9,
    memory_bandwidth_bytes_per_s=1e12,
    peak_flops_per_s=MappingProxyType({"bf16": 20e12}),
    internal_bandwidth_bytes_per_s=4e12,
    estimated=True,
)
NVLINK4 = LinkSpec("nvlink4", 450e9, 1e-6, efficiency=370 / 450)
PCIE5 = LinkSpec("pcie5", 63e9, 2e-6, efficiency=0.88)
NDR = LinkSpec("ndr400", 50e9, 3e-6, efficiency=0.96)


def flat(spec: DeviceSpec, **changes: object) -> DeviceSpec:
    """``spec`` with size-independent efficiency (flat curves at its scalar factors), for hand math."""
    curves = {"compute": ((0.0, spec.compute_efficiency),), "memory": ((0.0, spec.memory_efficiency),)}
    fields = {**spec.__dict__, "efficiency_curves": MappingProxyType(curves), **changes}
    return DeviceSpec(**fields)


def make_cluster(
    nodes: int = 1,
    gpus_per_node: int = 8,
    *,
    gpu: DeviceSpec = H100,
    cpu: DeviceSpec | None = XEON,
    pim: DeviceSpec | None = None,
) -> Cluster:
    """DGX-like nodes: GPUs on one NVSwitch, a NIC per GPU (PCIe) on one IB fabric, a host CPU on
    PCIe to every GPU, optionally a PIM device on PCIe."""
    devices: list[Device] = []
    switches: list[str] = []
    links: list[Link] = []
    for n in range(nodes):
        sw = f"n{n}.nvswitch"
        switches.append(sw)
        for i in range(gpus_per_node):
            g = Device(f"n{n}.gpu{i}", n, gpu)
            devices.append(g)
            links.append(Link(g.id, sw, NVLINK4))
            if nodes > 1:
                nic = f"n{n}.nic{i}"
                switches.append(nic)
                links.append(Link(g.id, nic, PCIE5))
                links.append(Link(nic, "ib", NDR))
        if cpu is not None:
            c = Device(f"n{n}.cpu0", n, cpu)
            devices.append(c)
            links += [Link(c.id, f"n{n}.gpu{i}", PCIE5) for i in range(gpus_per_node)]
        if pim is not None:
            p = Device(f"n{n}.pim0", n, pim)
            devices.append(p)
            links.append(Link(f"n{n}.gpu0", p.id, PCIE5))
    if nodes > 1:
        switches.append("ib")
    return Cluster(f"test{nodes}x{gpus_per_node}", nodes, tuple(devices), tuple(switches), tuple(links))


MIXTRAL = MoEModel(
    name="mixtral-8x7b",
    num_layers=32,
    moe_layers=tuple(range(32)),
    hidden_size=4096,
    expert_intermediate_size=14336,
    num_experts=8,
    top_k=2,
    attention=AttentionSpec(kind="gqa", num_heads=32, num_kv_heads=8, head_dim=128),
    vocab_size=32000,
)
DSV3 = MoEModel(
    name="deepseek-v3",
    num_layers=61,
    moe_layers=tuple(range(3, 61)),
    hidden_size=7168,
    expert_intermediate_size=2048,
    num_experts=256,
    top_k=8,
    attention=AttentionSpec(
        kind="mla",
        num_heads=128,
        num_kv_heads=128,
        head_dim=192,
        q_lora_rank=1536,
        kv_lora_rank=512,
        qk_nope_head_dim=128,
        qk_rope_head_dim=64,
        v_head_dim=128,
    ),
    num_shared_experts=1,
    shared_expert_intermediate_size=2048,
    dense_intermediate_size=18432,
    vocab_size=129280,
    weight_dtype="fp8",
    num_expert_groups=8,
    topk_groups=4,
)


def test_builders_make_the_expected_topology() -> None:
    c = make_cluster(2, 4)
    assert len(c.gpus) == 8 and len(c.devices_of("cpu")) == 2
    assert [ln.spec.kind for ln in c.path("n0.gpu0", "n0.gpu1")] == ["nvlink4", "nvlink4"]
    assert [ln.spec.kind for ln in c.path("n0.gpu0", "n1.gpu2")] == ["pcie5", "ndr400", "ndr400", "pcie5"]
    assert MIXTRAL.expert_params == 3 * 4096 * 14336
