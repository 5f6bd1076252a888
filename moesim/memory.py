"""One memory model: the bytes each GPU holds for a model, and how many routed experts fit a budget.

The cache planners (``moesim plan --gpu-memory``), the simulator (``moesim simulate --gpu-memory``
and its memory check) and the reports all size GPU memory here. Per GPU it counts, each tensor in
its own dtype (:mod:`moesim.specs.precision`):

- the non-expert weights it holds (attention, embedding and LM head, router, shared experts, dense
  FFNs): one layout, the run's :class:`~moesim.parallel.Parallelism` (``tp x dp`` GPUs, experts over
  all of them; default: data-parallel attention, ``dp = G``): every GPU holds all layers, 1/tp of the
  attention heads, FFN columns and vocabulary and the whole router;
- the KV cache of the largest step's sequences of its TP group (the batch split in contiguous blocks
  over the GPUs, :func:`~moesim.parallel.device_token_counts`), each of ``context_tokens`` tokens,
  its KV heads under TP (MLA's latent cache whole);
- the activation workspace of one layer for the whole step;
- communication buffers (DeepEP's, when the all-to-all uses them: :mod:`moesim.comm_buffers`);
- a staging buffer for fetched misses (a static cache that fetches: K experts, 2K with prefetch);
- the runtime's reserve (:mod:`moesim.specs.runtime`: vLLM leaves 10% of the GPU);
- the routed experts it keeps resident (:func:`resident_expert_counts`: its placement slots, or the
  expert cache's slots, one cache per MoE layer on every GPU).

The cache planners (``moesim plan --gpu-memory``), ``moesim simulate``'s budget sizing
(``--gpu-memory``) and its memory check all build a :class:`MemoryModel` with the run's parallelism,
runtime, batch and all-to-all buffers, so one budget gives the same expert slots everywhere and a plan
that fits per ``plan`` fits per ``simulate`` (for the same batch and context) and the other way round.

:class:`MemoryBreakdown` holds one device's figures in bytes, by name, so that per-tensor
precision, tensor/data-parallel sharding or a serving KV pool can change how a field is computed
(in :class:`MemoryModel`) without changing the code that reads it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

from moesim.comm_buffers import run_comm_buffer_bytes
from moesim.errors import UserError
from moesim.memory_parts import (
    NonExpertWeights,
    activation_bytes,
    kv_bytes_per_token,
    non_expert_weights,
    resident_expert_bytes,
    resident_expert_counts,
    staging_experts,
)
from moesim.parallel import Parallelism, device_token_counts
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.specs.runtime import Runtime

__all__ = ["DEFAULT_CONTEXT_TOKENS", "GIB", "MemoryBreakdown", "MemoryModel", "NonExpertWeights",
           "activation_bytes", "device_capacities", "gib", "kv_bytes_per_token", "kv_pool_bytes",
           "memory_params", "non_expert_weights", "resident_expert_bytes", "resident_expert_counts",
           "staging_experts"]

GIB = float(1 << 30)
DEFAULT_CONTEXT_TOKENS = 4096
"""Context each sequence of the batch attends to when sizing the KV cache (tokens)."""


def gib(nbytes: float) -> str:
    return f"{nbytes / GIB:.4g} GiB"


@dataclass(frozen=True)
class MemoryBreakdown:
    """What one device holds, in bytes, against its ``capacity_bytes`` (the budget it is given)."""

    device: str
    capacity_bytes: float
    attention_bytes: float = 0.0
    embeddings_bytes: float = 0.0
    router_bytes: float = 0.0
    shared_experts_bytes: float = 0.0
    dense_ffn_bytes: float = 0.0
    kv_cache_bytes: float = 0.0
    activation_bytes: float = 0.0
    staging_bytes: float = 0.0
    comm_buffer_bytes: float = 0.0
    """All-to-all buffers (:mod:`moesim.comm_buffers`)."""
    reserve_bytes: float = 0.0
    """What the runtime keeps for itself (:meth:`moesim.specs.runtime.Runtime.reserve_bytes`)."""
    expert_bytes: float = 0.0
    """Routed experts kept resident: placement slots or the expert cache."""

    @property
    def non_expert_weight_bytes(self) -> float:
        return (self.attention_bytes + self.embeddings_bytes + self.router_bytes + self.shared_experts_bytes
                + self.dense_ffn_bytes)

    @property
    def fixed_bytes(self) -> float:
        """Everything but the resident experts."""
        return (self.non_expert_weight_bytes + self.kv_cache_bytes + self.activation_bytes
                + self.staging_bytes + self.comm_buffer_bytes + self.reserve_bytes)

    @property
    def total_bytes(self) -> float:
        return self.fixed_bytes + self.expert_bytes

    def parts(self) -> dict[str, float]:
        """The fixed bytes by part (what ``CachePlan.params["memory_bytes"]`` reports)."""
        return {"attention": self.attention_bytes, "embeddings": self.embeddings_bytes,
                "router": self.router_bytes, "shared_experts": self.shared_experts_bytes,
                "dense_ffn": self.dense_ffn_bytes, "kv_cache": self.kv_cache_bytes,
                "activations": self.activation_bytes, "staging": self.staging_bytes,
                "comm_buffers": self.comm_buffer_bytes, "runtime_reserve": self.reserve_bytes}

    def as_dict(self) -> dict[str, float]:
        """Every part (the fixed ones and ``experts``), ``total`` and ``capacity`` in bytes: what
        ``moesim simulate`` prints per device."""
        return {**self.parts(), "experts": self.expert_bytes, "total": self.total_bytes,
                "capacity": self.capacity_bytes}

    def describe_fixed(self, unit: str = "GiB") -> str:
        """``non-expert weights 2.99 GiB + KV cache 0.5 GiB + ...`` (the parts that are not experts),
        in GiB or decimal ``GB``."""
        parts = [("non-expert weights", self.non_expert_weight_bytes), ("KV cache", self.kv_cache_bytes),
                 ("activations", self.activation_bytes), ("staging", self.staging_bytes),
                 ("communication buffers", self.comm_buffer_bytes), ("runtime reserve", self.reserve_bytes)]
        scale = GIB if unit == "GiB" else 1e9
        return " + ".join(f"{name} {v / scale:.4g} {unit}" for name, v in parts if v > 0) or "nothing"


@dataclass(frozen=True)
class MemoryModel:
    """How ``model``'s memory spreads over ``gpus`` GPUs serving ``batch_size`` sequences: the one layout
    of the planners, ``moesim simulate``'s budget sizing and its memory check (module docstring)."""

    model: MoEModel
    gpus: int = 1
    batch_size: int = 1
    """Sequences (decode: tokens) per step."""
    context_tokens: int = DEFAULT_CONTEXT_TOKENS
    parallel: Parallelism | None = None
    """The run's degrees (None: data-parallel attention, ``tp = 1, dp = gpus``)."""
    runtime: Runtime | None = None
    comm_buffer_bytes: float = 0.0
    """All-to-all buffers per GPU (:mod:`moesim.comm_buffers`)."""

    def __post_init__(self) -> None:
        if self.gpus < 1:
            raise UserError(f"expected at least 1 GPU, got {self.gpus}", field="gpus")
        if self.batch_size < 1:
            raise UserError(f"expected a batch of at least 1, got {self.batch_size}", field="batch_size")
        if self.parallel is not None and self.parallel.devices != self.gpus:
            raise UserError(f"expected --tp x --dp = the {self.gpus} GPUs, got {self.parallel.tp} x "
                            f"{self.parallel.dp}", field="--tp")

    @classmethod
    def for_run(cls, model: MoEModel, cluster: Cluster, devices: Sequence[str], *, batch_size: int = 1,
                context_tokens: int = DEFAULT_CONTEXT_TOKENS, parallel: Parallelism | None = None,
                runtime: Runtime | None = None, a2a_mode: str | None = None, phase: str = "decode",
                max_tokens_per_rank: int | None = None) -> MemoryModel:
        """The layout of a run on ``devices``: its all-to-all buffers by ``a2a_mode`` (None: the
        engines' default for ``phase`` on the devices' nodes, :func:`moesim.cost.a2a.default_mode`) for
        ``max_tokens_per_rank`` tokens (None: the batch's largest block per GPU)."""
        from moesim.cost.a2a import default_mode

        gpus = len(devices)
        if a2a_mode is None:
            nodes = len({cluster.device(d).node for d in devices})
            a2a_mode = str(default_mode(phase, nodes))
        if max_tokens_per_rank is None:
            max_tokens_per_rank = int(device_token_counts(np.array([batch_size]), gpus).max())
        return cls(model, gpus=gpus, batch_size=batch_size, context_tokens=context_tokens,
                   parallel=parallel, runtime=runtime,
                   comm_buffer_bytes=run_comm_buffer_bytes(model, a2a_mode, gpus, max_tokens_per_rank))

    @property
    def layout(self) -> Parallelism:
        return self.parallel if self.parallel is not None else Parallelism.of(self.gpus)

    def kv_cache_bytes(self, kv_tokens: np.ndarray | None = None) -> np.ndarray:
        """[G] KV bytes each GPU holds: the largest step's KV tokens of its TP group (``kv_tokens`` [S, G]:
        the keys of the sequences each GPU owns, per step; None: one decode step of ``batch_size``
        sequences of ``context_tokens`` each, split in contiguous blocks), its KV heads."""
        p = self.layout
        if kv_tokens is None:
            kv_tokens = device_token_counts(np.array([self.batch_size]), self.gpus) * self.context_tokens
        return p.group_tokens(np.asarray(kv_tokens)).max(axis=0) * kv_bytes_per_token(self.model, p.tp)

    @cached_property
    def _weights(self) -> NonExpertWeights:
        """One GPU's non-expert weights (the same on every GPU of the layout)."""
        return non_expert_weights(self.model, self.layout.tp)

    def devices(self, capacity_bytes: Mapping[str, float], *, kv_tokens: np.ndarray | None = None,
                step_tokens: float | None = None,
                staging_experts: int = 0, staging_dtype: str | None = None,
                expert_bytes: Mapping[str, float] | None = None) -> dict[str, MemoryBreakdown]:
        """Every GPU's breakdown, in the layout's device order (``capacity_bytes``: device -> the budget
        it is given); ``kv_tokens`` as in :meth:`kv_cache_bytes`, ``step_tokens``
        the largest step's tokens (None: ``batch_size``), ``expert_bytes`` the resident experts."""
        if len(capacity_bytes) != self.gpus:
            raise UserError(f"expected {self.gpus} devices, got {len(capacity_bytes)}", field="devices")
        kv = self.kv_cache_bytes(kv_tokens)
        experts = expert_bytes or {}
        return {d: self.device(d, c, kv_cache_bytes=float(kv[g]), step_tokens=step_tokens,
                               staging_experts=staging_experts, staging_dtype=staging_dtype,
                               expert_bytes=float(experts.get(d, 0.0)))
                for g, (d, c) in enumerate(capacity_bytes.items())}

    def device(self, device_id: str, capacity_bytes: float, *, staging_experts: int = 0,
               staging_dtype: str | None = None, kv_cache_bytes: float | None = None,
               step_tokens: float | None = None, expert_bytes: float = 0.0) -> MemoryBreakdown:
        """One GPU's breakdown. ``kv_cache_bytes`` (None: the first GPU's share of the batch, the
        largest) and ``step_tokens`` (None: ``batch_size``) as in :meth:`devices`."""
        w = self._weights
        kv = float(self.kv_cache_bytes()[0]) if kv_cache_bytes is None else float(kv_cache_bytes)
        return MemoryBreakdown(
            device=device_id, capacity_bytes=float(capacity_bytes),
            attention_bytes=w.attention_bytes, embeddings_bytes=w.embeddings_bytes,
            router_bytes=w.router_bytes, shared_experts_bytes=w.shared_experts_bytes,
            dense_ffn_bytes=w.dense_ffn_bytes, kv_cache_bytes=kv,
            activation_bytes=activation_bytes(self.model, self.batch_size if step_tokens is None
                                              else step_tokens),
            staging_bytes=staging_experts * self.model.expert_bytes(staging_dtype),
            comm_buffer_bytes=float(self.comm_buffer_bytes),
            reserve_bytes=(self.runtime or Runtime()).reserve_bytes(float(capacity_bytes)),
            expert_bytes=float(expert_bytes),
        )

    def expert_slots(self, breakdown: MemoryBreakdown) -> int:
        """Expert slots that fit in what the fixed part leaves of the budget (0 when nothing is left): a
        slot holds one expert, or its 1/expert_tp shard inside an EP group (:mod:`moesim.plans.ep_groups`)."""
        free = breakdown.capacity_bytes - breakdown.fixed_bytes
        return max(0, math.floor(free / (self.model.expert_bytes() / self.layout.expert_tp) + 1e-9))

    def common_slots(self, capacity_bytes: Mapping[str, float], *, staging_experts: int = 0,
                     staging_dtype: str | None = None,
                     least_per_layer: int = 0) -> tuple[int, dict[str, MemoryBreakdown]]:
        """Expert slots every GPU has (the fewest any budget leaves: a cache plan gives every GPU the same
        per-layer caches) and each GPU's breakdown without experts; one :class:`UserError` naming the
        device, its need by part and its budget when the fixed part and ``least_per_layer`` experts of
        every MoE layer do not fit."""
        out = self.devices(capacity_bytes, staging_experts=staging_experts, staging_dtype=staging_dtype)
        L = self.model.num_moe_layers
        least = least_per_layer * L * self.model.expert_bytes()
        for d, b in out.items():
            need = b.fixed_bytes + least
            if need > b.capacity_bytes:
                also = (f" + {least_per_layer} experts for each of its {L} layers' caches {gib(least)}"
                        if least else "")
                raise UserError(
                    f"device {d} needs {gib(need)} ({b.describe_fixed()}{also}) but the budget is "
                    f"{gib(b.capacity_bytes)}", field="gpu_memory")
        return min(self.expert_slots(b) for b in out.values()), out

    def expert_budget(self, device_id: str, gpu_memory_bytes: float, *, staging_experts: int = 0,
                      staging_dtype: str | None = None) -> float:
        """Bytes left for routed experts when the whole device has ``gpu_memory_bytes``; a one-line
        :class:`UserError` naming ``--gpu-memory`` and ``--expert-cache`` when nothing is left."""
        b = self.device(device_id, gpu_memory_bytes, staging_experts=staging_experts,
                        staging_dtype=staging_dtype)
        if b.fixed_bytes >= gpu_memory_bytes:
            raise UserError(
                f"{gib(gpu_memory_bytes)} is the whole memory of {device_id}, and {self.model.name} needs "
                f"{gib(b.fixed_bytes)} there before any expert ({b.describe_fixed()}); give the device's "
                "memory, or the expert budget alone with --expert-cache "
                f"{gib(gpu_memory_bytes).replace(' ', '')}",
                field="--gpu-memory")
        return gpu_memory_bytes - b.fixed_bytes

    def experts_per_layer(self, expert_budget_bytes: float) -> int:
        """Experts of every MoE layer that an expert budget holds (one cache per layer)."""
        return int(expert_budget_bytes // (self.model.expert_bytes() * self.model.num_moe_layers))

    def fit(self, capacity_bytes: Mapping[str, float], resident_expert_bytes: Mapping[str, float], *,
            cached: bool = False, **parts: Any) -> dict[str, MemoryBreakdown]:
        """:meth:`devices` with the resident experts, and one :class:`UserError` naming the device, its
        need by part and its capacity when one does not fit (``parts``: :meth:`devices`'s keywords)."""
        model = self.model
        what = (f"{'its expert cache' if cached else 'expert weights'} "
                f"({model.expert_bytes() / 1e6:.1f} MB per {model.weight_dtype} expert)")
        hint = ("; cache fewer experts, use a smaller batch or a smaller --weight-dtype" if cached
                else "; use more devices or fewer slots")
        out = self.devices(capacity_bytes, expert_bytes=resident_expert_bytes, **parts)
        for d, b in out.items():
            if b.total_bytes > b.capacity_bytes:
                raise UserError(
                    f"device {d} needs {b.total_bytes / 1e9:.2f} GB: {b.expert_bytes / 1e9:.2f} GB for "
                    f"{what} + {b.describe_fixed('GB')}, but has {b.capacity_bytes / 1e9:.2f} GB{hint}",
                    field="cache.capacity_experts" if cached else "placement")
        return out


def device_capacities(cluster: Cluster, devices: Sequence[str],
                      budget_bytes: float | None = None) -> dict[str, float]:
    """Each device's memory (bytes), or ``budget_bytes`` where given; one :class:`UserError` for a device
    the cluster lacks or a budget above what a device has."""
    out: dict[str, float] = {}
    for d in devices:
        try:
            capacity = cluster.device(d).spec.memory_bytes
        except KeyError:
            raise UserError(f"no device {d!r} in cluster {cluster.name}", field="devices") from None
        if budget_bytes is not None and budget_bytes > capacity:
            raise UserError(f"device {d}: a budget of {gib(budget_bytes)} exceeds its memory of "
                            f"{gib(capacity)}", field="gpu_memory")
        out[d] = float(capacity if budget_bytes is None else budget_bytes)
    return out


def kv_pool_bytes(model: MoEModel, cluster: Cluster, devices: Sequence[str],
                  resident_expert_bytes: Mapping[str, float], *, step_tokens: float,
                  utilization: float = 1.0, runtime: Runtime | None = None) -> dict[str, float]:
    """Bytes each device has left for a serving KV cache: what the engine may use, ``utilization`` x
    its memory (vLLM's ``gpu_memory_utilization``) but no more than the runtime's reserve leaves (both
    say what the framework keeps out, so the stricter counts, not their sum), minus its non-expert
    weights (whole on every GPU: each runs the attention of its own requests, data-parallel), resident
    experts and the activations of a ``step_tokens``-token step; one :class:`UserError` naming the
    device when nothing is left."""
    G = len(devices)
    layout = MemoryModel(model, gpus=G, parallel=Parallelism(tp=1, dp=G, ep=G))
    rt = runtime or Runtime()
    out: dict[str, float] = {}
    for d in devices:
        try:
            memory = cluster.device(d).spec.memory_bytes
        except KeyError:
            raise UserError(f"no device {d!r} in cluster {cluster.name}", field="devices") from None
        capacity = min(memory * utilization, memory - rt.reserve_bytes(memory))
        b = layout.device(d, capacity, kv_cache_bytes=0.0, step_tokens=step_tokens,
                          expert_bytes=resident_expert_bytes.get(d, 0.0))
        if b.total_bytes >= capacity:
            raise UserError(
                f"device {d} has no memory left for a KV cache: {b.expert_bytes / 1e9:.2f} GB of expert "
                f"weights + {b.describe_fixed('GB')} fill the {capacity / 1e9:.2f} GB the engine may use "
                f"({utilization:g} x {memory / 1e9:.2f} GB); use more devices, a smaller --weight-dtype "
                "or a smaller token budget", field="placement")
        out[d] = capacity - b.total_bytes
    return out


def memory_params(layout: MemoryModel, breakdowns: Mapping[str, MemoryBreakdown],
                  resident_bytes: float) -> dict[str, Any]:
    """What a cache plan's ``params`` say about memory: ``memory_bytes`` (the first GPU's fixed parts),
    ``memory_bytes_per_device`` (every GPU's :meth:`MemoryBreakdown.as_dict` with its resident experts),
    ``resident_expert_bytes`` per GPU and the ``memory_layout`` they were computed for."""
    full = {d: replace(b, expert_bytes=float(resident_bytes)) for d, b in breakdowns.items()}
    p = layout.layout
    return {"memory_bytes": next(iter(breakdowns.values())).parts(),
            "memory_bytes_per_device": {d: b.as_dict() for d, b in full.items()},
            "resident_expert_bytes": {d: float(resident_bytes) for d in full},
            "memory_layout": {**p.describe(), "runtime": (layout.runtime or Runtime()).name,
                              "batch_size": layout.batch_size, "context_tokens": layout.context_tokens,
                              "comm_buffer_bytes": layout.comm_buffer_bytes}}
