"""The grouped expert GEMM over block-padded, expert-sorted rows, in Triton.

One program computes a ``block_m x block_n`` output tile: ``block_m`` consecutive rows of the
alignment (all of one expert, by construction) times the transposed weight tile of that expert.
Rows are gathered through ``sorted_ids`` (no activation copy is made), so the same kernel serves

- the first expert GEMM, reading token ``pair // top_k`` of ``x`` and, with ``GATED``, computing
  the gate and up tiles side by side and storing ``silu(gate) * up`` (the SwiGLU activation is
  fused: the ``[pairs, 2F]`` pre-activation never reaches memory);
- the second (down) GEMM, reading row ``pair`` of the intermediate.

Output row = flat pair index, which is what the combine gathers. Program ids are swizzled in
groups of ``group_m`` row blocks so that neighbouring programs share weight tiles in L2 (the
ordering of Triton's matmul tutorial). Accumulation is fp32. fp32 inputs use IEEE fp32 products
by default (``precision="ieee"``), not TF32, so results match a PyTorch reference to ~1e-6.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moesim.errors import UserError
from moesim.kernels.align import Alignment
from moesim.kernels.configs import BlockConfig
from moesim.kernels.runtime import cdiv, require_runnable, upcast_dot


@triton.jit
def _moe_gemm_kernel(a_ptr, w_ptr, c_ptr, sorted_ids_ptr, block_expert_ptr, num_padded_ptr,
                     N, K, num_pairs, max_padded,
                     stride_am, stride_ak, stride_we, stride_wn, stride_wk, stride_cm, stride_cn,
                     A_ROW_DIV: tl.constexpr, GATED: tl.constexpr, UPCAST: tl.constexpr,
                     PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(max_padded, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    group = pid // per_group
    first_m = group * GROUP_M
    group_rows = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return  # past the padded length: this launch was sized for the worst case
    expert = tl.load(block_expert_ptr + pid_m).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_ids_ptr + offs_m)
    row_ok = pair < num_pairs
    a_row = (pair // A_ROW_DIV).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)

    a_ptrs = a_ptr + a_row[:, None] * stride_am + offs_k[None, :] * stride_ak
    w_base = w_ptr + expert * stride_we
    b_ptrs = w_base + offs_n[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GATED:
        u_ptrs = b_ptrs + N * stride_wn  # the up rows follow the gate rows
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, tl.cdiv(K, BLOCK_K)):
        k_ok = offs_k < K - k0 * BLOCK_K
        a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        if GATED:
            u = tl.load(u_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            if UPCAST:
                u = u.to(tl.float32)
            acc_up = tl.dot(a, u, acc_up, input_precision=PRECISION)
            u_ptrs += BLOCK_K * stride_wk
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_wk
    if GATED:
        acc = acc * tl.sigmoid(acc) * acc_up
    c_ptrs = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def moe_gemm(a: torch.Tensor, w: torch.Tensor, align: Alignment, config: BlockConfig, *,
             a_row_div: int, gated: bool, out: torch.Tensor | None = None,
             precision: str = "ieee") -> torch.Tensor:
    """``out[pair] = act(a[pair // a_row_div] @ w[expert(pair)].T)`` for every routed pair.

    ``a [rows, K]``; ``w [E, N, K]`` (``[E, 2N, K]`` with gate rows then up rows when ``gated``);
    returns ``out [num_pairs, N]`` in ``a``'s dtype. Rows of pairs with no valid expert are not
    written. ``precision`` applies to fp32 inputs: ``"ieee"`` or ``"tf32"``.
    """
    require_runnable(a, w)
    if a.dim() != 2 or w.dim() != 3:
        raise UserError(f"expected a [rows, K] and w [E, N, K], found {tuple(a.shape)} and {tuple(w.shape)}")
    if a.shape[1] != w.shape[2]:
        raise UserError(f"expected a's K ({a.shape[1]}) to equal w's last dimension ({w.shape[2]})",
                        field="w")
    if a.dtype != w.dtype:
        raise UserError(f"expected a and w of one dtype, found {a.dtype} and {w.dtype}", field="dtype")
    if align.block_m != config.block_m:
        raise UserError(f"alignment was made for block_m {align.block_m}, config has {config.block_m}")
    n_out = w.shape[1] // 2 if gated else w.shape[1]
    if gated and w.shape[1] % 2:
        raise UserError(f"expected an even number of gate+up rows, found {w.shape[1]}", field="w")
    if out is None:
        out = torch.empty((align.num_pairs, n_out), dtype=a.dtype, device=a.device)
    if align.max_padded == 0 or n_out == 0:
        return out
    num_pid_m = align.max_padded // config.block_m
    grid = (num_pid_m * cdiv(n_out, config.block_n),)
    dot_precision = precision if a.dtype == torch.float32 else "tf32"
    _moe_gemm_kernel[grid](
        a, w, out, align.sorted_ids, align.block_expert, align.num_padded,
        n_out, a.shape[1], align.num_pairs, align.max_padded,
        a.stride(0), a.stride(1), w.stride(0), w.stride(1), w.stride(2), out.stride(0), out.stride(1),
        A_ROW_DIV=a_row_div, GATED=gated, UPCAST=upcast_dot(a.dtype), PRECISION=dot_precision,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k, GROUP_M=config.group_m,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )
    return out


def expert_mlp(a: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, align: Alignment, config: BlockConfig,
               *, top_k: int, precision: str = "ieee") -> torch.Tensor:
    """Both expert GEMMs with the fused SwiGLU: ``[num_pairs, H]`` rows, unweighted.

    ``a`` is indexed by ``pair // top_k`` (``top_k=1`` for rows already grouped by expert).
    """
    inter = moe_gemm(a, w1, align, config, a_row_div=top_k, gated=True, precision=precision)
    return moe_gemm(inter, w2, align, config, a_row_div=1, gated=False, precision=precision)
