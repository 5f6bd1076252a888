"""``moesim plan``: plan expert placement on the training part of a trace, compare on the rest."""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

from moesim.cli.common import add_json_flag, add_verb, print_json, progress
from moesim.errors import UserError
from moesim.planners import PLANNERS
from moesim.planners.cache_ilp import MISS_CHOICES, POLICY_CHOICES, PREFETCH_CHOICES
from moesim.vocab import Dispatch, choices

PLANNER_NAMES = tuple(PLANNERS)
DEFAULT_MODEL = "deepseek-v2-lite"
DEFAULT_TRACE = "deepseek-v2-lite-synth"

_EXAMPLES = """\
  moesim plan --hw h100x8                  every planner on the shipped DeepSeek-V2-Lite trace
  moesim plan --hw h100x8 --model deepseek-v2-lite --trace my.npz --slots-per-gpu 9 --planner ilp \\
      --out plan.yaml --export-sglang expert_location.json
  moesim plan --hw h100x8x4 --nodes 2 --model mixtral-8x7b --trace mixtral-8x7b-synth --replicas 32
  moesim plan --hw h100x8 --planner eplb --train-fraction 0.8 --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub, "plan",
        help="choose expert placement (ILP, EPLB, greedy...) and compare the plans in the simulator",
        description="Plan on the first --train-fraction of the trace's tokens (row order), then "
        "simulate every requested planner's plan on the rest and print a comparison: GPU load "
        "imbalance (max/mean per layer, replicas split evenly, averaged over layers) on the "
        "training and evaluation tokens, simulated step time and tokens/s, all-to-all bytes by "
        "link class, solve time, optimality gap and speedup over the contiguous layout.",
        examples=_EXAMPLES,
    )
    p.add_argument("--hw", required=True, metavar="NAME|PATH",
                   help="hardware profile (built-in name or YAML)")
    p.add_argument("--nodes", type=int, default=None, metavar="N", help="override the profile's node count")
    p.add_argument("--model", default=None, metavar="NAME|PATH",
                   help=f"model spec (default: the trace's model, or {DEFAULT_MODEL} with the shipped trace)")
    p.add_argument("--trace", default=None, metavar="NAME|PATH",
                   help=f"routing trace .npz, or a load-counts .npz (moesim trace convert of an SGLang stat "
                   f"dump: plans and imbalance, no simulation) (default: the shipped {DEFAULT_TRACE})")
    p.add_argument("--planner", default="all", choices=(*PLANNER_NAMES, "all"),
                   help="planner to run, or all of them")
    slots = p.add_mutually_exclusive_group()
    slots.add_argument("--slots-per-gpu", type=int, default=None, metavar="S",
                       help="expert slots per GPU (default: experts/GPUs rounded up, plus one)")
    slots.add_argument("--replicas", type=int, default=None, metavar="R",
                       help="physical expert slots per layer in total; must be a multiple of the GPU count")
    p.add_argument("--gpu-memory", default=None, metavar="BYTES",
                   help="GPU memory budget for expert weights (e.g. 20GiB): adds a cache/offload plan")
    p.add_argument("--cache-policy", default="static", choices=POLICY_CHOICES,
                   help="with --gpu-memory: pin experts chosen by the ILP (static), size per-layer LRU/LFU "
                   "caches, or pick whichever stalls less on held-out tokens (auto)")
    p.add_argument("--miss", default="fetch", choices=MISS_CHOICES,
                   help="with --gpu-memory: what a cache miss does (auto: cheapest per expert)")
    p.add_argument("--prefetch", default="none", choices=PREFETCH_CHOICES,
                   help="with --gpu-memory: next-layer prefetch the cache plan assumes")
    p.add_argument("--weight-dtype", default=None, metavar="DTYPE",
                   help="serve the routed experts in this dtype instead of the spec's (e.g. fp8, int4)")
    p.add_argument("--train-fraction", type=float, default=0.5, metavar="F",
                   help="fraction of the trace's tokens (in row order) to plan on; the rest evaluates")
    p.add_argument("--windows", type=int, default=1, metavar="W",
                   help="plan against W consecutive windows of the training tokens at once (ilp)")
    p.add_argument("--objective", default="worst", choices=("worst", "mean"),
                   help="ilp: minimise the worst window's or the mean window's predicted step time")
    p.add_argument("--origin", default="even", choices=("even", "previous-layer"),
                   help="ilp: where a layer's tokens start (even: data-parallel attention on all GPUs)")
    p.add_argument("--dispatch", default="even", choices=choices(Dispatch),
                   help="replica choice in the simulations of every planner and in the ilp's model: even = "
                   "any replica; local = the token's own GPU, else its node, else any (saves InfiniBand)")
    p.add_argument("--time-limit", type=float, default=60.0, metavar="SECONDS",
                   help="ilp solver time limit (the best plan found by then is used)")
    p.add_argument("--batch-size", type=int, default=4096, metavar="TOKENS",
                   help="tokens per simulated step (prefill: whole prompts adding up to about this many) "
                   "and per step the ilp predicts")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="simulated steps on the evaluation tokens (default: as many as they fill)")
    p.add_argument("--seed", type=int, default=0, help="random seed (solver and simulator)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="write the plan (YAML or JSON by suffix); with --planner all, the ilp plan")
    p.add_argument("--export-sglang", default=None, metavar="FILE",
                   help="write SGLang's --init-expert-location file for that plan")
    p.add_argument("--export-vllm-ascend", default=None, metavar="FILE",
                   help="write vLLM-Ascend's expert map JSON for that plan")
    p.add_argument("--ep-size", type=int, default=None, metavar="N",
                   help="the EP size the engine will run with; refused unless it equals the GPU count")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write the comparison table as CSV")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from moesim.planners import PLANNERS, PlanRequest
    from moesim.planners.base import check_request, gpu_imbalance
    from moesim.specs import load_cluster, load_model, with_weight_dtype
    from moesim.traces.counts import LoadCounts, load_routing_data

    if not 0.0 < args.train_fraction < 1.0:
        raise UserError(f"expected a fraction between 0 and 1 (exclusive), got {args.train_fraction}",
                        field="--train-fraction")
    if args.windows < 1:
        raise UserError(f"expected at least 1 window, got {args.windows}", field="--windows")
    if args.time_limit <= 0:
        raise UserError(f"expected a positive time limit, got {args.time_limit}", field="--time-limit")
    cluster = load_cluster(args.hw, nodes=args.nodes)
    trace_name = args.trace or DEFAULT_TRACE
    if args.model is None and args.trace is None:
        model = load_model(DEFAULT_MODEL)
    elif args.model is None:
        probe = load_routing_data(trace_name)
        try:
            model = load_model(probe.model_name)
        except UserError:
            raise UserError(f"trace model {probe.model_name!r} is not a built-in model; give --model",
                            field="--model") from None
    else:
        model = load_model(args.model)
    if args.weight_dtype is not None:
        model = with_weight_dtype(model, args.weight_dtype)
    trace = load_routing_data(trace_name, model=model)
    counts_only = isinstance(trace, LoadCounts)  # loads without tokens: no replay, no token statistics
    train, evaluation = trace.split(args.train_fraction)
    size = (lambda t: t.num_steps) if counts_only else (lambda t: t.num_tokens)
    if size(train) == 0 or size(evaluation) == 0:
        raise UserError(f"{size(trace)} {'steps' if counts_only else 'tokens'} cannot be split at "
                        f"{args.train_fraction}", field="--train-fraction")
    gpus = tuple(d.id for d in cluster.gpus)
    G, E = len(gpus), model.num_experts
    if args.ep_size is not None and args.ep_size != G:
        raise UserError(f"the engine's EP size must be the number of GPUs planned for ({G} on "
                        f"{cluster.name}); got {args.ep_size}", field="--ep-size")
    if args.replicas is not None:
        if args.replicas % G:
            raise UserError(f"{args.replicas} replicas do not divide evenly over {G} GPUs",
                            field="--replicas")
        slots = args.replicas // G
    else:
        # One spare slot per GPU for a replica of a hot expert, when there are experts to spare.
        slots = args.slots_per_gpu if args.slots_per_gpu is not None else min(E, -(-E // G) + 1)
    load = _layer_matrix(train.load_matrix(windows=args.windows), train, model)
    eval_load = _layer_matrix(evaluation.load_matrix(windows=1), evaluation, model)[0]
    from moesim.cost import CostModel

    cost = CostModel(cluster, model)
    names = list(PLANNER_NAMES) if args.planner == "all" else [args.planner]
    request = PlanRequest(model=model, cluster=cluster, devices=gpus, slots_per_device=slots, load=load,
                          trace=None if counts_only else train, cost=cost, time_limit_s=args.time_limit,
                          seed=args.seed,
                          params={"objective": args.objective, "origin": args.origin,
                                  "batch_tokens": args.batch_size, "dispatch": args.dispatch})
    try:
        check_request(request)
    except UserError as e:
        flag = "--replicas" if args.replicas is not None else "--slots-per-gpu"
        raise UserError(e.message, field=flag if e.field == "slots_per_device" else e.field) from None
    cache_plan = _cache_plan(args, model, cluster, load if counts_only else train, cost)
    plans, rows = {}, {}
    for name in progress(names, desc="planning", total=len(names)):
        t0 = time.perf_counter()
        plan = PLANNERS[name](request)
        solve_s = time.perf_counter() - t0
        if cache_plan is not None:
            plan = dataclasses.replace(plan, cache=cache_plan)
        plan.validate(model, cluster)
        plans[name] = plan
        rows[name] = {
            "gpu_imbalance_train": gpu_imbalance(plan, load),
            "gpu_imbalance_eval": gpu_imbalance(plan, eval_load),
            "solve_s": solve_s,
            "gap": plan.gap,
            "bound": plan.bound,
            "objective": plan.objective,
        }
        if "eplb_duplicate_slots" in plan.params:
            rows[name]["eplb_duplicate_slots"] = int(plan.params["eplb_duplicate_slots"])
    from moesim.planners.placement_ilp import predict_moe_step

    eval_request = dataclasses.replace(request, load=eval_load, trace=None if counts_only else evaluation)
    for name in progress(names, desc="simulating", total=len(names)):
        predicted, units = predict_moe_step(eval_request, plans[name].placement)
        rows[name]["predicted_moe_step_s_eval"] = predicted if units.startswith("seconds") else None
        rows[name].update(_simulate(cluster, model, evaluation, plans[name], cost, args) if not counts_only
                          else {"step_time_s_eval": None, "tokens_per_s_eval": None, "a2a_bytes": {},
                                "note": "load counts only: no token-level simulation"})
    base = rows.get("contiguous", {}).get("step_time_s_eval")
    for row in rows.values():
        st = row.get("step_time_s_eval")
        row["speedup_vs_contiguous"] = base / st if base and st else None
    chosen = plans["ilp"] if "ilp" in plans else plans[names[0]]
    launches = _write_outputs(args, chosen, model)
    info = {"hw": cluster.name, "model": model.name, "trace": str(trace_name), "gpus": G,
            "slots_per_gpu": slots, "train_tokens": None if counts_only else train.num_tokens,
            "eval_tokens": None if counts_only else evaluation.num_tokens,
            "windows": int(np.shape(load)[0]), "dispatch": args.dispatch}
    if counts_only:
        info.update(train_steps=train.num_steps, eval_steps=evaluation.num_steps)
    if args.csv:
        from moesim.io import write_table_csv

        write_table_csv(args.csv, rows, key="planner")
    if args.json:
        launch = [x.to_dict() for x in launches]
        print_json({**info, "planners": rows, "engine_launch": launch}, verb="plan")
    else:
        _print_table(info, rows)
        for x in launches:
            print(f"{x.engine}: launch with {x.command_line()}\n  (also in {x.file}.flags.txt)")
    return 0


def _layer_matrix(load: Any, trace: Any, model: Any) -> Any:
    """``[W, L, E]`` in the model's MoE-layer order; the trace must record every MoE layer."""
    import numpy as np

    load = np.asarray(load, dtype=np.float64)
    layer_ids = [int(x) for x in np.asarray(trace.layer_ids)]
    if layer_ids == list(model.moe_layers):
        return load
    if sorted(layer_ids) == sorted(model.moe_layers):
        return load[:, [layer_ids.index(x) for x in model.moe_layers]]
    raise UserError(f"the trace records layers {layer_ids[:6]}{'...' if len(layer_ids) > 6 else ''}, "
                    f"the model's MoE layers are {list(model.moe_layers)[:6]}...; a placement plan needs "
                    "every MoE layer", field="layer_ids")


