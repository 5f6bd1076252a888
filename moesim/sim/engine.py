"""The simulator: a SimPy replay of a routing trace's steps through every layer of the model.

One step, per layer: attention, router (and shared experts) on each GPU -> dispatch all-to-all ->
expert compute on each device holding a chosen replica -> combine all-to-all. Durations come from
the CostModel, computed for a chunk of steps at once in numpy (:mod:`moesim.sim.stepcost`). When
the GPUs proceed in lockstep there is one SimPy event per (step, layer); with offloading each GPU's
experts are their own process (fetches queue on its PCIe link), and with overlap each micro-batch
is one (:mod:`moesim.sim.events`). Never an event per token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import simpy

from moesim.errors import UserError
from moesim.plans.default import default_plan
from moesim.sim.config import SimConfig
from moesim.sim.dispatch import Dispatch, ReplicaTable, dispatch, owners
from moesim.sim.events.experts import offloaded_experts
from moesim.sim.events.overlap import overlapped_moe
from moesim.sim.events.transfer import weight_fetch
from moesim.sim.offload import ExpertStore, PrefetchScore, TransitionPredictor, top_experts
from moesim.sim.replica_routing import LocalRouting, local_dispatch, node_index
from moesim.sim.results import Recorder, SimResult
from moesim.sim.stepcost import ChunkCosts, StepCoster, device_token_counts
from moesim.sim.workload import Workload, build_workload

CHUNK_ENTRIES = 2_000_000
"""Steps are costed in chunks of about this many (step, layer, device, device) entries."""


class Machine:
    """Everything the SimPy processes share for one run (configuration, state, recorder)."""

    def __init__(self, cfg: SimConfig, cost: Any):
        self.cfg, self.cost, self.model, self.cluster = cfg, cost, cfg.model, cfg.cluster
        trace = cfg.trace
        if hasattr(trace, "check_model"):
            trace.check_model(cfg.model)
        if trace.num_layers != cfg.model.num_moe_layers:
            raise UserError(f"expected a trace of the {cfg.model.num_moe_layers} MoE layers of "
                            f"{cfg.model.name}, got {trace.num_layers} layer columns", field="trace")
        plan = cfg.plan or default_plan(cfg.model, cfg.cluster)
        plan.validate(cfg.model)
        self.cache = cfg.cache_plan(plan)
        self.plan = replace(plan, cache=self.cache if self.cache.policy != "none" else None)
        self.devices: tuple[str, ...] = tuple(plan.devices)
        self.G = len(self.devices)
        self.workload: Workload = build_workload(trace, phase=cfg.phase, batch_size=cfg.batch_size,
                                                 steps=cfg.steps, batch_key=cfg.batch_key)
        self.memory = self._check_memory()
        self.table = ReplicaTable.of(self.plan)
        self.rng = np.random.default_rng(cfg.seed) if cfg.replica_split == "random" else None
        self.routing = (LocalRouting.of(self.table, node_index(self.cluster, self.devices))
                        if cfg.dispatch == "local" and self.table.has_replicas else None)
        n_chunks = {"none": 1, "layer": 2, "chunked": cfg.chunks}[cfg.overlap]
        self.coster = StepCoster(cost, self.devices, phase=cfg.phase, overlap_chunks=n_chunks)
        self.layer_ids = np.arange(cfg.model.num_layers)
        self.moe_cols = np.asarray(cfg.model.moe_layers, dtype=np.int64)
        self.is_moe = self.coster.is_moe
        self.act_bytes = float(cfg.model.activation_bytes_per_token)
        self.offload = self.cache.policy != "none"
        self.miss = self.cache.miss
        self.rec = Recorder(self.workload.num_steps, cfg.model.num_layers, list(self.devices),
                            cfg.timeline_steps)
        self.rec.step_tokens[:] = self.workload.tokens()
        self.total_pairs = np.zeros((self.G, self.G))
        self.keep_pairs: dict[int, np.ndarray] = {}
        self.keep_pre: dict[int, np.ndarray] = {}
        # offloading state (filled by _prepare_offload)
        self.ready: dict[tuple[int, int, int], simpy.Event] = {}
        self.scratch: dict[tuple[int, int, int], simpy.Event] = {}
        self.causality: list[tuple[float, float]] = []
        self.score = PrefetchScore()
        self.phase_start = 0.0
        if self.offload and self.miss == "pim":
            for gpu in self.devices:  # refuse before the run, not from inside a SimPy process
                self.side_device(gpu)

    # ------------------------------------------------------------------ setup
    def _check_memory(self) -> dict[str, float]:
        """Resident expert bytes + the largest step's KV cache per GPU; refuse a plan that does not fit."""
        wl = self.workload
        owned = device_token_counts(wl.tokens(), self.G)
        kv = (owned * wl.context_tokens[:, None]).max(axis=0) * self.model.kv_cache_bytes_per_token()
        self.plan.check_memory(self.model, self.cluster, reserved_bytes=float(kv.max(initial=0.0)))
        experts = self.plan.resident_expert_bytes(self.model)
        return {d: experts.get(d, 0.0) + float(kv[g]) for g, d in enumerate(self.devices)}

    def chunks(self) -> Iterator[tuple[int, np.ndarray, Dispatch, ChunkCosts]]:
        """(first step, ids [S, B, L, K], dispatch, costs) for consecutive chunks of steps."""
        wl, trace = self.workload, self.cfg.trace
        L = self.model.num_moe_layers
        size = max(1, CHUNK_ENTRIES // max(1, L * self.G * self.G))
        for a in range(0, wl.num_steps, size):
            rows = wl.steps[a:a + size]
            bmax = max(len(r) for r in rows)
            ids = np.full((len(rows), bmax, L, trace.top_k), -1, dtype=np.int16)
            owner = np.zeros((len(rows), bmax), dtype=np.int64)
            for i, r in enumerate(rows):
                contiguous = len(r) and r[-1] - r[0] + 1 == len(r)
                ids[i, :len(r)] = trace.expert_ids[r[0]:r[-1] + 1] if contiguous else trace.expert_ids[r]
                owner[i, :len(r)] = owners(len(r), self.G)
            d = (dispatch(ids, owner, self.table, self.rng) if self.routing is None
                 else local_dispatch(ids, owner, self.table, self.routing, self.rng))
            batch = np.array([len(r) for r in rows])
            yield a, ids, d, self.coster.chunk(a, d, batch, wl.context_tokens[a:a + len(rows)])

    def record(self, a: int, d: Dispatch, c: ChunkCosts) -> None:
        """Fill the recorder's arrays for a chunk (the parts that do not depend on the schedule)."""
        r, b, m = self.rec, a + d.slot_tokens.shape[0], self.moe_cols
        pair = c.pair_bytes
        self.total_pairs += pair.sum(axis=(0, 1))
        for s in range(a, min(b, r.timeline_steps)):
            self.keep_pairs[s] = pair[s - a]
            self.keep_pre[s] = c.pre[s - a]
        G = self.G
        r.busy_s[a:b, :, :G] = c.pre
        r.phase_s[a:b, :, 0] = c.pre.max(axis=2)
        sent = pair.sum(axis=3) + pair.sum(axis=2)
        r.bytes_sent[a:b][:, m, :G] = sent
        r.bytes_received[a:b][:, m, :G] = sent
        if not self.offload:
            r.busy_s[a:b][:, m, :G] += c.expert
            r.tokens[a:b][:, m, :G] = d.device_tokens
            r.phase_s[a:b][:, m, 1] = c.dispatch
            r.phase_s[a:b][:, m, 2] = c.expert.max(axis=2)
            r.phase_s[a:b][:, m, 3] = c.combine

    # ------------------------------------------------------------------ SimPy processes
    def lockstep(self, env: simpy.Environment) -> Any:
        """All GPUs in step: one event per (step, layer); with overlap, one process per micro-batch."""
        r, overlap = self.rec, self.cfg.overlap != "none"
        n = self.coster.chunks
        for a, _ids, d, c in self.chunks():
            self.record(a, d, c)
            layer_s = r.phase_s[a:a + d.slot_tokens.shape[0]].sum(axis=2).tolist()
            for i, times in enumerate(layer_s):
                s = a + i
                r.step_start_s[s] = env.now
                for col, dur in enumerate(times):
                    r.layer_start_s[s, col] = env.now
                    if overlap and self.is_moe[col]:
                        m = int(np.searchsorted(self.moe_cols, col))
                        yield env.timeout(r.phase_s[s, col, 0])
                        start = env.now
                        yield env.process(overlapped_moe(env, n, float(c.dispatch_chunk[i, m]),
                                                         float(c.expert_chunk[i, m].max()),
                                                         float(c.combine_chunk[i, m])))
                        r.phase_s[s, col, 1:] = (0.0, env.now - start, 0.0)
                    else:
                        yield env.timeout(dur)
                r.step_end_s[s] = env.now

    def fetch(self, step: int, m: int, g: int, expert: int, *, keep: bool,
              prefetch: bool = False) -> simpy.Event:
        """Start copying ``expert``'s weights to GPU ``g`` over its PCIe link; the event fires on
        arrival. Demand fetches go before queued prefetches."""
        pending = self.ready.get((m, g, expert)) if keep else None
        if pending is not None and not pending.triggered:
            return pending  # already queued: it will copy the expert if still wanted when its turn comes
        gpu = self.devices[g]
        lowbit = self.cfg.lowbit_dtype if self.miss == "lowbit" else None
        nbytes = self.model.expert_bytes(lowbit)
        seconds = self.memo(("fetch", gpu, lowbit), lambda: float(
            self.cost.weight_fetch_s(gpu, self.model.expert_bytes(), lowbit_dtype=lowbit)))
        done = self.env.event()
        (self.ready if keep else self.scratch)[(m, g, expert)] = done
        host = self.host(gpu)

        def account() -> None:  # when the copy starts: a dropped copy moved no bytes
            self.rec.fetch_bytes[step, self.moe_cols[m], g] += nbytes
            self.rec.add_link_bytes(self.path(host, gpu), nbytes)

        self.env.process(weight_fetch(self.env, self.link(gpu), seconds, done, self.rec, step,
                                      f"{host}->{gpu}", f"fetch L{self.moe_cols[m]} E{expert}",
                                      priority=1 if prefetch else 0,
                                      wanted=(lambda: self.store.resident(m, g, expert)) if keep else None,
                                      on_start=account))
        return done

    def host(self, gpu: str) -> str:
        from moesim.cost.transfers import host_of

        if gpu not in self._hosts:
            self._hosts[gpu] = host_of(self.cluster, gpu)
        return self._hosts[gpu]

    def path(self, src: str, dst: str) -> list[tuple[str, str]]:
        return self.memo(("path", src, dst), lambda: self.cost.path_links(src, dst))

    def transfer_s(self, src: str, dst: str, nbytes: float) -> float:
        return self.memo(("xfer", src, dst, nbytes), lambda: float(self.cost.transfer_s(src, dst, nbytes)))

    def memo(self, key: tuple, compute: Any) -> Any:
        """Cost results by their arguments (offloaded runs ask the same few shapes over and over)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def link(self, gpu: str) -> simpy.PriorityResource:
        if gpu not in self._links:
            self._links[gpu] = simpy.PriorityResource(self.env, capacity=1)
        return self._links[gpu]

    def executor(self, device: str) -> simpy.Resource:
        key = f"exec:{device}"
        if key not in self._links:
            self._links[key] = simpy.Resource(self.env, capacity=1)
        return self._links[key]

    def side_device(self, gpu: str) -> str:
        if self.miss == "cpu":
            return self.host(gpu)
        node = self.cluster.device(gpu).node
        pims = self.cluster.devices_of("pim", node) or self.cluster.devices_of("pim")
        if not pims:
            raise UserError(f"cluster {self.cluster.name} has no pim device to run missed experts on",
                            field="miss")
        return pims[0].id

    def offloaded(self, env: simpy.Environment) -> Any:
        """Per (step, layer): lockstep attention and all-to-alls, then one process per GPU for its experts."""
        r = self.rec
        data = list(self.chunks())
        per_step = [(a + i, ids[i], d.slot_tokens[i], c, i) for a, ids, d, c in data
                    for i in range(d.slot_tokens.shape[0])]
        self._prepare_offload([x[2] for x in per_step])
        for a, _ids, d, c in data:
            self.record(a, d, c)
        for s, ids, slots, c, i in per_step:
            r.step_start_s[s] = env.now
            for col in range(self.model.num_layers):
                r.layer_start_s[s, col] = env.now
                if s < r.timeline_steps:
                    for g, dev in enumerate(self.devices):
                        pre = float(self.keep_pre[s][col, g])
                        r.span(s, dev, f"attention L{col}", env.now, pre, layer=col)
                yield env.timeout(r.phase_s[s, col, 0])
                if not self.is_moe[col]:
                    continue
                m = int(np.searchsorted(self.moe_cols, col))
                t0 = env.now
                yield env.timeout(float(c.dispatch[i, m]))
                self.phase_start = env.now
                if m + 1 < len(self.moe_cols) and self.cache.prefetch != "none":
                    self._prefetch(s, m, ids, slots)
                procs = []
                for g in range(self.G):
                    used = np.flatnonzero(slots[m, g] > 0)
                    if used.size:
                        experts = self.plan.placement[m, g, used].astype(np.int64)
                        procs.append(env.process(offloaded_experts(env, self, s, m, g, experts,
                                                                   slots[m, g, used].astype(float))))
                    else:  # an empty request still advances the cache's clock (Belady's future index)
                        self.store.access(m, g, np.zeros(0, dtype=np.int64))
                yield env.all_of(procs)
                t1 = env.now
                yield env.timeout(float(c.combine[i, m]))
                r.phase_s[s, col, 1:] = (self.phase_start - t0, t1 - self.phase_start, env.now - t1)
            r.step_end_s[s] = env.now

    def _prepare_offload(self, steps_slots: list[np.ndarray]) -> None:
        L = self.model.num_moe_layers
        trace = self.cfg.trace
        n_train = int(trace.num_tokens * self.cfg.predictor_train_fraction)
        futures = None
        if self.cache.policy == "belady":
            futures = [[[self.plan.placement[m, g, np.flatnonzero(st[m, g] > 0)] for st in steps_slots]
                        for g in range(self.G)] for m in range(L)]
        resident = None
        if self.cache.policy == "static":
            resident = [list(r) for r in self.cache.resident] or top_experts(
                trace.rows(0, max(1, n_train)).load_matrix()[0], self.cache.capacity_experts)
        self.store = ExpertStore(self.cache, L, self.G, futures, resident)
        self.predictor = None
        if self.cache.prefetch == "predictor":
            train = np.asarray(trace.expert_ids[:n_train])
            self.predictor = TransitionPredictor(train, self.model.num_experts)

    def _prefetch(self, s: int, m: int, ids: np.ndarray, slots: np.ndarray) -> None:
        """Issue next-layer prefetches for each GPU: the oracle's true experts, or the predictor's guess."""
        if self.predictor is not None:
            guess = self.predictor.predict(m, np.asarray(ids[:, m, :], dtype=np.int64))
        for g in range(self.G):
            truth = self.plan.placement[m + 1, g, np.flatnonzero(slots[m + 1, g] > 0)].astype(np.int64)
            if self.predictor is None:
                predicted = truth
            else:
                predicted = np.intersect1d(guess, self.plan.placement[m + 1, g])
            self.score.add(predicted, truth)
            for e in predicted.tolist():
                if self.store.prefetch(m + 1, g, e):
                    self.fetch(s, m + 1, g, e, keep=True, prefetch=True)

    # ------------------------------------------------------------------ driver
    def run(self) -> None:
        self.env = simpy.Environment()
        self._hosts: dict[str, str] = {}
        self._memo: dict[tuple, Any] = {}
        self._links: dict[str, simpy.Resource] = {}
        self.env.process(self.offloaded(self.env) if self.offload else self.lockstep(self.env))
        self.env.run()
        if self.G > 1:  # dispatch, then combine (the same pairs reversed)
            for matrix in (self.total_pairs, self.total_pairs.T):
                for ln, v in self.cost.link_bytes(self.devices, matrix).items():
                    self.rec.add_link_bytes([ln], v)

    def info(self) -> dict[str, Any]:
        """Run description for the summary (deterministic: no wall-clock, no paths)."""
        cfg, cache = self.cfg, self.cache
        offload: dict[str, Any] = {"policy": cache.policy}
        if self.offload:
            offload.update({
                "capacity_experts": sorted(set(cache.capacity_experts)) if cache.capacity_experts else None,
                "miss": cache.miss, "prefetch": cache.prefetch, "hits": self.store.hits,
                "requests": self.store.requests,
                "prefetch_accuracy": self.score.as_dict() if cache.prefetch != "none" else None,
            })
        return {
            "cache_hit_rate": self.store.hit_rate if self.offload else None,
            "cache": offload,
            "phase": cfg.phase, "batch_size": cfg.batch_size, "overlap": cfg.overlap,
            "replica_split": cfg.replica_split, "dispatch": cfg.dispatch, "seed": cfg.seed,
            "cluster": self.cluster.name, "model": self.model.name, "plan": self.plan.planner,
            "devices": len(self.devices),
            "cost_sources": dict(sorted(self.cost.sources().items())),
        }


def simulate(cfg: SimConfig, cost: Any | None = None) -> SimResult:
    """Run ``cfg`` (with ``cost``, default the roofline CostModel of its cluster and model)."""
    from moesim.sim.timeline import lockstep_spans

    cfg.check()
    t0 = time.perf_counter()
    if cost is None:
        from moesim.cost import CostModel

        cost = CostModel(cfg.cluster, cfg.model)
    machine = Machine(cfg, cost)
    machine.run()
    wall = time.perf_counter() - t0
    extra = (lambda: lockstep_spans(machine)) if not machine.offload else None
    return SimResult(rec=machine.rec, layer_ids=machine.layer_ids, info=machine.info(), wall_seconds=wall,
                     memory_bytes=machine.memory, causality=machine.causality, more_spans=extra)
