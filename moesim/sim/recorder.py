"""What the engine fills while it runs: per step x layer x device arrays and timeline spans.

No simulated-time logic here; column and field meanings with units are in docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moesim.sim.precost import PRE_PARTS

PHASE_NAMES = ("pre", "dispatch", "experts", "combine")
OP_CLASSES = ("attention", "dense", "router", "lm_head", "experts_gpu", "experts_cpu", "communication",
              "overhead", "migration")
"""What a step's time is spent on, on the critical path (docs/results.md "Time by op class")."""


@dataclass
class Span:
    """One interval on a timeline track (a device or a link direction), seconds."""

    track: str
    name: str
    start_s: float
    dur_s: float
    args: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Arrays the engine fills while it runs (no simulated-time logic here)."""

    def __init__(self, steps: int, layers: int, devices: list[str], timeline_steps: int):
        self.devices = devices
        shape = (steps, layers, len(devices))
        self.busy_s = np.zeros(shape)
        self.tokens = np.zeros(shape, dtype=np.int64)
        self.bytes_sent = np.zeros(shape)
        self.bytes_received = np.zeros(shape)
        self.fetch_bytes = np.zeros(shape)
        self.phase_s = np.zeros((steps, layers, len(PHASE_NAMES)))
        self.pre_parts_s = np.zeros((steps, layers, len(PRE_PARTS)))
        """The pre phase of the slowest GPU by part (:data:`moesim.sim.precost.PRE_PARTS`)."""
        self.expert_gpu_s = np.zeros((steps, layers))
        """Longest GPU expert call of the (step, MoE layer) (its own compute, no waits)."""
        self.expert_side_s = np.zeros((steps, layers))
        """Longest run of missed experts on a CPU/PIM beside the GPUs (compute only)."""
        self.layer_start_s = np.zeros((steps, layers))
        self.step_start_s = np.zeros(steps)
        self.step_end_s = np.zeros(steps)
        self.step_tokens = np.zeros(steps, dtype=np.int64)
        self.migration_s = np.zeros(steps)
        """Seconds a step waited for a blocking expert migration before it started (docs/replan.md)."""
        self.plan_index = np.zeros(steps, dtype=np.int64)
        """Which plan served the step: 0 the initial one, k after the k-th re-placement took effect."""
        self.link_bytes: dict[tuple[str, str], float] = {}
        self.spans: list[Span] = []
        self.timeline_steps = timeline_steps

    def device_index(self, device_id: str) -> int:
        """Column of ``device_id`` (CPU/PIM executors are added on first use)."""
        try:
            return self.devices.index(device_id)
        except ValueError:
            self.devices.append(device_id)
            for name in ("busy_s", "tokens", "bytes_sent", "bytes_received", "fetch_bytes"):
                arr = getattr(self, name)
                setattr(self, name, np.concatenate([arr, np.zeros((*arr.shape[:2], 1), arr.dtype)], axis=2))
            return len(self.devices) - 1

    def add_link_bytes(self, links: list[tuple[str, str]], nbytes: float) -> None:
        for ln in links:
            self.link_bytes[ln] = self.link_bytes.get(ln, 0.0) + float(nbytes)

    def span(self, step: int, track: str, name: str, start_s: float, dur_s: float, **args: Any) -> None:
        if step < self.timeline_steps:
            self.spans.append(Span(track, name, float(start_s), float(dur_s), args))