def _cache_plan(args: argparse.Namespace, model: Any, cluster: Any, train: Any, cost: Any) -> Any:
    if args.gpu_memory is None:
        return None
    from moesim.units import parse_quantity

    budget = parse_quantity(args.gpu_memory, "bytes", field="--gpu-memory")
    from moesim.planners.cache_ilp import plan_cache

    return plan_cache(model, cluster, train, budget, cost, miss=args.miss, prefetch=args.prefetch,
                      policy=args.cache_policy, time_limit_s=args.time_limit)


def _simulate(cluster: Any, model: Any, evaluation: Any, plan: Any, cost: Any,
              args: argparse.Namespace) -> dict[str, Any]:
    """Replay the evaluation tokens with ``plan``; the figures the comparison table needs.

    Without the simulator (``moesim.sim.simulate``) the simulated figures are None, and say so.
    """
    import numpy as np

    try:
        from moesim.sim.config import SimConfig
        from moesim.sim.engine import simulate
    except ImportError:
        return {"step_time_s_eval": None, "tokens_per_s_eval": None, "a2a_bytes": {},
                "note": "simulator not available"}

    phase = "decode" if (getattr(evaluation, "phase", None) is not None
                         and (evaluation.phase == 1).mean() > 0.5) else "prefill"
    batch = args.batch_size
    if phase == "prefill":  # the simulator's prefill steps hold whole prompts: about batch-size tokens
        mean_prompt = evaluation.num_tokens / max(1, len(np.unique(np.asarray(evaluation.seq_id))))
        batch = max(1, round(args.batch_size / mean_prompt))
    kwargs: dict[str, Any] = {"cluster": cluster, "model": model, "trace": evaluation, "plan": plan,
                              "batch_size": batch, "phase": phase, "seed": args.seed,
                              "dispatch": getattr(args, "dispatch", "even")}
    if args.steps is not None:
        kwargs["steps"] = args.steps
    summary = simulate(SimConfig(**kwargs), cost).summary()
    return _sim_figures(summary, cluster)


