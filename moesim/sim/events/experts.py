"""OffloadedExperts: one GPU's experts of one (step, MoE layer) when not every expert is resident.

Hits run on the GPU once their weights have arrived; each miss is copied first when its mode waits
for fetches (``fetch``, ``lowbit``), or runs beside the GPU while it runs the hits (``cpu``,
``pim``), its weights then copied in the background so the cache holds them as its policy says;
``auto`` picks the mode per missed expert. A call is begun when its layer's dispatch ends (its
copies and side runs queue on their lanes) and finished once the clock has run them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from moesim.sim.costs import OffloadCosts
from moesim.sim.fetcher import Copy, WeightFetcher
from moesim.sim.misses import MissHandler, SideRun
from moesim.sim.recorder import Recorder
from moesim.sim.resources import Clock, Executors
from moesim.sim.stores import ExpertStore

INF = float("inf")


@dataclass(eq=False)
class SideCall:
    """Missed experts of one GPU call run on the device its handler names (a lane job)."""

    owner: OffloadedExperts
    handler: MissHandler
    step: int
    col: int
    gpu: str
    side: str
    tokens: tuple[float, ...]
    experts: list[int]
    end_s: float | None = None
    cost: SideRun | None = field(default=None)

    def start(self, now_s: float) -> float:
        cost = self.cost = self.owner.side_run(self.handler, self.gpu, self.side, self.tokens)
        for path, nbytes in cost.moved:
            self.owner.rec.add_link_bytes(path, nbytes)
        return cost.in_s + cost.run_s + cost.out_s

    def finish(self, start_s: float, end_s: float) -> None:
        assert self.cost is not None
        r = self.owner.rec
        i = r.device_index(self.side)
        r.busy_s[self.step, self.col, i] += self.cost.run_s
        r.tokens[self.step, self.col, i] += int(sum(self.tokens))
        r.span(self.step, self.side, f"experts L{self.col}", start_s, end_s - start_s,
               experts=self.experts, gpu=self.gpu)
        self.end_s = end_s


@dataclass(eq=False)
class Call:
    """One GPU's expert call of a (step, MoE layer) in flight."""

    step: int
    m: int
    g: int
    experts: list[int]
    tokens: list[float]
    on_gpu: list[bool] | None
    """Experts run on the GPU (None: all of them)."""
    phase_start: float
    waits: list[Copy]
    sides: list[SideCall]


