"""Measures one sweep ``Case`` on a CUDA GPU with the harness in ``moesim.kernels.bench``."""

from __future__ import annotations

from typing import Any

from moesim.calibration.sweep import Case


class GpuRunner:
    """``runner(case) -> (Timing, extra columns)``; one L2-flush buffer shared by all cases."""

    def __init__(self, device: str = "cuda:0", *, repeats: int = 30, configs: Any = None):
        from moesim.kernels.bench import L2Flush, require_cuda

        self.device = require_cuda(device)
        self.repeats = repeats
        self.configs = configs
        self.flush = L2Flush(self.device)

    def peer(self) -> Any:
        import torch

        index = self.device.index or 0
        return torch.device(f"cuda:{(index + 1) % torch.cuda.device_count()}")

    def __call__(self, case: Case) -> tuple[Any, dict[str, Any]]:
        import torch

        from moesim.kernels import bench

        p = case.params
        dev, reps = self.device, self.repeats
        kernel = {"repeats": reps, "configs": self.configs, "flush": self.flush}
        try:
            if case.op == "fused_moe":
                return bench.bench_fused_moe(p["tokens"], p["num_experts"], p["top_k"], p["hidden"], p["ffn"],
                                             p["dtype"], dev, impl=p["impl"], **kernel)
            if case.op == "grouped_gemm":
                return bench.bench_grouped_gemm(int(p["tokens_per_expert"]), p["num_experts"], p["hidden"],
                                                p["ffn"], p["dtype"], dev, **kernel)
            if case.op == "gemm":
                return bench.bench_gemm(p["m"], p["n"], p["k"], p["dtype"], dev, repeats=reps,
                                        flush=self.flush)
            if case.op in ("moe_align", "combine"):
                return bench.bench_align_combine(case.op, p["tokens"], p.get("num_experts", 256), p["top_k"],
                                                 p.get("hidden", 0), p.get("dtype", "bf16"), dev,
                                                 repeats=reps)
            if case.op in ("hbm_copy", "h2d", "d2h", "p2p"):
                return bench.bench_copy(case.op, int(p["bytes"]), dev, pinned=bool(p.get("pinned", True)),
                                        peer=self.peer() if case.op == "p2p" else None, repeats=min(reps, 20))
        finally:
            torch.cuda.empty_cache()  # big cases must not starve the next one of memory
        raise ValueError(f"no benchmark for op {case.op!r}")
