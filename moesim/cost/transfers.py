"""Point-to-point transfers: GPU<->GPU over NVLink/IB and host<->GPU over PCIe.

    t = path_latency + bytes / (bottleneck effective bandwidth x host factor)

The host factor is 1 for pinned host buffers. Pageable buffers are staged through a pinned bounce
buffer by the driver: ``min(PAGEABLE_FACTOR x link, HOST_MEMCPY_BYTES_PER_S)``. "Pageable host
memory transfers ~half as fast" (a course lab, lynx-cortex.pages.dev/phase-23-gpu-fundamentals/lab/
02-bandwidth-test) and a single-threaded host memcpy runs "roughly 10 GB/s" (docs.rs/oxicuda-memory
0.5.5, staging module); both are secondary and unverified on a Gen5 host, so calibration h2d tables
replace them.
Low-bit fetches (HOBBIT) move the expert in ``lowbit_dtype``: bytes x bytes(lowbit) / bytes(weights).
"""

from __future__ import annotations

import numpy as np

from moesim.errors import UserError
from moesim.specs.hardware import Cluster
from moesim.specs.model import DTYPE_BYTES

PAGEABLE_FACTOR = 0.5
HOST_MEMCPY_BYTES_PER_S = 10e9


def host_bandwidth(link_bandwidth_bytes_per_s: float, pinned: bool) -> float:
    """Effective host<->device bytes/s for a pinned or pageable host buffer."""
    if pinned:
        return link_bandwidth_bytes_per_s
    return min(PAGEABLE_FACTOR * link_bandwidth_bytes_per_s, HOST_MEMCPY_BYTES_PER_S)


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
    kinds = {cluster.device(src).kind, cluster.device(dst).kind}
    if "cpu" in kinds and kinds != {"cpu"}:
        bandwidth = host_bandwidth(bandwidth, pinned)
    return np.where(b > 0, latency + b / bandwidth, 0.0)
