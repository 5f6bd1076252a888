"""Roofline times of routed experts: one grouped call on a GPU, one expert at a time on CPU/PIM.

GPU: a single grouped call over the device's experts (vLLM ``fused_moe``), so the efficiency curves
are read at the call's total FLOPs and bytes and the call pays its launches once. PIM runs experts
one after another: each expert is its own roofline and the times add up. CPU experts are priced by
their kernels in :mod:`moesim.cost.cpu_experts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost import ops
from moesim.cost.roofline import Roofline
from moesim.errors import UserError
from moesim.specs.model import DTYPE_BYTES, MoEModel


@dataclass(frozen=True)
class ExpertCoefficients:
    """Per-token and per-expert constants of one model's experts on one device spec."""

    weight_dtype: str
    compute_dtype: str
    flops_per_row: float
    """2 x expert parameters."""
    weight_bytes: float
    """One expert's weights in ``weight_dtype``."""
    activation_bytes_per_token: float
    peak_flops_per_s: float
    tile_rows: int

    @classmethod
    def of(cls, model: MoEModel, roof: Roofline, dtype: str | None = None,
           compute: str | None = None) -> ExpertCoefficients:
        """``compute``: the GEMMs' dtype when pinned (else the roofline's rule for the weights)."""
        weight = dtype or model.weight_dtype
        if weight not in DTYPE_BYTES:
            raise UserError(f"expected a weight dtype among {', '.join(DTYPE_BYTES)}, got {weight!r}")
        compute = compute or roof.compute_dtype(weight, model.activation_dtype)
        act = ops.ffn_activation_elements_per_token(model, model.expert_intermediate_size)
        return cls(
            weight_dtype=weight,
            compute_dtype=compute,
            flops_per_row=2.0 * model.expert_params,
            weight_bytes=model.expert_bytes(weight),
            activation_bytes_per_token=act * DTYPE_BYTES[model.activation_dtype],
            peak_flops_per_s=roof.peak(compute),
            tile_rows=roof.efficiency.tile_rows,
        )


def grouped_call_s(roof: Roofline, coef: ExpertCoefficients, tokens_per_expert: np.ndarray) -> float:
    """One grouped call, as plain float math after two numpy reductions: the simulator's hot path
    (called per step, layer and device)."""
    t = np.asarray(tokens_per_expert, dtype=float)
    n_active = int(np.count_nonzero(t))
    if n_active == 0:
        return 0.0
    tokens = float(t.sum())
    tile = coef.tile_rows
    rows = float((np.ceil(t / tile) * tile).sum()) if tile > 1 else tokens
    flops = coef.flops_per_row * rows
    nbytes = n_active * coef.weight_bytes + tokens * coef.activation_bytes_per_token
    eff = roof.efficiency
    busy = max(
        flops / (coef.peak_flops_per_s * eff.compute.scalar(flops)),
        nbytes / (roof.memory_bandwidth_bytes_per_s * eff.memory.scalar(nbytes)),
    )
    return busy + ops.LAUNCHES["expert"] * roof.launch_overhead_s


def grouped_calls_s(
    roof: Roofline, model: MoEModel, coef: ExpertCoefficients, tokens_per_expert: np.ndarray
) -> np.ndarray:
    """:func:`grouped_call_s` for the rows of ``tokens_per_expert`` [D, E] (devices of one spec)."""
    cnt = ops.grouped_expert_counts(model, tokens_per_expert, coef.weight_dtype, coef.tile_rows)
    return roof.time_s(cnt.flops, cnt.nbytes, coef.compute_dtype, launches=cnt.launches)


def standalone_s(
    roof: Roofline,
    model: MoEModel,
    coef: ExpertCoefficients,
    tokens_per_expert: np.ndarray,
    *,
    launches: int = 0,
) -> np.ndarray:
    """Each expert as its own roofline (0 for experts with no tokens)."""
    per = ops.expert_counts(model, tokens_per_expert, coef.weight_dtype, coef.tile_rows)
    return roof.time_s(per.flops, per.nbytes, coef.compute_dtype, launches=launches)


def sequential_s(
    roof: Roofline, model: MoEModel, coef: ExpertCoefficients, tokens_per_expert: np.ndarray
) -> float:
    """Experts one after another (PIM): each its own roofline with one launch, summed."""
    return float(np.sum(standalone_s(roof, model, coef, tokens_per_expert, launches=1)))
