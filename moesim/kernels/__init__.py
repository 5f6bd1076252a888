"""Triton MoE kernels (align, fused gated grouped GEMM, combine), PyTorch references, benchmarks.

Importing this package imports neither torch nor triton; ``moesim.kernels.fused_moe`` is loaded
on first use. Set ``TRITON_INTERPRET=1`` before that to run the kernels on a CPU.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "fused_moe":
        from moesim.kernels.fused_moe import fused_moe

        return fused_moe
    raise AttributeError(f"module 'moesim.kernels' has no attribute {name!r}")
