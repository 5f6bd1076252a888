"""Plain PyTorch definitions of what each MoE kernel must compute: obvious loops, in fp32 (or fp64 on
request). Test oracles only; the package keeps the expert MLP and the benchmarks' PyTorch baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from moesim.kernels.reference import swiglu_expert


def align_reference(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> dict[str, torch.Tensor]:
    """What ``moe_align`` must produce, with pairs in ascending flat order inside each segment."""
    ids = topk_ids.reshape(-1).to(torch.int64).cpu()
    num_pairs = ids.numel()
    sorted_ids: list[int] = []
    block_expert: list[int] = []
    counts = torch.zeros(num_experts, dtype=torch.int64)
    for e in range(num_experts):
        members = torch.nonzero(ids == e).flatten().tolist()
        counts[e] = len(members)
        padded = -(-len(members) // block_m) * block_m
        sorted_ids += members + [num_pairs] * (padded - len(members))
        block_expert += [e] * (padded // block_m)
    return {"sorted_ids": torch.tensor(sorted_ids, dtype=torch.int64),
            "block_expert": torch.tensor(block_expert, dtype=torch.int64),
            "num_padded": torch.tensor(len(sorted_ids)), "counts": counts}


def moe_gemm_reference(a: torch.Tensor, w: torch.Tensor, topk_ids: torch.Tensor, *, a_row_div: int,
                       gated: bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per pair: ``act(a[pair // a_row_div] @ w[e].T)``; rows of dropped pairs are zero."""
    ids = topk_ids.reshape(-1).to(torch.int64).cpu()
    a, w = a.cpu().to(dtype), w.cpu().to(dtype)
    n_out = w.shape[1] // 2 if gated else w.shape[1]
    out = torch.zeros(ids.numel(), n_out, dtype=dtype)
    for pair, e in enumerate(ids.tolist()):
        if not 0 <= e < w.shape[0]:
            continue
        h = a[pair // a_row_div] @ w[e].T
        out[pair] = F.silu(h[:n_out]) * h[n_out:] if gated else h
    return out


def combine_reference(y: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_experts: int,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``out[t] = sum_k w[t, k] * y[t*K + k]`` over pairs with a valid expert."""
    T, K = topk_ids.shape
    valid = ((topk_ids >= 0) & (topk_ids < num_experts)).cpu()
    y3 = y.cpu().to(dtype).reshape(T, K, -1)
    w = topk_weights.cpu().to(dtype) * valid
    y3 = torch.where(valid[:, :, None], y3, torch.zeros((), dtype=dtype))
    return (w[:, :, None] * y3).sum(dim=1)


def fused_moe_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
                        topk_weights: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Token by token, expert by expert: the definition of the routed MoE output."""
    x, w1, w2 = x.cpu().to(dtype), w1.cpu().to(dtype), w2.cpu().to(dtype)
    ids, wts = topk_ids.cpu().to(torch.int64), topk_weights.cpu().to(dtype)
    out = torch.zeros(x.shape, dtype=dtype)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            if 0 <= e < w1.shape[0]:
                out[t] += wts[t, k] * swiglu_expert(x[t : t + 1], w1[e], w2[e])[0]
    return out