class OffloadedExperts:
    """Offloaded expert calls, with the objects they work through."""

    def __init__(self, clock: Clock, store: ExpertStore, fetcher: WeightFetcher, miss: MissHandler,
                 executors: Executors, costs: OffloadCosts, rec: Recorder, *, devices: Sequence[str],
                 moe_cols: Sequence[int], act_bytes: float):
        self.clock, self.store, self.fetcher, self.miss = clock, store, fetcher, miss
        self.executors, self.costs, self.rec = executors, costs, rec
        self.devices, self.moe_cols, self.act_bytes = tuple(devices), [int(c) for c in moe_cols], act_bytes
        self.causality: list[tuple[float, float]] = []
        """Per GPU call: (its start, arrival of its experts' last weights; 0: resident from the start)."""
        self.choices: dict[str, int] = {}
        """How often each miss mode handled a missed expert (per step, layer, GPU and expert)."""
        self._side_runs: dict[tuple, SideRun] = {}

    def side_run(self, handler: MissHandler, gpu: str, side: str, tokens: tuple[float, ...]) -> SideRun:
        """``handler``'s timing of experts with ``tokens`` each run on ``side`` for ``gpu`` (remembered)."""
        key = (handler, gpu, side, tokens)
        run = self._side_runs.get(key)
        if run is None:
            array = np.array(tokens, dtype=float)
            run = self._side_runs[key] = handler.side_run(self.costs, gpu, side, array, self.act_bytes)
        return run

    def begin(self, step: int, m: int, g: int, experts: list[int], tokens: list[float],
              phase_start: float, hits: list[bool]) -> Call:
        """Start running ``experts`` (unique ids) with ``tokens`` pairs each on GPU ``g`` at MoE
        layer row ``m`` when the layer's dispatch ends (``phase_start``), ``hits`` theirs from
        the store's request: queue its copies and side runs."""
        fetcher, now = self.fetcher, phase_start
        gpu = self.devices[g]
        keep = self.store.keeps_misses
        ready = fetcher.ready
        # misses, and hits whose weights are still on the wire, go where the miss mode says: a
        # waiting mode copies a miss (waits for a late hit's copy), the others run them beside
        chosen = [i for i, (e, h) in enumerate(zip(experts, hits, strict=True))
                  if not h or ((c := ready.get((m, g, e))) is not None and c.pending_at(now))]
        if not chosen:  # every expert resident: the GPU runs them all at once
            return Call(step, m, g, experts, tokens, None, phase_start, [], [])
        on_gpu = [True] * len(experts)
        for i in chosen:
            on_gpu[i] = False
        miss = self.miss
        if miss.chooses:
            tok = np.array(tokens, dtype=float)
            handlers = miss.choose(self.costs, gpu, tok[chosen], tok[np.array(on_gpu)], self.act_bytes,
                                   fetcher.backlog_s(g, now))
        else:
            handlers = [miss] * len(chosen)
        waits: list[Copy] = []
        beside: dict[str, tuple[MissHandler, list[int]]] = {}
        for i, h in zip(chosen, handlers, strict=True):
            e = experts[i]
            if not hits[i]:
                mode = str(h.mode)
                self.choices[mode] = self.choices.get(mode, 0) + 1
            if h.waits_for_fetch:
                on_gpu[i] = True
                pending = fetcher.pending(m, g, e, now) if hits[i] else None
                waits.append(pending if pending is not None else
                             fetcher.fetch(step, m, g, e, now, keep=keep, dtype=h.fetch_dtype()))
                continue
            beside.setdefault(h.side_device(gpu), (h, []))[1].append(i)
            if keep and not hits[i]:  # the cache holds it: copied in the background, nobody waits
                fetcher.fetch(step, m, g, e, now, keep=True, dtype=None, background=True)
        col = self.moe_cols[m]
        sides = []
        for side, (h, idx) in beside.items():
            call = SideCall(self, h, step, col, gpu, side, tuple(tokens[i] for i in idx),
                            [experts[i] for i in idx])
            self.executors.of(side).request(call, now)
            sides.append(call)
        return Call(step, m, g, experts, tokens, on_gpu, phase_start, waits, sides)

    def finish(self, call: Call) -> float:
        """Run the clock until ``call``'s copies have arrived and its side runs ended; record its
        GPU part; when it ends (its GPU part and its side runs)."""
        waits, sides, clock = call.waits, call.sides, self.clock
        if waits:
            for c in waits:
                while c.done_s is None:
                    clock.step()
            start = max(c.done_s for c in waits)  # type: ignore[type-var]
        else:
            start = call.phase_start
        m, g = call.m, call.g
        on_gpu = call.on_gpu
        if on_gpu is None:
            used, run = call.experts, call.tokens
        else:
            used = [e for e, keep in zip(call.experts, on_gpu, strict=True) if keep]
            run = [t for t, keep in zip(call.tokens, on_gpu, strict=True) if keep]
        arrival = self.fetcher.arrival
        last = 0.0
        for e in used:
            c = arrival(m, g, e)
            if c is not None:
                last = max(last, c.done_s if c.done_s is not None and c.done_s <= start else INF)
        self.causality.append((start, last))
        gpu = self.devices[g]
        col = self.moe_cols[m]
        gpu_s = self.costs.gpu_call_s(gpu, tuple(run)) if run else 0.0
        end = start
        if gpu_s > 0:
            end = start + gpu_s
            self.rec.span(call.step, gpu, f"experts L{col}", start, gpu_s, experts=used,
                          waited_s=start - call.phase_start)
        self.rec.busy_s[call.step, col, g] += gpu_s
        self.rec.tokens[call.step, col, g] += int(sum(run))
        for sc in sides:
            while sc.end_s is None:
                clock.step()
            end = max(end, sc.end_s)
        return end
