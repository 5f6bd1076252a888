"""``moesim simulate``: replay a routing trace on a cluster under a plan and report what it costs."""

from __future__ import annotations

import argparse

from moesim.cli.common import (
    add_json_flag,
    add_verb,
    int_range,
    nonnegative_int,
    output_file,
    positive_int,
    print_json,
    quantity,
)
from moesim.cli.replan import add_simulate_flags, render_replan, simulate_options
from moesim.cli.simulate_serving import EXAMPLES as SERVING_EXAMPLES
from moesim.cli.simulate_serving import add_serving_flags, run_serving
from moesim.errors import UserError
from moesim.io import check_parquet_writable
from moesim.limits import NODES
from moesim.vocab import (
    AllToAll,
    CachePolicy,
    CacheReset,
    CacheScope,
    CpuNuma,
    Dispatch,
    MissMode,
    Overlap,
    Phase,
    Prefetch,
    choices,
)
from moesim.workflows.simulation import simulate_run

EXAMPLES = """\
  moesim simulate --hw h100x8 --model mixtral-8x7b --trace mixtral-8x7b-synth --batch 64
  moesim simulate --hw h100x8x4 --nodes 2 --model deepseek-v2-lite --trace deepseek-v2-lite-synth \\
      --plan plan.yaml --batch 256 --overlap layer --timeline run.json
      needs plan.yaml: moesim plan --hw h100x8x4 --nodes 2 --planner eplb-hierarchical --out plan.yaml
  moesim simulate --hw rtx4090-workstation --model mixtral-8x7b --weight-dtype fp8 \\
      --trace mixtral-8x7b-synth --batch 1 --steps 300 --cache lru --expert-cache 20GiB --miss cpu --json
  moesim simulate --hw rtx4090-workstation --model mixtral-8x7b --weight-dtype fp8 \\
      --trace mixtral-8x7b-synth --steps 300 --cache lru --gpu-memory 24GB --miss fetch
  moesim simulate --hw h100x8 --model mixtral-8x7b --trace mixtral-8x7b-synth --batch 64 --steps 20 \\
      --tp 8 --runtime vllm --timeline tp8.json --step-out steps.csv
  moesim simulate --hw h100x8 --model deepseek-v2-lite --trace deepseek-v2-lite-synth --batch 64 \\
      --steps 20 --precision attention=fp8,kv_cache=fp8,dispatch=fp8
  moesim simulate --hw h100x8 --model deepseek-v2-lite --trace deepseek-v2-lite-synth --batch 256 \
      --replan drift --replan-interval 10 --replan-window 10 --replan-threshold 0.05 --replan-moves min
  moesim simulate --hw h100x8 --model deepseek-v2-lite --trace deepseek-v2-lite-synth --batch 256 \
      --replan periodic --replan-interval 20 --replan-window 20 --migration overlapped --step-out steps.csv
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub, "simulate",
        help="simulate a trace on a cluster: tokens/s, latency, utilisation, bytes per link",
        description="Replay the routing trace's steps through every layer of the model on the cluster "
        "(attention -> router -> dispatch -> experts -> combine), with the plan's placement (default: "
        "contiguous, all resident), optional expert offloading and overlap. Results: a JSON summary, "
        "a per step x layer x device table (--out) and a Perfetto timeline (--timeline). With --workload, "
        "requests arrive over time and are served with continuous batching and a KV cache per request "
        "(TTFT, TPOT, goodput; --out is then the per-request table).",
        examples=EXAMPLES + SERVING_EXAMPLES,
    )
    p.add_argument("--hw", required=True, metavar="NAME|PATH", help="hardware profile (built-in or YAML)")
    p.add_argument("--model", required=True, metavar="NAME|PATH", help="model spec (built-in name or YAML)")
    p.add_argument("--weight-dtype", default=None, metavar="DTYPE",
                   help="serve the routed experts in this dtype instead of the spec's (e.g. fp8, int4, "
                   "mxfp4): sets expert bytes for memory, fetches and the roofline")
    p.add_argument("--precision", default=None, metavar="KEY=DTYPE,...",
                   help="per-tensor dtypes over the spec's precision: block (docs/models.md): attention, "
                   "dense, shared_experts, routed_experts, embeddings, kv_cache, dispatch, combine, weights "
                   "(all weights but embeddings), compute / compute.<op> (fp8 GEMMs need a GPU with an fp8 "
                   "rate), e.g. --precision attention=fp8,kv_cache=fp8,compute=fp8")
    p.add_argument("--tp", type=positive_int, default=None, metavar="N",
                   help="attention tensor-parallel degree: GPUs per attention group, each with 1/N of the "
                   "heads, all-reducing over its ring (default 1); e.g. --tp 8 on h100x8")
    p.add_argument("--dp", type=positive_int, default=None, metavar="N",
                   help="attention data-parallel groups (default GPUs / --tp); --tp x --dp = the plan's GPUs")
    p.add_argument("--ep", type=positive_int, default=None, metavar="N",
                   help="expert-parallel size: N EP groups of GPUs/N GPUs, each GPU holding 1/(GPUs/N) of "
                   "its group's experts (tensor parallelism inside experts; default: the plan's, every "
                   "GPU for plans without EP groups), e.g. --ep 4 on h100x8")
    p.add_argument("--runtime", default=None, metavar="NAME|PATH",
                   help="runtime profile: framework overheads and memory reserve (kernels [default], vllm, "
                   "vllm-eager, or a YAML file; docs/cost.md), e.g. --runtime vllm")
    p.add_argument("--trace", required=True, metavar="NAME|PATH", help="routing trace (.npz or shipped name)")
    p.add_argument("--plan", default=None, metavar="PATH", help="plan file (YAML/JSON); default contiguous")
    p.add_argument("--batch", type=positive_int, default=1, metavar="B",
                   help="decode: tokens per step; prefill: whole prompts per step")
    p.add_argument("--steps", type=positive_int, default=None, metavar="S",
                   help="steps to simulate (default: the whole trace once; more replays it)")
    p.add_argument("--phase", default="decode", choices=choices(Phase), help="what a step is")
    p.add_argument("--cache", default=None, choices=choices(CachePolicy),
                   help="per-layer expert cache policy in GPU memory (default: the plan's, else none)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--cache-size", type=positive_int, default=None, metavar="C",
                      help="experts cached per MoE layer")
    size.add_argument("--expert-cache", type=quantity("budget"), default=None, metavar="BYTES",
                      help="expert-cache budget per GPU, e.g. 20GiB: the most experts per layer that fit")
    size.add_argument("--gpu-memory", type=quantity("budget"), default=None, metavar="BYTES",
                      help="whole memory per GPU, e.g. 24GB: the expert cache gets what the model's "
                      "non-expert weights, KV cache, activations and staging leave (docs/results.md)")
    p.add_argument("--cache-scope", default="layer", choices=choices(CacheScope),
                   help="layer: one cache of C experts per MoE layer; global: one cache per GPU of L x C "
                   "(layer, expert) slots shared by all layers, e.g. --cache belady --cache-scope global")
    p.add_argument("--cache-reset", default="none", choices=choices(CacheReset),
                   help="sequence: empty the caches when a step starts a new sequence (seq_id), e.g. "
                   "--cache lru --cache-reset sequence")
    p.add_argument("--miss", default=None, choices=choices(MissMode),
                   help="on a miss: fetch over PCIe, run on the CPU (Fiddler), fetch in low precision "
                   "(HOBBIT), run on PIM (Duplex), or auto: per missed expert whichever of those the "
                   "cluster can run is predicted fastest; default: the plan's, else fetch")
    p.add_argument("--prefetch", default=None, choices=choices(Prefetch),
                   help="next-layer prefetch: none, the true experts, or a cross-layer predictor fitted "
                   "on the first half of the trace")
    p.add_argument("--overlap", default="none", choices=choices(Overlap),
                   help="overlap all-to-all with expert compute: none, two micro-batches, four chunks")
    p.add_argument("--dispatch", default="even", choices=choices(Dispatch),
                   help="which replicas a token may use: even = all replicas of its expert (split evenly); "
                   "local = the one on its own GPU, else those on its node, else all (SGLang static "
                   "dispatch; saves the InfiniBand hop when a replica is on the token's node)")
    p.add_argument("--a2a", default=None, choices=choices(AllToAll),
                   help="all-to-all mode: flat (a copy per token and expert), hierarchical (DeepEP normal: "
                   "once per node over RDMA, then NVLink), low-latency (DeepEP: RDMA to every expert's GPU); "
                   "default: flat on one node, else hierarchical for prefill, low-latency for decode; "
                   "e.g. --a2a flat")
    p.add_argument("--nodes", type=int_range(1, NODES), default=None, metavar="N",
                   help="override the profile's node count")
    p.add_argument("--seed", type=nonnegative_int, default=0,
                   help="random seed (same inputs and seed, same results)")
    p.add_argument("--calibration", default=None, metavar="DIR", help="calibration tables for the cost model")
    p.add_argument("--cpu-kernel", default=None, metavar="KIND",
                   help="CPU expert kernel of the profile's CPU entry (amx-bf16, amx-int8, avx512-q4, "
                        "torch-bf16...; None: by the expert dtype), e.g. --cpu-kernel avx512-q4")
    p.add_argument("--cpu-numa", default=None, choices=choices(CpuNuma),
                   help="how a multi-socket host shares CPU experts (None: tensor-parallel)")
    p.add_argument("--timeline", type=output_file, default=None, metavar="FILE",
                   help="write a Perfetto/Chrome trace JSON")
    p.add_argument("--out", type=output_file, default=None, metavar="FILE",
                   help="write the per step x layer x device table (.csv or .parquet)")
    p.add_argument("--step-out", type=output_file, default=None, metavar="FILE",
                   help="write the per-step table: latency and time by op class (.csv or .parquet)")
    p.add_argument("--check-invariants", action="store_true",
                   help="check token conservation, memory and causality during the run (docs/invariants.md; "
                   "slower); a violation is a moesim bug and fails the run, e.g. "
                   "moesim simulate --hw h100x8 --model mixtral-8x7b --trace mixtral-8x7b-synth "
                   "--check-invariants --json")
    add_serving_flags(p)
    add_simulate_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for flag, value in (("--out", args.out), ("--step-out", args.step_out)):
        if value and not str(value).endswith((".csv", ".parquet")):
            raise UserError(f"expected a .csv or .parquet file, got {value!r}", field=flag)
        check_parquet_writable(value or "", field=flag)
    if args.workload is not None:
        return run_serving(args)
    sim = simulate_run(
        hw=args.hw, model=args.model, trace=args.trace, plan=args.plan, weight_dtype=args.weight_dtype,
        nodes=args.nodes, batch=args.batch, steps=args.steps, phase=args.phase, cache=args.cache,
        cache_size=args.cache_size, expert_cache=args.expert_cache, gpu_memory=args.gpu_memory,
        miss=args.miss, prefetch=args.prefetch, overlap=args.overlap, dispatch=args.dispatch, seed=args.seed,
        calibration=args.calibration, check_invariants=args.check_invariants,
        cpu_kernel=args.cpu_kernel, cpu_numa=args.cpu_numa, a2a=args.a2a, cache_scope=args.cache_scope,
        cache_reset=args.cache_reset, precision=args.precision, tp=args.tp, dp=args.dp, ep=args.ep,
        runtime=args.runtime, replan=simulate_options(args),
    )
    result = sim.result
    if args.out:
        result.write_frame(args.out)
    if args.step_out:
        result.write_step_frame(args.step_out)
    if args.timeline:
        result.write_timeline(args.timeline)
    summary = result.summary()
    if args.json:
        print_json(summary, verb="simulate")
        return 0
    lat = summary["step_latency_s"]
    par = summary.get("parallel") or {}
    layout = "".join(f", {name} {par[key]}" for key, name in (("tp", "attention TP"), ("ep", "EP"),
                                                              ("expert_tp", "expert TP"))
                     if par.get(key, 1) > 1 and (key != "ep" or par.get("expert_tp", 1) > 1))
    print(f"{summary['model']} on {summary['cluster']} ({summary['devices']} GPUs{layout}, "
          f"plan {summary['plan']}), {summary['phase']}, batch {summary['batch_size']}, "
          f"{summary['steps']} steps")
    wall = summary["timing"]["wall_seconds"]
    print(f"simulated {summary['simulated_seconds']:.6g} s in {wall:.3g} s wall: "
          f"{summary['tokens']} tokens, {summary['tokens_per_s'] or 0:.6g} tokens/s")
    if lat["p50"] is not None:
        print(f"step latency p50 {lat['p50'] * 1e3:.4g} ms, p90 {lat['p90'] * 1e3:.4g} ms, "
              f"p99 {lat['p99'] * 1e3:.4g} ms")
    if summary["cache_hit_rate"] is not None:
        c = summary["cache"]
        print(f"cache {c['policy']} ({c['capacity_experts']} experts/layer, miss {c['miss']}, prefetch "
              f"{c['prefetch']}): hit rate {summary['cache_hit_rate']:.4f}")
    busiest = max(summary["per_device"], key=lambda d: d["utilization"])
    print(f"busiest device {busiest['id']}: utilisation {busiest['utilization']:.3f}")
    print(render_op_classes(summary["op_class_s"]))
    if "replan" in summary:
        print(render_replan(summary["replan"]))
    print(render_memory(summary["memory_breakdown_bytes"]))
    return 0


def render_op_classes(c: dict) -> str:
    """``time per step by op class: experts_gpu 4.52 ms (67.6%), attention ...`` (largest first)."""
    mean, share = c["mean_per_step_s"], c["share"]
    items = sorted((k for k in mean if mean[k] > 0), key=lambda k: -mean[k])
    return "time per step by op class: " + (", ".join(
        f"{k} {mean[k] * 1e3:.4g} ms ({100 * share[k]:.1f}%)" for k in items) or "none")


def render_memory(breakdown: dict) -> str:
    """One line per group of GPUs with the same bytes: each part in GiB, then total / capacity."""
    groups: dict[tuple, list[str]] = {}
    for dev, parts in breakdown.items():
        groups.setdefault(tuple(sorted(parts.items())), []).append(dev)
    lines = ["memory per GPU (GiB):"]
    for key, devs in groups.items():
        parts = dict(key)
        shown = [f"{k} {v / 2**30:.3g}" for k, v in parts.items() if k not in ("total", "capacity") and v > 0]
        name = devs[0] if len(devs) == 1 else f"{devs[0]} (and {len(devs) - 1} more)"
        lines.append(f"  {name}: {', '.join(shown)}; total {parts['total'] / 2**30:.4g} of "
                     f"{parts['capacity'] / 2**30:.4g}")
    return "\n".join(lines)
