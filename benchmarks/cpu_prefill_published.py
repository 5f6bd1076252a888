"""Predicted vs published CPU/GPU hybrid prefill throughput (KTransformers, DeepSeek-V3).

Runs moesim.cost.hybrid on the ``rtx4090-workstation`` profile (one RTX 4090, two Xeon Gold 6454S:
the KTransformers test box) and prints, per prompt length, the predicted prefill tokens/s beside the
figures KTransformers published (kvcache-ai/ktransformers doc/en/DeepseekR1_V3_tutorial.md @034a116),
plus the kernel efficiency each fit point implies (how the two fitted YAML numbers were derived).

    python benchmarks/cpu_prefill_published.py
"""

from __future__ import annotations

from moesim.cost import CostModel
from moesim.cost.cpu_experts import CpuOptions
from moesim.cost.hybrid import hybrid_prefill
from moesim.specs import load_cluster, load_model

# (label, kernel, NUMA mode, {prompt tokens: published prefill tokens/s}, fit point or None)
SERIES = (
    ("v0.2 Q4_K_M, 1 socket (fit)", "avx512-q4", "one-socket", {500: 54.21}, 500),
    ("v0.2 Q4_K_M, 2 sockets", "avx512-q4", "tensor-parallel", {500: 82.94}, None),
    ("v0.2.1 Q4_K_M, 2 sockets", "avx512-q4", "tensor-parallel",
     {969: 88.2, 1930: 88.5, 3846: 81.9, 7678: 80.0}, None),
    ("v0.3-preview AMX INT8, 2 sockets", "amx-int8", "tensor-parallel",
     {969: 185.96, 1930: 255.26, 3846: 252.58, 7678: 195.62}, 1930),
)


def main() -> None:
    cluster = load_cluster("rtx4090-workstation")
    model = load_model("deepseek-v3")
    print(f"{'series':<34} {'tokens':>6} {'published':>9} {'predicted':>9} {'error':>7}"
          "   gpu s   cpu s  pcie s")
    for label, kernel, numa, published, fit in SERIES:
        cost = CostModel(cluster, model, cpu=CpuOptions.of(kernel, numa))
        spec = cost.cpu.kernel("n0.cpu0")
        for tokens, pub in published.items():
            r = hybrid_prefill(cost, "n0.gpu0", "n0.cpu0", tokens)
            error = r.tokens_per_s / pub - 1
            print(f"{label:<34} {tokens:>6} {pub:>9.1f} {r.tokens_per_s:>9.1f} {error:>+7.1%}"
                  f" {r.gpu_s:>7.2f} {r.cpu_experts_s:>7.2f} {r.pcie_s:>7.2f}")
            if tokens == fit:
                # compute-bound rows: CPU time scales as 1 / efficiency
                needed = r.cpu_experts_s / (tokens / pub - r.gpu_s - r.pcie_s)
                top = spec.efficiency[-1][1]
                print(f"{'':<34} fit: {kernel} efficiency {top:.4g} x {needed:.4f} = {top * needed:.4g}")


if __name__ == "__main__":
    main()
