"""The serving engine: a SimPy process per instance stepping its batches, fed by a process of arrivals.

Each step: the scheduler picks work (:mod:`moesim.serving.schedulers`), the step is priced from the
batch's routed trace rows and each request's own context (:mod:`moesim.serving.stepprice`), simulated
time advances by that much, then the work's tokens are computed and emitted (:mod:`moesim.serving.state`
gives the accounting). Disaggregated serving moves each request's KV cache from its prefill GPU to a
decode GPU in a process of its own, queued on both GPUs' links. Events are per step, never per token.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import numpy as np
import simpy

from moesim.errors import UserError
from moesim.plans.default import contiguous_placement, default_plan
from moesim.plans.plan import Plan
from moesim.serving.config import ServeConfig
from moesim.serving.kv import KvLayout, make_pools
from moesim.serving.requests import RequestSet, make_requests
from moesim.serving.schedulers import StepContext, make_scheduler
from moesim.serving.state import Instance, Req, Work
from moesim.serving.stepprice import AttentionLoad, StepPricer
from moesim.sim.recorder import Span
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel


def group_plan(model: MoEModel, devices: tuple[str, ...]) -> Plan:
    """The engines' default contiguous layout on ``devices`` (one GPU group)."""
    E, L = model.num_experts, model.num_moe_layers
    layer = contiguous_placement(E, len(devices), min(E, -(-E // len(devices))))
    return Plan(planner="contiguous", model=model.name, devices=devices, moe_layers=tuple(model.moe_layers),
                num_experts=E, placement=np.broadcast_to(layer, (L, *layer.shape)).astype(np.int32),
                params=MappingProxyType({}))


def split_gpus(cluster: Cluster, prefill_gpus: int | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Prefill and decode GPU groups: the first ``prefill_gpus`` GPUs, default half the nodes (or
    half of one node's GPUs)."""
    gpus = tuple(d.id for d in cluster.gpus)
    if prefill_gpus is None:
        per_node = len(gpus) // max(1, cluster.nodes)
        prefill_gpus = (cluster.nodes // 2) * per_node if cluster.nodes >= 2 else len(gpus) // 2
    if not 1 <= prefill_gpus < len(gpus):
        raise UserError(f"expected 1 to {len(gpus) - 1} prefill GPUs of {cluster.name}'s {len(gpus)}, "
                        f"got {prefill_gpus}", field="--prefill-gpus")
    return gpus[:prefill_gpus], gpus[prefill_gpus:]


class ServeEngine:
    """One serving run (build, then :meth:`run`)."""

    def __init__(self, cfg: ServeConfig, cost: Any):
        cfg.check()
        cfg.trace.check_model(cfg.model)
        if cfg.trace.num_layers != cfg.model.num_moe_layers:
            raise UserError(f"expected a trace of the {cfg.model.num_moe_layers} MoE layers of "
                            f"{cfg.model.name}, got {cfg.trace.num_layers} layer columns", field="trace")
        self.cfg, self.cost, self.model = cfg, cost, cfg.model
        self.scheduler = make_scheduler(cfg.scheduler)
        self.requests: RequestSet = make_requests(cfg.workload, cfg.trace)
        self.layout = KvLayout(cfg.model.kv_cache_bytes_per_token(), cfg.kv_block_tokens)
        self.draft = cfg.workload.speculative.draft_tokens
        self.accept = cfg.workload.speculative.acceptance_rate
        self.rng = np.random.default_rng([cfg.workload.seed, 1])  # acceptance draws
        self.env = simpy.Environment()
        self.instances = [self._instance(role, plan) for role, plan in self._plans()]
        rs = self.requests
        self.reqs = [Req(i, int(p), int(o), int(h), float(a)) for i, (p, o, h, a) in
                     enumerate(zip(rs.prompt, rs.output, rs.hit, rs.arrival_s, strict=True))]
        self.itl = array("d")
        self.spans: list[Span] = []
        self.links = {d: simpy.Resource(self.env) for inst in self.instances for d in inst.devices}
        self.kv_moved_bytes = 0.0
        self.kv_moves = 0
        self.done_events: dict[int, Any] = {}
        self.unfinished: dict[int, str] = {}

    def _plans(self) -> list[tuple[str, Plan]]:
        cfg = self.cfg
        if self.scheduler.roles == ("both",):
            plan = cfg.plan or default_plan(cfg.model, cfg.cluster)
            plan.validate(cfg.model)
            return [("both", plan)]
        pre, dec = split_gpus(cfg.cluster, cfg.prefill_gpus)
        return [("prefill", group_plan(cfg.model, pre)), ("decode", group_plan(cfg.model, dec))]

    def _instance(self, role: str, plan: Plan) -> Instance:
        cfg = self.cfg
        spec = cfg.cluster.device(plan.devices[0]).spec
        budget, seqs = cfg.defaults_for(spec.memory_bytes, spec.model)
        pools = make_pools(cfg.model, cfg.cluster, plan, self.layout, step_tokens=budget,
                           utilization=cfg.gpu_memory_utilization, runtime=cfg.runtime)
        pricer = StepPricer(self.cost, cfg.cluster, plan, cfg.trace.expert_ids, cfg.a2a, runtime=cfg.runtime)
        return Instance(role, tuple(plan.devices), pools, self.layout, pricer, budget, seqs)

    # ------------------------------------------------------------------ requests in and out
    def _submit(self, req: Req) -> None:
        blocks = self.layout.blocks(req.max_tokens())
        largest = min(max(p.capacity_blocks for p in inst.pools) for inst in self.instances)
        if blocks > largest:
            req.status = "rejected"
            self.unfinished[req.id] = (f"needs {blocks} KV blocks ({req.max_tokens()} tokens), more than a "
                                       f"GPU's pool ({largest} blocks)")
            self._close(req)
            return
        entry = self.instances[0]
        entry.waiting.append(req)
        self._wake(entry)

    def _close(self, req: Req) -> None:
        event = self.done_events.pop(req.id, None)
        if event is not None:
            event.succeed()

    def _wake(self, inst: Instance) -> None:
        if inst.wake is not None and not inst.wake.triggered:
            inst.wake.succeed()

    def arrivals(self) -> Iterator[Any]:
        """Open loop: each request at its time. Closed loop: ``concurrency`` clients, each sending its
        next request when the previous one finished (until the requests or the duration run out)."""
        w = self.cfg.workload
        if w.arrivals.kind != "closed-loop":
            for req in self.reqs:
                if req.arrival_s > self.env.now:
                    yield self.env.timeout(req.arrival_s - self.env.now)
                self._submit(req)
            return
        order = iter(self.reqs)

        def client() -> Iterator[Any]:
            for req in order:
                if w.duration_s is not None and self.env.now >= w.duration_s:
                    req.status = "not-sent"
                    self.unfinished[req.id] = "not sent: the workload's duration had passed"
                    continue
                req.arrival_s = self.env.now
                event = self.done_events[req.id] = self.env.event()
                self._submit(req)
                yield event

        for _ in range(min(w.arrivals.concurrency, len(self.reqs))):
            self.env.process(client())

    # ------------------------------------------------------------------ scheduling hooks
    def preempt(self, inst: Instance, victim: Req) -> None:
        """Free ``victim``'s KV: copy it to host memory (swap) or drop it to recompute later."""
        inst.running.remove(victim)
        assert victim.device is not None
        inst.seqs[victim.device] -= 1
        victim.preemptions += 1
        inst.preemptions += 1
        if self.layout.blocks(victim.max_tokens()) > inst.pools[victim.device].capacity_blocks:
            inst.release(victim)  # it would evict itself forever: give up on it, say why
            victim.status = "rejected"
            self.unfinished[victim.id] = "preempted alone: its KV cache outgrows an empty GPU pool"
            self._close(victim)
            return
        if self.cfg.preemption == "swap":
            nbytes = self.layout.blocks(victim.computed) * self.layout.block_bytes()
            inst.pending_s += inst.pricer.swap_s(inst.devices[victim.device], nbytes)
            inst.release(victim)
            victim.status = "swapped"
            inst.swapped.append(victim)
            return
        inst.release(victim)
        victim.device = None
        victim.computed = victim.hit
        victim.target = victim.prompt + victim.emitted  # prompt and outputs so far, then the next token
        victim.status = "waiting"
        inst.waiting.appendleft(victim)

    def admit_remote(self, inst: Instance, req: Req, device: int) -> None:
        """Disaggregated decode: hold ``req``'s KV on ``device`` and start copying it there."""
        src_inst, src_dev, src_blocks = self.instances[0], req.device, req.kv_blocks
        assert src_dev is not None
        req.kv_blocks, req.device = 0, None
        inst.start(req, device)
        req.status = "transfer"
        inst.hold(req, req.computed)
        self.env.process(self._move_kv(src_inst, src_dev, src_blocks, inst, req))

    def _move_kv(self, src_inst: Instance, src_dev: int, src_blocks: int, inst: Instance,
                 req: Req) -> Iterator[Any]:
        assert req.device is not None
        src, dst = src_inst.devices[src_dev], inst.devices[req.device]
        nbytes = req.computed * self.layout.bytes_per_token
        with self.links[src].request() as a, self.links[dst].request() as b:
            yield a
            yield b
            start = self.env.now
            seconds = inst.pricer.transfer_s(src, dst, nbytes)
            yield self.env.timeout(seconds)
        src_inst.pools[src_dev].resize(src_blocks, 0)
        self._wake(src_inst)  # a prefill GPU full of finished prompts can admit again
        self.kv_moved_bytes += nbytes
        self.kv_moves += 1
        if self.kv_moves <= self.cfg.timeline_steps:
            self.spans.append(Span(f"{dst} kv in", "kv transfer", start, seconds,
                                   {"request": req.id, "bytes": nbytes, "from": src}))
        req.status = "running"
        self._wake(inst)

    # ------------------------------------------------------------------ the instance loop
    def in_system(self) -> int:
        return sum(len(i.waiting) + len(i.running) + len(i.swapped) for i in self.instances)

    def loop(self, inst: Instance) -> Iterator[Any]:
        G = inst.num_devices
        while True:
            ctx = StepContext(self.draft, self.preempt, self.admit_remote, budget=[inst.token_budget] * G)
            work = self.scheduler.pick(inst, ctx)
            if not work:
                inst.wake = self.env.event()
                yield inst.wake
                inst.wake = None
                continue
            price, load = self._price(inst, work)
            start, in_system = self.env.now, self.in_system()
            seconds, inst.pending_s = price.seconds + inst.pending_s, 0.0
            yield self.env.timeout(seconds)
            self._record(inst, work, load, start, seconds, in_system)
            self._advance(inst, work, start, self.env.now)

    def _price(self, inst: Instance, work: list[Work]) -> tuple[Any, AttentionLoad]:
        rid = np.fromiter((w.req.id for w in work), np.int64, len(work))
        n = np.fromiter((w.tokens for w in work), np.int64, len(work))
        a = np.fromiter((w.req.computed for w in work), np.int64, len(work))
        dev = np.fromiter((w.req.device for w in work), np.int64, len(work))  # type: ignore[misc]
        pre = np.fromiter((w.prefill for w in work), bool, len(work))
        total = int(n.sum())
        item = np.repeat(np.arange(len(work)), n)
        pos = np.repeat(a - (np.cumsum(n) - n), n) + np.arange(total)
        rows = self.requests.rows(rid[item], pos)
        keys = n * a + n * (n + 1) / 2  # causal: position a + j attends a + j + 1 keys
        G = inst.num_devices

        def per(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
            return np.bincount(dev[mask], weights=values[mask], minlength=G).astype(float)

        tokens = n.astype(float)
        target = np.fromiter((w.req.target for w in work), np.int64, len(work))
        scored = np.where(pre, (a + n == target).astype(float), tokens)  # a prompt's last position only
        load = AttentionLoad(per(pre, tokens), per(pre, keys), per(~pre, tokens), per(~pre, keys),
                             per(np.ones_like(pre), scored))
        return inst.pricer.price(rows, dev[item], load), load

    def _record(self, inst: Instance, work: list[Work], load: AttentionLoad, start: float, seconds: float,
                in_system: int) -> None:
        log = inst.log
        log.start_s.append(start)
        log.dur_s.append(seconds)
        p, d = int(load.prefill_tokens.sum()), int(load.decode_tokens.sum())
        log.prefill_tokens.append(p)
        log.decode_tokens.append(d)
        log.requests.append(len(work))
        log.kv_used_blocks.append(inst.used_blocks())
        log.in_system.append(in_system)
        log.in_system_end.append(self.in_system())
        if len(log.start_s) <= self.cfg.timeline_steps:
            name = "mixed" if p and d else ("prefill" if p else "decode")
            for g, dev in enumerate(inst.devices):
                tokens = int(load.prefill_tokens[g] + load.decode_tokens[g])
                self.spans.append(Span(dev, f"{name} step", start, seconds,
                                       {"tokens": tokens, "step_prefill_tokens": p, "step_decode_tokens": d,
                                        "requests": len(work), "instance": inst.role}))

    def _advance(self, inst: Instance, work: list[Work], start: float, end: float) -> None:
        """Compute the work's positions, emit tokens, finish or hand off requests."""
        decodes = [w for w in work if not w.prefill]
        accepted = np.zeros(len(decodes), dtype=np.int64)
        if decodes and self.draft:
            drafts = np.fromiter((w.tokens - 1 for w in decodes), np.int64, len(decodes))
            accepted = np.minimum(self.rng.geometric(1.0 - self.accept, size=len(decodes)) - 1, drafts)
        leaving = 0
        acc = iter(accepted.tolist())
        for w in work:
            r = w.req
            if w.prefill:
                r.prefill_s += end - start
                r.computed += w.tokens
                if r.computed >= r.target:
                    self._emit(r, 1, end)
            else:
                k = next(acc) + 1
                r.computed += k
                self._emit(r, k, end)
            if r.emitted >= r.output:
                inst.release(r)
                r.status, r.finish_s = "done", end
                self._close(r)
            elif inst.role == "prefill" and not r.in_prefill:
                r.status = "remote"  # its KV stays here until the decode instance has copied it
                self.instances[1].waiting.append(r)
                self._wake(self.instances[1])
            else:
                inst.hold(r, r.computed)  # drafts that were not accepted give their blocks back
                continue
            inst.seqs[r.device] -= 1  # type: ignore[index]
            leaving += 1
        if leaving:
            inst.running = [r for r in inst.running if r.status in ("running", "transfer")]

    def _emit(self, r: Req, k: int, t: float) -> None:
        k = min(k, r.output - r.emitted)
        if r.emitted == 0:
            r.first_s = t
        else:
            self.itl.append(t - r.last_emit_s)
        r.emitted += k
        r.last_emit_s = t

    def run(self) -> None:
        self.env.process(self.arrivals())
        for inst in self.instances:
            self.env.process(self.loop(inst))
        self.env.run()
        for r in self.reqs:
            if r.status != "done" and r.id not in self.unfinished:
                self.unfinished[r.id] = f"stopped while {r.status}"


def serve(cfg: ServeConfig, cost: Any | None = None) -> Any:
    """Run ``cfg`` (with ``cost``, default the roofline CostModel); returns a
    :class:`moesim.serving.metrics.ServeResult`."""
    from moesim.serving.metrics import ServeResult

    t0 = time.perf_counter()
    if cost is None:
        from moesim.cost import CostModel

        cost = CostModel(cfg.cluster, cfg.model)
    engine = ServeEngine(cfg, cost)
    engine.run()
    result = ServeResult.of(engine, wall_seconds=time.perf_counter() - t0)
    if cfg.check_invariants:
        from moesim.serving.invariants import check

        result.info["invariants_checked"] = list(check(result))
    return result
