"""The simulator: a SimPy replay of a routing trace's steps through every layer of the model.

One step, per layer: attention, router (and shared experts) on each GPU -> dispatch all-to-all ->
expert compute on each device holding a chosen replica -> combine all-to-all. Durations come from
the cost model, computed for a chunk of steps at once in numpy (:mod:`moesim.sim.stepcost`). When
the GPUs proceed in lockstep there is one SimPy event per (step, layer), and with overlap one process
per micro-batch (:mod:`moesim.sim.events`); with offloading each GPU's expert call is timed on a
plain clock, its fetches and CPU/PIM runs queued on resource lanes (:mod:`moesim.sim.offloaded`,
:mod:`moesim.sim.resources`). Never an event per token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import simpy

from moesim.cost.a2a import AllToAllSpec, default_mode, forwarding
from moesim.errors import UserError
from moesim.memory import (
    MemoryBreakdown,
    MemoryModel,
    device_capacities,
    staging_experts,
)
from moesim.plans.default import default_plan
from moesim.plans.plan import CachePlan, Plan
from moesim.sim import chunkrecord
from moesim.sim.config import SimConfig
from moesim.sim.costs import SimCost
from moesim.sim.dispatch import Dispatch, NodeCounting, ReplicaTable, dispatch, owners
from moesim.sim.expert_tp import ExpertGroups
from moesim.sim.forwarding import Forwarding
from moesim.sim.invariants import check_all, expected_pairs
from moesim.sim.lockstep import kept_link_loads, lockstep_clock, lockstep_events
from moesim.sim.misses import MissSetup, make_miss_handler
from moesim.sim.offloaded import OffloadedRun, Step
from moesim.sim.recorder import Recorder
from moesim.sim.replan import Replanning
from moesim.sim.replica_routing import LocalRouting, local_dispatch, node_index
from moesim.sim.resources import HostLinks
from moesim.sim.results import SimResult
from moesim.sim.stepcost import ChunkCosts, StepCoster, device_token_counts
from moesim.sim.timeline import LockstepTimeline, MicroBatches
from moesim.sim.workload import Workload, build_workload
from moesim.specs.model_file import precision_summary
from moesim.traces.transitions import Transitions
from moesim.vocab import CachePolicy, CacheReset, Overlap, ReplicaSplit
from moesim.vocab import Dispatch as DispatchMode

CHUNK_ENTRIES = 1_500_000
"""Steps are costed in chunks of about this many (step, layer, device, device) entries (a chunk's
[steps, layers, GPUs] arrays then mostly stay in a core's cache: at batch 1, 2.5M measured 1.2x slower
and 0.8M a little slower, from fixed costs per chunk) ..."""
CHUNK_ROUTED = 2_000_000
"""... and about this many routed (step, token, layer, top-k) entries (bounds the int64 temporaries
of dispatch at large batches: peak memory, page faults)."""

OVERLAP_CHUNKS = {Overlap.NONE: 1, Overlap.LAYER: 2}
"""Micro-batches per MoE layer of each overlap mode (``chunked``: ``SimConfig.chunks``)."""


def resolve_plan(cfg: SimConfig) -> tuple[Plan, CachePlan]:
    """The plan a run uses (``cfg.plan`` or the default layout) and its effective cache; refuses a
    trace that does not match the model or a plan that is not valid for it."""
    cfg.trace.check_model(cfg.model)
    if cfg.trace.num_layers != cfg.model.num_moe_layers:
        raise UserError(f"expected a trace of the {cfg.model.num_moe_layers} MoE layers of "
                        f"{cfg.model.name}, got {cfg.trace.num_layers} layer columns", field="trace")
    plan = cfg.plan or default_plan(cfg.model, cfg.cluster, ep=cfg.ep)
    plan.validate(cfg.model)
    return plan, cfg.cache_plan(plan)


class Machine:
    """One run: the plan, workload, costs and recorder, the SimPy environment and its process."""

    def __init__(self, cfg: SimConfig, cost: SimCost, *, events: bool = False):
        """``events``: run the lockstep path as one SimPy event per (step, layer) even without
        micro-batches (what :meth:`lockstep_clock` computes as arrays; tests compare the two)."""
        self.events = events
        self.cfg, self.cost, self.model, self.cluster = cfg, cost, cfg.model, cfg.cluster
        plan, self.cache = resolve_plan(cfg)
        self.plan = replace(plan, cache=self.cache if self.cache.policy != CachePolicy.NONE else None)
        self.devices: tuple[str, ...] = tuple(plan.devices)
        self.G = len(self.devices)
        self.parallel = cfg.parallelism(self.G, plan.expert_tp)
        self.runtime = cfg.runtime or getattr(cost, "runtime", None)
        self.workload: Workload = build_workload(cfg.trace, phase=cfg.phase, batch_size=cfg.batch_size,
                                                 steps=cfg.steps, batch_key=cfg.batch_key)
        self.groups = ExpertGroups.of_run(self.parallel, self.model, self.devices, cached=self.cache.policy
                                          != CachePolicy.NONE, replan=cfg.replan is not None)
        routing_plan = self.plan if self.groups is None else self.groups.routing_plan(self.plan)
        self.table = ReplicaTable.of(routing_plan)
        self.rng = np.random.default_rng(cfg.seed) if cfg.replica_split == ReplicaSplit.RANDOM else None
        self.routing = (LocalRouting.of(self.table, node_index(self.cluster, self.devices))
                        if cfg.dispatch == DispatchMode.LOCAL and self.table.has_replicas else None)
        n_chunks = OVERLAP_CHUNKS.get(cfg.overlap, cfg.chunks)
        self.a2a = AllToAllSpec.for_model(cfg.model, cfg.a2a or default_mode(
            cfg.phase, len(set(node_index(self.cluster, self.devices).tolist()))))
        self.breakdown = self._check_memory()
        self.memory = {d: b.total_bytes for d, b in self.breakdown.items()}
        self.forward = (Forwarding(*forwarding(self.cluster, self.devices))
                        if self.a2a.forwards and self.G > 1 else None)
        self.coster = StepCoster(cost, self.devices, phase=cfg.phase, overlap_chunks=n_chunks, a2a=self.a2a,
                                 parallel=self.parallel, runtime=self.runtime,
                                 expert_calls=self.cache.policy == CachePolicy.NONE)
        self.layer_ids = np.arange(cfg.model.num_layers)
        self.moe_cols = np.asarray(cfg.model.moe_layers, dtype=np.int64)
        # the MoE columns as a slice where they are consecutive (a view: no gather or scatter)
        contiguous = len(self.moe_cols) and np.array_equal(
            self.moe_cols, np.arange(self.moe_cols[0], self.moe_cols[0] + len(self.moe_cols)))
        self.moe_index: slice | np.ndarray = (slice(int(self.moe_cols[0]), int(self.moe_cols[-1]) + 1)
                                              if contiguous else self.moe_cols)
        self.is_moe = self.coster.is_moe
        # MoE index of each model layer (-1: dense), for the compiled record of timed chunks
        self.moe_of: np.ndarray | None = None
        if chunkrecord.available():
            self.moe_of = np.full(cfg.model.num_layers, -1, dtype=np.int64)
            self.moe_of[self.moe_cols] = np.arange(len(self.moe_cols))
        self.rec = Recorder(self.workload.num_steps, cfg.model.num_layers, list(self.devices),
                            cfg.timeline_steps)
        self.rec.step_tokens[:] = self.workload.tokens()
        self.total_pairs = np.zeros((self.G, self.G))
        self.group_bytes = np.zeros((self.G // self.parallel.expert_tp, 2))  # expert TP all-gather, reduce
        self.keep_pairs: dict[int, np.ndarray] = {}
        self.keep_pre: dict[int, np.ndarray] = {}
        self.keep_parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # step -> ([L, G, P], [L, groups])
        self.keep_expert_comm: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # expert TP
        self.keep_slices: dict[tuple[int, int], MicroBatches] = {}  # overlapped layers of kept steps
        self.env = simpy.Environment()
        offloading = self.cache.policy != CachePolicy.NONE
        self.hosts = HostLinks(self.cluster)
        # a miss mode the cluster cannot run is refused before anything is costed
        self.miss = (make_miss_handler(self.cache.miss, MissSetup(self.cluster, self.devices, self.hosts,
                                                                  cfg.lowbit_dtype)) if offloading else None)
        self.replan = self._replanning(offloading) if cfg.replan is not None else None
        # Offloaded runs cost every step up front: Belady's caches read the future.
        self.chunk_data = list(self.chunks()) if offloading else []
        self.offloaded = self._offloaded_run() if offloading else None
        self.invariants_checked: list[str] = []

    # ------------------------------------------------------------------ setup
    def _check_memory(self) -> dict[str, MemoryBreakdown]:
        """Each GPU's bytes by part (:meth:`moesim.memory.MemoryModel.fit`); refuses a plan that does not
        fit."""
        wl, cache = self.workload, self.cache
        owned = device_token_counts(wl.tokens(), self.G)
        layout = MemoryModel.for_run(self.model, self.cluster, self.devices, parallel=self.parallel,
                                     runtime=self.runtime, a2a_mode=str(self.a2a.mode),
                                     max_tokens_per_rank=int(owned.max(initial=1)))
        resident = self.plan.resident_expert_bytes(self.model)
        return layout.fit(device_capacities(self.cluster, self.devices), resident,
                          cached=cache.policy != CachePolicy.NONE, kv_tokens=self._kv_tokens(),
                          step_tokens=float(wl.tokens().max(initial=0)),
                          staging_experts=staging_experts(cache.policy, cache.miss, cache.prefetch,
                                                          self.model.top_k),
                          staging_dtype=self.cfg.lowbit_dtype if cache.miss == "lowbit" else None)

    def _kv_tokens(self) -> np.ndarray:
        """[S, G] tokens of KV cache each device holds in each step. Decode: each token attends its
        own context (the step's mean). Prefill: a device holds, per prompt it computes tokens of,
        the keys up to its last such token (``pos + 1``), so whole prompts hold the sum of their
        lengths, not tokens x mean context."""
        wl = self.workload
        owned = device_token_counts(wl.tokens(), self.G)
        if wl.phase != "prefill":
            return owned * wl.context_tokens[:, None]
        seq, pos = np.asarray(self.cfg.trace.seq_id), np.asarray(self.cfg.trace.pos, dtype=np.int64)
        out = np.zeros_like(owned)
        for s, rows in enumerate(wl.steps):
            if len(rows):
                _, key = np.unique(owners(len(rows), self.G) * (int(seq[rows].max()) + 1) + seq[rows],
                                   return_inverse=True)
                last = np.zeros(int(key.max()) + 1, dtype=np.int64)
                np.maximum.at(last, key, pos[rows] + 1)
                first = np.zeros(len(last), dtype=np.int64)
                first[key] = owners(len(rows), self.G)  # the device of each (device, prompt) key
                out[s] = np.bincount(first, weights=last, minlength=self.G).astype(np.int64)
        return out

    def chunks(self) -> Iterator[tuple[int, np.ndarray, Dispatch, ChunkCosts]]:
        """(first step, ids [S, B, L, K], dispatch, costs) for consecutive chunks of steps; with
        re-placement, chunks end at the policy's checks and where an overlapped copy lands."""
        wl, trace = self.workload, self.cfg.trace
        L = self.model.num_moe_layers
        routed = L * trace.top_k * max(1, int(wl.tokens().max(initial=1)))
        # a lockstep run is done with a chunk's counts before it counts the next (an offloaded run
        # keeps them all: fresh arrays)
        scratch = None if self.cache.policy != CachePolicy.NONE else {}
        nodes = (NodeCounting(node_index(self.cluster, self.devices), timing=self.coster.node_timing(),
                              scratch=scratch) if self.coster.node_blocks is not None else None)
        # per step: [L, G, G] pair counts, or per node [L, G, N+1] + [L, N, G+1] (+ [L, G, 2]), or
        # counted and timed in one pass: [L, G, slots] + a few [L, G] (no per-node tables)
        timed = (nodes is not None and nodes.timing is not None and self.replan is None and self.rng is None
                 and self.forward is None and self.routing is None and not self.table.has_replicas)
        width = (self.G if nodes is None else self.table.slots_per_device + 4 if timed
                 else 2 * (nodes.num_nodes + 2))
        per_step = L * self.G * width
        size = max(1, min(CHUNK_ENTRIES // max(1, per_step), CHUNK_ROUTED // routed))
        a, rp = 0, self.replan
        while a < wl.num_steps:
            b = min(a + size, wl.num_steps)
            if rp is not None:  # a plan changes only between chunks: end this one at the next check
                self._serve(rp.plan_for(a))
                b = min(b, rp.boundary(a))
            ids, d, c = self._chunk(a, b, nodes)
            if rp is not None:
                keep = rp.steps_before_landing(a, c)
                if a + keep < b:  # an overlapped copy lands inside: the rest runs on the new plan
                    b = a + keep
                    ids, d, c = self._chunk(a, b, nodes)
                rp.observe(a, ids)
                self.rec.plan_index[a:b] = rp.plan_index
            yield a, ids, d, c
            a = b

    def _chunk(self, a: int, b: int, nodes: NodeCounting | None) -> tuple[np.ndarray, Dispatch, ChunkCosts]:
        """Ids, dispatch and costs of steps ``[a, b)`` under the serving plan's replica table."""
        wl, trace = self.workload, self.cfg.trace
        rows = wl.steps[a:b]
        count = None if nodes is None else replace(nodes, head_steps=max(0, self.rec.timeline_steps - a),
                                                    keep_slots=not self.coster.aggregates_settled())
        ids, owner = wl.step_ids(trace, a, b, self.G)
        routed = ids if self.groups is None else self.groups.route(ids, owner)
        d = (dispatch(routed, owner, self.table, self.rng, count, self.forward) if self.routing is None
             else local_dispatch(routed, owner, self.table, self.routing, self.rng, count, self.forward))
        if d.slot_tokens is None and d.aggregate_keys is None:  # an aggregate outgrew its bits: the rows
            assert count is not None
            d = dispatch(routed, owner, self.table, self.rng, replace(count, keep_slots=True), self.forward)
        batch = np.array([len(r) for r in rows])
        outputs = self._outputs(rows) if self.cfg.phase == "prefill" else None
        return ids, d, self.coster.chunk(a, d, batch, wl.context_tokens[a:b], outputs)

    def _serve(self, plan: Plan | None) -> None:
        """From now on dispatch to ``plan``'s replicas (None: no change)."""
        if plan is None:
            return
        self.table = ReplicaTable.of(plan)
        self.routing = (LocalRouting.of(self.table, node_index(self.cluster, self.devices))
                        if self.cfg.dispatch == DispatchMode.LOCAL and self.table.has_replicas else None)

    def _replanning(self, offloading: bool) -> Replanning:
        """The run's re-placement (``cfg.replan``); refused for offloaded runs, whose expert
        residency is the cache's (re-placing under a cache is not modelled)."""
        assert self.cfg.replan is not None
        if offloading:
            raise UserError("--replan needs every expert resident: offloaded runs (--cache ...) keep the "
                            "cache's placement", field="--replan")
        return Replanning(self.cfg.replan, self.plan, cost=self.cost, devices=self.devices,
                          node_of=node_index(self.cluster, self.devices),
                          expert_bytes=self.model.expert_bytes(), num_steps=self.workload.num_steps,
                          overlapped_moe=self.cfg.overlap != "none")

    def _outputs(self, rows: list[np.ndarray]) -> np.ndarray:
        """Tokens the LM head scores in each prefill step: the last of each prompt in it."""
        seq = np.asarray(self.cfg.trace.seq_id)
        return np.array([len(np.unique(seq[r])) if len(r) else 0 for r in rows], dtype=np.int64)

    def _offloaded_run(self) -> OffloadedRun:
        """Caches, fetch queues and prefetch of an offloaded run (the static default pins the most
        requested experts of the predictor's training rows)."""
        cfg, trace = self.cfg, self.cfg.trace
        assert self.miss is not None
        new_seq = self.workload.sequence_starts(trace) if cfg.cache_reset == CacheReset.SEQUENCE else None
        steps = [Step(a + i, ids[i], d.slot_tokens[i], c, i, bool(new_seq is not None and new_seq[a + i]))
                 for a, ids, d, c in self.chunk_data for i in range(d.slot_tokens.shape[0])]
        n_train = int(trace.num_tokens * cfg.predictor_train_fraction)
        return OffloadedRun(
            self.rec, self.cost, self.model, self.cache, self.plan.placement, self.devices, steps,
            hosts=self.hosts, miss=self.miss,
            warmup_load=lambda: trace.rows(0, max(1, n_train)).load_matrix()[0],
            fit_predictor=lambda: Transitions.fit(trace.expert_ids, self.model.num_experts, stop=n_train),
            audit=cfg.check_invariants, scope=cfg.cache_scope)

    def record(self, a: int, d: Dispatch, c: ChunkCosts) -> None:
        """Fill the recorder's arrays for a chunk (the parts that do not depend on the schedule)."""
        chunkrecord.record(self, a, d, c)

    # ------------------------------------------------------------------ driver
    def run(self) -> None:
        """Run the lockstep clock (or the SimPy process) to the end, then add the all-to-alls' link
        bytes."""
        if self.offloaded is not None:
            for a, _ids, d, c in self.chunk_data:
                self.record(a, d, c)
            self.offloaded.run()
        elif self.events or self.cfg.overlap != "none":
            self.env.process(lockstep_events(self, self.env))
            self.env.run()
        else:
            lockstep_clock(self)
        if self.offloaded is not None:
            self._offloaded_expert_split()
        if self.G > 1:  # dispatch, then combine (the same copies reversed)
            a2a = self.a2a
            for matrix in (self.total_pairs * a2a.dispatch_bytes, self.total_pairs.T * a2a.combine_bytes):
                for ln, v in self.cost.link_bytes(self.devices, matrix).items():
                    self.rec.add_link_bytes([ln], v)
        if self.groups is not None:
            for j, group in enumerate(self.groups.groups):
                for nbytes, kind in zip(self.group_bytes[j], ("all_gather", "reduce_scatter"), strict=True):
                    for ln, v in self.cost.ring(group).link_bytes(float(nbytes), kind).items():
                        self.rec.add_link_bytes([ln], v)
        if self.cfg.check_invariants:
            self.invariants_checked = check_all(
                self.rec, self.moe_cols, expected_pairs(self.cfg.trace.expert_ids, self.workload.steps),
                self.memory, {d: self.cluster.device(d).spec.memory_bytes for d in self.devices},
                self.offloaded.store.overfull if self.offloaded is not None else [], self.causality)

    def _offloaded_expert_split(self) -> None:
        """Per (step, MoE layer) of an offloaded run: the longest GPU expert call (its busy time less
        the pre-dispatch compute recorded before) and the longest CPU/PIM run beside it."""
        r, m, G = self.rec, self.moe_cols, self.G
        for a, _ids, d, c in self.chunk_data:
            b = a + d.num_steps
            pre = c.pre if c.parts is None else c.parts.busy()
            r.expert_gpu_s[a:b][:, m] = (r.busy_s[a:b, :, :G] - pre)[:, m, :].max(axis=2)
        if r.busy_s.shape[2] > G:
            r.expert_side_s[:, m] = r.busy_s[:, :, G:][:, m, :].max(axis=2)

    def lockstep_timeline(self) -> LockstepTimeline | None:
        """Plain data to draw a lockstep run's first steps (None for an offloaded run)."""
        if self.offloaded is not None:
            return None
        link_loads = kept_link_loads(self.cost, self.devices, self.a2a, dict(self.keep_pairs),
                                     len(self.moe_cols))
        rings = [(self.cost.ring(g).links, self.cost.ring(g).edges_per_link)
                 for g in self.parallel.groups(self.devices)] if self.parallel.tp > 1 else []
        expert_rings = [(self.cost.ring(g).links, self.cost.ring(g).edges_per_link)
                        for g in self.groups.groups] if self.groups is not None else []
        return LockstepTimeline(self.devices, tuple(int(c) for c in self.moe_cols), dict(self.keep_pre),
                                link_loads, dict(self.keep_slices), dict(self.keep_parts),
                                rings, dict(self.keep_expert_comm), expert_rings)

    @property
    def causality(self) -> list[tuple[float, float]]:
        return self.offloaded.causality if self.offloaded is not None else []

    def info(self) -> dict[str, Any]:
        """Run description for the summary (deterministic: no wall-clock, no paths)."""
        cfg, off = self.cfg, self.offloaded
        cache: dict[str, Any] = {"policy": str(self.cache.policy)}
        if off is not None:
            cache.update(off.info(), scope=str(cfg.cache_scope), reset=str(cfg.cache_reset))
        out: dict[str, Any] = {
            "cache_hit_rate": off.store.hit_rate if off is not None else None,
            "cache": cache,
            "phase": str(cfg.phase), "batch_size": cfg.batch_size, "overlap": str(cfg.overlap),
            "replica_split": str(cfg.replica_split), "dispatch": str(cfg.dispatch), "seed": cfg.seed,
            "a2a": str(self.a2a.mode),
            "cluster": self.cluster.name, "model": self.model.name, "plan": self.plan.planner,
            "devices": len(self.devices), "parallel": self.parallel.describe(),
            "runtime": (self.runtime.name if self.runtime is not None else "kernels"),
            "precision": precision_summary(self.model),
            "cost_sources": dict(sorted(self.cost.sources().items())),
        }
        if self.invariants_checked:
            out["invariants_checked"] = list(self.invariants_checked)
        if self.replan is not None:
            out["replan"] = self.replan.info()
        return out


def simulate(cfg: SimConfig, cost: SimCost | None = None) -> SimResult:
    """Run ``cfg`` (with ``cost``, default the roofline CostModel of its cluster and model)."""
    cfg.check()
    t0 = time.perf_counter()
    if cost is None:
        from moesim.cost import CostModel

        cost = CostModel(cfg.cluster, cfg.model, runtime=cfg.runtime)
    machine = Machine(cfg, cost)
    machine.run()
    wall = time.perf_counter() - t0
    return SimResult(rec=machine.rec, layer_ids=machine.layer_ids, info=machine.info(),
                     memory_bytes=machine.memory, causality=machine.causality,
                     memory_breakdown={d: b.as_dict() for d, b in machine.breakdown.items()},
                     lockstep=machine.lockstep_timeline(), timing={"wall_seconds": wall})
