"""Tensor-parallel collectives (all-reduce, reduce-scatter, all-gather) on the real topology.

A ring over the group's devices in order: each device sends to the next over ``cluster.path``. For
``S`` bytes per device, every ring edge carries ``f(n) * S`` bytes, the bus-bandwidth factors of
NCCL's tests (NVIDIA/nccl-tests doc/PERFORMANCE.md @03a204a: all-reduce ``2(n-1)/n``, reduce-scatter
and all-gather ``(n-1)/n``); the edges' bytes are summed per link direction (a NIC two edges cross
carries both), and

    t = base + steps * max_edge path_latency + max_l (bytes_l / effective_bandwidth_l)

with ``steps`` = ``2(n-1)`` (all-reduce) or ``n-1`` and ``base`` NCCL's ring base latency (its tuning
model: ``time = lat + bytes / bw``, NVIDIA/nccl src/graph/tuning.cc @01afd20, ``baseLat`` Ring/LL
3.6 us; per-hop latencies are the profile's link latencies, which follow that file's ``hwLat``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RING_BASE_LATENCY_S = 3.6e-6
"""NCCL's ring base latency, LL protocol (tuning.cc @01afd20 ``baseLat``), the protocol NCCL picks for
the small messages of decode steps."""

KINDS = ("all_reduce", "reduce_scatter", "all_gather")


def bus_factor(kind: str, n: int) -> float:
    """Bytes each ring edge carries per byte of the per-device buffer (nccl-tests' busBw factor)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return (2.0 if kind == "all_reduce" else 1.0) * (n - 1) / n


def ring_steps(kind: str, n: int) -> int:
    return 2 * (n - 1) if kind == "all_reduce" else n - 1


@dataclass(frozen=True)
class Ring:
    """One group's ring: the link directions it loads (bytes per byte of edge traffic) and its
    slowest hop's latency; built once per device list."""

    device_ids: tuple[str, ...]
    links: tuple[tuple[str, str], ...]
    """Link directions the ring's edges cross."""
    edges_per_link: np.ndarray
    """How many ring edges cross each of ``links``."""
    seconds_per_edge_byte: float
    """max over links of edges / effective bandwidth: seconds per byte each edge carries."""
    hop_latency_s: float
    """The longest path latency of one ring edge."""

    @classmethod
    def build(cls, costs: Any, device_ids: Sequence[str]) -> Ring:
        devices = tuple(device_ids)
        n = len(devices)
        if n < 2:
            return cls(devices, (), np.zeros(0), 0.0, 0.0)
        bw = {name: b for name, b, _ in costs.directed_links()}
        count: dict[tuple[str, str], int] = {}
        latency = 0.0
        for i, src in enumerate(devices):
            dst = devices[(i + 1) % n]
            for ln in costs.path_links(src, dst):
                count[ln] = count.get(ln, 0) + 1
            latency = max(latency, float(costs.cluster.path_latency(src, dst)))
        links = tuple(count)
        edges = np.array([count[ln] for ln in links], dtype=float)
        worst = max((count[ln] / bw[ln] for ln in links), default=0.0)
        return cls(devices, links, edges, float(worst), latency)

    def time_s(self, nbytes: Any, kind: str = "all_reduce", *, infinite_bandwidth: bool = False) -> Any:
        """Seconds of one ``kind`` over the ring with ``nbytes`` per device (arrays broadcast)."""
        n = len(self.device_ids)
        b = np.asarray(nbytes, dtype=float)
        if n < 2:
            return np.zeros_like(b) if b.ndim else 0.0
        latency = RING_BASE_LATENCY_S + ring_steps(kind, n) * self.hop_latency_s
        transfer = 0.0 if infinite_bandwidth else bus_factor(kind, n) * b * self.seconds_per_edge_byte
        t = np.where(b > 0, latency + transfer, 0.0)
        return float(t) if t.ndim == 0 else t

    def link_bytes(self, nbytes: float, kind: str = "all_reduce") -> dict[tuple[str, str], float]:
        """Bytes one ``kind`` of ``nbytes`` per device puts on each link direction it uses."""
        n = len(self.device_ids)
        if n < 2 or nbytes <= 0:
            return {}
        per_edge = bus_factor(kind, n) * float(nbytes)
        return {ln: float(e) * per_edge for ln, e in zip(self.links, self.edges_per_link, strict=True)}
