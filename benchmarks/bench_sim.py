"""Simulator speed: DeepSeek-V3 decode on 8 nodes of 8 H100 (EP64), 256 tokens per step, 1,000 steps.

Prints simulated seconds per wall second (the issue's target is >= 10 on a 2-core machine), the
same figure for a naive baseline measured in the same run (one cost call per (step, layer, device)
and one all-to-all call per (step, layer), no chunking), and the top of a cProfile of the run.

    python benchmarks/bench_sim.py [--steps 1000] [--trace /tmp/moesim-bench-v3.npz] [--a2a MODE]

The synthetic trace (moesim's generator with its default profile, fitted to real routing
statistics) is generated into /tmp on the first run and reused afterwards. The same run is also
simulated with the [G, G] pair-matrix all-to-all accounting (the engine before node-level counting)
and the ratio printed; both give the same simulated time.

Measured 2026-12-05 (2-core VM, load average 4-5 from other jobs; numba installed), 1000 steps:
batch 256: 8.5-9.9 simulated s per CPU s, pair path in the same run 4.0-4.8 (2.0-2.1x); batch 1:
6.9-10.3, pair path 5.1-5.3 (1.4-1.9x). Commit adfe57f (before issue 15): 3.8-4.9 at batch 256,
5.4 at batch 1. Batch 1024 on h200x8 (EP8, 200 steps): peak RSS 452 MiB (adfe57f: 3.2 GB).
The figures above are the `flat` all-to-all (the default of this script). The other modes, 300
steps at batch 256 in one process on the same VM (CPU seconds of the run): flat 0.79-0.90 s,
low-latency 0.80-0.93 s (its fp8 dispatch and bf16 combine are evaluated apart), hierarchical
1.40-1.42 s (per-token de-duplication in the compiled counting).

Why later mains read lower (bisected 2026-12-05, batch 256, 300 steps, flat; CPU s of one run after
the 2-step warm-up as this script times it / best of two more runs; two rounds, same VM, load ~1):
  6065362 (figures above)       5.777 sim s   0.83-1.06 / 0.64-0.74 CPU s
  dd9ded6 (b-workflows, e-robust) 5.777       0.81-1.04 / 0.65-0.69
  9d70917 (comm: a2a modes)      5.645        1.16-1.30 / 0.79-0.85  FP8 dispatch, BF16 combine:
                                              the combine is timed apart (2x node-time passes)
  0bf96a9 (fidelity: dtypes)     4.363        1.07-1.08 / 0.82-0.91  FP8 weights: 23% less simulated
  010c594 .. af2e50a (main)      4.555        1.16-1.42 / 0.81-0.92  (LM head; op-class pre-dispatch)
  this commit                    4.555        1.16-1.18 / 0.72-0.84
So the figure fell ~1.3x from CPU time and ~1.27x from the simulated time itself (fidelity's pricing),
and 300 steps read lower than 1,000 (the first run's allocations and the timeline are per run). This
commit times the combine on the dispatch's own node counts (no transposed copies) and sums the
busiest GPU's copies only when a mode charges per copy: summaries bit-identical. Batch 1: 6065362
0.46-0.48 CPU s warm (4.59 simulated s), main 0.70-0.72 (3.48 s), this commit 0.61-0.64.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_trace(path: Path, tokens: int) -> None:
    if path.exists():
        return
    print(f"generating {tokens} DeepSeek-V3 routing rows into {path} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "moesim", "trace", "synth", "--model", "deepseek-v3", "--tokens",
                    str(tokens), "--seed", "1", "--out", str(path)], check=True)


def naive_seconds_per_step(cfg, cost, steps: int) -> tuple[float, float]:
    """(wall seconds, simulated seconds) of a per-(step, layer, device) loop over the same steps."""
    from moesim.sim import default_plan
    from moesim.sim.dispatch import ReplicaTable, dispatch, owners

    model, trace = cfg.model, cfg.trace
    plan = default_plan(model, cfg.cluster)
    table = ReplicaTable.of(plan)
    devices = plan.devices
    G, B = len(devices), cfg.batch_size
    t0 = time.perf_counter()
    sim = 0.0
    for s in range(steps):
        ids = np.asarray(trace.expert_ids[s * B:(s + 1) * B])[None]
        d = dispatch(ids, owners(B, G)[None], table)
        per_gpu = B // G
        context = int(np.asarray(trace.pos[s * B:(s + 1) * B]).mean()) + 1
        for layer in range(model.num_layers):
            pre = max(cost.attention_s(g, per_gpu, context, "decode") for g in devices)
            if layer not in model.moe_layers:
                sim += pre + cost.dense_ffn_s(devices[0], per_gpu)
                continue
            m = model.moe_layers.index(layer)
            pre += cost.router_s(devices[0], per_gpu) + cost.permute_combine_s(devices[0], per_gpu)
            pre += cost.shared_expert_s(devices[0], per_gpu)
            experts = max(cost.expert_compute_s(g, d.slot_tokens[0, m, i]) for i, g in enumerate(devices))
            pair = d.pair_tokens[0, m] * model.activation_bytes_per_token
            np.fill_diagonal(pair, 0.0)
            sim += pre + experts + cost.all_to_all_s(devices, pair) + cost.all_to_all_s(devices, pair.T)
    return time.perf_counter() - t0, sim


def pair_path_cpu_seconds(cfg, cost) -> tuple[float, float]:
    """(CPU seconds, simulated seconds) of the same run with the [G, G] pair-matrix all-to-all
    accounting (the engine before node-level counting), for a ratio measured in the same run."""
    from moesim.sim.engine import Machine

    m = Machine(cfg, cost)
    m.coster.node_blocks = None
    c0 = time.process_time()
    m.run()
    return time.process_time() - c0, float(m.rec.step_end_s[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--trace", default="/tmp/moesim-bench-v3.npz")
    ap.add_argument("--baseline-steps", type=int, default=10)
    ap.add_argument("--a2a", default="flat", help="all-to-all mode: flat, hierarchical, low-latency")
    args = ap.parse_args()

    from moesim.cost import CostModel
    from moesim.sim import SimConfig, simulate
    from moesim.specs import load_cluster, load_model
    from moesim.traces import RoutingTrace

    path = Path(args.trace)
    make_trace(path, args.steps * args.batch)
    model = load_model("deepseek-v3")
    cluster = load_cluster("h100x8x4", nodes=8)
    trace = RoutingTrace.load(path, model=model)
    t0 = time.perf_counter()
    cost = CostModel(cluster, model)
    warm = SimConfig(cluster, model, trace, batch_size=args.batch, steps=2, a2a=args.a2a)
    simulate(warm, cost)  # one-time setup: all-to-all routes of the 64 GPUs, memo of dense ops
    setup_s = time.perf_counter() - t0
    cfg = SimConfig(cluster, model, trace, batch_size=args.batch, steps=args.steps, a2a=args.a2a)
    profiler = cProfile.Profile()
    t0, c0 = time.perf_counter(), time.process_time()
    result = simulate(cfg, cost)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    s = result.summary()
    ratio = result.simulated_seconds / wall
    pair_cpu, pair_sim = pair_path_cpu_seconds(cfg, cost)
    base_wall, base_sim = naive_seconds_per_step(cfg, cost, args.baseline_steps)
    base_ratio = base_sim / base_wall
    print(f"DeepSeek-V3 decode on {cluster.name} x {cluster.nodes} nodes ({s['devices']} GPUs, "
          f"EP{s['devices']}), batch {args.batch}, {s['steps']} steps")
    print(f"  one-time setup (routes, memo): {setup_s:.2f} s wall")
    print(f"  simulated {result.simulated_seconds:.3f} s in {wall:.2f} s wall: "
          f"{ratio:.2f} simulated s per wall s (target >= 10); {cpu:.2f} s of CPU time: "
          f"{result.simulated_seconds / cpu:.2f} simulated s per CPU s (other load on the machine excluded)")
    print(f"  step latency p50 {s['step_latency_s']['p50'] * 1e3:.2f} ms, tokens/s {s['tokens_per_s']:.0f}")
    print(f"  same run with [G, G] pair matrices: {pair_cpu:.2f} s of CPU time, {pair_sim / pair_cpu:.2f} "
          f"simulated s per CPU s (same simulated time: {pair_sim == result.simulated_seconds}); "
          f"node-level / pair = {pair_cpu / cpu:.2f}x")
    print(f"  baseline (per step/layer/device loop, {args.baseline_steps} steps): {base_ratio:.3f} "
          f"simulated s per wall s; engine / baseline = {ratio / base_ratio:.1f}x")
    profiler.enable()
    short = min(args.steps, 200)
    simulate(SimConfig(cluster, model, trace, batch_size=args.batch, steps=short, a2a=args.a2a), cost)
    profiler.disable()
    stats = pstats.Stats(profiler)
    shares = profile_shares(stats)
    print(f"RESULT: {ratio:.2f} simulated s per wall s ({result.simulated_seconds / cpu:.2f} per CPU s); "
          f"target >= 10: {'met' if ratio >= 10 else 'NOT met'}")
    print("where the time goes (200-step profile, own time by area):")
    for area, share in shares[:8]:
        print(f"  {share * 100:5.1f}%  {area}")
    if ratio < 10:
        print(f"  -> dominated by: {shares[0][0]} ({shares[0][1] * 100:.0f}%)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print("profile (200 steps, by own time):")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:4000])


AREAS = (
    ("moesim/cost/linkloads.py", "all-to-all link loads and latency (set products)"),
    ("moesim/cost/collectives.py", "all-to-all link loads and latency (set products)"),
    ("moesim/sim/dispatch.py", "dispatch (token -> slot / pair counts, bincount)"),
    ("moesim/sim/stepcost.py", "step costs (pair bytes, expert-row de-duplication)"),
    ("moesim/cost/", "cost model (expert GEMM / attention roofline)"),
    ("moesim/sim/engine.py", "engine (chunk assembly, records, SimPy processes)"),
    ("moesim/sim/results.py", "results (summary, percentiles)"),
    ("moesim/traces/", "trace reading"),
    ("simpy/", "SimPy event loop"),
)


def profile_shares(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Own time grouped by area of the code, largest first, as fractions of the total. Time in
    numpy (its C functions and Python wrappers: bincount, take, sum, unique) counts for the moesim
    area that called it, split by the callers' shares."""
    table = stats.stats  # type: ignore[attr-defined]

    def is_numpy(key: tuple[str, int, str]) -> bool:
        return key[0] == "~" or "/numpy/" in key[0].replace("\\", "/")

    totals: dict[str, float] = {}

    def charge(key: tuple[str, int, str], t: float, depth: int) -> None:
        callers = table.get(key, (0, 0, 0.0, 0.0, {}))[4]
        if is_numpy(key) and callers and depth < 8:
            spent = sum(c[2] + c[3] for c in callers.values()) or 1.0
            for caller, c in callers.items():
                charge(caller, t * (c[2] + c[3]) / spent, depth + 1)
            return
        path = key[0].replace("\\", "/")
        area = next((name for k, name in AREAS if k in path), "other Python")
        totals[area] = totals.get(area, 0.0) + t

    for key, (_cc, _nc, tottime, _ct, _callers) in table.items():
        charge(key, tottime, 0)
    whole = sum(totals.values()) or 1.0
    return sorted(((a, t / whole) for a, t in totals.items()), key=lambda x: -x[1])

if __name__ == "__main__":
    main()
