"""The offloaded run: per (step, layer), attention and the all-to-alls in lockstep, then each GPU's
expert call (misses fetched over its PCIe link or run beside it), with next-layer prefetches issued
when a layer's dispatch ends. Time is a plain clock: copies and side runs queue on resource lanes
(:mod:`moesim.sim.resources`) whose events are handled in time order up to each decision that
depends on them (a store change, a call's start or end)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    """Caches, fetches, miss handling and prefetch of one offloaded run, and the run itself."""

    def __init__(self, rec: Recorder, cost: SimCost, model: MoEModel,
                 cache: CachePlan, placement: np.ndarray, devices: Sequence[str], steps: Sequence[Step], *,
                 hosts: HostLinks, miss: MissHandler, warmup_load: Callable[[], np.ndarray],
                 fit_predictor: Callable[[], Transitions], audit: bool = False,
                 scope: CacheScope = CacheScope.LAYER):
        self.rec, self.cache, self.placement = rec, cache, placement
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
        self.clock = hosts.clock
        self.fetcher = WeightFetcher(self.hosts, self.costs, rec, self.store, self.devices,
                                     self.moe_cols, bytes_of=model.expert_bytes)
        executors = Executors(self.clock)
        self.experts = OffloadedExperts(self.clock, self.store, self.fetcher, self.miss, executors,
                                        self.costs, rec, devices=self.devices, moe_cols=self.moe_cols,
                                        act_bytes=float(model.activation_bytes_per_token))
        self.prefetcher = make_prefetcher(cache.prefetch, fit_predictor, model.top_k)
        self.score = PrefetchScore()

    @property
    def causality(self) -> list[tuple[float, float]]:
        return self.experts.causality

    def run(self) -> None:
        """Every step, layer by layer; then the copies still queued when the last step ends."""
        r, clock, G = self.rec, self.clock, len(self.devices)
        now = 0.0
        moe_row = {int(c): m for m, c in enumerate(self.moe_cols.tolist())}
        for st in self.steps:
            s, i, c = st.index, st.row, st.costs
            if st.new_sequence:
                clock.run_before(now)
                self.store.reset()
            r.step_start_s[s] = now
            pre_s = r.phase_s[s, :, 0].tolist()
            # the step's requests, per (MoE layer, GPU) one slice: experts and their tokens
            req_m, req_g, req_s = np.nonzero(st.slots > 0)
            req_experts = self.placement[req_m, req_g, req_s].astype(np.int64)
            req_ids, req_tokens = req_experts.tolist(), st.slots[req_m, req_g, req_s].astype(float).tolist()
            bounds = np.searchsorted(req_m * G + req_g, np.arange(st.slots.shape[0] * G + 1)).tolist()
            starts = [0.0] * self.num_layers
            phases = [(0.0, 0.0, 0.0)] * self.num_layers
            for col in range(self.num_layers):
                starts[col] = now
                if s < r.timeline_steps:
                    for g, dev in enumerate(self.devices):
                        r.span(s, dev, f"attention L{col}", now, float(c.pre[i][col, g]), layer=col)
                now += pre_s[col]
                m = moe_row.get(col)
                if m is None:
                    continue
                t0 = now
                now += float(c.dispatch[i, m])
                phase_start = now
                clock.run_before(now)  # the copies that started before the store changes
                calls = []
                for g in range(G):  # the layer's requests (an empty one still advances Belady's clock)
                    lo, hi = bounds[m * G + g], bounds[m * G + g + 1]
                    ids = req_ids[lo:hi]
                    calls.append((g, ids, req_tokens[lo:hi], self.store.access(m, g, ids)))
                if m + 1 < len(self.moe_cols) and self.prefetcher is not None:
                    nxt = (m + 1) * G
                    truth = [req_ids[bounds[nxt + g]:bounds[nxt + g + 1]] for g in range(G)]
                    self._prefetch(s, m, st.ids, truth, now)
                begun = [self.experts.begin(s, m, g, experts, tokens, phase_start, hit)
                         for g, experts, tokens, hit in calls if len(experts)]
                for call in begun:
                    now = max(now, self.experts.finish(call))
                for g in range(G):  # the layer's experts have run: its requests may be evicted again
                    self.store.release(m, g)
                t1 = now
                now += float(c.combine[i, m])
                phases[col] = (phase_start - t0, t1 - phase_start, now - t1)
            r.layer_start_s[s] = starts
            r.phase_s[s, :, 1:] = phases
            r.step_end_s[s] = now
        clock.run_all()

    def _prefetch(self, s: int, m: int, ids: np.ndarray, truth: list[list[int]], now: float) -> None:
        """Issue next-layer prefetches for each GPU and score them against its true requests ``truth``."""
        assert self.prefetcher is not None
        guesses = self.prefetcher.next_layer(m, ids[:, m, :], truth, self.placement[m + 1])
        dtype = self.miss.fetch_dtype()
        for g, (predicted, requested) in enumerate(zip(guesses, truth, strict=True)):
            self.score.add(predicted, requested)
            loads = self.store.prefetch(m + 1, g, predicted)
            for e, load in zip(predicted, loads, strict=True):
                if load:
                    self.fetcher.fetch(s, m + 1, g, e, now, keep=True, dtype=dtype, prefetch=True)

    def info(self) -> dict[str, Any]:
        """The summary's ``cache`` fields of an offloaded run."""
        cache = self.cache
        return {
            "capacity_experts": sorted(set(cache.capacity_experts)) if cache.capacity_experts else None,
            "miss": str(cache.miss), "prefetch": str(cache.prefetch), "hits": self.store.hits,
            "requests": self.store.requests, "miss_choices": dict(sorted(self.experts.choices.items())),
            "prefetch_accuracy": self.score.as_dict() if self.prefetcher is not None else None,
        }
