"""The MoE layer's expert part in one call: align -> gated grouped GEMM -> down GEMM -> combine.

``out[t] = sum_k topk_weights[t, k] * w2[e] @ (silu(w1[e, :F] @ x[t]) * (w1[e, F:] @ x[t]))`` with
``e = topk_ids[t, k]``. Four launches (three tiny align kernels, two GEMMs, one combine) and no
host synchronisation, so a whole call can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from moesim.errors import UserError
from moesim.kernels.align import moe_align
from moesim.kernels.combine import moe_combine
from moesim.kernels.configs import BlockConfig, ConfigTable
from moesim.kernels.grouped_gemm import expert_mlp
from moesim.kernels.runtime import dtype_name, interpreter_active, require_runnable


def check_moe_shapes(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
                     topk_weights: torch.Tensor) -> tuple[int, int, int, int, int]:
    """Validate the operands; returns ``(T, H, E, F, K)``."""
    if x.dim() != 2:
        raise UserError(f"expected x of shape [T, H], found {tuple(x.shape)}", field="x")
    T, H = x.shape
    if w1.dim() != 3 or w1.shape[2] != H or w1.shape[1] % 2:
        raise UserError(f"expected w1 of shape [E, 2F, H={H}], found {tuple(w1.shape)}", field="w1")
    E, F = w1.shape[0], w1.shape[1] // 2
    if tuple(w2.shape) != (E, H, F):
        raise UserError(f"expected w2 of shape [E={E}, H={H}, F={F}], found {tuple(w2.shape)}", field="w2")
    if topk_ids.dim() != 2 or topk_ids.shape[0] != T:
        raise UserError(f"expected topk_ids of shape [T={T}, K], found {tuple(topk_ids.shape)}",
                        field="topk_ids")
    if topk_weights.shape != topk_ids.shape:
        raise UserError(f"expected topk_weights of shape {tuple(topk_ids.shape)}, found "
                        f"{tuple(topk_weights.shape)}", field="topk_weights")
    if topk_ids.dtype.is_floating_point:
        raise UserError(f"expected integer topk_ids, found {topk_ids.dtype}", field="topk_ids")
    if not (x.dtype == w1.dtype == w2.dtype):
        raise UserError(f"expected x, w1, w2 of one dtype, found {x.dtype}, {w1.dtype}, {w2.dtype}",
                        field="dtype")
    dtype_name(x.dtype)  # fp32 / fp16 / bf16 only
    return T, H, E, F, topk_ids.shape[1]


def fused_moe(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, topk_ids: torch.Tensor,
              topk_weights: torch.Tensor, *, config: BlockConfig | None = None,
              configs: ConfigTable | None = None, precision: str = "ieee") -> torch.Tensor:
    """Routed experts of one MoE layer; returns ``out [T, H]`` in ``x``'s dtype.

    ``x [T, H]``, ``w1 [E, 2F, H]`` (gate rows then up rows), ``w2 [E, H, F]``, ``topk_ids [T, K]``
    (ids outside ``[0, E)`` are dropped pairs), ``topk_weights [T, K]``. Block sizes come from
    ``config``, else the tuned ``configs`` table, else the heuristic in ``configs.default_config``.
    """
    require_runnable(x, w1, w2, topk_ids, topk_weights)
    T, H, E, F, K = check_moe_shapes(x, w1, w2, topk_ids, topk_weights)
    if config is None:
        table = configs or ConfigTable()
        config = table.lookup(T, E, K, H, F, dtype_name(x.dtype), interpreter=interpreter_active())
    x = x.contiguous()
    align = moe_align(topk_ids, E, config.block_m)
    y = expert_mlp(x, w1, w2, align, config, top_k=K, precision=precision)
    return moe_combine(y, topk_ids, topk_weights, E)
