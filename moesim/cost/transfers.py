"""Point-to-point transfers: GPU<->GPU over NVLink/IB and host<->GPU over PCIe.

    t = path_latency + bytes / (bottleneck effective bandwidth x host factor)

Pinned host buffers go straight to the DMA engine. A pageable buffer is first copied by the driver
into a pinned staging buffer, "then a DMA transfer to device memory is initiated" (NVIDIA forum,
forums.developer.nvidia.com/t/cudamemcpyaync-with-pageable-memory-overlap-with-kernal/238833/2), so
a pageable byte pays the host's one-thread memcpy and then the link:

    t = latency + bytes / link + bytes / memcpy

memcpy is the CPU entry's ``memory.memcpy_bandwidth`` (measured by ``moesim calibrate --device cpu``
as the one-thread ``host_copy`` rate), else HOST_MEMCPY_BYTES_PER_S: a single-threaded host memcpy
runs "roughly 10 GB/s" (docs.rs/oxicuda-memory 0.5.5, staging module). On a Gen3 link (12.3 GB/s
pinned) that gives 5.5 GB/s, the "~half as fast" of pageable copies a course lab reports
(lynx-cortex.pages.dev/phase-23-gpu-fundamentals/lab/02-bandwidth-test). A copy is pageable when the
caller says so (``pinned=False``) or a link on its path is marked ``host_memory: pageable`` in the
profile; calibration ``h2d``/``d2h`` tables with ``pinned=false`` replace the formula.
Low-bit fetches (HOBBIT) move the expert in ``lowbit_dtype``: bytes x bytes(lowbit) / bytes(weights).
"""

from __future__ import annotations

import numpy as np

from moesim.errors import UserError
from moesim.specs.hardware import Cluster
from moesim.specs.model import DTYPE_BYTES

HOST_MEMCPY_BYTES_PER_S = 10e9


def host_bandwidth(link_bandwidth_bytes_per_s: float, pinned: bool,
                   memcpy_bytes_per_s: float | None = None) -> float:
    """Effective host<->device bytes/s for a pinned buffer, or a pageable one staged by a memcpy."""
    if pinned:
        return link_bandwidth_bytes_per_s
    memcpy = memcpy_bytes_per_s or HOST_MEMCPY_BYTES_PER_S
    return 1.0 / (1.0 / link_bandwidth_bytes_per_s + 1.0 / memcpy)


def path_pinned(cluster: Cluster, src: str, dst: str) -> bool:
    """False when a link on the path from ``src`` to ``dst`` uses pageable host buffers."""
    return all(link.host_memory != "pageable" for link in cluster.path(src, dst))


def lowbit_bytes(nbytes: np.ndarray | float, weight_dtype: str, lowbit_dtype: str | None) -> np.ndarray:
    """Bytes a fetch moves when the expert is sent in ``lowbit_dtype`` instead of ``weight_dtype``."""
    b = np.asarray(nbytes, dtype=float)
    if lowbit_dtype is None:
        return b
    if lowbit_dtype not in DTYPE_BYTES:
        raise UserError(f"expected a low-bit dtype among {', '.join(DTYPE_BYTES)}, got {lowbit_dtype!r}")
    return b * DTYPE_BYTES[lowbit_dtype] / DTYPE_BYTES[weight_dtype]


def host_of(cluster: Cluster, gpu_id: str) -> str:
    """The CPU whose memory feeds ``gpu_id``: the fastest path from a CPU on its node (any node
    when its own has none)."""
    node = cluster.device(gpu_id).node
    cpus = cluster.devices_of("cpu", node) or cluster.devices_of("cpu")
    if not cpus:
        raise UserError(
            f"cluster {cluster.name} has no cpu device: expected a host CPU to fetch {gpu_id}'s weights from",
            field="devices",
        )
    return max(
        cpus, key=lambda c: (cluster.bottleneck_bandwidth(c.id, gpu_id), -cluster.path_latency(c.id, gpu_id))
    ).id


def point_to_point_s(
    cluster: Cluster,
    src: str,
    dst: str,
    nbytes: np.ndarray | float,
    *,
    pinned: bool = True,
    infinite_bandwidth: bool = False,
) -> np.ndarray:
    """Roofline time of moving ``nbytes`` from ``src`` to ``dst`` (0 bytes or src == dst: 0)."""
    b = np.asarray(nbytes, dtype=float)
    if src == dst:
        return np.zeros_like(b)
    latency = cluster.path_latency(src, dst)
    if infinite_bandwidth:
        return np.where(b > 0, latency, 0.0)
    bandwidth = cluster.bottleneck_bandwidth(src, dst)
    ends = (cluster.device(src), cluster.device(dst))
    cpus = [d for d in ends if d.kind == "cpu"]
    if len(cpus) == 1:
        staged = not (pinned and path_pinned(cluster, src, dst))
        bandwidth = host_bandwidth(bandwidth, not staged, cpus[0].spec.memcpy_bandwidth_bytes_per_s)
    return np.where(b > 0, latency + b / bandwidth, 0.0)
