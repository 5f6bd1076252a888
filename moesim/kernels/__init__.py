"""Triton MoE kernels (align, fused gated grouped GEMM, combine), PyTorch references, benchmarks.

``from moesim.kernels import fused_moe`` gives the function (defined in ``moe_layer``). Importing
this package imports neither torch nor triton; the kernels load on first use of ``fused_moe``, so
set ``TRITON_INTERPRET=1`` before that to run them on a CPU (Triton decides at its first import).
No submodule may be named ``fused_moe``: a submodule shadows this lazy attribute once imported.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fused_moe"]


def __getattr__(name: str) -> Any:
    if name == "fused_moe":
        from moesim.kernels.moe_layer import fused_moe

        return fused_moe
    raise AttributeError(f"module 'moesim.kernels' has no attribute {name!r}")