def _sim_figures(summary: dict[str, Any], cluster: Any) -> dict[str, Any]:
    """Mean step time, tokens/s and link bytes by class (summed over the links of each class)."""
    latency = summary.get("step_latency_s") or {}
    out: dict[str, Any] = {
        "step_time_s_eval": latency.get("mean") if isinstance(latency, dict) else None,
        "tokens_per_s_eval": summary.get("tokens_per_s"),
    }
    by_class = {"nvlink": 0.0, "ib": 0.0, "pcie": 0.0}
    graph = cluster.graph
    for entry in summary.get("per_link") or []:
        src, dst = entry.get("src"), entry.get("dst")
        if graph.has_edge(src, dst):
            cls = _link_class(graph.edges[src, dst]["link"].spec.kind)
            if cls in by_class:
                by_class[cls] += float(entry.get("bytes", 0.0))
    out["a2a_bytes"] = by_class
    return out


def _link_class(kind: str) -> str:
    k = kind.lower()
    if "nvlink" in k or "nvswitch" in k:
        return "nvlink"
    if "ib" in k or "infiniband" in k or "roce" in k or "ethernet" in k:
        return "ib"
    return "pcie" if "pcie" in k else "other"


def _write_outputs(args: argparse.Namespace, plan: Any, model: Any) -> list[Any]:
    """Write the plan and engine files; the engine launch flags (also written beside each file)."""
    from moesim.plans.export import export_for_engines

    if args.out:
        plan.save(args.out)
    return export_for_engines(plan, model, sglang=args.export_sglang, vllm_ascend=args.export_vllm_ascend,
                              ep_size=args.ep_size, dispatch=args.dispatch)


