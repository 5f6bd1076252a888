"""Block-padded permutation of (token, slot) pairs by expert, in Triton.

Each of the ``T * K`` routed pairs has a flat index ``t * K + k``. The grouped GEMM wants the
pairs of one expert next to each other and each expert's segment padded to a multiple of
``block_m`` rows, so that a ``block_m``-row tile never mixes experts (the idea of vLLM's
``moe_align_block_size``: vllm-project/vllm @05be992,
vllm/model_executor/layers/fused_moe/moe_align_block_size.py). Three small kernels do it without a
host synchronisation (so it can live inside a CUDA graph):

1. histogram: tokens per expert (atomic adds);
2. offsets: one program turns counts into padded segment starts (a cumulative sum) and the
   total padded length;
3. per-block expert ids and the scatter: each pair takes the next free row of its expert's
   segment (atomic add on a per-expert cursor) and writes its flat index there.

Rows of a segment past its count hold the sentinel ``T * K``; the GEMM masks them. Expert ids
outside ``[0, E)`` (e.g. -1 for a pair routed to an expert this GPU does not hold) are skipped.
The order of pairs inside one expert's segment is not fixed (atomics), and nothing downstream
depends on it: each row of the GEMM is independent and the combine gathers by flat index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from moesim.errors import UserError
from moesim.kernels.runtime import cdiv, next_power_of_2, require_runnable


@dataclass(frozen=True)
class Alignment:
    """The permutation the grouped GEMM reads. All tensors live on the input's device."""

    sorted_ids: torch.Tensor
    """int32 ``[max_padded]``: flat pair index per row; ``num_pairs`` marks padding."""
    block_expert: torch.Tensor
    """int32 ``[max_padded // block_m]``: expert of each row block; -1 past the padded length."""
    num_padded: torch.Tensor
    """int32 ``[1]``: rows actually used (sum over experts of counts rounded up to block_m)."""
    counts: torch.Tensor
    """int32 ``[E]``: pairs routed to each expert."""
    block_m: int
    num_pairs: int
    num_experts: int

    @property
    def max_padded(self) -> int:
        return int(self.sorted_ids.numel())


def max_padded_rows(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Rows needed in the worst case: each non-empty expert wastes at most ``block_m - 1`` rows."""
    active = min(num_pairs, num_experts)
    return cdiv(num_pairs + active * (block_m - 1), block_m) * block_m if num_pairs else 0


@triton.jit
def _histogram_kernel(ids_ptr, counts_ptr, num_pairs, num_experts, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < num_pairs
    expert = tl.load(ids_ptr + offs, mask=inside, other=-1)
    valid = inside & (expert >= 0) & (expert < num_experts)
    tl.atomic_add(counts_ptr + expert, 1, mask=valid)


@triton.jit
def _offsets_kernel(counts_ptr, starts_ptr, ends_ptr, cursor_ptr, num_padded_ptr, num_experts,
                    BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr):
    e = tl.arange(0, BLOCK_E)
    inside = e < num_experts
    count = tl.load(counts_ptr + e, mask=inside, other=0)
    padded = (count + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    tl.store(starts_ptr + e, starts, mask=inside)
    tl.store(cursor_ptr + e, starts, mask=inside)
    tl.store(ends_ptr + e, ends, mask=inside)
    tl.store(num_padded_ptr, tl.sum(padded, axis=0))


@triton.jit
def _block_expert_kernel(ends_ptr, num_padded_ptr, block_expert_ptr, num_blocks, num_experts,
                         BLOCK_M: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_E: tl.constexpr):
    b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    e = tl.arange(0, BLOCK_E)
    ends = tl.load(ends_ptr + e, mask=e < num_experts, other=2147483647)
    first_row = b * BLOCK_M
    # The expert of a block is the number of segments that end at or before its first row.
    expert = tl.sum((ends[None, :] <= first_row[:, None]).to(tl.int32), axis=1)
    total = tl.load(num_padded_ptr)
    expert = tl.where(first_row < total, expert, -1)
    tl.store(block_expert_ptr + b, expert, mask=b < num_blocks)


@triton.jit
def _scatter_kernel(ids_ptr, cursor_ptr, sorted_ids_ptr, num_pairs, num_experts, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < num_pairs
    expert = tl.load(ids_ptr + offs, mask=inside, other=-1)
    valid = inside & (expert >= 0) & (expert < num_experts)
    row = tl.atomic_add(cursor_ptr + expert, 1, mask=valid)
    tl.store(sorted_ids_ptr + row, offs, mask=valid)


def moe_align(topk_ids: torch.Tensor, num_experts: int, block_m: int, *, block: int = 256) -> Alignment:
    """Sort the ``T * K`` pairs of ``topk_ids [T, K]`` by expert, each segment padded to ``block_m``."""
    require_runnable(topk_ids)
    if topk_ids.dim() != 2:
        raise UserError(f"expected topk_ids of shape [T, K], found {tuple(topk_ids.shape)}", field="topk_ids")
    if num_experts < 1 or block_m < 1:
        raise UserError(f"expected num_experts >= 1 and block_m >= 1, found {num_experts}, {block_m}")
    device = topk_ids.device
    ids = topk_ids.reshape(-1).to(torch.int32).contiguous()
    num_pairs = ids.numel()
    max_padded = max_padded_rows(num_pairs, num_experts, block_m)
    num_blocks = max_padded // block_m
    counts = torch.zeros(num_experts, dtype=torch.int32, device=device)
    starts = torch.empty(num_experts, dtype=torch.int32, device=device)
    ends = torch.empty(num_experts, dtype=torch.int32, device=device)
    cursor = torch.empty(num_experts, dtype=torch.int32, device=device)
    num_padded = torch.zeros(1, dtype=torch.int32, device=device)
    sorted_ids = torch.full((max_padded,), num_pairs, dtype=torch.int32, device=device)
    block_expert = torch.full((num_blocks,), -1, dtype=torch.int32, device=device)
    block_e = max(16, next_power_of_2(num_experts))
    if num_pairs:
        _histogram_kernel[(cdiv(num_pairs, block),)](ids, counts, num_pairs, num_experts, BLOCK=block)
    _offsets_kernel[(1,)](counts, starts, ends, cursor, num_padded, num_experts,
                          BLOCK_M=block_m, BLOCK_E=block_e)
    if num_blocks:
        block_b = 64
        _block_expert_kernel[(cdiv(num_blocks, block_b),)](ends, num_padded, block_expert, num_blocks,
                                                           num_experts, BLOCK_M=block_m, BLOCK_B=block_b,
                                                           BLOCK_E=block_e)
        _scatter_kernel[(cdiv(num_pairs, block),)](ids, cursor, sorted_ids, num_pairs, num_experts,
                                                   BLOCK=block)
    return Alignment(sorted_ids=sorted_ids, block_expert=block_expert, num_padded=num_padded, counts=counts,
                     block_m=block_m, num_pairs=num_pairs, num_experts=num_experts)


def align_grouped(counts: torch.Tensor, block_m: int) -> Alignment:
    """Alignment for rows already grouped by expert (row ``i`` of the input is pair ``i``).

    ``counts [E]`` rows per expert, in expert order. This is the layout of a plain grouped GEMM
    (``torch._grouped_mm`` style); the calibration's ``grouped_gemm`` op times the GEMMs alone on it.
    """
    counts = counts.to(device=counts.device, dtype=torch.int64)
    experts = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    return moe_align(experts.view(-1, 1), int(counts.numel()), block_m)
