"""Where the kernels run: a CUDA GPU, or Triton's CPU interpreter (``TRITON_INTERPRET=1``).

The interpreter executes each program instance in numpy, one after the other: good for
correctness tests on a machine without a GPU, meaningless for timing. Triton decides at
``@triton.jit`` decoration time whether a kernel is interpreted, so ``TRITON_INTERPRET=1`` must be
set before the kernel modules are first imported.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from moesim.errors import UserError

if TYPE_CHECKING:
    import torch

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def interpreter_active() -> bool:
    """True when Triton kernels run in the CPU interpreter."""
    try:
        from triton import knobs

        return bool(knobs.runtime.interpret)
    except (ImportError, AttributeError):  # older triton reads the variable directly
        return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bf16"`` (the names moesim uses everywhere)."""
    import torch

    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    if dtype not in names:
        raise UserError(f"expected dtype fp32, fp16 or bf16, found {dtype}", field="dtype")
    return names[dtype]


def torch_dtype(name: str) -> torch.dtype:
    """``"bf16"`` -> ``torch.bfloat16``."""
    import torch

    if name not in DTYPE_NAMES:
        raise UserError(f"expected dtype one of {sorted(DTYPE_NAMES)}, found {name!r}", field="dtype")
    return getattr(torch, DTYPE_NAMES[name])


def require_runnable(*tensors: torch.Tensor) -> None:
    """Triton needs CUDA tensors, or CPU tensors with the interpreter on."""
    interp = interpreter_active()
    for t in tensors:
        if t.device.type == "cuda":
            continue
        if interp and t.device.type == "cpu":
            continue
        raise UserError(f"Triton kernels need CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set "
                        f"before import), found a tensor on {t.device}", field="device")


def upcast_dot(dtype: torch.dtype) -> bool:
    """Whether to cast ``tl.dot`` inputs to fp32: the interpreter multiplies bf16 bit patterns wrongly.

    triton-lang/triton#4972, #11584: bf16 is stored as uint16 in numpy.
    """
    import torch

    return interpreter_active() and dtype == torch.bfloat16


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))
