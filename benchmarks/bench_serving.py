"""Serving simulator speed: 10,000 requests on DeepSeek-V3, EP64 (8 nodes of 8 H100), Poisson arrivals.

Prints simulated seconds per CPU second, CPU milliseconds per request and per engine step, the run's
serving figures (TTFT/TPOT, tokens/s per GPU), peak memory, and, measured in the same run, the CPU
cost of one step of the lockstep trace replay (``moesim simulate``, chunked over steps) at the
serving run's mean step size: the serving engine prices each step alone, because the next batch
depends on when this one ends.

    python benchmarks/bench_serving.py [--requests 10000] [--rate 50] [--trace /tmp/moesim-bench-v3.npz]

The synthetic trace (moesim's generator, default profile, seed 1; the same file bench_sim.py uses)
is generated into /tmp on the first run and reused. Requests draw their prompts and outputs from the
shipped ``chat`` workload (lognormal, mean 1024 and 256 tokens) and their routing from the trace's
rows in stream order.

Measured 2026-12-05 (2-core VM shared with other jobs, no numba; docs/serving.md, "Speed"):
chunked, 235.4 simulated s in 132.5 CPU s (1.78 simulated s per CPU s, 13.3 CPU ms per request,
62.8 CPU ms per step = 3.04x the replay step of the same size, 662 MiB peak RSS); disaggregated
(before the rebase onto main's faster replay), 223.3 s in 210.0 CPU s (1.06, 21.0 ms per request,
22.0 ms per step = 1.28x, 732 MiB).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_trace(path: Path, tokens: int) -> None:
    """The DeepSeek-V3 trace bench_sim.py uses (same generator, profile and seed), made once."""
    if path.exists():
        return
    print(f"generating {tokens} DeepSeek-V3 routing rows into {path} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "moesim", "trace", "synth", "--model", "deepseek-v3", "--tokens",
                    str(tokens), "--seed", "1", "--out", str(path)], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=50.0, help="Poisson arrivals, requests/s")
    ap.add_argument("--trace", default="/tmp/moesim-bench-v3.npz")
    ap.add_argument("--tokens", type=int, default=256_000, help="trace rows to generate when it is missing")
    ap.add_argument("--scheduler", default="chunked", help="chunked, prefill-first or disaggregated")
    ap.add_argument("--profile", action="store_true", help="print the top of a cProfile of the run")
    args = ap.parse_args()

    from moesim.cost import CostModel
    from moesim.serving import ServeConfig, load_workload, serve
    from moesim.sim import SimConfig, simulate
    from moesim.specs import load_cluster, load_model
    from moesim.traces import RoutingTrace

    path = Path(args.trace)
    make_trace(path, args.tokens)
    cluster = load_cluster("h100x8x4", nodes=8)
    model = load_model("deepseek-v3")
    trace = RoutingTrace.load(path, model=model)
    workload = load_workload("chat").with_(requests=args.requests, arrival_rate=args.rate)
    cfg = ServeConfig(cluster, model, trace, workload, scheduler=args.scheduler)
    gpus = len(cluster.gpus)
    print(f"{model.name} on {cluster.name} x{cluster.nodes} nodes ({gpus} GPUs, EP{gpus}), "
          f"{args.requests} requests, Poisson {args.rate:g} req/s, chat lengths, {args.scheduler}, "
          f"trace {path.name} "
          f"({trace.num_tokens} rows)")

    cost = CostModel(cluster, model)
    prof = cProfile.Profile() if args.profile else None
    c0, w0 = time.process_time(), time.perf_counter()
    if prof:
        prof.enable()
    result = serve(cfg, cost)
    if prof:
        prof.disable()
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    s = result.summary()
    steps = sum(i["steps"] for i in s["instances"])
    sim = s["duration_s"]
    print(f"serving run: {sim:.1f} simulated s in {cpu:.1f} CPU s ({wall:.1f} s wall): "
          f"{sim / cpu:.2f} simulated s per CPU s")
    print(f"  {cpu / args.requests * 1e3:.2f} CPU ms per request, {steps} steps, "
          f"{cpu / steps * 1e3:.2f} CPU ms per step, mean batch {s['batch']['mean_tokens']:.0f} tokens / "
          f"{s['batch']['mean_requests']:.0f} requests")
    print(f"  finished {s['requests']['finished']} of {s['requests']['sent']}; TTFT p50 "
          f"{s['ttft_s']['p50'] * 1e3:.0f} ms p99 {s['ttft_s']['p99'] * 1e3:.0f} ms; TPOT p50 "
          f"{s['tpot_s']['p50'] * 1e3:.1f} ms p99 {s['tpot_s']['p99'] * 1e3:.1f} ms; output "
          f"{s['throughput']['output_tokens_per_s_per_gpu']:.0f} tokens/s per GPU; "
          f"preemptions {s['preemptions']}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS {rss:.0f} MiB")

    # the same run's baseline: lockstep replay of decode steps of the serving run's mean step size
    batch = max(1, round(float(np.mean(result.steps["prefill_tokens"] + result.steps["decode_tokens"]))))
    base_steps = 200
    simulate(SimConfig(cluster, model, trace, batch_size=batch, steps=2), cost)  # warm the memos
    c1 = time.process_time()
    simulate(SimConfig(cluster, model, trace, batch_size=batch, steps=base_steps), cost)
    per_step = (time.process_time() - c1) / base_steps
    print(f"baseline (same run): moesim simulate, {batch}-token decode steps, {base_steps} steps: "
          f"{per_step * 1e3:.2f} CPU ms per step; serving step / replay step = "
          f"{cpu / steps / per_step:.2f}x")
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
        print(out.getvalue())


if __name__ == "__main__":
    main()
