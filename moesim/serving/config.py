"""ServeConfig: everything one serving run needs (the workload, the engine's settings, the SLOs)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moesim.errors import UserError
from moesim.plans.plan import Plan
from moesim.serving.kv import PREEMPTION_MODES
from moesim.serving.schedulers import SCHEDULERS
from moesim.serving.workload import WorkloadSpec
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.specs.runtime import Runtime
from moesim.traces.trace import RoutingTrace
from moesim.vocab import AllToAll, parse

GIB = float(1 << 30)
LARGE_GPU_BYTES = 70 * GIB
"""vLLM's engine defaults per GPU memory (vllm-project/vllm @99d7eb5, ``vllm/engine/arg_utils.py``,
``EngineArgs._set_default_args``, API-server context): 8192 batched tokens and 1024 sequences on GPUs
of at least 70 GiB other than the A100, else 2048 and 256."""


@dataclass(frozen=True)
class Slo:
    """Latency objectives a request must all meet to count as good (None: not checked), seconds."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.ttft_s, self.tpot_s, self.e2e_s))


def parse_slo(text: str | None) -> Slo:
    """``ttft=200ms,tpot=50ms`` (also ``e2e``; units ms or s, a bare number is ms as in vLLM's
    ``--goodput``) as an :class:`Slo`."""
    if not text:
        return Slo()
    values: dict[str, float] = {}
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        key, raw = key.strip().lower(), raw.strip().lower()
        if not sep or key not in ("ttft", "tpot", "e2e"):
            raise UserError(f"expected ttft=..., tpot=... or e2e=... separated by commas, got {part!r}",
                            field="--slo")
        scale = 1e-3
        if raw.endswith("ms"):
            raw = raw[:-2]
        elif raw.endswith("s"):
            raw, scale = raw[:-1], 1.0
        try:
            value = float(raw) * scale
        except ValueError:
            raise UserError(f"expected a time such as 200ms or 0.2s for {key}, got {part!r}",
                            field="--slo") from None
        if not math.isfinite(value) or value <= 0:
            raise UserError(f"expected a time > 0 for {key}, got {part!r}", field="--slo")
        values[f"{key}_s"] = value
    return Slo(**values)


@dataclass(frozen=True)
class ServeConfig:
    """One serving run: ``workload`` sent to ``model`` on ``cluster``, routed by ``trace``."""

    cluster: Cluster
    model: MoEModel
    trace: RoutingTrace
    workload: WorkloadSpec
    plan: Plan | None = None
    """Colocated serving: the expert placement (default: contiguous on every GPU)."""
    scheduler: str = "chunked"
    token_budget: int | None = None
    """Tokens per step per GPU (data-parallel attention rank); None: vLLM's default for its memory."""
    max_seqs: int | None = None
    """Running requests per GPU; None: vLLM's default for its memory."""
    kv_block_tokens: int = 16
    """Tokens per KV block (vLLM's default block size)."""
    preemption: str = "recompute"
    gpu_memory_utilization: float = 0.9
    """Share of each GPU's memory the engine may use (vLLM's default 0.9); the KV pool is what the
    weights, resident experts and activations leave of it."""
    prefill_gpus: int | None = None
    """Disaggregated: GPUs of the prefill group (the first ones); None: half the nodes, or half the
    GPUs of a single node."""
    slo: Slo = field(default_factory=Slo)
    a2a: str | None = None
    """All-to-all mode (``moesim.cost.a2a``: flat, hierarchical, low-latency); None: per step, ``flat``
    inside one node, across nodes hierarchical for steps with prefill and low-latency for decode-only
    steps (SGLang's ``--deepep-mode auto``)."""
    runtime: Runtime | None = None
    """Framework overheads per step and layer, and the memory the runtime reserves (``--runtime``)."""
    timeline_steps: int = 2000
    """Steps per instance drawn in the Perfetto timeline."""
    check_invariants: bool = False

    def check(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"expected one of {', '.join(SCHEDULERS)}, got {self.scheduler!r}",
                            field="--scheduler")
        if self.preemption not in PREEMPTION_MODES:
            raise UserError(f"expected one of {', '.join(PREEMPTION_MODES)}, got {self.preemption!r}",
                            field="--preemption")
        for flag, value in (("--token-budget", self.token_budget), ("--max-seqs", self.max_seqs)):
            if value is not None and not 1 <= value <= 10_000_000:
                raise UserError(f"expected 1 to 10000000, got {value}", field=flag)
        if not 1 <= self.kv_block_tokens <= 4096:
            raise UserError(f"expected 1 to 4096 tokens per block, got {self.kv_block_tokens}",
                            field="--kv-block")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise UserError(f"expected a fraction in (0, 1], got {self.gpu_memory_utilization}",
                            field="--gpu-memory-utilization")
        if self.scheduler != "disaggregated" and self.prefill_gpus is not None:
            raise UserError("only the disaggregated scheduler splits the GPUs", field="--prefill-gpus")
        if self.scheduler == "disaggregated" and self.plan is not None:
            raise UserError("a plan covers one GPU group; disaggregated serving lays out each group "
                            "contiguously", field="--plan")
        if self.a2a is not None:
            parse(AllToAll, self.a2a, field="--a2a")
        self.workload.check()

    def defaults_for(self, memory_bytes: float, gpu_model: str) -> tuple[int, int]:
        """(token budget, max sequences) per GPU (the set values, else vLLM's for its memory and model)."""
        large = memory_bytes >= LARGE_GPU_BYTES and "a100" not in gpu_model.lower()
        return (self.token_budget or (8192 if large else 2048), self.max_seqs or (1024 if large else 256))
