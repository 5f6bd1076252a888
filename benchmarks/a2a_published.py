"""Predicted vs published DeepEP all-to-all figures (the table in docs/cost.md "All-to-all modes").

Runs ``moesim bench a2a``'s library (``moesim.sim.a2abench``) on the ``h800x8`` profile with
``--nodes EP/8`` in DeepEP's own benchmark settings (deepseek-ai/DeepEP @dd758ca ``docs/legacy.md``
and ``tests/legacy``): normal kernels (``hierarchical``) at 4096 tokens per rank, top-8 of 256
experts within min(nodes, 4) node groups, FP8 dispatch and BF16 combine, compared as DeepEP's
"bottleneck bandwidth" (NVL for the intranode row, RDMA for the others); low-latency kernels at 128
tokens per rank, top-8 of 256, compared as latency. The low-latency kernel overhead was fitted on
the rows marked "fit"; every other row is a prediction.

    python benchmarks/a2a_published.py            # EP up to 64
    python benchmarks/a2a_published.py --all      # also EP 128 and 256 (16 and 32 nodes)
"""

from __future__ import annotations

import sys

from moesim.cost import CostModel
from moesim.sim.a2abench import BenchSetup, bench_all_to_all
from moesim.specs import load_cluster, load_model
from moesim.vocab import AllToAll

NORMAL = ((8, 153, 158), (16, 43, 43), (32, 58, 57), (64, 51, 50))
"""(EP, dispatch GB/s, combine GB/s): DeepEP V1 normal kernels, docs/legacy.md @dd758ca."""
LOW_LATENCY = ((8, 77, 114), (16, 118, 195), (32, 155, 273), (64, 173, 314), (128, 192, 369), (256, 194, 360))
"""(EP, dispatch us, combine us): DeepEP V1 low-latency kernels, docs/legacy.md @dd758ca."""
FIT_EP = (16, 32)


def predict(ep: int, mode: AllToAll, tokens: int) -> dict:
    nodes = max(1, ep // 8)
    cluster = load_cluster("h800x8", nodes=nodes)
    cost = CostModel(cluster, load_model("deepseek-v3"))
    devices = tuple(d.id for d in cluster.gpus)[:ep]
    groups = min(nodes, 4) if tokens > 128 else None  # the normal kernels' test routes within groups
    return bench_all_to_all(BenchSetup(tokens, 7168, 8, 256, "fp8", "bf16", mode, topk_groups=groups), cost,
                            devices)


def main() -> None:
    top = 256 if "--all" in sys.argv else 64
    print("| kernels | EP | figure | published | predicted | error | `flat` (before) | error |")
    print("|---|---|---|---|---|---|---|---|")
    for ep, dispatch, combine in NORMAL:
        r = predict(ep, AllToAll.HIERARCHICAL, 4096)
        before = predict(ep, AllToAll.FLAT, 4096)
        kind = "nvl" if ep == 8 else "rdma"
        for name, pub in (("dispatch", dispatch), ("combine", combine)):
            got, old = r[name][f"{kind}_gbps"], before[name][f"{kind}_gbps"]
            print(f"| normal (`hierarchical`) | {ep} | {name} {kind.upper()} GB/s | {pub} | {got:.1f} | "
                  f"{got / pub - 1:+.1%} | {old:.1f} | {old / pub - 1:+.1%} |")
    for ep, dispatch, combine in LOW_LATENCY:
        if ep > top:
            continue
        r = predict(ep, AllToAll.LOW_LATENCY, 128)
        before = predict(ep, AllToAll.FLAT, 128)
        fit = " (fit)" if ep in FIT_EP else ""
        for name, pub in (("dispatch", dispatch), ("combine", combine)):
            got, old = r[name]["time_s"] * 1e6, before[name]["time_s"] * 1e6
            print(f"| low-latency{fit} | {ep} | {name} µs | {pub} | {got:.1f} | {got / pub - 1:+.1%} | "
                  f"{old:.1f} | {old / pub - 1:+.1%} |")


if __name__ == "__main__":
    main()