def _print_table(info: dict[str, Any], rows: dict[str, dict[str, Any]]) -> None:
    unit = "tokens" if info["train_tokens"] is not None else "steps"
    print(f"{info['model']} on {info['hw']} ({info['gpus']} GPUs x {info['slots_per_gpu']} slots); trace "
          f"{info['trace']}: planned on {info.get(f'train_{unit}')} {unit} ({info['windows']} window(s)), "
          f"evaluated on {info.get(f'eval_{unit}')}")
    head = (f"{'planner':<18}{'imb train':>10}{'imb eval':>10}{'pred ms':>9}{'step ms':>10}{'tok/s':>12}"
            f"{'NVLink GB':>11}{'IB GB':>9}{'PCIe GB':>9}{'solve s':>9}{'gap':>8}{'speedup':>9}")
    print(head)
    print("-" * len(head))
    for name, r in rows.items():
        b = r.get("a2a_bytes", {})
        print(f"{name:<18}{r['gpu_imbalance_train']:>10.4f}{r['gpu_imbalance_eval']:>10.4f}"
              f"{_fmt(r.get('predicted_moe_step_s_eval'), 1e3, '.3f'):>9}"
              f"{_fmt(r.get('step_time_s_eval'), 1e3, '.3f'):>10}"
              f"{_fmt(r.get('tokens_per_s_eval'), 1, ',.0f'):>12}"
              f"{_fmt(b.get('nvlink'), 1e-9, '.2f'):>11}{_fmt(b.get('ib'), 1e-9, '.2f'):>9}"
              f"{_fmt(b.get('pcie'), 1e-9, '.2f'):>9}{r['solve_s']:>9.2f}"
              f"{_fmt(r.get('gap'), 100, '.2f', '%'):>8}"
              f"{_fmt(r.get('speedup_vs_contiguous'), 1, '.3f', 'x'):>9}")
    dup = {n: r["eplb_duplicate_slots"] for n, r in rows.items() if "eplb_duplicate_slots" in r}
    if dup:
        listed = ", ".join(f"{n}: {v}" for n, v in dup.items())
        print(f"EPLB put two copies of an expert on one GPU in {listed} slots "
              "(repaired by swapping; see docs/planners.md)")
    print("pred ms: MoE layers of one step by the ILP's cost model on the evaluation load; "
          "step ms, tok/s, bytes: simulated on the evaluation tokens"
          + ("" if all(r.get("step_time_s_eval") is not None for r in rows.values())
             else " (simulator not available: '-')"))


def _fmt(value: Any, scale: float, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value * scale:{spec}}{suffix}"
