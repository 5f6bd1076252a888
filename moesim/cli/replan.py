"""The re-placement flags of ``moesim simulate`` and ``moesim plan``, and ``plan --replan``'s table."""

from __future__ import annotations

import argparse
from typing import Any

from moesim.cli.common import fraction_list, int_list, positive_int, unit_fraction
from moesim.errors import UserError
from moesim.vocab import Migration, MigrationSource, Replan, choices
from moesim.workflows.placement import PLANNER_NAMES
from moesim.workflows.replan import (
    ILP_TARGETS,
    MOVES,
    SGLANG_INTERVAL_STEPS,
    SGLANG_WINDOW_STEPS,
    ReplanOptions,
)
from moesim.workflows.replan_search import ReplanChoice, ReplanSearch, choose_replan


def policy_list(text: str) -> list[str]:
    """Comma-separated re-balancing policies, or ``all``."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    if names == ["all"]:
        return [str(p) for p in Replan if p != Replan.STATIC]
    bad = [n for n in names if n not in choices(Replan)]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"expected policies among {', '.join(choices(Replan))} or all, "
                                         f"got {text!r}")
    return names


def add_common(p: argparse.ArgumentParser) -> None:
    """Flags both verbs share."""
    p.add_argument("--replan-planner", default="eplb", choices=PLANNER_NAMES,
                   help="the planner each re-plan runs on the recent window (default eplb, what SGLang and "
                   "vLLM run), e.g. --replan-planner ilp")
    p.add_argument("--migration", default="blocking", choices=choices(Migration),
                   help="blocking: serving stops while the changed experts' weights are copied; overlapped: "
                   "the copies use the links while no all-to-all does, the new plan serves when they land")
    p.add_argument("--migration-source", default="gpu", choices=choices(MigrationSource),
                   help="where a new replica is copied from: the nearest GPU holding the expert (gpu), or "
                   "that or the host's pinned copy over PCIe, whichever is faster (host)")
    p.add_argument("--hedge-windows", type=positive_int, default=4, metavar="K",
                   help="--replan hedged: plan once for the window cut into K windows (worst of them)")
    p.add_argument("--replan-moves", default="all", choices=MOVES,
                   help="all: take each re-plan's placement as the planner returns it (the engines); min: "
                   "take its replica counts and keep every expert where it is when that balances the window "
                   "within 1%% of the planner's own placement (fewer bytes to move), e.g. --replan-moves min")


def add_simulate_flags(p: argparse.ArgumentParser) -> None:
    """``moesim simulate --replan POLICY ...``."""
    g = p.add_argument_group("re-placement while serving (docs/replan.md)")
    g.add_argument("--replan", default=None, choices=choices(Replan),
                   help="re-plan the placement while serving: static (never), periodic (every "
                   "--replan-interval steps on the last --replan-window), drift (when the load moved "
                   "--replan-threshold), hedged "
                   "(once, for several recent windows), e.g. --replan periodic --replan-interval 50")
    g.add_argument("--replan-interval", type=positive_int, default=SGLANG_INTERVAL_STEPS, metavar="STEPS",
                   help=f"steps between checks (default {SGLANG_INTERVAL_STEPS}: SGLang's "
                   "--eplb-rebalance-num-iterations)")
    g.add_argument("--replan-window", type=positive_int, default=SGLANG_WINDOW_STEPS, metavar="STEPS",
                   help=f"past steps a plan is made on (default {SGLANG_WINDOW_STEPS}: SGLang's recorder "
                   "buffer)")
    g.add_argument("--replan-threshold", type=unit_fraction, default=0.1, metavar="TV",
                   help="--replan drift: total variation of the load shares (recent window vs the active "
                   "plan's, mean over layers) that triggers a re-plan (default 0.1)")
    g.add_argument("--ilp-target", default="time", choices=ILP_TARGETS,
                   help="with --replan-planner ilp: minimise predicted step time or token imbalance")
    add_common(g)


def simulate_options(args: argparse.Namespace) -> ReplanOptions | None:
    """The run's :class:`ReplanOptions` (None without ``--replan``)."""
    if args.replan is None:
        return None
    if args.cache not in (None, "none") or args.cache_size or args.expert_cache or args.gpu_memory:
        raise UserError("--replan needs every expert resident; drop --cache/--cache-size/--expert-cache/"
                        "--gpu-memory (offloaded runs keep the cache's placement)", field="--replan")
    return ReplanOptions(policy=args.replan, planner=args.replan_planner, interval_steps=args.replan_interval,
                         window_steps=args.replan_window, threshold=args.replan_threshold,
                         hedge_windows=args.hedge_windows, migration=args.migration,
                         source=args.migration_source, ilp_target=args.ilp_target, moves=args.replan_moves)


