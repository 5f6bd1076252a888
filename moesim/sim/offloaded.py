"""The offloaded run: per (step, layer), attention and the all-to-alls in lockstep, then one SimPy
process per GPU for its experts (misses fetched over its PCIe link or run beside it), with
next-layer prefetches issued when a layer's dispatch ends."""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from moesim.plans.plan import CachePlan
from moesim.sim.costs import OffloadCosts, SimCost
from moesim.sim.events.experts import OffloadedExperts
from moesim.sim.fetcher import WeightFetcher
from moesim.sim.misses import MissHandler
from moesim.sim.prefetch import PrefetchScore, make_prefetcher
from moesim.sim.recorder import Recorder
from moesim.sim.resources import Executors, HostLinks
from moesim.sim.stepcost import ChunkCosts
from moesim.sim.stores import StoreInputs, make_store
from moesim.specs.model import MoEModel
from moesim.traces.transitions import Transitions
from moesim.vocab import CacheScope


@dataclass(frozen=True)
class Step:
    """One step's routing and costs: ``ids`` [B, MoE layers, K], ``slots`` [MoE layers, G, S]
    tokens per slot, and its row ``row`` of the chunk costs ``costs``; ``new_sequence``: the caches
    empty before it (``SimConfig.cache_reset``)."""

    index: int
    ids: np.ndarray
    slots: np.ndarray
    costs: ChunkCosts
    row: int
    new_sequence: bool = False


class OffloadedRun:
    """Caches, fetches, miss handling and prefetch of one offloaded run, and its SimPy process."""

    def __init__(self, env: simpy.Environment, rec: Recorder, cost: SimCost, model: MoEModel,
                 cache: CachePlan, placement: np.ndarray, devices: Sequence[str], steps: Sequence[Step], *,
                 hosts: HostLinks, miss: MissHandler, warmup_load: Callable[[], np.ndarray],
                 fit_predictor: Callable[[], Transitions], audit: bool = False,
                 scope: CacheScope = CacheScope.LAYER):
        self.env, self.rec, self.cache, self.placement = env, rec, cache, placement
        self.devices, self.steps = tuple(devices), steps
        self.num_layers = model.num_layers
        self.moe_cols = np.asarray(model.moe_layers, dtype=np.int64)
        self.is_moe = np.zeros(model.num_layers, dtype=bool)
        self.is_moe[self.moe_cols] = True
        self.store = make_store(cache, StoreInputs(model.num_moe_layers, len(devices), placement,
                                                   [st.slots for st in steps], warmup_load, scope=scope,
                                                   num_experts=model.num_experts))
        self.store.audit = audit
        self.hosts, self.miss = hosts, miss
        self.costs = OffloadCosts(cost, model.expert_bytes())
        self.fetcher = WeightFetcher(env, self.hosts, self.costs, rec, self.store, self.devices,
                                     self.moe_cols, bytes_of=model.expert_bytes)
        self.experts = OffloadedExperts(env, self.store, self.fetcher, self.miss, Executors(env), self.costs,
                                        rec, devices=self.devices, moe_cols=self.moe_cols,
                                        act_bytes=float(model.activation_bytes_per_token))
        self.prefetcher = make_prefetcher(cache.prefetch, fit_predictor, model.top_k)
        self.score = PrefetchScore()

    @property
    def causality(self) -> list[tuple[float, float]]:
        return self.experts.causality

    def process(self) -> Generator[Any, Any, None]:
        """Every step, layer by layer."""
        env, r, G = self.env, self.rec, len(self.devices)
        for st in self.steps:
            s, i, c = st.index, st.row, st.costs
            if st.new_sequence:
                self.store.reset()
            r.step_start_s[s] = env.now
            for col in range(self.num_layers):
                r.layer_start_s[s, col] = env.now
                if s < r.timeline_steps:
                    for g, dev in enumerate(self.devices):
                        r.span(s, dev, f"attention L{col}", env.now, float(c.pre[i][col, g]), layer=col)
                yield env.timeout(r.phase_s[s, col, 0])
                if not self.is_moe[col]:
                    continue
                m = int(np.searchsorted(self.moe_cols, col))
                t0 = env.now
                yield env.timeout(float(c.dispatch[i, m]))
                phase_start = env.now
                calls = []
                for g in range(G):  # the layer's requests (an empty one still advances Belady's clock)
                    used = np.flatnonzero(st.slots[m, g] > 0)
                    experts = self.placement[m, g, used].astype(np.int64)
                    calls.append((g, experts, st.slots[m, g, used].astype(float),
                                  self.store.access(m, g, experts)))
                if m + 1 < len(self.moe_cols) and self.prefetcher is not None:
                    self._prefetch(s, m, st.ids, st.slots)
                procs = [env.process(self.experts.run(s, m, g, experts, tokens, phase_start, hit))
                         for g, experts, tokens, hit in calls if len(experts)]
                yield env.all_of(procs)
                for g in range(G):  # the layer's experts have run: its requests may be evicted again
                    self.store.release(m, g)
                t1 = env.now
                yield env.timeout(float(c.combine[i, m]))
                r.phase_s[s, col, 1:] = (phase_start - t0, t1 - phase_start, env.now - t1)
            r.step_end_s[s] = env.now

    def _prefetch(self, s: int, m: int, ids: np.ndarray, slots: np.ndarray) -> None:
        """Issue next-layer prefetches for each GPU and score them against its true requests."""
        assert self.prefetcher is not None
        truth = [self.placement[m + 1, g, np.flatnonzero(slots[m + 1, g] > 0)].astype(np.int64)
                 for g in range(len(self.devices))]
        guesses = self.prefetcher.next_layer(m, ids[:, m, :], truth, self.placement[m + 1])
        dtype = self.miss.fetch_dtype()
        for g, (predicted, requested) in enumerate(zip(guesses, truth, strict=True)):
            self.score.add(predicted, requested)
            loads = self.store.prefetch(m + 1, g, predicted)
            for e in predicted[loads].tolist():
                self.fetcher.fetch(s, m + 1, g, e, keep=True, dtype=dtype, prefetch=True)

    def info(self) -> dict[str, Any]:
        """The summary's ``cache`` fields of an offloaded run."""
        cache = self.cache
        return {
            "capacity_experts": sorted(set(cache.capacity_experts)) if cache.capacity_experts else None,
            "miss": str(cache.miss), "prefetch": str(cache.prefetch), "hits": self.store.hits,
            "requests": self.store.requests, "miss_choices": dict(sorted(self.experts.choices.items())),
            "prefetch_accuracy": self.score.as_dict() if self.prefetcher is not None else None,
        }
