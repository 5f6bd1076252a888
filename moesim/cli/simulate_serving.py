"""``moesim simulate --workload``: the serving flags of the simulate verb and what it prints."""

from __future__ import annotations

import argparse
from typing import Any

from moesim.cli.common import finite_positive_float, int_range, positive_int, print_json
from moesim.errors import UserError
from moesim.serving.kv import PREEMPTION_MODES
from moesim.serving.schedulers import SCHEDULERS
from moesim.serving.workload import MAX_REQUESTS
from moesim.workflows.serving import serve_run

EXAMPLES = """\
  moesim simulate --hw h100x8 --model deepseek-v2-lite --trace deepseek-v2-lite-synth --workload chat \\
      --arrival-rate 20 --requests 100 --slo ttft=200ms,tpot=20ms
  moesim simulate --hw h100x8 --model deepseek-v2-lite --trace deepseek-v2-lite-synth --workload chat \\
      --requests 60 --scheduler disaggregated --json
  moesim simulate --hw h100x8 --model mixtral-8x7b --trace mixtral-8x7b-synth --workload chat \\
      --concurrency 16 --requests 40 --scheduler prefill-first --out requests.csv --timeline serve.json
"""

NOT_SERVING = {"batch": 1, "steps": None, "phase": "decode", "cache": None, "cache_size": None,
               "expert_cache": None, "gpu_memory": None, "miss": None, "prefetch": None, "overlap": "none",
               "dispatch": "even", "cache_scope": "layer", "cache_reset": "none", "tp": None, "dp": None,
               "ep": None, "replan": None}
"""Flags of the trace replay that a serving run does not take (and their defaults)."""


def add_serving_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("serving (with --workload: requests, continuous batching, KV cache; "
                             "docs/serving.md)")
    g.add_argument("--workload", default=None, metavar="NAME|PATH",
                   help="serve requests instead of replaying fixed batches: a workload YAML or a built-in "
                   "name (chat), e.g. --workload chat")
    g.add_argument("--arrival-rate", type=finite_positive_float, default=None, metavar="REQ/S",
                   help="Poisson arrivals at this rate (overrides the workload's arrivals), e.g. 20")
    g.add_argument("--concurrency", type=positive_int, default=None, metavar="N",
                   help="closed loop: N clients, each sending its next request when the last one finished")
    g.add_argument("--requests", type=int_range(1, MAX_REQUESTS), default=None, metavar="N",
                   help="requests to send (default: the workload's)")
    g.add_argument("--duration", type=finite_positive_float, default=None, metavar="S",
                   help="stop sending after S seconds of simulated time (sent requests still finish)")
    g.add_argument("--scheduler", default="chunked", choices=tuple(SCHEDULERS),
                   help="chunked: continuous batching with chunked prefill, decode first (vLLM v1, SGLang); "
                   "prefill-first: whole-prompt prefill steps before decode steps; disaggregated: prefill "
                   "and decode on separate GPU groups, the KV cache moved between them")
    g.add_argument("--slo", default=None, metavar="ttft=..,tpot=..",
                   help="goodput counts requests meeting all of these (ms, or s with the unit), e.g. "
                   "ttft=200ms,tpot=20ms,e2e=10s")
    g.add_argument("--token-budget", type=int_range(1, 10_000_000), default=None, metavar="T",
                   help="tokens per step per GPU (default: vLLM's, 8192 on GPUs of >= 70 GiB, else 2048)")
    g.add_argument("--max-seqs", type=int_range(1, 10_000_000), default=None, metavar="N",
                   help="running requests per GPU (default: vLLM's, 1024 on GPUs of >= 70 GiB, else 256)")
    g.add_argument("--kv-block", type=int_range(1, 4096), default=16, metavar="TOKENS",
                   help="tokens per KV-cache block")
    g.add_argument("--preemption", default="recompute", choices=PREEMPTION_MODES,
                   help="when the KV cache runs out: drop a request's KV and recompute it later, or copy it "
                   "to host memory and back")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9, metavar="F",
                   help="share of each GPU's memory the engine uses; the KV cache gets what the weights, "
                   "resident experts and activations leave of it")
    g.add_argument("--prefill-gpus", type=positive_int, default=None, metavar="N",
                   help="disaggregated: the first N GPUs prefill, the rest decode (default: half the "
                   "nodes, or half of one node's GPUs)")


