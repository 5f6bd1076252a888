"""How a run's GPUs split the model: attention tensor-parallel (TP) x data-parallel (DP), experts
expert-parallel (EP).

The G GPUs of a plan form ``dp`` groups of ``tp`` consecutive GPUs (in the plan's device order).
Each group runs attention, the dense FFNs, the shared experts and the LM head for its share of the
step's tokens, every GPU holding 1/tp of their heads and columns (Megatron-style; the group
all-reduces each of those blocks' outputs over its ring, :mod:`moesim.cost.allreduce`). After
attention each GPU owns 1/tp of its group's tokens and routes them to the experts, which are spread
over the ``ep`` EP groups. ``tp = 1, dp = G`` is data-parallel attention (what the simulator ran
before parallelism was a setting); ``tp = G, dp = 1`` is TP attention with EP experts.

Tensor parallelism inside experts (``ep < G``): the G GPUs form ``ep`` EP groups of ``expert_tp = G /
ep`` consecutive GPUs (SGLang's MoE-TP groups, ``python/sglang/srt/distributed/parallel_state.py``
``initialize_model_parallel`` @5c69e32: ``moe_tp_size = tp_size // moe_ep_size``, group ``j`` = ranks
``[j * moe_tp_size, (j + 1) * moe_tp_size)``). Every GPU of a group holds 1/expert_tp of each of the
group's experts (gate/up columns and down rows, as Megatron's column/row split), so it reads 1/expert_tp
of their weight bytes and does 1/expert_tp of their FLOPs for every token routed to the group. Tokens
reach the group as in Megatron-Core's all-to-all dispatcher (``megatron/core/transformer/moe/
token_dispatcher.py`` @0014f13, ``MoEAlltoAllTokenDispatcher``): the all-to-all sends a token copy
from GPU ``i`` to the group member with the same position (``i mod expert_tp``; SGLang's EP groups
are those strided ranks), the group all-gathers what its members received, computes, and
reduce-scatters the partial outputs before the combine all-to-all sends them back
(:mod:`moesim.sim.expert_tp`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.errors import UserError
from moesim.specs.model import MoEModel


@dataclass(frozen=True)
class Parallelism:
    """Degrees over G GPUs (``tp * dp == G``, ``ep`` divides G); see the module docstring."""

    tp: int = 1
    dp: int = 1
    ep: int = 1

    @property
    def devices(self) -> int:
        return self.tp * self.dp

    @property
    def expert_tp(self) -> int:
        """GPUs per EP group, each holding 1/expert_tp of the group's experts (1: whole experts)."""
        return self.devices // self.ep if self.ep else 1

    @classmethod
    def of(cls, devices: int, *, tp: int | None = None, dp: int | None = None,
           ep: int | None = None) -> Parallelism:
        """The degrees for ``devices`` GPUs from the flags given (``--tp``, ``--dp``, ``--ep``): a missing
        ``tp`` is ``devices / dp`` (or 1), a missing ``dp`` is ``devices / tp``, a missing ``ep`` is
        ``devices``; one UserError naming the flag when they do not multiply to the device count or
        ``--ep`` does not divide it."""
        for flag, v in (("--tp", tp), ("--dp", dp), ("--ep", ep)):
            if v is not None and v < 1:
                raise UserError(f"expected at least 1, got {v}", field=flag)
        if tp is None:
            tp = devices // dp if dp is not None and devices % dp == 0 else 1
        if dp is None:
            dp = devices // tp if devices % tp == 0 else 0
        if tp * dp != devices:
            raise UserError(f"expected --tp x --dp = the {devices} GPUs of the plan, got --tp {tp} x --dp "
                            f"{dp or '?'}", field="--tp")
        ep = devices if ep is None else ep
        if ep > devices or devices % ep:
            raise UserError(f"expected --ep to divide the {devices} GPUs of the plan (EP groups of "
                            f"{devices} / --ep GPUs, each holding a 1/(GPUs/--ep) shard of its experts), "
                            f"got {ep}", field="--ep")
        return cls(tp=tp, dp=dp, ep=ep)

    def check_model(self, model: MoEModel) -> None:
        """TP must split the attention heads evenly; KV heads are split evenly or each replicated on
        ``tp / kv_heads`` GPUs (vLLM ``QKVParallelLinear``); the FFN widths must split evenly, and the
        expert FFN width over ``expert_tp`` (SGLang refuses ``moe_intermediate_size % moe_tp_size``)."""
        if model.expert_intermediate_size % self.expert_tp:
            raise UserError(f"--ep {self.ep} shards each expert over {self.expert_tp} GPUs, which does not "
                            f"divide expert_intermediate_size ({model.expert_intermediate_size}) of "
                            f"{model.name}", field="--ep")
        if self.tp == 1:
            return
        a = model.attention
        if a.num_heads % self.tp:
            raise UserError(f"--tp {self.tp} does not divide the {a.num_heads} attention heads of "
                            f"{model.name}", field="--tp")
        kv = a.num_kv_heads
        if a.kind == "gqa" and kv % self.tp and self.tp % kv:
            raise UserError(f"--tp {self.tp} neither divides nor is a multiple of the {kv} KV heads of "
                            f"{model.name}", field="--tp")
        for name, width in (("dense_intermediate_size", model.dense_intermediate_size),
                            ("shared_expert_intermediate_size", model.shared_expert_intermediate_size)):
            if width % self.tp:
                raise UserError(f"--tp {self.tp} does not divide {name} ({width}) of {model.name}",
                                field="--tp")

    def groups(self, devices: tuple[str, ...]) -> list[tuple[str, ...]]:
        """The TP groups: consecutive blocks of ``tp`` of ``devices``."""
        return [tuple(devices[i:i + self.tp]) for i in range(0, len(devices), self.tp)]

    def expert_groups(self, devices: tuple[str, ...]) -> list[tuple[str, ...]]:
        """The EP groups: consecutive blocks of ``expert_tp`` of ``devices``."""
        k = self.expert_tp
        return [tuple(devices[i:i + k]) for i in range(0, len(devices), k)]

    def group_tokens(self, owned: np.ndarray) -> np.ndarray:
        """[S, G] tokens each GPU's attention processes: the sum of its group's owned tokens."""
        S, G = owned.shape
        sums = owned.reshape(S, G // self.tp, self.tp).sum(axis=2)
        return np.repeat(sums, self.tp, axis=1)

    def describe(self) -> dict[str, int]:
        """``tp``, ``dp``, ``ep`` (and ``expert_tp`` when experts are sharded)."""
        out = {"tp": self.tp, "dp": self.dp, "ep": self.ep}
        if self.expert_tp > 1:
            out["expert_tp"] = self.expert_tp
        return out


def device_token_counts(batch: np.ndarray, num_devices: int) -> np.ndarray:
    """[S, G] tokens each device owns for attention (contiguous equal blocks of each step's batch)."""
    g = np.arange(num_devices + 1, dtype=np.int64)
    bounds = -(-(g[None, :] * np.asarray(batch)[:, None]) // num_devices)  # ceil(g b / G): block g's start
    return np.diff(bounds, axis=1)
