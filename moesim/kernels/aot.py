"""Compile the MoE kernels for a GPU target without a GPU, and read what the compiler produced.

``triton.compile`` lowers a kernel to PTX and (with the ``ptxas`` that ships in the triton
wheel) to a cubin on any machine. This checks, before any GPU run, that every kernel and
block config compiles for the target, fits its shared memory, and uses the instructions it
should: Hopper warpgroup MMA (``wgmma``) for 64-row bf16/fp16 tiles, pipelined asynchronous
copies (``cp.async``) for the GEMM operands, no local-memory spills. It mirrors the
specialisation the JIT applies at launch (unit strides become constants, pointers and sizes
are assumed 16-divisible), so the code is the code a launch would run.

Run it in a process where ``TRITON_INTERPRET`` is not set (``python -m moesim.kernels.aot``):
an interpreted kernel cannot be compiled.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from typing import Any

from moesim.kernels.configs import BlockConfig, default_config


@dataclass(frozen=True)
class CompileReport:
    kernel: str
    variant: str
    shared_bytes: int
    wgmma: int
    """Warpgroup MMA instructions in the PTX (Hopper tensor cores)."""
    mma_sync: int
    """Warp-level ``mma.sync`` instructions (pre-Hopper path, used for tiles under 64 rows)."""
    cp_async: int
    """Asynchronous global->shared copies (software pipelining of the K loop)."""
    local_memory_ops: int
    """``ld.local``/``st.local``: register spills (should be 0)."""


def _compile(fn: Any, signature: dict[str, str], constants: dict[str, Any], divisible: list[str],
             capability: int, num_warps: int, num_stages: int) -> Any:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    src = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def _report(kernel: str, variant: str, compiled: Any) -> CompileReport:
    ptx = compiled.asm["ptx"]
    return CompileReport(kernel=kernel, variant=variant, shared_bytes=int(compiled.metadata.shared),
                         wgmma=ptx.count("wgmma.mma_async"), mma_sync=len(re.findall(r"\bmma\.sync", ptx)),
                         cp_async=len(re.findall(r"cp\.async\.c[ga]", ptx)),
                         local_memory_ops=len(re.findall(r"\b(?:ld|st)\.local", ptx)))


_PTR = {"fp32": "*fp32", "fp16": "*fp16", "bf16": "*bf16"}


def compile_gemm(dtype: str, gated: bool, cfg: BlockConfig, capability: int = 90) -> CompileReport:
    from moesim.kernels.grouped_gemm import _moe_gemm_kernel

    p = _PTR[dtype]
    sig = {"a_ptr": p, "w_ptr": p, "c_ptr": p, "sorted_ids_ptr": "*i32", "block_expert_ptr": "*i32",
           "num_padded_ptr": "*i32", "N": "i32", "K": "i32", "num_pairs": "i32", "max_padded": "i32",
           "stride_am": "i32", "stride_ak": "constexpr", "stride_we": "i32", "stride_wn": "i32",
           "stride_wk": "constexpr", "stride_cm": "i32", "stride_cn": "constexpr"}
    sig.update({k: "constexpr" for k in ("A_ROW_DIV", "GATED", "UPCAST", "PRECISION", "BLOCK_M", "BLOCK_N",
                                         "BLOCK_K", "GROUP_M")})
    const = {"stride_ak": 1, "stride_wk": 1, "stride_cn": 1, "A_ROW_DIV": 2, "GATED": gated, "UPCAST": False,
             "PRECISION": "ieee" if dtype == "fp32" else "tf32", "BLOCK_M": cfg.block_m,
             "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "GROUP_M": cfg.group_m}
    div = ["a_ptr", "w_ptr", "c_ptr", "sorted_ids_ptr", "block_expert_ptr", "num_padded_ptr", "N", "K",
           "stride_am", "stride_we", "stride_wn", "stride_cm"]
    compiled = _compile(_moe_gemm_kernel, sig, const, div, capability, cfg.num_warps, cfg.num_stages)
    return _report("moe_gemm", f"{dtype} gated={gated} {cfg.label()}", compiled)


def compile_small_kernels(dtype: str = "bf16", capability: int = 90) -> list[CompileReport]:
    from moesim.kernels import align, combine

    out = []
    sig = {"ids_ptr": "*i32", "counts_ptr": "*i32", "num_pairs": "i32", "num_experts": "i32",
           "BLOCK": "constexpr"}
    out.append(_report("histogram", "", _compile(align._histogram_kernel, sig, {"BLOCK": 256}, [],
                                                 capability, 4, 1)))
    sig = {"counts_ptr": "*i32", "starts_ptr": "*i32", "ends_ptr": "*i32", "cursor_ptr": "*i32",
           "num_padded_ptr": "*i32", "num_experts": "i32", "BLOCK_M": "constexpr", "BLOCK_E": "constexpr"}
    out.append(_report("offsets", "", _compile(align._offsets_kernel, sig, {"BLOCK_M": 16, "BLOCK_E": 256},
                                               [], capability, 4, 1)))
    sig = {"ends_ptr": "*i32", "num_padded_ptr": "*i32", "block_expert_ptr": "*i32", "num_blocks": "i32",
           "num_experts": "i32", "BLOCK_M": "constexpr", "BLOCK_B": "constexpr", "BLOCK_E": "constexpr"}
    out.append(_report("block_expert", "", _compile(align._block_expert_kernel, sig,
                                                    {"BLOCK_M": 16, "BLOCK_B": 64, "BLOCK_E": 256}, [],
                                                    capability, 4, 1)))
    sig = {"ids_ptr": "*i32", "cursor_ptr": "*i32", "sorted_ids_ptr": "*i32", "num_pairs": "i32",
           "num_experts": "i32", "BLOCK": "constexpr"}
    out.append(_report("scatter", "", _compile(align._scatter_kernel, sig, {"BLOCK": 256}, [],
                                               capability, 4, 1)))
    p = _PTR[dtype]
    sig = {"y_ptr": p, "ids_ptr": "*i32", "w_ptr": p, "out_ptr": p, "T": "i32", "H": "i32",
           "num_experts": "i32", "stride_y": "i32", "stride_out": "i32", "TOP_K": "constexpr",
           "BLOCK_T": "constexpr", "BLOCK_H": "constexpr"}
    out.append(_report("combine", dtype, _compile(combine._combine_kernel, sig,
                                                  {"TOP_K": 8, "BLOCK_T": 16, "BLOCK_H": 128},
                                                  ["y_ptr", "out_ptr", "H", "stride_y", "stride_out"],
                                                  capability, 4, 1)))
    return out


def default_variants() -> list[tuple[str, bool, BlockConfig]]:
    """The heuristic configs of decode and prefill shapes, per dtype, both GEMMs."""
    out: list[tuple[str, bool, BlockConfig]] = []
    for dtype in ("bf16", "fp16", "fp32"):
        for tokens in (8, 128, 8192):
            cfg = default_config(tokens, 8, 2, 4096, 14336, dtype)
            for gated in (True, False):
                if (dtype, gated, cfg) not in out:
                    out.append((dtype, gated, cfg))
    return out


def main() -> int:
    from moesim.kernels.runtime import interpreter_active

    if interpreter_active():
        print(json.dumps({"error": "TRITON_INTERPRET is set: interpreted kernels cannot be compiled"}))
        return 2
    reports = [compile_gemm(d, g, c) for d, g, c in default_variants()] + compile_small_kernels()
    print(json.dumps([asdict(r) for r in reports], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
