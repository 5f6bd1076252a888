"""Machine descriptions: devices, links and clusters, with the topology as a networkx graph.

All quantities are SI (bytes, bytes/s, FLOP/s, seconds). Bandwidths of links are per direction;
links are full duplex. Vertex ids are ``n{node}.{name}`` (``n0.gpu3``, ``n1.nic0``, ``n0.nvswitch``)
and, for fabric shared by all nodes, a plain name (``ib``).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Literal

import networkx as nx

DeviceKind = Literal["gpu", "cpu", "pim"]

# An efficiency curve: (op size, achieved fraction of peak) points, size in FLOP or bytes.
EfficiencyCurve = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class CpuKernelSpec:
    """One way a CPU runs an expert (AMX BF16 tiles, llamafile's Q4 AVX-512 path, plain torch):
    its own peak and its achieved fraction of that peak as a function of the rows (tokens) per expert."""

    name: str
    """The kernel kind: ``amx-bf16``, ``amx-int8``, ``avx512-q4``, ``torch-bf16``..."""
    dtype: str
    """The dtype it computes in (``bf16``, ``int8``, ``fp32``); a calibration table measures it under it."""
    peak_flops_per_s: float
    efficiency: EfficiencyCurve
    """(rows per expert, fraction of ``peak_flops_per_s``) points, interpolated, held outside."""
    weight_bits: float
    """Bits per weight it streams from DDR (16 bf16, 8 int8, ~4.84 GGUF Q4_K_M)."""
    serves: tuple[str, ...] = ()
    """Model weight dtypes it is chosen for when the run names no kernel (first listed wins)."""
    impl: str = ""
    """``torch`` for kernels a ``moesim calibrate --device cpu`` table measures."""
    source: str = ""


@dataclass(frozen=True)
class DeviceSpec:
    """One kind of device (a datasheet), not yet placed in a cluster."""

    model: str
    kind: DeviceKind
    memory_bytes: float
    memory_bandwidth_bytes_per_s: float
    peak_flops_per_s: Mapping[str, float]
    """Dense peak per dtype (``bf16``, ``fp16``, ``fp8``, ``fp32``, ``int8``...)."""
    memory_efficiency: float = 0.85
    """Achievable fraction of the peak memory bandwidth for streaming reads (a named factor)."""
    compute_efficiency: float = 0.7
    """Achievable fraction of peak FLOP/s for large GEMMs (a named factor)."""
    efficiency_curves: Mapping[str, EfficiencyCurve] = field(default_factory=lambda: MappingProxyType({}))
    """Calculon-style curves keyed ``compute`` (size in FLOP) or ``memory`` (size in bytes)."""
    launch_overhead_s: float = 0.0
    """Fixed cost of one kernel launch or one op on this device."""
    internal_bandwidth_bytes_per_s: float | None = None
    """PIM only: bandwidth between the DRAM and the compute on the logic die."""
    cpu_kernels: Mapping[str, CpuKernelSpec] = field(default_factory=lambda: MappingProxyType({}))
    """CPU only: its expert kernels by kind, in order of preference."""
    memcpy_bandwidth_bytes_per_s: float | None = None
    """CPU only: one thread's host memcpy rate, the staging copy of a pageable host<->GPU transfer."""
    estimated: bool = False
    """True where the numbers are estimates rather than datasheet or measured values."""
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Where each number came from: field name -> source text."""

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype``, falling back to the nearest wider type the device has."""
        for candidate in _DTYPE_FALLBACK.get(dtype, (dtype,)):
            if candidate in self.peak_flops_per_s:
                return self.peak_flops_per_s[candidate]
        raise KeyError(f"{self.model} has no peak FLOP/s for {dtype}")


# A device without native fp8 or int4 runs them after up-casting (same rate as bf16/fp16).
_DTYPE_FALLBACK = {
    "fp8": ("fp8", "bf16", "fp16", "fp32"),
    "int8": ("int8", "fp8", "bf16", "fp16", "fp32"),
    "int4": ("int4", "int8", "fp8", "bf16", "fp16", "fp32"),
    "mxfp4": ("mxfp4", "fp4", "fp8", "bf16", "fp16", "fp32"),
    "bf16": ("bf16", "fp16", "fp32"),
    "fp16": ("fp16", "bf16", "fp32"),
    "fp32": ("fp32", "tf32"),
}


@dataclass(frozen=True)
class Device:
    """A device placed in a cluster."""

    id: str
    node: int
    spec: DeviceSpec

    @property
    def kind(self) -> DeviceKind:
        return self.spec.kind


@dataclass(frozen=True)
class LinkSpec:
    """One kind of link (PCIe Gen5 x16, NVLink4, NDR InfiniBand...)."""

    kind: str
    bandwidth_bytes_per_s: float
    """Peak, per direction."""
    latency_s: float
    efficiency: float = 1.0
    """Achievable fraction of the peak bandwidth (e.g. NCCL's ~370/450 GB/s on NVLink4)."""
    source: str = ""

    @property
    def effective_bandwidth_bytes_per_s(self) -> float:
        return self.bandwidth_bytes_per_s * self.efficiency


@dataclass(frozen=True)
class Link:
    """A full-duplex link between two vertices of the topology."""

    src: str
    dst: str
    spec: LinkSpec
    host_memory: Literal["pinned", "pageable"] = "pinned"
    """Host buffers of copies over this link (host<->GPU only): pageable ones are staged."""


@dataclass(frozen=True)
class Cluster:
    """Devices, switches and links; the topology is ``graph`` (vertices = devices and switches)."""

    name: str
    nodes: int
    devices: tuple[Device, ...]
    switches: tuple[str, ...]
    links: tuple[Link, ...]
    source_file: str | None = None
    calibration_dir: str | None = None
    """Measured kernel tables (``moesim calibrate --out DIR``) the cost model uses by default."""

    def device(self, device_id: str) -> Device:
        try:
            return self._by_id[device_id]
        except KeyError:
            raise KeyError(f"no device {device_id!r} in cluster {self.name}") from None

    def devices_of(self, kind: DeviceKind, node: int | None = None) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind == kind and (node is None or d.node == node))

    @property
    def gpus(self) -> tuple[Device, ...]:
        return self.devices_of("gpu")

    @cached_property
    def _by_id(self) -> dict[str, Device]:
        return {d.id: d for d in self.devices}

    @cached_property
    def graph(self) -> nx.Graph:
        """Vertices: device and switch ids (attribute ``kind``); edges: links (attribute ``link``)."""
        g = nx.Graph()
        for d in self.devices:
            g.add_node(d.id, kind=d.kind, node=d.node)
        for s in self.switches:
            g.add_node(s, kind="switch")
        for link in self.links:
            # Weight by inverse bandwidth so a transfer prefers NVLink over a PCIe detour.
            g.add_edge(link.src, link.dst, link=link, weight=1.0 / link.spec.effective_bandwidth_bytes_per_s)
        return g

    def path(self, src: str, dst: str) -> tuple[Link, ...]:
        """The links a transfer from ``src`` to ``dst`` crosses (empty when ``src == dst``)."""
        if src == dst:
            return ()
        if src not in self._path_cache:
            self._path_cache[src] = self._paths_from(src)
        return self._path_cache[src][dst]

    def bottleneck_bandwidth(self, src: str, dst: str) -> float:
        """Effective bytes/s of the slowest link on the path (inf when ``src == dst``)."""
        links = self.path(src, dst)
        return min((ln.spec.effective_bandwidth_bytes_per_s for ln in links), default=float("inf"))

    def path_latency(self, src: str, dst: str) -> float:
        return sum(ln.spec.latency_s for ln in self.path(src, dst))

    @cached_property
    def _path_cache(self) -> dict[str, dict[str, tuple[Link, ...]]]:
        """Routes from each source asked for so far: a source's routes are found on first use, so
        showing one path of a 1,000-node cluster does not route all 8,000 GPUs."""
        return {}

    def _paths_from(self, src: str) -> dict[str, tuple[Link, ...]]:
        g = self.graph
        devices = self._by_id

        def link_of(vertices: list[str]) -> tuple[Link, ...]:
            return tuple(g.edges[a, b]["link"] for a, b in itertools.pairwise(vertices))

        # Only switches and CPUs (the host bridge) route: a transfer does not hop through a GPU
        # unless no other path exists (a PIM stack reached only through its GPU).
        def no_transit(u: str, v: str, attrs: dict) -> float | None:
            routes = u == src or u not in devices or devices[u].kind == "cpu"
            return attrs["weight"] if routes else None

        direct = nx.single_source_dijkstra_path(g, src, weight=no_transit)
        fallback = nx.single_source_dijkstra_path(g, src, weight="weight")
        return {dst: link_of(direct.get(dst) or fallback[dst]) for dst in devices if dst in fallback}
