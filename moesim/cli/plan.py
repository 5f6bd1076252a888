"""``moesim plan``: plan expert placement on the training part of a trace, compare on the rest."""

from __future__ import annotations

import argparse
from typing import Any

from moesim.cli.common import (
    add_json_flag,
    add_verb,
    finite_positive_float,
    int_range,
    nonnegative_int,
    open_fraction,
    output_file,
    positive_int,
    print_json,
    quantity,
)
from moesim.cli.replan import add_plan_flags, run_plan_replan
from moesim.io import write_table_csv
from moesim.limits import MAX_WINDOWS, NODES
from moesim.planners.cache_ilp import MISS_CHOICES, POLICY_CHOICES, PREFETCH_CHOICES
from moesim.plans.export import export_for_engines
from moesim.vocab import Dispatch, choices
from moesim.workflows.inputs import DEFAULT_MODEL, DEFAULT_TRACE
from moesim.workflows.placement import PLANNER_NAMES, PlacementRequest, PlannerComparison, compare_planners
from moesim.workflows.replan import ILP_TARGETS

_EXAMPLES = """\
  moesim plan --hw h100x8 --time-limit 5   every planner on the shipped DeepSeek-V2-Lite trace
  moesim plan --hw h100x8 --model deepseek-v2-lite --trace my.npz --slots-per-gpu 9 --planner ilp \\
      --time-limit 3 --out plan.yaml --export-sglang expert_location.json
      needs my.npz: moesim trace synth --model deepseek-v2-lite --tokens 4000 --trial-tokens 512 --out my.npz
  moesim plan --hw h100x8x4 --nodes 2 --model mixtral-8x7b --trace mixtral-8x7b-synth --replicas 32 \\
      --planner eplb-hierarchical
  moesim plan --hw h100x8 --planner eplb --train-fraction 0.8 --json
  moesim plan --hw h100x8 --planner ilp --ilp-target tokens --gap-limit 0.01 --time-limit 5
  moesim plan --hw h100x8 --replan periodic,drift --batch-size 256 --replan-interval 7,14 \\
      --replan-window 14   how often to re-balance: replay candidates against static and the engines' defaults
  moesim plan --hw rtx4090-workstation --model mixtral-8x7b --trace mixtral-8x7b-synth --planner greedy \\
      --weight-dtype fp8 --gpu-memory 23GiB --batch-size 1 --runtime vllm --time-limit 5 --out offload.yaml
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub, "plan",
        help="choose expert placement (ILP, EPLB, greedy...) and compare the plans in the simulator",
        description="Plan on the first --train-fraction of the trace's tokens (row order), then "
        "simulate every requested planner's plan on the rest and print a comparison: GPU load "
        "imbalance (max/mean per layer, replicas split evenly, averaged over layers) on the "
        "training and evaluation tokens, simulated step time and tokens/s, all-to-all bytes by "
        "link class, solve time, optimality gap and speedup over the engine-default layout (the "
        "engines' initial map, moesim.planners.BASELINE_PLANNER).",
        examples=_EXAMPLES,
    )
    p.add_argument("--hw", required=True, metavar="NAME|PATH",
                   help="hardware profile (built-in name or YAML)")
    p.add_argument("--nodes", type=int_range(1, NODES), default=None, metavar="N",
                   help="override the profile's node count")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help=f"model spec (default: the trace's model, or {DEFAULT_MODEL} with the shipped trace)")
    p.add_argument("--trace", default=None, metavar="NAME|PATH",
                   help=f"routing trace .npz, or a load-counts .npz (moesim trace convert of an SGLang stat "
                   f"dump: plans and imbalance, no simulation) (default: the shipped {DEFAULT_TRACE})")
    p.add_argument("--planner", default="all", choices=(*PLANNER_NAMES, "all"),
                   help="planner to run, or all of them")
    slots = p.add_mutually_exclusive_group()
    slots.add_argument("--slots-per-gpu", type=positive_int, default=None, metavar="S",
                       help="expert slots per GPU (default: experts/GPUs rounded up, plus one)")
    slots.add_argument("--replicas", type=positive_int, default=None, metavar="R",
                       help="physical expert slots per layer in total; must be a multiple of the GPU count")
    p.add_argument("--gpu-memory", type=quantity("budget"), default=None, metavar="BYTES",
                   help="whole GPU memory budget per GPU (e.g. 20GiB): adds a cache/offload plan for the "
                   "experts that fit beside the non-expert weights, KV cache, activations and staging")
    p.add_argument("--cache-policy", default="static", choices=POLICY_CHOICES,
                   help="with --gpu-memory: pin experts chosen by the ILP (static), size per-layer LRU/LFU "
                   "caches, or pick whichever stalls less on held-out tokens (auto)")
    p.add_argument("--miss", default="fetch", choices=MISS_CHOICES,
                   help="with --gpu-memory: what a cache miss does (auto: cheapest per expert)")
    p.add_argument("--prefetch", default="none", choices=PREFETCH_CHOICES,
                   help="with --gpu-memory: next-layer prefetch the cache plan assumes")
    p.add_argument("--context-tokens", type=positive_int, default=4096, metavar="TOKENS",
                   help="with --gpu-memory: context each sequence of a --batch-size step attends (the cache "
                   "plan's KV cache bytes)")
    p.add_argument("--tp", type=positive_int, default=None, metavar="N",
                   help="attention tensor-parallel degree of the simulations and of the cache plan's memory "
                   "(1/N of the non-expert weights per GPU; default 1); e.g. --tp 8 on h100x8")
    p.add_argument("--dp", type=positive_int, default=None, metavar="N",
                   help="attention data-parallel groups (default GPUs / --tp); --tp x --dp = the GPUs")
    p.add_argument("--runtime", default=None, metavar="NAME|PATH",
                   help="runtime profile the simulations and the cache plan assume: framework overheads "
                   "and memory reserve (kernels [default], vllm, vllm-eager, or a YAML file), e.g. "
                   "--runtime vllm")
    p.add_argument("--precision", default=None, metavar="KEY=DTYPE,...",
                   help="per-tensor dtypes over the spec's (docs/models.md), e.g. --precision "
                   "attention=fp8,kv_cache=fp8")
    p.add_argument("--weight-dtype", default=None, metavar="DTYPE",
                   help="serve the routed experts in this dtype instead of the spec's (e.g. fp8, int4)")
    p.add_argument("--train-fraction", type=open_fraction, default=None, metavar="F",
                   help="fraction of the trace's tokens (in row order) to plan on; the rest evaluates "
                   "(default 0.5; with --replan 0.2: the initial plan's traffic, the rest is the stream)")
    p.add_argument("--windows", type=int_range(1, MAX_WINDOWS), default=1, metavar="W",
                   help="plan against W consecutive windows of the training tokens at once (ilp)")
    p.add_argument("--objective", default="worst", choices=("worst", "mean"),
                   help="ilp, over the --windows: minimise the worst window's or the mean window's target")
    p.add_argument("--ilp-target", default="time", choices=ILP_TARGETS,
                   help="ilp: what a window's score is: its predicted step time (compute + all-to-all of the "
                   "slowest GPU) or its token imbalance (the slowest GPU's tokens, what EPLB balances), e.g. "
                   "--ilp-target tokens")
    p.add_argument("--gap-limit", type=finite_positive_float, default=None, metavar="FRACTION",
                   help="ilp: stop a layer's search once within this relative gap of its bound (default "
                   "0.001), e.g. --gap-limit 0.01")
    p.add_argument("--origin", default="even", choices=("even", "previous-layer"),
                   help="ilp: where a layer's tokens start (even: data-parallel attention on all GPUs)")
    p.add_argument("--dispatch", default="even", choices=choices(Dispatch),
                   help="replica choice in the simulations of every planner and in the ilp's model: even = "
                   "any replica; local = the token's own GPU, else its node, else any (saves InfiniBand)")
    p.add_argument("--time-limit", type=finite_positive_float, default=60.0, metavar="SECONDS",
                   help="ilp solver time limit (the best plan found by then is used)")
    p.add_argument("--batch-size", type=positive_int, default=4096, metavar="TOKENS",
                   help="tokens per simulated step (prefill: whole prompts adding up to about this many), "
                   "per step the ilp predicts, and with --gpu-memory the decode sequences per step the "
                   "cache plan reserves KV cache for (e.g. --batch-size 1 for offloading)")
    p.add_argument("--steps", type=positive_int, default=None, metavar="N",
                   help="simulated steps on the evaluation tokens (default: as many as they fill)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (solver and simulator)")
    p.add_argument("--out", type=output_file, default=None, metavar="FILE",
                   help="write the plan (YAML or JSON by suffix); with --planner all, the ilp plan")
    p.add_argument("--export-sglang", type=output_file, default=None, metavar="FILE",
                   help="write SGLang's --init-expert-location file for that plan")
    p.add_argument("--export-vllm-ascend", type=output_file, default=None, metavar="FILE",
                   help="write vLLM-Ascend's expert map JSON for that plan")
    p.add_argument("--ep", "--ep-size", dest="ep_size", type=positive_int, default=None, metavar="N",
                   help="expert-parallel size: experts placed on N EP groups of GPUs/N GPUs, each GPU "
                   "holding 1/(GPUs/N) of its group's experts (tensor parallelism inside experts; default "
                   "every GPU, whole experts); the plan records it and the exports launch with it, e.g. "
                   "--ep 4 on h100x8")
    p.add_argument("--csv", type=output_file, default=None, metavar="FILE",
                   help="also write the comparison table as CSV")
    add_plan_flags(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.replan is not None:
        return run_plan_replan(args)
    req = PlacementRequest(
        hw=args.hw, model=args.model, trace=args.trace,
        planners=PLANNER_NAMES if args.planner == "all" else (args.planner,), nodes=args.nodes,
        slots_per_gpu=args.slots_per_gpu, replicas=args.replicas, weight_dtype=args.weight_dtype,
        precision=args.precision,
        train_fraction=0.5 if args.train_fraction is None else args.train_fraction, windows=args.windows,
        objective=args.objective, ilp_target=args.ilp_target, gap_limit=args.gap_limit,
        origin=args.origin, dispatch=args.dispatch, time_limit_s=args.time_limit,
        batch_tokens=args.batch_size, steps=args.steps, seed=args.seed, gpu_memory=args.gpu_memory,
        cache_policy=args.cache_policy, miss=args.miss, prefetch=args.prefetch, ep_size=args.ep_size,
        runtime=args.runtime, tp=args.tp, dp=args.dp, context_tokens=args.context_tokens,
    )
    comparison = compare_planners(req, show_progress=True)
    launches = _write_outputs(args, comparison.chosen, comparison.inputs.model)
    if args.csv:
        rows = {n: {**r.as_dict(), "solve_s": r.solve_s} for n, r in comparison.rows.items()}
        write_table_csv(args.csv, rows, key="planner")
    if args.json:
        data = comparison.as_dict()
        timing = data.pop("timing")  # last, so that it is easy to leave out
        print_json({**data, "engine_launch": [x.to_dict() for x in launches], "timing": timing}, verb="plan")
    else:
        _print_table(comparison)
        for x in launches:
            print(f"{x.engine}: launch with {x.command_line()}\n  (also in {x.file}.flags.txt)")
    return 0


def _write_outputs(args: argparse.Namespace, plan: Any, model: Any) -> list[Any]:
    """Write the plan and engine files; the engine launch flags (also written beside each file)."""
    if args.out:
        plan.save(args.out)
    return export_for_engines(plan, model, sglang=args.export_sglang, vllm_ascend=args.export_vllm_ascend,
                              ep_size=args.ep_size, dispatch=args.dispatch)


def _print_table(c: PlannerComparison) -> None:
    unit, train, evaluation = (("tokens", c.train_tokens, c.eval_tokens) if c.train_tokens is not None
                               else ("steps", c.train_steps, c.eval_steps))
    where = (f"{c.gpus} GPUs x {c.slots_per_gpu} slots" if c.expert_tp == 1 else
             f"{c.gpus} GPUs in {c.gpus // c.expert_tp} EP groups of {c.expert_tp} x {c.slots_per_gpu} slots")
    print(f"{c.model} on {c.hw} ({where}); trace {c.trace}: planned on "
          f"{train} {unit} ({c.windows} window(s)), evaluated on {evaluation}")
    head = (f"{'planner':<18}{'imb train':>10}{'imb eval':>10}{'pred ms':>9}{'step ms':>10}{'tok/s':>12}"
            f"{'NVLink GB':>11}{'IB GB':>9}{'PCIe GB':>9}{'solve s':>9}{'gap':>8}{'speedup':>9}")
    print(head)
    print("-" * len(head))
    for name, r in c.rows.items():
        b = r.a2a_bytes
        print(f"{name:<18}{r.gpu_imbalance_train:>10.4f}{r.gpu_imbalance_eval:>10.4f}"
              f"{_fmt(r.predicted_moe_step_s_eval, 1e3, '.3f'):>9}"
              f"{_fmt(r.step_time_s_eval, 1e3, '.3f'):>10}"
              f"{_fmt(r.tokens_per_s_eval, 1, ',.0f'):>12}"
              f"{_fmt(b.get('nvlink'), 1e-9, '.2f'):>11}{_fmt(b.get('ib'), 1e-9, '.2f'):>9}"
              f"{_fmt(b.get('pcie'), 1e-9, '.2f'):>9}{r.solve_s:>9.2f}"
              f"{_fmt(r.gap, 100, '.2f', '%'):>8}"
              f"{_fmt(r.speedup_vs_baseline, 1, '.3f', 'x'):>9}")
    dup = {n: r.eplb_duplicate_slots for n, r in c.rows.items() if r.eplb_duplicate_slots is not None}
    if dup:
        listed = ", ".join(f"{n}: {v}" for n, v in dup.items())
        print(f"EPLB put two copies of an expert on one GPU in {listed} slots "
              "(repaired by swapping; see docs/planners.md)")
    print("pred ms: MoE layers of one step by the ILP's cost model on the evaluation load; "
          "step ms, tok/s, bytes: simulated on the evaluation tokens"
          + ("" if c.train_tokens is not None else " (load counts only: not simulated, '-')"))


def _fmt(value: Any, scale: float, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value * scale:{spec}}{suffix}"
