"""Closed-form time of one prompt's prefill on a CPU/GPU hybrid host (KTransformers, Fiddler-style).

Every routed expert lives in host memory and runs on the CPU; attention, the router, shared experts
and dense layers run on one GPU; the layer's hidden states cross PCIe to the host and back. The GPU
and the CPU take turns within a layer (KTransformers v0.2/v0.3 run them one after the other; its
later "expert deferral" overlaps them), and routing is uniform (``tokens * top_k / experts`` rows
per expert). This is the estimate docs/cost.md holds next to published prefill throughputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost.model import CostModel


@dataclass(frozen=True)
class HybridPrefill:
    """Seconds of one prompt's prefill by part (all layers summed)."""

    tokens: int
    gpu_s: float
    """Attention, router, shared experts and dense FFNs on the GPU."""
    cpu_experts_s: float
    pcie_s: float
    """Hidden states to the host and the experts' output back, per MoE layer."""

    @property
    def total_s(self) -> float:
        return self.gpu_s + self.cpu_experts_s + self.pcie_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s


def hybrid_prefill(
    cost: CostModel, gpu: str, cpu: str, tokens: int, *, dtype: str | None = None
) -> HybridPrefill:
    """One ``tokens``-long prompt: causal attention over half the prompt on average (as
    ``moesim simulate`` counts prefill context), experts on ``cpu`` in ``dtype`` (default: the model's)."""
    m = cost.model
    context = max(1, round(tokens / 2))
    moe_layers = set(m.moe_layers)
    per_expert = np.full(m.num_experts, tokens * m.top_k / m.num_experts)
    gpu_s = cpu_s = pcie_s = 0.0
    moe_gpu = float(cost.router_s(gpu, tokens) + cost.shared_expert_s(gpu, tokens))
    cpu_moe = float(cost.cpu_expert_s(cpu, per_expert, dtype))
    hidden = tokens * m.activation_bytes_per_token
    round_trip = float(cost.transfer_s(gpu, cpu, hidden) + cost.transfer_s(cpu, gpu, hidden))
    for layer in range(m.num_layers):
        gpu_s += float(cost.attention_s(gpu, tokens, context, "prefill", layer=layer))
        if layer in moe_layers:
            gpu_s += moe_gpu
            cpu_s += cpu_moe
            pcie_s += round_trip
        else:
            gpu_s += float(cost.dense_ffn_s(gpu, tokens))
    return HybridPrefill(tokens=tokens, gpu_s=gpu_s, cpu_experts_s=cpu_s, pcie_s=pcie_s)
