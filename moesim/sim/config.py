"""SimConfig: everything one simulation run needs, and the cache settings it resolves to."""

from __future__ import annotations

from dataclasses import dataclass

from moesim.errors import UserError
from moesim.memory import MemoryModel, gib, staging_experts
from moesim.parallel import Parallelism
from moesim.plans.plan import CachePlan, Plan
from moesim.sim.replan import ReplanConfig
from moesim.specs.hardware import Cluster
from moesim.specs.model import DTYPE_BYTES, MoEModel
from moesim.specs.runtime import Runtime
from moesim.traces.trace import RoutingTrace
from moesim.vocab import (
    AllToAll,
    CachePolicy,
    CacheReset,
    CacheScope,
    Dispatch,
    MissMode,
    Overlap,
    Phase,
    Prefetch,
    ReplicaSplit,
    parse,
)

_WORDS = (  # (field, its vocabulary, the name errors give it, None allowed: "take the plan's")
    ("phase", Phase, "phase", False),
    ("overlap", Overlap, "overlap", False),
    ("replica_split", ReplicaSplit, "replica_split", False),
    ("dispatch", Dispatch, "dispatch", False),
    ("cache_policy", CachePolicy, "cache", True),
    ("miss", MissMode, "miss", True),
    ("prefetch", Prefetch, "prefetch", True),
    ("a2a", AllToAll, "a2a", True),
    ("cache_scope", CacheScope, "cache_scope", False),
    ("cache_reset", CacheReset, "cache_reset", False),
)