def add_plan_flags(p: argparse.ArgumentParser) -> None:
    """``moesim plan --replan POLICIES ...``: candidate lists instead of single values."""
    g = p.add_argument_group("choose re-balancing settings (--replan; docs/replan.md)")
    g.add_argument("--replan", type=policy_list, default=None, metavar="POLICY[,POLICY]",
                   help="instead of comparing planners, replay the trace under re-balancing candidates of "
                   "these policies (periodic, drift, hedged, or all) and report the best with its gain over "
                   "static and the engines' defaults, e.g. --replan periodic,drift")
    g.add_argument("--replan-interval", type=int_list(1), default=None, metavar="N[,N]",
                   help="candidate intervals in steps (default 1/32, 1/16, 1/8 and 1/4 of the stream)")
    g.add_argument("--replan-window", type=int_list(1), default=None, metavar="W[,W]",
                   help="candidate windows in steps (default half the interval and the interval)")
    g.add_argument("--replan-threshold", type=fraction_list, default=None, metavar="TV[,TV]",
                   help="candidate drift thresholds (default 0.05,0.1,0.2)")
    add_common(g)


def run_plan_replan(args: argparse.Namespace) -> int:
    """``moesim plan --replan``: the table (or ``--json``)."""
    from moesim.cli.common import print_json

    req = ReplanSearch(hw=args.hw, model=args.model, trace=args.trace, policies=tuple(args.replan),
                       planner=args.replan_planner,
                       intervals=tuple(args.replan_interval) if args.replan_interval else None,
                       windows=tuple(args.replan_window) if args.replan_window else None,
                       thresholds=tuple(args.replan_threshold) if args.replan_threshold else None,
                       migration=args.migration, source=args.migration_source,
                       hedge_windows=args.hedge_windows, moves=args.replan_moves,
                       ilp_target=args.ilp_target, nodes=args.nodes, slots_per_gpu=args.slots_per_gpu,
                       warmup_fraction=args.train_fraction if args.train_fraction is not None else 0.2,
                       batch_tokens=args.batch_size, dispatch=args.dispatch, seed=args.seed,
                       time_limit_s=args.time_limit, weight_dtype=args.weight_dtype,
                       runtime=args.runtime, tp=args.tp, dp=args.dp)
    choice = choose_replan(req, show_progress=True)
    if args.json:
        print_json(choice.as_dict(), verb="plan")
    else:
        print_table(choice)
    return 0


