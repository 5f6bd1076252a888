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

    rec: Recorder
    costs: OffloadCosts
    handler: MissHandler
    step: int
    col: int
    gpu: str
    side: str
    tokens: np.ndarray
    experts: list[int]
    act_bytes: float
    end_s: float | None = None
    cost: SideRun | None = field(default=None)

    def start(self, now_s: float) -> float:
        cost = self.cost = self.handler.side_run(self.costs, self.gpu, self.side, self.tokens, self.act_bytes)
        for path, nbytes in cost.moved:
            self.rec.add_link_bytes(path, nbytes)
        return cost.in_s + cost.run_s + cost.out_s

    def finish(self, start_s: float, end_s: float) -> None:
        assert self.cost is not None
        r = self.rec
        i = r.device_index(self.side)
        r.busy_s[self.step, self.col, i] += self.cost.run_s
        r.tokens[self.step, self.col, i] += int(self.tokens.sum())
        r.span(self.step, self.side, f"experts L{self.col}", start_s, end_s - start_s,
               experts=self.experts, gpu=self.gpu)
        self.end_s = end_s


@dataclass(eq=False)
class Call:
    """One GPU's expert call of a (step, MoE layer) in flight."""

    step: int
    m: int
    g: int
    experts: np.ndarray
    tokens: np.ndarray
    on_gpu: np.ndarray
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

    def begin(self, step: int, m: int, g: int, experts: np.ndarray, tokens: np.ndarray,
              phase_start: float, hit: np.ndarray) -> Call:
        """Start running ``experts`` (unique ids) with ``tokens`` pairs each on GPU ``g`` at MoE
        layer row ``m`` when the layer's dispatch ends (``phase_start``), ``hit`` their mask from
        the store's request: queue its copies and side runs."""
        fetcher, now = self.fetcher, phase_start
        gpu = self.devices[g]
        keep = self.store.keeps_misses
        ids = experts.tolist()
        hits = hit.tolist()
        late = [h and fetcher.pending(m, g, e, now) is not None for e, h in zip(ids, hits, strict=True)]
        # misses, and hits whose weights are still on the wire, go where the miss mode says: a
        # waiting mode copies a miss (waits for a late hit's copy), the others run them beside
        chosen = [i for i, (h, lt) in enumerate(zip(hits, late, strict=True)) if not h or lt]
        on_gpu = np.ones(len(ids), dtype=bool)
        on_gpu[chosen] = False
        handlers = (self.miss.choose(self.costs, gpu, tokens[chosen], tokens[on_gpu], self.act_bytes,
                                     fetcher.backlog_s(g, now)) if chosen else [])
        waits: list[Copy] = []
        beside: dict[str, tuple[MissHandler, list[int]]] = {}
        for i, h in zip(chosen, handlers, strict=True):
            e = ids[i]
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
            call = SideCall(self.rec, self.costs, h, step, col, gpu, side, tokens[idx], [ids[i] for i in idx],
                            self.act_bytes)
            self.executors.of(side).request(call, now)
            sides.append(call)
        return Call(step, m, g, experts, tokens, on_gpu, phase_start, waits, sides)

    def finish(self, call: Call) -> float:
        """Run the clock until ``call``'s copies have arrived and its side runs ended; record its
        GPU part; when it ends (its GPU part and its side runs)."""
        waits, sides = call.waits, call.sides
        if waits:
            self.clock.run_while(lambda: any(c.done_s is None for c in waits))
            start = max(c.done_s for c in waits)  # type: ignore[type-var]
        else:
            start = call.phase_start
        m, g = call.m, call.g
        fetcher = self.fetcher
        on_gpu = call.on_gpu
        used = call.experts[on_gpu].tolist()
        last = 0.0
        for e in used:
            c = fetcher.arrival(m, g, e)
            if c is not None:
                last = max(last, c.done_s if c.done_s is not None and c.done_s <= start else INF)
        self.causality.append((start, last))
        gpu = self.devices[g]
        col = self.moe_cols[m]
        run = call.tokens[on_gpu]
        gpu_s = self.costs.gpu_experts_s(gpu, run) if run.size else 0.0
        end = start
        if gpu_s > 0:
            end = start + gpu_s
            self.rec.span(call.step, gpu, f"experts L{col}", start, gpu_s, experts=used,
                          waited_s=start - call.phase_start)
        self.rec.busy_s[call.step, col, g] += gpu_s
        self.rec.tokens[call.step, col, g] += int(run.sum())
        if sides:
            self.clock.run_while(lambda: any(sc.end_s is None for sc in sides))
            end = max(end, *(sc.end_s for sc in sides))  # type: ignore[type-var]
        return end
