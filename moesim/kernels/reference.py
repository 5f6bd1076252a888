"""The MoE layer in plain PyTorch: one SwiGLU expert, and the per-expert loop the benchmarks compare
the Triton kernels against (the tests' per-kernel oracles live in tests/kernel_reference.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu_expert(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """One expert on rows ``x [n, H]``: ``w2 @ (silu(gate) * up)``; ``w1 [2F, H]``, ``w2 [H, F]``."""
    f = w1.shape[0] // 2
    h = x @ w1.T
    return (F.silu(h[:, :f]) * h[:, f:]) @ w2.T


def fused_moe_torch(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
                    topk_weights: torch.Tensor) -> torch.Tensor:
    """The usual PyTorch baseline: a loop over experts with index_add (what the benchmarks compare to)."""
    K = topk_ids.shape[1]
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    flat = topk_ids.reshape(-1)
    for e in range(w1.shape[0]):
        pairs = torch.nonzero(flat == e).flatten()
        if pairs.numel() == 0:
            continue
        tokens = pairs // K
        y = swiglu_expert(x[tokens], w1[e], w2[e])
        out.index_add_(0, tokens, (y * topk_weights.reshape(-1)[pairs, None].to(y.dtype)).float())
    return out.to(x.dtype)
