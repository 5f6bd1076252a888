"""What a run measured: the recorder's arrays as a pandas frame, a JSON summary and a timeline.

Column and field meanings with units are in docs/results.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moesim.io import write_frame
from moesim.sim.precost import PRE_PARTS
from moesim.sim.recorder import OP_CLASSES, PHASE_NAMES, Recorder, Span
from moesim.sim.replan_results import replan_summary, step_imbalance
from moesim.sim.timeline import LockstepTimeline, write_timeline


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
    memory_bytes: dict[str, float] = field(default_factory=dict)
    memory_breakdown: dict[str, dict[str, float]] = field(default_factory=dict)
    """Per GPU its bytes by part (:meth:`moesim.memory.MemoryBreakdown.as_dict`)."""
    causality: list[tuple[float, float]] = field(default_factory=list)
    """Offloading: (start of a GPU expert call, arrival of the last of its experts' weights)."""
    lockstep: LockstepTimeline | None = None
    """Lockstep runs: what their spans are rebuilt from (offloaded runs record theirs as they run)."""
    timing: dict[str, float] = field(default_factory=dict)
    """This machine's wall-clock seconds (``wall_seconds``): the only part that differs between
    identical runs, kept apart so comparisons can drop it."""

    def spans(self) -> list[Span]:
        """All timeline spans, in start order per track."""
        extra = self.lockstep.spans(self.rec) if self.lockstep is not None else []
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
        write_frame(self.frame, path)

    def op_class_s(self) -> np.ndarray:
        """[steps, classes] seconds of each step's critical path by op class (:data:`OP_CLASSES`):
        the slowest GPU's pre-dispatch parts, each MoE layer's expert phase split between the GPUs'
        own expert time, the CPU/PIM's and waiting (counted as communication: weight fetches,
        activations over PCIe), and the all-to-alls. The classes of a step add up to its latency."""
        r = self.rec
        out = np.zeros((r.step_end_s.size, len(OP_CLASSES)))
        col = {c: i for i, c in enumerate(OP_CLASSES)}
        parts = r.pre_parts_s.sum(axis=1)
        for i, p in enumerate(PRE_PARTS):
            out[:, col[p]] = parts[:, i]
        # a pre phase recorded without parts (a cost object without them) counts as attention
        out[:, col["attention"]] += r.phase_s[:, :, 0].sum(axis=1) - parts.sum(axis=1)
        phase = r.phase_s[:, :, 2]
        cpu_first = r.expert_side_s > r.expert_gpu_s  # the longer of the two is on the critical path
        cpu = np.where(cpu_first, np.minimum(phase, r.expert_side_s), 0.0)
        gpu = np.where(cpu_first, 0.0, np.minimum(phase, r.expert_gpu_s))
        out[:, col["experts_gpu"]] = gpu.sum(axis=1)
        out[:, col["experts_cpu"]] = cpu.sum(axis=1)
        out[:, col["communication"]] += (phase - gpu - cpu).sum(axis=1) + r.phase_s[:, :, 1].sum(axis=1) \
            + r.phase_s[:, :, 3].sum(axis=1)
        out[:, col["migration"]] = r.migration_s
        return out

    @property
    def step_frame(self):  # -> pandas.DataFrame
        """One row per step: ``step``, ``start_s``, ``latency_s``, ``tokens``, ``<class>_s`` for every op
        class (:meth:`op_class_s`), ``imbalance`` (realised max/mean GPU token copies, mean over MoE
        layers) and ``plan`` (which plan served it: 0 the initial one, k after the k-th re-placement)."""
        import pandas as pd

        r = self.rec
        data = {"step": np.arange(r.step_end_s.size), "start_s": r.step_start_s,
                "latency_s": self.step_latency_s, "tokens": r.step_tokens}
        classes = self.op_class_s()
        data.update({f"{c}_s": classes[:, i] for i, c in enumerate(OP_CLASSES)})
        data.update(imbalance=step_imbalance(self.gpu_tokens), plan=r.plan_index)
        return pd.DataFrame(data)

    @property
    def gpu_tokens(self) -> np.ndarray:
        """``[steps, layers, GPUs]`` token copies each GPU's experts received (CPU/PIM columns left out)."""
        return self.rec.tokens[:, :, :int(self.info.get("devices", self.rec.tokens.shape[2]))]

    def write_step_frame(self, path: str | Path) -> None:
        """The per-step table as CSV, or Parquet when the name ends in ``.parquet``; atomically."""
        write_frame(self.step_frame, path)

    def write_timeline(self, path: str | Path) -> None:
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
        classes = self.op_class_s()
        mean = classes.mean(axis=0) if classes.size else np.zeros(len(OP_CLASSES))
        total = float(classes.sum())
        op_classes = {
            "mean_per_step_s": {c: float(mean[i]) for i, c in enumerate(OP_CLASSES)},
            "share": {c: float(classes[:, i].sum() / total) if total > 0 else 0.0
                      for i, c in enumerate(OP_CLASSES)},
        }
        out: dict[str, Any] = {
            "simulated_seconds": sim_s,
            "steps": int(r.step_end_s.size),
            "tokens": tokens,
            "tokens_per_s": tokens / sim_s if sim_s > 0 else None,
        }
        out.update(self.info)
        if "replan" in self.info:
            out["replan"] = replan_summary(self.info["replan"], self.gpu_tokens, self.step_latency_s,
                                           r.plan_index)
        out.update({
            "per_device": per_device,
            "per_link": per_link,
            "step_latency_s": percentiles(self.step_latency_s),
            "time_breakdown_s": breakdown,
            "op_class_s": op_classes,
            "memory_breakdown_bytes": {d: dict(v) for d, v in self.memory_breakdown.items()},
            "timing": {k: float(v) for k, v in self.timing.items()},
        })
        return out
