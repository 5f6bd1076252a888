"""``moesim bench``: predicted figures of one operation, to hold next to a microbenchmark.

``moesim bench a2a`` prints the predicted dispatch and combine of an expert-parallel all-to-all
(time and bandwidth as DeepEP's tests define them) for an EP size, tokens per rank, hidden size,
top-k, dtypes and mode on a hardware profile (docs/cost.md "moesim bench a2a").
"""

from __future__ import annotations

import argparse
from typing import Any

from moesim.cli.common import add_json_flag, add_verb, int_range, nonnegative_int, positive_int, print_json
from moesim.errors import UserError
from moesim.limits import EXPERTS, MAX_WIDTH, NODES, TOP_K, TRACE_ROWS
from moesim.specs.model import DTYPE_BYTES
from moesim.vocab import AllToAll, Phase, choices

EXAMPLES = """\
  moesim bench a2a --hw h100x8x4 --nodes 2 --tokens 128 --model deepseek-v3 --mode low-latency
  moesim bench a2a --hw h800x8 --nodes 4 --tokens 4096 --hidden 7168 --top-k 8 --experts 256 \\
      --dispatch-dtype fp8 --combine-dtype bf16 --mode hierarchical --topk-groups 4 --json
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_verb(
        sub, "bench", help="predicted figures of one operation (all-to-all), beside a microbenchmark",
        description="Print what the cost model predicts for one operation, in the units of the usual "
        "microbenchmark, so it can be held next to a measurement of your own cluster.",
        examples=EXAMPLES)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    a2a = actions.add_parser(
        "a2a", help="dispatch and combine of an expert-parallel all-to-all",
        description="Predicted dispatch and combine time, algorithm bandwidth ((token, expert) copies x "
        "bytes per GPU / time, DeepEP's low-latency test) and RDMA / NVLink bandwidth ((token, node) and "
        "(token, GPU) copies x bytes per GPU / time, DeepEP's normal-kernel tests) of one all-to-all. "
        "Routing as DeepEP's tests draw it: top-k of random scores, experts contiguous on the GPUs.",
        epilog=f"examples:\n{EXAMPLES}", formatter_class=argparse.RawDescriptionHelpFormatter)
    a2a.add_argument("--hw", required=True, metavar="NAME|PATH", help="hardware profile, e.g. --hw h100x8x4")
    a2a.add_argument("--nodes", type=int_range(1, NODES), default=None, metavar="N",
                     help="override the profile's node count")
    a2a.add_argument("--ep", type=positive_int, default=None, metavar="G",
                     help="EP size: the first G GPUs of the cluster (default: all), e.g. --ep 16")
    a2a.add_argument("--tokens", type=positive_int, default=128, metavar="T",
                     help="tokens per rank (default 128)")
    a2a.add_argument("--model", default=None, metavar="NAME|PATH",
                     help="take hidden size, top-k, experts and the dispatch/combine dtypes from this model")
    a2a.add_argument("--hidden", type=int_range(1, MAX_WIDTH), default=None, metavar="H",
                     help="hidden size (default 7168)")
    a2a.add_argument("--top-k", type=int_range(1, TOP_K), default=None, metavar="K",
                     help="experts per token (default 8)")
    a2a.add_argument("--experts", type=int_range(1, EXPERTS), default=None, metavar="E",
                     help="routed experts (default 256)")
    a2a.add_argument("--dispatch-dtype", default=None, choices=tuple(DTYPE_BYTES),
                     help="dispatch payload dtype (default bf16, or the model's)")
    a2a.add_argument("--combine-dtype", default=None, choices=tuple(DTYPE_BYTES),
                     help="combine payload dtype (default bf16, or the model's)")
    a2a.add_argument("--mode", default=None, choices=choices(AllToAll),
                     help="all-to-all mode (default: as the simulator picks for --phase and the node count)")
    a2a.add_argument("--phase", default="decode", choices=choices(Phase),
                     help="picks the default mode on several nodes: prefill hierarchical, decode low-latency")
    a2a.add_argument("--topk-groups", type=positive_int, default=None, metavar="N",
                     help="route each token within its N best nodes (DeepEP's internode test: min(nodes, 4))")
    a2a.add_argument("--seed", type=nonnegative_int, default=0, help="routing seed")
    add_json_flag(a2a)
    a2a.set_defaults(func=run_a2a)


def run_a2a(args: argparse.Namespace) -> int:
    from moesim.cost import CostModel
    from moesim.cost.a2a import default_mode
    from moesim.sim.a2abench import BenchSetup, bench_all_to_all
    from moesim.specs import load_cluster, load_model

    cluster = load_cluster(args.hw, nodes=args.nodes)
    gpus = [d.id for d in cluster.gpus]
    ep = args.ep or len(gpus)
    if ep > len(gpus):
        raise UserError(f"expected an EP size of at most the {len(gpus)} GPUs of {cluster.name}, got {ep}",
                        field="--ep")
    model = load_model(args.model) if args.model else None
    hidden = args.hidden or (model.hidden_size if model else 7168)
    top_k = args.top_k or (model.top_k if model else 8)
    experts = args.experts or (model.num_experts if model else 256)
    TRACE_ROWS.check(ep * args.tokens, field="--tokens")  # the benchmark routes EP x T token rows
    devices = tuple(gpus[:ep])
    cost = CostModel(cluster, model or load_model("deepseek-v3"))
    nodes = len({cluster.device(d).node for d in devices})
    setup = BenchSetup(
        tokens_per_rank=args.tokens, hidden=hidden, top_k=top_k, num_experts=experts,
        dispatch_dtype=args.dispatch_dtype or (model.dispatch_dtype if model else "bf16"),
        combine_dtype=args.combine_dtype or (model.combine_dtype if model else "bf16"),
        mode=AllToAll(args.mode) if args.mode else default_mode(args.phase, nodes),
        topk_groups=args.topk_groups, seed=args.seed)
    out = {"cluster": cluster.name, **bench_all_to_all(setup, cost, devices)}
    if args.json:
        print_json(out, verb="bench-a2a")
        return 0
    _print(out)
    return 0


def _print(out: dict[str, Any]) -> None:
    groups = f", {out['topk_groups']} node groups" if out["topk_groups"] else ""
    print(f"{out['mode']} all-to-all, EP {out['ep']} on {out['nodes']} node(s) of {out['cluster']}: "
          f"{out['tokens_per_rank']} tokens/rank, hidden {out['hidden']}, top-{out['top_k']} of "
          f"{out['num_experts']} experts{groups}")
    print(f"overheads: {out['kernel_s'] * 1e6:.3g} us per call, {out['message_s'] * 1e9:.3g} ns per copy")
    for name, dtype in (("dispatch", out["dispatch_dtype"]), ("combine", out["combine_dtype"])):
        r = out[name]
        print(f"{name:8s} {dtype:5s} {r['time_s'] * 1e6:9.1f} us   "
              f"algorithm {r['algorithm_gbps']:7.1f} GB/s   "
              f"RDMA {r['rdma_gbps']:7.1f} GB/s   NVL {r['nvl_gbps']:7.1f} GB/s   "
              f"fabric {r['fabric_bytes'] / 1e6:9.2f} MB   ({r['copy_bytes']:.0f} B per copy)")