@dataclass(frozen=True)
class SimConfig:
    """One run: ``trace`` replayed on ``cluster`` for ``model`` under ``plan`` (default: contiguous,
    everything resident). Cache fields left ``None`` are taken from ``plan.cache``."""

    cluster: Cluster
    model: MoEModel
    trace: RoutingTrace
    """Its layer columns are the model's MoE layers."""
    plan: Plan | None = None
    batch_size: int = 1
    """Decode: tokens per step; prefill: whole prompts per step."""
    steps: int | None = None
    """Steps to simulate (None: the whole trace once; more than the trace holds replays it from the start)."""
    phase: Phase = Phase.DECODE
    overlap: Overlap = Overlap.NONE
    """none: dispatch, experts, combine in sequence; layer: two micro-batches, one's all-to-all
    overlapping the other's experts; chunked: ``chunks`` micro-batches pipelined the same way."""
    chunks: int = 4
    seed: int = 0
    """Seeds the replica choice when ``replica_split == "random"``; every other choice is deterministic."""
    replica_split: ReplicaSplit = ReplicaSplit.EVEN
    """even: a replicated expert's tokens go round-robin over its replicas; random: uniform per token."""
    dispatch: Dispatch = Dispatch.EVEN
    """even: every replica of an expert is a candidate for every token; local: a token uses the
    replica on its own GPU if any, else those on its node, else all (``moesim.sim.replica_routing``);
    ``replica_split`` then picks among the candidates."""
    a2a: AllToAll | None = None
    """How the all-to-all moves tokens (``moesim.cost.a2a``); None: as the engines choose, ``flat`` on
    one node, else ``hierarchical`` for prefill and ``low-latency`` for decode."""
    batch_key: str | None = None
    """Cut steps by this per-row trace key (e.g. ``step_id``) instead of every ``batch_size`` rows."""
    cache_policy: CachePolicy | None = None
    cache_size: int | None = None
    """Experts cached per MoE layer (per GPU)."""
    expert_cache_bytes: float | None = None
    """Expert-cache budget per GPU; the cache size is the most experts per layer that fit."""
    gpu_memory_bytes: float | None = None
    """Whole memory per GPU: the expert cache gets what the model's non-expert weights, KV cache,
    activations and staging leave of it (:mod:`moesim.memory`)."""
    cache_scope: CacheScope = CacheScope.LAYER
    """layer: one cache per MoE layer and GPU; global: one per GPU holding the layers' capacities
    summed, shared by all layers over (layer, expert) keys (``moesim.sim.stores``)."""
    cache_reset: CacheReset = CacheReset.NONE
    """sequence: the caches empty before a step whose first row starts a new sequence (``seq_id``)."""
    miss: MissMode | None = None
    """Miss mode (None: the plan's); ``auto`` chooses fetch, lowbit, cpu or pim per missed expert."""
    prefetch: Prefetch | None = None
    lowbit_dtype: str = "int4"
    """Precision of experts fetched on a miss with ``miss == "lowbit"`` (HOBBIT)."""
    predictor_train_fraction: float = 0.5
    """Share of the trace's rows (from the start) the prefetch predictor is fitted on."""
    timeline_steps: int = 20
    """Steps kept for the Perfetto timeline (the rest is only in the frame and the summary)."""
    check_invariants: bool = False
    """Check token conservation, memory and causality while and after running (docs/invariants.md);
    a violation raises ``moesim.sim.invariants.InvariantViolation``."""
    tp: int | None = None
    """Attention tensor-parallel degree (``--tp``; :mod:`moesim.parallel`); None: 1, or G / ``dp``."""
    dp: int | None = None
    """Attention data-parallel groups (``--dp``); None: G / ``tp``."""
    ep: int | None = None
    """Expert-parallel degree (``--ep``); None: every GPU of the plan."""
    runtime: Runtime | None = None
    """The serving framework's overheads and memory reserve (``--runtime``; None: kernels only). Give
    the cost model the same one (``CostModel(..., runtime=...)``): its kernel launches follow it."""
    replan: ReplanConfig | None = None
    """Online re-placement (``--replan``; :mod:`moesim.sim.replan`, docs/replan.md); None: the plan
    serves the whole run. Lockstep runs only (every expert resident)."""

    def __post_init__(self) -> None:
        # The plain words are accepted (``phase="prefill"``); the fields then hold the members.
        for name, enum, shown, optional in _WORDS:
            value = getattr(self, name)
            if value is not None or not optional:
                object.__setattr__(self, name, parse(enum, value, field=shown))

    def check(self) -> None:
        """Raise :class:`UserError` for a value outside its allowed range."""
        if self.batch_size < 1:
            raise UserError(f"expected a batch of at least 1, got {self.batch_size}", field="batch")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"expected at least 1 step, got {self.steps}", field="steps")
        if self.chunks < 1:
            raise UserError(f"expected at least 1 chunk, got {self.chunks}", field="chunks")
        if self.lowbit_dtype not in DTYPE_BYTES:
            raise UserError(f"expected a dtype among {', '.join(DTYPE_BYTES)}, got {self.lowbit_dtype!r}",
                            field="lowbit_dtype")
        sizes = [f for f, v in (("--cache-size", self.cache_size),
                                ("--expert-cache", self.expert_cache_bytes),
                                ("--gpu-memory", self.gpu_memory_bytes)) if v is not None]
        if len(sizes) > 1:
            raise UserError(f"give one of --cache-size, --expert-cache and --gpu-memory, got "
                            f"{' and '.join(sizes)}", field=sizes[0])

    def parallelism(self, devices: int, expert_tp: int = 1) -> Parallelism:
        """The degrees of a run on ``devices`` GPUs, checked against the model and against the plan's
        ``expert_tp`` (GPUs per EP group; ``--ep`` defaults to ``devices / expert_tp``)."""
        if self.ep is not None:
            Parallelism.of(devices, tp=self.tp, dp=self.dp, ep=self.ep)  # --ep must divide the GPUs
        if self.ep is not None and self.ep * expert_tp != devices:
            raise UserError(f"the plan shards each expert over {expert_tp} GPU(s), i.e. --ep "
                            f"{devices // expert_tp} on its {devices} GPUs; got --ep {self.ep} (plan for "
                            f"--ep {self.ep} with moesim plan --ep {self.ep})", field="--ep")
        p = Parallelism.of(devices, tp=self.tp, dp=self.dp, ep=devices // expert_tp)
        p.check_model(self.model)
        return p

    def cache_plan(self, plan: Plan) -> CachePlan:
        """The effective cache: flags override the plan's CachePlan; ``none`` when neither sets one."""
        base = plan.cache or CachePlan()
        policy = self.cache_policy or base.policy
        budgeted = self.expert_cache_bytes is not None or self.gpu_memory_bytes is not None
        if policy == "none" and (self.cache_size is not None or budgeted):
            policy = "lru"  # a size or a budget alone asks for a cache
        L = self.model.num_moe_layers
        capacity: tuple[int, ...] = tuple(base.capacity_experts)
        if self.cache_size is not None:
            capacity = (int(self.cache_size),) * L
        elif budgeted:
            capacity = (self._experts_per_layer(plan, policy),) * L
        if policy not in ("none", "static") and len(capacity) != L:
            raise UserError(f"cache policy {policy!r} needs a cache size (--cache-size, --expert-cache or "
                            "--gpu-memory)", field="--cache-size")
        if policy not in ("none", "static") and min(capacity) < self.model.top_k:
            # A token's K experts are requested together and must all be resident at once.
            raise UserError(f"expected a cache of at least top-k = {self.model.top_k} experts per layer, "
                            f"got {min(capacity)}", field="--cache-size")
        if self.cache_size is not None and self.cache_size > self.model.num_experts:
            raise UserError(f"expected a cache of at most the {self.model.num_experts} experts of a layer, "
                            f"got {self.cache_size}", field="--cache-size")
        return CachePlan(
            policy=policy,
            capacity_experts=capacity if policy != "none" else (),
            resident=tuple(base.resident),
            miss=self.miss or base.miss,
            prefetch=self.prefetch or base.prefetch,
            params=base.params,
        )

    def _experts_per_layer(self, plan: Plan, policy: str) -> int:
        """Experts per MoE layer the expert budget holds: ``--expert-cache``, or what the model leaves of
        ``--gpu-memory`` (:class:`moesim.memory.MemoryModel`)."""
        base = plan.cache or CachePlan()
        layout = MemoryModel.for_run(self.model, self.cluster, plan.devices, batch_size=self.batch_size,
                                     parallel=self.parallelism(len(plan.devices)), runtime=self.runtime,
                                     a2a_mode=str(self.a2a) if self.a2a is not None else None,
                                     phase=str(self.phase))
        flag, budget = "--expert-cache", self.expert_cache_bytes
        if budget is None:
            flag, miss = "--gpu-memory", self.miss or base.miss
            staging = staging_experts(policy, miss, self.prefetch or base.prefetch, self.model.top_k)
            budget = layout.expert_budget(plan.devices[0], float(self.gpu_memory_bytes or 0.0),
                                          staging_experts=staging,
                                          staging_dtype=self.lowbit_dtype if miss == "lowbit" else None)
        per_layer = layout.experts_per_layer(budget)
        K = self.model.top_k
        if per_layer < K and policy != "static":
            need = self.model.expert_bytes() * self.model.num_moe_layers * K
            raise UserError(f"an expert budget of {gib(budget)} holds {per_layer} experts per layer; a cache "
                            f"needs at least top-k = {K} ({gib(need)})", field=flag)
        return per_layer
