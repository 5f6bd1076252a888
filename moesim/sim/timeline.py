"""Chrome / Perfetto trace JSON of a run: one track per device and per link direction.

The file is the Trace Event Format's JSON object form (``traceEvents`` of complete ``"X"`` events,
microsecond timestamps, ``thread_name`` metadata naming each track); it opens in ui.perfetto.dev
and chrome://tracing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from moesim.io import atomic_write_text
from moesim.sim.precost import COMPUTE_PARTS, PRE_PARTS
from moesim.sim.recorder import Recorder, Span

DEVICE_PID = 1
LINK_PID = 2


def trace_events(spans: Sequence[Span], devices: Sequence[str]) -> list[dict[str, Any]]:
    """Trace events: metadata naming processes and tracks, then one ``X`` event per span."""
    tracks: dict[str, tuple[int, int]] = {d: (DEVICE_PID, i) for i, d in enumerate(devices)}
    for sp in spans:
        if sp.track not in tracks:
            on_device = sp.track in devices
            pid = DEVICE_PID if on_device else LINK_PID
            tracks[sp.track] = (pid, len(tracks))
    events: list[dict[str, Any]] = [
        {"ph": "M", "pid": DEVICE_PID, "name": "process_name", "args": {"name": "devices"}},
        {"ph": "M", "pid": LINK_PID, "name": "process_name", "args": {"name": "links"}},
    ]
    for track, (pid, tid) in tracks.items():
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": track}})
        events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index",
                       "args": {"sort_index": tid}})
    for sp in spans:
        pid, tid = tracks[sp.track]
        events.append({
            "ph": "X", "pid": pid, "tid": tid, "name": sp.name, "cat": sp.name.split(" ")[0],
            "ts": round(sp.start_s * 1e6, 6), "dur": round(sp.dur_s * 1e6, 6), "args": sp.args,
        })
    return events


def write_timeline(spans: Sequence[Span], path: str | Path, devices: Sequence[str]) -> None:
    """Write the trace JSON atomically."""
    doc = {"traceEvents": trace_events(spans, devices), "displayTimeUnit": "ns",
           "otherData": {"generator": "moesim simulate"}}
    atomic_write_text(path, json.dumps(doc, separators=(",", ":")) + "\n")


@dataclass(frozen=True)
class MicroBatches:
    """An overlapped MoE layer as it ran: its ``(kind, micro-batch, start_s, dur_s)`` slices (kind:
    dispatch, experts, combine) and each GPU's expert seconds per micro-batch."""

    slices: Sequence[tuple[str, int, float, float]]
    expert_s: np.ndarray


