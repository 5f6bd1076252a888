"""How a run's GPUs split the model: attention tensor-parallel (TP) x data-parallel (DP), experts
expert-parallel (EP).

The G GPUs of a plan form ``dp`` groups of ``tp`` consecutive GPUs (in the plan's device order).
Each group runs attention, the dense FFNs, the shared experts and the LM head for its share of the
step's tokens, every GPU holding 1/tp of their heads and columns (Megatron-style; the group
all-reduces each of those blocks' outputs over its ring, :mod:`moesim.cost.allreduce`). After
attention each GPU owns 1/tp of its group's tokens and routes them to the experts, which are spread
over all G GPUs (``ep = G``). ``tp = 1, dp = G`` is data-parallel attention (what the simulator ran
before parallelism was a setting); ``tp = G, dp = 1`` is TP attention with EP experts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.errors import UserError
from moesim.specs.model import MoEModel


@dataclass(frozen=True)
class Parallelism:
    """Degrees over G GPUs (``tp * dp == G``, ``ep == G``); see the module docstring."""

    tp: int = 1
    dp: int = 1
    ep: int = 1

    @property
    def devices(self) -> int:
        return self.tp * self.dp

    @classmethod
    def of(cls, devices: int, *, tp: int | None = None, dp: int | None = None,
           ep: int | None = None) -> Parallelism:
        """The degrees for ``devices`` GPUs from the flags given (``--tp``, ``--dp``, ``--ep``): a missing
        ``tp`` is ``devices / dp`` (or 1), a missing ``dp`` is ``devices / tp``, a missing ``ep`` is
        ``devices``; one UserError naming the flag when they do not multiply to the device count."""
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
        if ep != devices:
            raise UserError(f"expected --ep = the {devices} GPUs of the plan (experts are spread over every "
                            f"GPU; tensor parallelism inside experts, --ep below the GPU count, is not "
                            f"simulated), got {ep}", field="--ep")
        return cls(tp=tp, dp=dp, ep=ep)

    def check_model(self, model: MoEModel) -> None:
        """TP must split the attention heads evenly; KV heads are split evenly or each replicated on
        ``tp / kv_heads`` GPUs (vLLM ``QKVParallelLinear``); the FFN widths must split evenly."""
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

    def group_tokens(self, owned: np.ndarray) -> np.ndarray:
        """[S, G] tokens each GPU's attention processes: the sum of its group's owned tokens."""
        S, G = owned.shape
        sums = owned.reshape(S, G // self.tp, self.tp).sum(axis=2)
        return np.repeat(sums, self.tp, axis=1)

    def describe(self) -> dict[str, int]:
        return {"tp": self.tp, "dp": self.dp, "ep": self.ep}


def device_token_counts(batch: np.ndarray, num_devices: int) -> np.ndarray:
    """[S, G] tokens each device owns for attention (contiguous equal blocks of each step's batch)."""
    g = np.arange(num_devices + 1, dtype=np.int64)
    bounds = -(-(g[None, :] * np.asarray(batch)[:, None]) // num_devices)  # ceil(g b / G): block g's start
    return np.diff(bounds, axis=1)
