"""``moesim calibrate --validate``: time whole MoE layers on a GPU and compare with the prediction.

A layer here is what the cost model prices for one MoE layer on one GPU: the router (gate GEMM,
softmax, top-k), the routed experts (align, grouped GEMMs, combine: ``fused_moe``) and the
shared experts where the model has them. The measured time is the median over CUDA-graph
replays with L2 flushed, inputs redrawn each repetition. The prediction is
``moesim.cost.CostModel`` (router + permute/combine + expert compute + shared experts) built
with the calibration, for the same routing histograms; on a GPU that no built-in cluster
describes, the calibration's ``fused_moe`` table alone (router and shared experts left out) is
used and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import median
from typing import Any

from moesim.calibration.sweep import model_shapes
from moesim.calibration.tables import Calibration

# GPU name token -> built-in single-node cluster whose GPUs the cost model should use.
_CLUSTERS = (("H100", "h100x8"), ("H200", "h200x8"), ("B200", "b200x8"), ("A100", "a100x8"),
             ("4090", "rtx4090-workstation"), ("3090", "rtx3090-desktop"), ("L4", "l4-server"))
DEFAULT_MODELS = ("mixtral-8x7b", "deepseek-v2-lite", "qwen3-30b-a3b", "olmoe-1b-7b", "phi-3.5-moe")
DEFAULT_BATCHES = (1, 8, 32, 128, 512, 2048)


@dataclass(frozen=True)
class ValidationCase:
    model: str
    tokens: int
    measured_s: float
    predicted_s: float | None
    source: str
    """How the prediction was made (``cost-model`` with the op sources, or ``table``)."""

    @property
    def error(self) -> float | None:
        if self.predicted_s is None or self.measured_s <= 0:
            return None
        return (self.predicted_s - self.measured_s) / self.measured_s


def cluster_for(gpu_name: str) -> str | None:
    upper = gpu_name.upper()
    return next((c for token, c in _CLUSTERS if token in upper), None)


def _predict(calibration: Calibration, model_name: str, tokens: int, tokens_per_expert: Any,
             cluster_name: str | None) -> tuple[float | None, str]:
    if cluster_name is None:  # a GPU no built-in cluster describes: the routed experts' table alone
        shape = next(s for s in model_shapes([model_name]))
        t = calibration.time_s("fused_moe", tokens=tokens, num_experts=shape.num_experts, top_k=shape.top_k,
                               hidden=shape.hidden, ffn=shape.ffn, dtype="bf16")
        return t, "table(fused_moe only; no built-in cluster for this GPU)"
    from moesim.cost import CostModel
    from moesim.specs import load_cluster, load_model

    cluster = load_cluster(cluster_name)
    cost = CostModel(cluster, load_model(model_name), calibration)
    gpu = cluster.gpus[0].id
    total = (cost.router_s(gpu, tokens) + cost.permute_combine_s(gpu, tokens)
             + cost.expert_compute_s(gpu, tokens_per_expert) + cost.shared_expert_s(gpu, tokens))
    srcs = cost.sources()
    used = ",".join(f"{k}={srcs.get(k, '?')}" for k in ("router", "permute_combine", "expert"))
    return float(total), f"cost-model({used})"


class _Layer:
    """One MoE layer in bf16 with random weights: router, routed experts, shared experts."""

    def __init__(self, s: Any, tokens: int, dev: Any, fused_moe: Any, pool: int = 4):
        import torch

        from moesim.kernels.bench import moe_weights

        dt = self.dtype = torch.bfloat16
        self.shape, self.fused_moe = s, fused_moe
        self.w1, self.w2 = moe_weights(s.num_experts, s.hidden, s.ffn, dt, dev)
        self.wg = torch.randn(s.num_experts, s.hidden, device=dev, dtype=dt) / s.hidden**0.5
        widths = [s.shared_width] if s.shared_width else []
        self.shared = [(torch.randn(2 * w, s.hidden, device=dev, dtype=dt) / s.hidden**0.5,
                        torch.randn(s.hidden, w, device=dev, dtype=dt) / w**0.5) for w in widths]
        self.pool = [torch.randn(tokens, s.hidden, device=dev, dtype=dt) for _ in range(pool)]
        self.x = self.pool[0].clone()

    def next_input(self, i: int) -> None:
        self.x.copy_(self.pool[i % len(self.pool)])

    def __call__(self) -> Any:
        import torch
        import torch.nn.functional as F

        x = self.x
        probs = torch.softmax((x @ self.wg.T).float(), dim=-1)
        weights, ids = probs.topk(self.shape.top_k, dim=-1)
        y = self.fused_moe(x, self.w1, self.w2, ids.to(torch.int32), weights.to(self.dtype))
        for up, down in self.shared:
            h = x @ up.T
            f = h.shape[1] // 2
            y = y + (F.silu(h[:, :f]) * h[:, f:]) @ down.T
        return y

    def tokens_per_expert(self) -> Any:
        """Mean tokens per expert over the input pool (what the prediction is given)."""
        import torch

        hist = [torch.bincount((p @ self.wg.T).float().topk(self.shape.top_k, dim=-1).indices.flatten(),
                               minlength=self.shape.num_experts).cpu().numpy() for p in self.pool]
        return sum(hist) / len(hist)


def validate(calibration: Calibration, device: str = "cuda:0", *, models: tuple[str, ...] = DEFAULT_MODELS,
             batches: tuple[int, ...] = DEFAULT_BATCHES, cluster: str | None = None, repeats: int = 30,
             progress: Any = lambda x: x) -> list[ValidationCase]:
    """Measure and predict each (model, batch); needs a CUDA GPU."""
    import torch

    from moesim.kernels.bench import L2Flush, require_cuda, time_cuda
    from moesim.kernels.moe_layer import fused_moe

    dev = require_cuda(device)
    cluster = cluster or cluster_for(torch.cuda.get_device_name(dev))
    flush = L2Flush(dev)
    out = []
    shapes = {s.name: s for s in model_shapes(models)}
    todo = [(m, b) for m in models if m in shapes for b in batches]
    for name, tokens in progress(todo):
        layer = _Layer(shapes[name], tokens, dev, fused_moe)
        timing = time_cuda(layer, dev, repeats=repeats, flush=flush, graph=True, before_each=layer.next_input)
        predicted, source = _predict(calibration, name, tokens, layer.tokens_per_expert(), cluster)
        out.append(ValidationCase(name, tokens, timing.seconds_median, predicted, source))
        del layer
        torch.cuda.empty_cache()
    return out


def error_summary(cases: list[ValidationCase]) -> dict[str, Any]:
    """Median and 90th-percentile absolute relative error (the issue's 5% / 10% targets)."""
    import numpy as np

    errs = [abs(c.error) for c in cases if c.error is not None]
    if not errs:
        return {"cases": len(cases), "predicted": 0, "median_abs_error": None, "p90_abs_error": None}
    return {"cases": len(cases), "predicted": len(errs), "median_abs_error": float(median(errs)),
            "p90_abs_error": float(np.percentile(errs, 90))}