@dataclass(frozen=True)
class LockstepTimeline:
    """What a lockstep run's first steps need to be drawn, as plain data: per step its
    pre-dispatch work per layer and GPU, and per (step, MoE layer) the bytes its dispatch and
    combine put on each link direction. Spans are rebuilt from it and the recorded times only
    when a timeline is written."""

    devices: tuple[str, ...]
    moe_cols: tuple[int, ...]
    pre: Mapping[int, np.ndarray]
    """step -> [layers, G] seconds before dispatch."""
    link_loads: Callable[[], tuple[Sequence[tuple[str, str]], np.ndarray, np.ndarray]]
    """Computes (:attr:`links`, :attr:`dispatch_bytes`, :attr:`combine_bytes`) when first asked: the
    link loads of every kept all-to-all are a per-run cost only a drawn timeline needs."""
    overlapped: Mapping[tuple[int, int], MicroBatches] = field(default_factory=dict)
    """(step, layer column) -> its micro-batches, for layers run with overlap."""
    parts: Mapping[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    """step -> ([layers, G, parts] the pre phase by part, [layers, TP groups] bytes per ring edge)."""
    rings: Sequence[tuple[Sequence[tuple[str, str]], np.ndarray]] = ()
    """Per TP group (tp > 1): its ring's link directions and how many ring edges cross each."""
    expert_comm: Mapping[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    """Expert TP (:mod:`moesim.sim.expert_tp`): step -> ([MoE layers, G] all-gather seconds, [MoE
    layers, G] reduce-scatter seconds, [MoE layers, EP groups, 2] their buffers' bytes)."""
    expert_rings: Sequence[tuple[Sequence[tuple[str, str]], np.ndarray]] = ()
    """Per EP group (expert TP): its ring's link directions and ring edges crossing each."""

    @cached_property
    def _loads(self) -> tuple[Sequence[tuple[str, str]], np.ndarray, np.ndarray]:
        return self.link_loads()

    @property
    def links(self) -> Sequence[tuple[str, str]]:
        """Link directions ``(from, to)`` (none on one GPU)."""
        return self._loads[0]

    @property
    def dispatch_bytes(self) -> np.ndarray:
        """[kept steps, MoE layers, links] bytes each dispatch puts on each link direction."""
        return self._loads[1]

    @property
    def combine_bytes(self) -> np.ndarray:
        return self._loads[2]

    def _pre_spans(self, s: int, col: int, t: float, pre_g: np.ndarray) -> list[Span]:
        """Each GPU's pre-dispatch work of one layer: one span per part in the order it runs, and the
        TP collectives on the link tracks of each group's ring."""
        if s not in self.parts:
            return [Span(dev, f"attention L{col}", t, float(pre_g[col, g]), {"step": s})
                    for g, dev in enumerate(self.devices) if pre_g[col, g] > 0]
        parts, edge_bytes = self.parts[s]
        last = col == parts.shape[0] - 1 and col != 0
        order = ["overhead", "lm_head" if col == 0 else None, "attention", "communication", "dense", "router",
                 "lm_head" if last else None]
        names = {"lm_head": "embedding" if col == 0 else "lm_head", "communication": "allreduce"}
        out: list[Span] = []
        tp = len(self.devices) // len(self.rings) if self.rings else 1
        collective_at: dict[int, tuple[float, float]] = {}  # TP group -> (start, duration) of its first GPU
        for g, dev in enumerate(self.devices):
            start = t
            for part in filter(None, order):
                dur = float(parts[col, g, PRE_PARTS.index(part)])
                if dur > 0:
                    out.append(Span(dev, f"{names.get(part, part)} L{col}", start, dur, {"step": s}))
                    if part == "communication":
                        collective_at.setdefault(g // tp, (start, dur))
                start += dur
        for j, (links, edges) in enumerate(self.rings):
            if j in collective_at and edge_bytes[col, j] > 0:
                start, dur = collective_at[j]
                out += [Span(f"{a}->{b}", f"allreduce L{col}", start, dur,
                             {"step": s, "bytes": float(e * edge_bytes[col, j])})
                        for (a, b), e in zip(links, edges, strict=True)]
        return out

    def spans(self, rec: Recorder) -> list[Span]:
        """Per GPU its pre-dispatch work and its experts, per link direction each all-to-all."""
        r = rec
        out: list[Span] = []
        moe_pos = {int(c): m for m, c in enumerate(self.moe_cols)}
        for s in range(min(r.timeline_steps, r.step_end_s.size)):
            pre_g = self.pre.get(s)
            if pre_g is None:
                continue
            compute = (self.parts[s][0][..., [PRE_PARTS.index(p) for p in COMPUTE_PARTS]].sum(axis=2)
                       if s in self.parts else pre_g)
            for col in range(r.layer_start_s.shape[1]):
                t = float(r.layer_start_s[s, col])
                pre_s, disp, exp, comb = (float(x) for x in r.phase_s[s, col])
                out += self._pre_spans(s, col, t, pre_g)
                m = moe_pos.get(col)
                if m is None:
                    continue
                if (s, col) in self.overlapped:
                    out += self._micro_batch_spans(s, col, m, self.overlapped[s, col])
                    continue
                if s < len(self.dispatch_bytes):
                    row = self.dispatch_bytes[s, m]
                    for i in np.flatnonzero(row):
                        a, b = self.links[i]
                        out.append(Span(f"{a}->{b}", f"dispatch L{col}", t + pre_s, disp,
                                        {"step": s, "bytes": float(row[i])}))
                    row = self.combine_bytes[s, m]
                    for i in np.flatnonzero(row):
                        a, b = self.links[i]
                        out.append(Span(f"{a}->{b}", f"combine L{col}", t + pre_s + disp + exp, comb,
                                        {"step": s, "bytes": float(row[i])}))
                comm = self.expert_comm.get(s)
                gather = comm[0][m] if comm is not None else np.zeros(len(self.devices))
                for g, dev in enumerate(self.devices):
                    busy = float(r.busy_s[s, col, g] - compute[col, g])
                    if busy > 0:
                        out.append(Span(dev, f"experts L{col}", t + pre_s + disp + float(gather[g]), busy,
                                        {"step": s, "tokens": int(r.tokens[s, col, g])}))
                if comm is not None:
                    out += self._expert_tp_spans(s, col, m, t + pre_s + disp, r.busy_s[s, col] - compute[col])
        return out

    def _expert_tp_spans(self, s: int, col: int, m: int, t: float, busy_of: np.ndarray) -> list[Span]:
        """Each EP group's all-gather (before its experts) and reduce-scatter (after) on its GPUs and on
        its ring's link directions."""
        from moesim.cost.allreduce import bus_factor

        gather, reduce, nbytes = (a[m] for a in self.expert_comm[s])
        k = len(self.devices) // max(1, len(self.expert_rings))
        out: list[Span] = []
        for j, (links, edges) in enumerate(self.expert_rings):
            members = range(j * k, (j + 1) * k)
            g0 = j * k
            after = t + float(gather[g0]) + float(max(busy_of[g] for g in members))
            for name, start, dur, b, kind in (("allgather", t, float(gather[g0]), nbytes[j, 0], "all_gather"),
                                              ("reducescatter", after, float(reduce[g0]), nbytes[j, 1],
                                               "reduce_scatter")):
                if dur <= 0:
                    continue
                out += [Span(self.devices[g], f"{name} L{col}", start, dur, {"step": s}) for g in members]
                per_edge = bus_factor(kind, k) * float(b)
                out += [Span(f"{a}->{c}", f"{name} L{col}", start, dur,
                             {"step": s, "bytes": float(e) * per_edge})
                        for (a, c), e in zip(links, edges, strict=True)]
        return out

    def _micro_batch_spans(self, s: int, col: int, m: int, mb: MicroBatches) -> list[Span]:
        """Each micro-batch's dispatch and combine on the link tracks with its share of the bytes,
        and its experts on every GPU that has work."""
        n = 1 + max((i for _, i, _, _ in mb.slices), default=0)
        out: list[Span] = []
        for kind, i, start, dur in mb.slices:
            if kind == "experts":
                out += [Span(dev, f"experts L{col} mb{i}", start, float(mb.expert_s[g]),
                             {"step": s, "micro_batch": i})
                        for g, dev in enumerate(self.devices) if mb.expert_s[g] > 0]
                continue
            if s >= len(self.dispatch_bytes):
                continue
            row = (self.dispatch_bytes if kind == "dispatch" else self.combine_bytes)[s, m]
            for j in np.flatnonzero(row):
                a, b = self.links[j]
                out.append(Span(f"{a}->{b}", f"{kind} L{col} mb{i}", start, dur,
                                {"step": s, "bytes": float(row[j]) / n, "micro_batch": i}))
        return out
