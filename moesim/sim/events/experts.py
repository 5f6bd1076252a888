"""OffloadedExperts: one GPU's experts of one (step, MoE layer) when not every expert is resident.

Hits run on the GPU once their weights have arrived; each miss is copied first when its mode waits
for fetches (``fetch``, ``lowbit``), or runs beside the GPU while it runs the hits (``cpu``,
``pim``), its weights then copied in the background so the cache holds them as its policy says;
``auto`` picks the mode per missed expert.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any

import numpy as np
import simpy

from moesim.sim.costs import OffloadCosts
from moesim.sim.fetcher import WeightFetcher
from moesim.sim.misses import MissHandler
from moesim.sim.recorder import Recorder
from moesim.sim.resources import Executors
from moesim.sim.stores import ExpertStore


class OffloadedExperts:
    """The SimPy process of an offloaded expert call, with the objects it works through."""

    def __init__(self, env: simpy.Environment, store: ExpertStore, fetcher: WeightFetcher, miss: MissHandler,
                 executors: Executors, costs: OffloadCosts, rec: Recorder, *, devices: Sequence[str],
                 moe_cols: Sequence[int], act_bytes: float):
        self.env, self.store, self.fetcher, self.miss = env, store, fetcher, miss
        self.executors, self.costs, self.rec = executors, costs, rec
        self.devices, self.moe_cols, self.act_bytes = devices, moe_cols, act_bytes
        self.causality: list[tuple[float, float]] = []
        """Per GPU call: (its start, arrival of its experts' last weights; 0: resident from the start)."""
        self.choices: dict[str, int] = {}
        """How often each miss mode handled a missed expert (per step, layer, GPU and expert)."""

    def run(self, step: int, m: int, g: int, experts: np.ndarray, tokens: np.ndarray,
            phase_start: float, hit: np.ndarray) -> Generator[Any, Any, None]:
        """Run ``experts`` (unique ids) with ``tokens`` pairs each on GPU ``g`` at MoE layer row
        ``m``, ``hit`` their mask from the store's request; ``phase_start`` (when the layer's
        dispatch ended) dates the wait on the timeline."""
        env, fetcher = self.env, self.fetcher
        col = int(self.moe_cols[m])
        gpu = self.devices[g]
        keep = self.store.keeps_misses
        late = np.array([fetcher.pending(m, g, e) is not None for e in experts.tolist()], dtype=bool) & hit
        # misses, and hits whose weights are still on the wire, go where the miss mode says: a
        # waiting mode copies a miss (waits for a late hit's copy), the others run them beside
        chosen = np.flatnonzero(~hit | late)
        on_gpu = np.ones(len(experts), dtype=bool)
        on_gpu[chosen] = False
        handlers = self.miss.choose(self.costs, gpu, tokens[chosen], tokens[on_gpu], self.act_bytes,
                                    fetcher.backlog_s(g))
        waits: list[simpy.Event] = []
        beside: dict[str, tuple[MissHandler, list[int]]] = {}
        for i, h in zip(chosen.tolist(), handlers, strict=True):
            e = int(experts[i])
            if not hit[i]:
                self.choices[str(h.mode)] = self.choices.get(str(h.mode), 0) + 1
            if h.waits_for_fetch:
                on_gpu[i] = True
                waits.append(fetcher.pending(m, g, e) if hit[i] else
                             fetcher.fetch(step, m, g, e, keep=keep, dtype=h.fetch_dtype()))
                continue
            beside.setdefault(h.side_device(gpu), (h, []))[1].append(i)
            if keep and not hit[i]:  # the cache holds it: copied in the background, nobody waits
                fetcher.fetch(step, m, g, e, keep=True, dtype=None, background=True)
        sides = [env.process(self._beside(step, col, gpu, h, tokens[idx], experts[idx]))
                 for h, idx in beside.values()]
        if waits:
            yield env.all_of(waits)
        start = env.now
        arrived = [ev.value if ev.triggered else float("inf") for e in experts[on_gpu].tolist()
                   if (ev := fetcher.arrival(m, g, e)) is not None]
        self.causality.append((start, max(arrived, default=0.0)))
        run = tokens[on_gpu]
        gpu_s = self.costs.gpu_experts_s(gpu, run) if run.size else 0.0
        if gpu_s > 0:
            yield env.timeout(gpu_s)
            self.rec.span(step, gpu, f"experts L{col}", start, gpu_s,
                          experts=experts[on_gpu].tolist(), waited_s=start - phase_start)
        self.rec.busy_s[step, col, g] += gpu_s
        self.rec.tokens[step, col, g] += int(tokens[on_gpu].sum())
        if sides:
            yield env.all_of(sides)

    def _beside(self, step: int, col: int, gpu: str, handler: MissHandler, tokens: np.ndarray,
                experts: np.ndarray) -> Generator[Any, Any, None]:
        """Misses on the device ``handler`` names (one call at a time there)."""
        env = self.env
        side = handler.side_device(gpu)
        with self.executors.of(side).request() as req:
            yield req
            start = env.now
            cost = handler.side_run(self.costs, gpu, side, tokens, self.act_bytes)
            for path, nbytes in cost.moved:
                self.rec.add_link_bytes(path, nbytes)
            yield env.timeout(cost.in_s + cost.run_s + cost.out_s)
        i = self.rec.device_index(side)
        self.rec.busy_s[step, col, i] += cost.run_s
        self.rec.tokens[step, col, i] += int(tokens.sum())
        self.rec.span(step, side, f"experts L{col}", start, env.now - start,
                      experts=experts.tolist(), gpu=gpu)
