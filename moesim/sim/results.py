"""What a run measured: per step x layer x device arrays, the pandas frame, the JSON summary.

Column and field meanings with units are in docs/results.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moesim.io import atomic_open

PHASE_NAMES = ("pre", "dispatch", "experts", "combine")


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
        self.layer_start_s = np.zeros((steps, layers))
        self.step_start_s = np.zeros(steps)
        self.step_end_s = np.zeros(steps)
        self.step_tokens = np.zeros(steps, dtype=np.int64)
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


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"p50": None, "p90": None, "p99": None, "mean": None}
    p = np.percentile(values, [50, 90, 99])
    return {"p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]), "mean": float(values.mean())}


@dataclass
class SimResult:
    """The outcome of :func:`moesim.sim.simulate`."""

    rec: Recorder
    layer_ids: np.ndarray
    """Model layer index of each layer column."""
    info: dict[str, Any]
    """Run description (plan, cache, options, cost sources, memory) that goes into the summary."""
    wall_seconds: float = 0.0
    memory_bytes: dict[str, float] = field(default_factory=dict)
    causality: list[tuple[float, float]] = field(default_factory=list)
    """Offloading: (start of a GPU expert call, arrival of the last of its experts' weights)."""
    more_spans: Callable[[], list[Span]] | None = None
    """Spans rebuilt on demand (lockstep runs: only when a timeline is written)."""

    def spans(self) -> list[Span]:
        """All timeline spans, in start order per track."""
        extra = self.more_spans() if self.more_spans is not None else []
        return sorted([*self.rec.spans, *extra], key=lambda sp: (sp.track, sp.start_s))

    @property
    def simulated_seconds(self) -> float:
        return float(self.rec.step_end_s[-1]) if self.rec.step_end_s.size else 0.0

    @property
    def step_latency_s(self) -> np.ndarray:
        return self.rec.step_end_s - self.rec.step_start_s

    @property
    def frame(self):  # -> pandas.DataFrame (pandas imported lazily)
        """One row per (step, layer, device)."""
        import pandas as pd

        r = self.rec
        S, _L, D = r.busy_s.shape
        step, layer, dev = np.meshgrid(np.arange(S), np.asarray(self.layer_ids), np.arange(D), indexing="ij")
        return pd.DataFrame({
            "step": step.ravel(),
            "layer": layer.ravel(),
            "device": pd.Categorical.from_codes(dev.ravel(), categories=list(r.devices)),
            "start_s": np.repeat(r.layer_start_s.ravel(), D),
            "busy_s": r.busy_s.ravel(),
            "tokens": r.tokens.ravel(),
            "bytes_sent": r.bytes_sent.ravel(),
            "bytes_received": r.bytes_received.ravel(),
            "fetch_bytes": r.fetch_bytes.ravel(),
        })

    def write_frame(self, path: str | Path) -> None:
        """CSV, or Parquet when the name ends in ``.parquet``; written atomically."""
        path = Path(path)
        frame = self.frame
        if path.suffix == ".parquet":
            with atomic_open(path, "wb") as fh:
                frame.to_parquet(fh, index=False)
        else:
            with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
                frame.to_csv(fh, index=False)

    def write_timeline(self, path: str | Path) -> None:
        from moesim.sim.timeline import write_timeline

        write_timeline(self.spans(), path, self.rec.devices)

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object (docs/results.md)."""
        r = self.rec
        sim_s = self.simulated_seconds
        tokens = int(r.step_tokens.sum())
        busy = r.busy_s.sum(axis=(0, 1))
        per_device = [
            {
                "id": d,
                "busy_s": float(busy[i]),
                "utilization": float(busy[i] / sim_s) if sim_s > 0 else 0.0,
                "tokens": int(r.tokens[:, :, i].sum()),
                "peak_memory_bytes": float(self.memory_bytes.get(d, 0.0)),
            }
            for i, d in enumerate(r.devices)
        ]
        per_link = [{"src": a, "dst": b, "bytes": float(v)} for (a, b), v in sorted(r.link_bytes.items())]
        breakdown = {name: float(r.phase_s[:, :, i].sum()) for i, name in enumerate(PHASE_NAMES)}
        out: dict[str, Any] = {
            "simulated_seconds": sim_s,
            "wall_seconds": float(self.wall_seconds),
            "steps": int(r.step_end_s.size),
            "tokens": tokens,
            "tokens_per_s": tokens / sim_s if sim_s > 0 else None,
        }
        out.update(self.info)
        out.update({
            "per_device": per_device,
            "per_link": per_link,
            "step_latency_s": percentiles(self.step_latency_s),
            "time_breakdown_s": breakdown,
        })
        return out
