"""The lockstep run's clock. With micro-batches (overlap) one SimPy event per (step, layer) and a
process per micro-batch (:mod:`moesim.sim.events`); without, the same times as running sums over each
chunk's durations (one timeout per (step, layer) adds one float each, in order: ``np.cumsum`` adds in
that order, so the floats are the same; ``Machine(events=True)`` keeps the events to compare).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import simpy

from moesim.cost.a2a import AllToAllSpec
from moesim.sim.events.overlap import overlapped_moe
from moesim.sim.timeline import MicroBatches


def lockstep_events(machine: Any, env: simpy.Environment) -> Iterator[Any]:
    """All GPUs of the run ``machine`` (:class:`moesim.sim.engine.Machine`) in step: one SimPy event per
    (step, layer); with overlap, one process per micro-batch."""
    r, overlap = machine.rec, machine.cfg.overlap != "none"
    n = machine.coster.chunks
    stalls = machine.replan.stalls if machine.replan is not None else {}
    for a, _ids, d, c in machine.chunks():
        machine.record(a, d, c)
        layer_s = r.phase_s[a:a + d.num_steps].sum(axis=2).tolist()
        for i, times in enumerate(layer_s):
            s = a + i
            r.step_start_s[s] = env.now
            if s in stalls:  # a blocking migration: serving waits for the copies
                r.migration_s[s] = stalls[s]
                yield env.timeout(stalls[s])
            for col, dur in enumerate(times):
                r.layer_start_s[s, col] = env.now
                if overlap and machine.is_moe[col]:
                    m = int(np.searchsorted(machine.moe_cols, col))
                    yield env.timeout(r.phase_s[s, col, 0])
                    start, slices = env.now, []
                    if s < r.timeline_steps:
                        machine.keep_slices[s, col] = MicroBatches(slices, c.expert_chunk[i, m].copy())
                    yield env.process(overlapped_moe(env, n, float(c.dispatch_chunk[i, m]),
                                                     float(c.expert_chunk[i, m].max()),
                                                     float(c.combine_chunk[i, m]), slices.append))
                    r.phase_s[s, col, 1:] = (0.0, env.now - start, 0.0)
                else:
                    yield env.timeout(dur)
            r.step_end_s[s] = env.now


def lockstep_clock(machine: Any) -> None:
    """:func:`lockstep_events` without micro-batches, as array operations per chunk: one process whose
    every event is a timeout of the next layer's (or stall's) duration advances its clock by one
    float addition each, so the clock at every event is a running sum (``np.cumsum`` adds in the
    same order: the same floats, no event per (step, layer))."""
    r, now = machine.rec, 0.0
    stalls = machine.replan.stalls if machine.replan is not None else {}
    for a, _ids, d, c in machine.chunks():
        machine.record(a, d, c)
        b = a + d.num_steps
        S, L = b - a, r.phase_s.shape[1]
        durations = np.empty((S, 1 + L))  # per step: its stall (0.0 if none: x + 0.0 == x), its layers
        durations[:, 0] = [stalls.get(s, 0.0) for s in range(a, b)] if stalls else 0.0
        durations[:, 1:] = r.phase_s[a:b].sum(axis=2)
        flat = np.empty(S * (1 + L) + 1)
        flat[0], flat[1:] = now, durations.ravel()
        clock = np.cumsum(flat)  # clock[k]: the time after k of the chunk's timeouts
        grid = clock[:-1].reshape(S, 1 + L)
        r.step_start_s[a:b] = grid[:, 0]
        r.layer_start_s[a:b] = grid[:, 1:]
        r.step_end_s[a:b] = clock[1 + L::1 + L]
        for s, stall in stalls.items():
            if a <= s < b:
                r.migration_s[s] = stall
        now = float(clock[-1])


def kept_link_loads(cost: Any, devices: tuple[str, ...], a2a: AllToAllSpec, kept: dict[int, np.ndarray],
                    layers: int) -> Callable[[], tuple[list[tuple[str, str]], np.ndarray, np.ndarray]]:
    """What a drawn timeline asks for the kept steps' all-to-alls (``kept``: step -> [layers, G, G]
    token copies): the link directions and the bytes each dispatch and combine puts on them,
    computed only when called."""
    steps, g = sorted(kept), len(devices)

    def link_loads() -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray]:
        if g == 1 or not steps:
            return [], np.zeros((len(steps), layers, 0)), np.zeros((len(steps), layers, 0))
        flat = np.stack([kept[s] for s in steps]).reshape(-1, g, g)
        names, loads = cost.link_loads_each(devices, flat * a2a.dispatch_bytes)
        _, back = cost.link_loads_each(devices, flat.transpose(0, 2, 1) * a2a.combine_bytes)
        return names, loads.reshape(len(steps), layers, -1), back.reshape(len(steps), layers, -1)

    return link_loads
