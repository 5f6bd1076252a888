"""Triton fused_moe vs the PyTorch baselines on a GPU, with the fraction of the roofline reached.

    python benchmarks/bench_kernels.py [--device cuda:0] [--repeats 30]

For decode shapes (few tokens per expert: streaming the active experts' weights dominates) it
prints the fraction of the HBM roofline; for prefill shapes (compute-bound) the fraction of the
BF16 tensor-core peak (datasheet peaks, with their sources, in moesim.calibration.roofline). Baselines,
measured in the same run: the per-expert PyTorch loop and ``torch._grouped_mm`` (SM90+).
Without a CUDA GPU it says so and exits 0 (benchmarks are not tests).
"""

from __future__ import annotations

import argparse
import sys

# (name, tokens, experts, top_k, hidden, ffn): decode and prefill shapes of built-in models.
SHAPES = [
    ("mixtral-8x7b decode", 8, 8, 2, 4096, 14336),
    ("mixtral-8x7b decode", 64, 8, 2, 4096, 14336),
    ("deepseek-v2-lite decode", 32, 64, 6, 2048, 1408),
    ("qwen3-30b-a3b decode", 64, 128, 8, 2048, 768),
    ("mixtral-8x7b prefill", 4096, 8, 2, 4096, 14336),
    ("deepseek-v2-lite prefill", 8192, 64, 6, 2048, 1408),
    ("qwen3-30b-a3b prefill", 8192, 128, 8, 2048, 768),
]


def _us(timing) -> str:
    return f"{timing.seconds_median * 1e6:.1f}" if timing else "-"


def _ratio(baseline, triton) -> str:
    """How many times longer the baseline took than the Triton kernel."""
    return f"{baseline.seconds_median / triton.seconds_median:.2f}" if baseline else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0", help="CUDA device")
    parser.add_argument("--repeats", type=int, default=30, help="timed repetitions per shape")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("bench_kernels: needs torch and a CUDA GPU; torch is not installed")
        return 0
    if not torch.cuda.is_available():
        print("bench_kernels: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured")
        return 0

    from moesim.calibration.roofline import peaks_for, roofline_row
    from moesim.kernels.bench import L2Flush, bench_fused_moe, require_cuda

    dev = require_cuda(args.device)
    name = torch.cuda.get_device_name(dev)
    peaks = peaks_for(name)
    flush = L2Flush(dev)
    grouped_ok = hasattr(torch, "_grouped_mm") and torch.cuda.get_device_capability(dev) >= (9, 0)
    print(f"{name}; peaks: {peaks}")
    print(f"{'shape':<26} {'T':>5} {'triton us':>10} {'loop us':>9} {'x loop':>7} {'gmm us':>8} {'x gmm':>6} "
          f"{'bound':>8} {'of peak':>8}")
    for label, tokens, e, k, h, f in SHAPES:
        t, meta = bench_fused_moe(tokens, e, k, h, f, "bf16", dev, repeats=args.repeats, flush=flush)
        loop = bench_fused_moe(tokens, e, k, h, f, "bf16", dev, impl="torch_loop", repeats=args.repeats,
                               flush=flush)[0] if tokens <= 1024 else None
        gmm = None
        if grouped_ok:
            try:
                gmm = bench_fused_moe(tokens, e, k, h, f, "bf16", dev, impl="torch_grouped_mm",
                                      repeats=args.repeats, flush=flush)[0]
            except Exception as err:  # an unsupported build: report and go on
                print(f"  torch._grouped_mm failed: {type(err).__name__}: {err}"[:160])
        fig = roofline_row({"seconds_median": t.seconds_median, **meta}, peaks) if peaks else {}
        bound = fig.get("bound", "-")
        frac = fig.get("fraction_of_hbm_peak" if bound == "memory" else "fraction_of_bf16_peak")
        frac_text = "-" if frac is None else f"{frac:.1%}"
        print(f"{label:<26} {tokens:>5} {_us(t):>10} {_us(loop):>9} {_ratio(loop, t):>7} {_us(gmm):>8} "
              f"{_ratio(gmm, t):>6} {bound:>8} {frac_text:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
