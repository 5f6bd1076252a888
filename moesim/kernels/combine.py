"""Weighted un-permute and combine, in Triton: ``out[t] = sum_k w[t, k] * y[t * K + k]``.

The down GEMM writes each pair's output at its flat index ``t * K + k``, so un-permuting is a
gather by flat index; each program sums the ``K`` rows of a block of tokens over a block of the
hidden dimension in fp32 (a gather, not atomic adds: the result does not depend on the order
the GEMM ran in). Pairs whose expert id is outside ``[0, E)`` contribute nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moesim.errors import UserError
from moesim.kernels.runtime import cdiv, require_runnable


@triton.jit
def _combine_kernel(y_ptr, ids_ptr, w_ptr, out_ptr, T, H, num_experts, stride_y, stride_out,
                    TOP_K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    t_ok = t < T
    h_ok = h < H
    acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    for k in tl.static_range(TOP_K):
        pair = t.to(tl.int64) * TOP_K + k
        expert = tl.load(ids_ptr + pair, mask=t_ok, other=-1)
        valid = t_ok & (expert >= 0) & (expert < num_experts)
        weight = tl.load(w_ptr + pair, mask=valid, other=0.0).to(tl.float32)
        rows = tl.load(y_ptr + pair[:, None] * stride_y + h[None, :], mask=valid[:, None] & h_ok[None, :],
                       other=0.0)
        acc += weight[:, None] * rows.to(tl.float32)
    out_ptrs = out_ptr + t.to(tl.int64)[:, None] * stride_out + h[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=t_ok[:, None] & h_ok[None, :])


def moe_combine(y: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_experts: int,
                *, out: torch.Tensor | None = None, block_t: int = 16, block_h: int = 128) -> torch.Tensor:
    """``y [T * K, H]`` pair outputs -> ``out [T, H]`` (``y``'s dtype), weighted by ``topk_weights``."""
    require_runnable(y, topk_ids, topk_weights)
    if topk_ids.dim() != 2 or topk_ids.shape != topk_weights.shape:
        raise UserError(f"expected topk_ids and topk_weights of one shape [T, K], found "
                        f"{tuple(topk_ids.shape)} and {tuple(topk_weights.shape)}", field="topk_weights")
    T, K = topk_ids.shape
    if y.dim() != 2 or y.shape[0] != T * K or y.stride(1) != 1:
        raise UserError(f"expected y of shape [T*K={T * K}, H] with unit column stride, "
                        f"found {tuple(y.shape)}", field="y")
    H = y.shape[1]
    if out is None:
        out = torch.empty((T, H), dtype=y.dtype, device=y.device)
    elif out.shape != (T, H) or out.stride(1) != 1:
        raise UserError(f"expected out of shape [{T}, {H}] with unit column stride", field="out")
    if T == 0 or H == 0:
        return out
    ids = topk_ids.contiguous()
    weights = topk_weights.contiguous()
    grid = (cdiv(T, block_t), cdiv(H, block_h))
    _combine_kernel[grid](y, ids, weights, out, T, H, num_experts, y.stride(0), out.stride(0),
                          TOP_K=K, BLOCK_T=block_t, BLOCK_H=block_h)
    return out