def run_serving(args: argparse.Namespace) -> int:
    for name, default in NOT_SERVING.items():
        if getattr(args, name) != default:
            flag = "--" + name.replace("_", "-")
            why = ("serving runs attention data-parallel, one GPU per request, and experts over every GPU"
                   if name in ("tp", "dp", "ep") else "re-placement is modelled in trace replays only"
                   if name == "replan" else "the scheduler forms the batches; expert offloading is "
                   "not modelled in serving runs")
            raise UserError(f"{flag} does not apply with --workload ({why})", field=flag)
    if args.arrival_rate is not None and args.concurrency is not None:
        raise UserError("give one of --arrival-rate and --concurrency", field="--arrival-rate")
    run = serve_run(
        hw=args.hw, model=args.model, trace=args.trace, workload=args.workload, plan=args.plan,
        weight_dtype=args.weight_dtype, nodes=args.nodes, scheduler=args.scheduler,
        arrival_rate=args.arrival_rate,
        concurrency=args.concurrency, requests=args.requests, duration_s=args.duration, seed=args.seed,
        slo=args.slo, token_budget=args.token_budget, max_seqs=args.max_seqs, kv_block=args.kv_block,
        preemption=args.preemption, gpu_memory_utilization=args.gpu_memory_utilization,
        prefill_gpus=args.prefill_gpus, calibration=args.calibration, cpu_kernel=args.cpu_kernel,
        cpu_numa=args.cpu_numa, a2a=args.a2a, precision=args.precision, runtime=args.runtime,
        check_invariants=args.check_invariants,
    )
    result = run.result
    if args.out:
        result.write_frame(args.out)
    if args.timeline:
        result.write_timeline(args.timeline)
    s = result.summary()
    if args.json:
        print_json(s, verb="simulate")
        return 0
    print_summary(s)
    return 0


def _ms(p: dict[str, Any]) -> str:
    if p["p50"] is None:
        return "n/a"
    return f"p50 {p['p50'] * 1e3:.4g} ms, p90 {p['p90'] * 1e3:.4g} ms, p99 {p['p99'] * 1e3:.4g} ms"


def print_summary(s: dict[str, Any]) -> None:
    w, r, t = s["workload"], s["requests"], s["throughput"]
    arrivals = (f"Poisson {w['rate_per_s']:g} req/s" if w["arrivals"] == "poisson"
                else f"{w['concurrency']} closed-loop clients" if w["arrivals"] == "closed-loop"
                else "timestamps")
    print(f"{s['model']} on {s['cluster']} ({s['gpus']} GPUs, plan {s['plan']}), scheduler {s['scheduler']}, "
          f"workload {w['name']}: {arrivals}, {r['sent']} requests")
    print(f"routing: {s['routing']['mode']} ({s['routing']['description']})")
    left = f", unfinished {r['unfinished_reasons']}" if r["unfinished"] else ""
    print(f"finished {r['finished']} of {r['sent']}{left} in {s['duration_s']:.6g} s simulated, "
          f"{s['timing']['wall_seconds']:.3g} s wall")
    print(f"TTFT {_ms(s['ttft_s'])}")
    print(f"TPOT {_ms(s['tpot_s'])}")
    print(f"E2E  {_ms(s['e2e_s'])}")
    if t["requests_per_s"] is not None:
        print(f"throughput {t['requests_per_s']:.4g} req/s; input {t['input_tokens_per_s']:.6g} tokens/s "
              f"({t['input_tokens_per_s_per_gpu']:.6g}/GPU), output {t['output_tokens_per_s']:.6g} tokens/s "
              f"({t['output_tokens_per_s_per_gpu']:.6g}/GPU, {t['output_tokens_per_s_per_node']:.6g}/node)")
    g = s["goodput"]
    if g["requests_per_s"] is not None:
        slo = ", ".join(f"{k[:-2]} <= {v * 1e3:g} ms" for k, v in g["slo"].items() if v is not None)
        print(f"goodput {g['requests_per_s']:.4g} req/s ({g['fraction']:.1%} of requests meet {slo})")
    kv = s["kv_cache"]
    print(f"KV cache: mean utilisation {kv['mean_utilization']:.3f}, peak {kv['peak_utilization']:.3f}; "
          f"batch mean {s['batch']['mean_tokens']:.4g} tokens / {s['batch']['mean_requests']:.4g} requests; "
          f"preemptions {s['preemptions']}")
    if s["kv_transfer"]["count"]:
        print(f"KV transfers prefill -> decode: {s['kv_transfer']['count']}, "
              f"{s['kv_transfer']['bytes'] / 1e9:.4g} GB")