def print_table(c: ReplanChoice) -> None:
    print(f"{c.model} on {c.hw} ({c.gpus} GPUs x {c.slots_per_gpu} slots); trace {c.trace}: initial plan "
          f"({c.planner}) on {c.warmup_tokens} tokens, stream of {c.stream_tokens} tokens = {c.stream_steps} "
          f"{c.phase} steps of {c.batch}; migration {c.migration}")
    head = (f"{'candidate':<28}{'imbalance':>10}{'step ms':>10}{'tok/s':>12}{'re-plans':>9}{'moved GB':>10}"
            f"{'stall ms':>10}{'vs static':>10}{'vs SGLang':>10}")
    print(head)
    print("-" * len(head))
    for label, r in c.candidates.items():
        mark = " *" if label == c.best else ""
        print(f"{label + mark:<28}{r.imbalance:>10.4f}{r.step_time_s * 1e3:>10.3f}"
              f"{_fmt(r.tokens_per_s, ',.0f'):>12}"
              f"{r.rebalances:>9}{r.migration_bytes / 1e9:>10.2f}{r.stall_s * 1e3:>10.2f}"
              f"{_fmt(r.gain_vs_static, '.3f', 'x'):>10}{_fmt(r.gain_vs_engine, '.3f', 'x'):>10}")
    b = c.candidates[c.best]
    verdict = (f"{_fmt(b.gain_vs_static, '.3f', 'x')} static's speed, "
               f"{_fmt(b.gain_vs_engine, '.3f', 'x')} the SGLang default's"
               if b.gain_vs_static is None or b.gain_vs_static > 1.0
               else "no candidate beats static here: keep the initial plan")
    print(f"* best: {c.best} ({verdict}). imbalance: realised max/mean GPU tokens per step, mean over the "
          "stream; step ms: mean simulated step incl. migration stalls; sglang-default: every 1000 steps on "
          "the last 1000, vllm-default: every 3000 on the last 1000")
    late = {k: r.in_flight_bytes for k, r in c.candidates.items() if r.in_flight_bytes}
    if late:  # copies that never served are not "moved": said apart
        print("still in flight when the stream ended (not in moved GB): "
              + ", ".join(f"{k} {b / 1e9:.2f} GB" for k, b in late.items()))


def _fmt(value: Any, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _in_flight(rp: dict[str, Any]) -> str:
    b = rp.get("in_flight_bytes") or 0.0
    return f" ({b / 1e9:.3f} GB more still in flight at the end, never served)" if b else ""


def render_replan(rp: dict[str, Any], limit: int = 12) -> str:
    """``moesim simulate``'s re-placement lines: the totals, each re-plan, each plan's segment."""
    every = f"every {rp['interval_steps']} steps on the last {rp['window_steps']}"
    if rp.get("threshold") is not None:
        every += f", threshold {rp['threshold']:g}"
    lines = [f"re-placement {rp['policy']} ({rp['planner'] or '-'}, {every}, {rp['migration']}): "
             f"{rp['applied']} of {len(rp['rebalances'])} re-plans applied, "
             f"{rp['migration_bytes'] / 1e9:.3f} GB "
             f"moved{_in_flight(rp)}, stalls {rp['stall_s'] * 1e3:.3f} ms; "
             f"realised imbalance {rp['imbalance_mean']:.4f}, "
             f"mean step {(rp['step_time_mean_s'] or 0) * 1e3:.4g} ms"]
    if rp["rebalances"]:
        lines.append(f"  {'step':>6} {'effective':>9} {'layers':>6} {'experts':>7} {'GB':>8} {'copy ms':>8} "
                     f"{'stall ms':>8}  reason")
    for e in rp["rebalances"][:limit]:
        eff = "-" if e["effective_step"] is None else str(e["effective_step"])
        lines.append(f"  {e['step']:>6} {eff:>9} {e['layers_changed']:>6} {e['experts_moved']:>7} "
                     f"{e['bytes'] / 1e9:>8.3f} {e['copy_s'] * 1e3:>8.3f} {e['stall_s'] * 1e3:>8.3f}  "
                     f"{e['reason']}")
    if len(rp["rebalances"]) > limit:
        lines.append(f"  ... {len(rp['rebalances']) - limit} more (--json lists them all)")
    for s in rp["segments"][:limit]:
        last = s["first_step"] + s["steps"] - 1
        lines.append(f"  plan {s['plan']}: steps {s['first_step']}..{last}, imbalance "
                     f"{s['imbalance_step_mean']:.4f} per step ({s['imbalance']:.4f} summed), mean step "
                     f"{s['step_time_mean_s'] * 1e3:.4g} ms")
    return "\n".join(lines)
