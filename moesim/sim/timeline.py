"""Chrome / Perfetto trace JSON of a run: one track per device and per link direction.

The file is the Trace Event Format's JSON object form (``traceEvents`` of complete ``"X"`` events,
microsecond timestamps, ``thread_name`` metadata naming each track); it opens in ui.perfetto.dev
and chrome://tracing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from moesim.io import atomic_write_text
from moesim.sim.results import Span

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


def lockstep_spans(machine: Any) -> list[Span]:
    """Spans of a lockstep run's first steps, rebuilt from the recorded phase times: per GPU its
    pre-dispatch work and its experts, per link direction the bytes of each all-to-all."""
    r = machine.rec
    out: list[Span] = []
    moe_pos = {int(c): m for m, c in enumerate(machine.moe_cols)}
    for s in range(min(r.timeline_steps, r.step_end_s.size)):
        pair, pre_g = machine.keep_pairs.get(s), machine.keep_pre.get(s)
        if pre_g is None:
            continue
        for col in range(r.layer_start_s.shape[1]):
            t = float(r.layer_start_s[s, col])
            pre, disp, exp, comb = (float(x) for x in r.phase_s[s, col])
            for g, dev in enumerate(machine.devices):
                if pre_g[col, g] > 0:
                    out.append(Span(dev, f"attention L{col}", t, float(pre_g[col, g]), {"step": s}))
            m = moe_pos.get(col)
            if m is None:
                continue
            if (s, col) in machine.keep_slices:
                out += _overlap_spans(machine, s, col, machine.keep_slices[s, col], pair, m)
                continue
            if pair is not None and machine.G > 1:
                for (a, b), v in machine.cost.link_bytes(machine.devices, pair[m]).items():
                    out.append(Span(f"{a}->{b}", f"dispatch L{col}", t + pre, disp, {"step": s, "bytes": v}))
                for (a, b), v in machine.cost.link_bytes(machine.devices, pair[m].T).items():
                    out.append(Span(f"{a}->{b}", f"combine L{col}", t + pre + disp + exp, comb,
                                    {"step": s, "bytes": v}))
            for g, dev in enumerate(machine.devices):
                busy = float(r.busy_s[s, col, g] - pre_g[col, g])
                if busy > 0:
                    out.append(Span(dev, f"experts L{col}", t + pre + disp, busy,
                                    {"step": s, "tokens": int(r.tokens[s, col, g])}))
    return out


def _overlap_spans(machine: Any, s: int, col: int, kept: tuple[list, Any], pair: Any, m: int) -> list[Span]:
    """An overlapped MoE layer as its micro-batches really ran: each dispatch and combine on the link
    tracks with its share of the bytes, each micro-batch's experts on every device that has work."""
    slices, expert_chunk = kept
    n = 1 + max((i for _, i, _, _ in slices), default=0)
    links = (machine.cost.link_bytes(machine.devices, pair[m] / n) if pair is not None and machine.G > 1
             else {})
    back = machine.cost.link_bytes(machine.devices, pair[m].T / n) if links else {}
    out: list[Span] = []
    for kind, i, start, dur in slices:
        if kind == "experts":
            out += [Span(dev, f"experts L{col} mb{i}", start, float(expert_chunk[g]),
                         {"step": s, "micro_batch": i})
                    for g, dev in enumerate(machine.devices) if expert_chunk[g] > 0]
            continue
        for (a, b), v in (links if kind == "dispatch" else back).items():
            out.append(Span(f"{a}->{b}", f"{kind} L{col} mb{i}", start, dur,
                            {"step": s, "bytes": v, "micro_batch": i}))
    return out
