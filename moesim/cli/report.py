"""``moesim report``: compare placement planners and cache policies in one HTML/Markdown/CSV report."""

from __future__ import annotations

import argparse
import shlex
import sys

from moesim.cli.common import (
    add_json_flag,
    add_verb,
    finite_positive_float,
    nonnegative_int,
    output_folder,
    positive_int,
    print_json,
    quantity,
)
from moesim.errors import UserError

EXAMPLES = """\
  moesim report --out out/report --time-limit 2 --steps 32
  moesim report --out out/h200 --hw h200x8 --model deepseek-v2-lite --trace deepseek-v2-lite-synth \\
      --planners contiguous eplb ilp --time-limit 2 --cache-policies lru --cache-sizes 6 12 --steps 16
  moesim report --out out/offload --hw rtx4090-workstation --model mixtral-8x7b --trace mixtral-8x7b-synth \\
      --cache-policies lru belady --expert-cache 11GiB 16GiB --miss fetch cpu lowbit
  moesim report --config reports/default.yaml --out reports/default --workers 2
      needs reports/default.yaml: a sweep file (reports/README.md), here the one of a moesim checkout
  moesim report --from out/s --out out/s-report          a report of a 'moesim sweep' dataset
      needs spec.yaml: moesim sweep --init spec.yaml
      needs out/s: moesim sweep spec.yaml --out out/s
"""

_GRID_FLAGS = (
    "hw",
    "model",
    "trace",
    "planners",
    "cache_policies",
    "expert_cache",
    "cache_sizes",
    "miss",
    "slots_per_gpu",
    "time_limit",
    "steps",
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub,
        "report",
        help="compare planners and cache policies in an HTML/Markdown/CSV report",
        description="Run a grid of hardware x model x trace x planner / cache policy x expert cache "
        "through the same functions as 'moesim plan' and 'moesim simulate', then write "
        "DIR/index.html (self-contained), DIR/report.md, the PNG plots and DIR/results.csv. "
        "Finished cells are cached in DIR/.cells (a sweep dataset, like 'moesim sweep' writes), so a rerun "
        "only computes what changed; they run on a local process pool (--workers) or Ray (--ray) as a "
        "sweep's do. --from DIR instead reports a 'moesim sweep' dataset. "
        "With no flags beyond --out it compares the default placement planners on h100x8 and "
        "the default cache policies on rtx4090-workstation with the shipped traces.",
        examples=EXAMPLES,
    )
    p.add_argument("--out", type=output_folder, required=True, metavar="DIR",
                   help="folder to write the report into")
    p.add_argument(
        "--config",
        metavar="SWEEP_YAML",
        help="sweep file (placement: / offload: studies); excludes the grid flags below",
    )
    p.add_argument("--hw", nargs="+", action="extend", metavar="H", help="hardware profiles (name or file)")
    p.add_argument("--model", nargs="+", action="extend", metavar="M", help="model specs (name or file)")
    p.add_argument(
        "--trace",
        nargs="+",
        action="extend",
        metavar="T",
        help="routing traces (name or .npz), paired with --model in order",
    )
    p.add_argument(
        "--planners",
        nargs="+",
        action="extend",
        metavar="P",
        help="placement planners (contiguous round-robin greedy eplb eplb-hierarchical ilp)",
    )
    p.add_argument(
        "--cache-policies",
        nargs="+",
        action="extend",
        metavar="POLICY",
        help="cache policies (lru lfu belady static)",
    )
    p.add_argument(
        "--expert-cache",
        nargs="+",
        action="extend",
        type=quantity("budget"),
        metavar="SIZE",
        help="expert-cache budgets per GPU of the tokens/s curve (as moesim simulate --expert-cache), "
        "e.g. 11GiB 16GiB",
    )
    p.add_argument(
        "--cache-sizes",
        nargs="+",
        action="extend",
        type=positive_int,
        metavar="C",
        help="cache sizes (experts per MoE layer) of the hit-rate curve",
    )
    p.add_argument(
        "--miss",
        nargs="+",
        action="extend",
        metavar="MODE",
        help="miss handling modes of the tokens/s curve (fetch cpu lowbit pim)",
    )
    p.add_argument("--slots-per-gpu", type=positive_int, metavar="S",
                   help="expert slots per GPU for placement")
    p.add_argument("--time-limit", type=finite_positive_float, metavar="SECONDS",
                   help="ILP solver time limit per plan")
    p.add_argument("--steps", type=positive_int, metavar="N",
                   help="decode steps simulated per offloading cell")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of every randomised step")
    p.add_argument("--no-cache", action="store_true", help="recompute every cell (and store nothing)")
    p.add_argument("--from", dest="from_dir", metavar="DATASET_DIR",
                   help="report the dataset of 'moesim sweep' in this folder (computes nothing); excludes "
                   "--config and the grid flags, e.g. --from out/offload-sweep")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="local worker processes for the cells (default: the cores; 1: this process)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the cells on Ray (as moesim sweep --ray): alone, a local instance; 'auto' or "
                   "HOST:PORT, a running cluster")
    add_json_flag(p)
    p.set_defaults(func=run)


def command_line(args: argparse.Namespace) -> str:
    """The canonical command for ``args`` (shown in every caption)."""
    parts = ["moesim", "report"]
    if args.config:
        parts += ["--config", args.config]
    for name in _GRID_FLAGS:
        value = getattr(args, name)
        if value is None:
            continue
        flag = "--" + name.replace("_", "-")
        parts += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    if args.seed:
        parts += ["--seed", str(args.seed)]
    if args.from_dir:
        parts = ["moesim", "report", "--from", args.from_dir]
    parts += ["--out", args.out]
    return shlex.join(parts)


def _from_dataset(args: argparse.Namespace, given: list[str]) -> int:
    from moesim.reports.dataset_report import make_dataset_report

    if args.config or given:
        other = "--config" if args.config else "--" + given[0].replace("_", "-")
        raise UserError(f"--from excludes {other}: the dataset's spec fixed its cells", field="--from")
    doc, written = make_dataset_report(args.from_dir, args.out, command=command_line(args))
    if args.json:
        print_json({"out": args.out, "files": sorted(written), "figures": len(doc.figures),
                    "tables": len(doc.tables), "records": len(doc.records), "not_computed": list(doc.notes)},
                   verb="report")
    else:
        print(f"wrote {args.out}/index.html, report.md, results.csv and {len(doc.figures)} plots from "
              f"{args.from_dir}")
    return 0


def run(args: argparse.Namespace) -> int:
    from moesim.reports.build import make_report
    from moesim.reports.sweep import load_sweep, sweep_from_flags
    from moesim.sweeps.choose import make_executor

    given = [n for n in _GRID_FLAGS if getattr(args, n) is not None]
    if args.from_dir:
        return _from_dataset(args, given)
    if args.config:
        if given:
            raise UserError(
                f"--config excludes --{given[0].replace('_', '-')}; put it in the sweep file",
                field="--config",
            )
        sweep = load_sweep(args.config)
        if args.seed:
            raise UserError("--config excludes --seed; set seed: in the sweep file", field="--seed")
    else:
        sweep = sweep_from_flags(
            hw=args.hw,
            model=args.model,
            trace=args.trace,
            planners=args.planners,
            cache_policies=args.cache_policies,
            expert_cache=args.expert_cache,
            cache_sizes=args.cache_sizes,
            miss_modes=args.miss,
            slots_per_gpu=args.slots_per_gpu,
            time_limit_s=args.time_limit,
            steps=args.steps,
            seed=args.seed,
        )
        if not given:
            import dataclasses

            from moesim.reports.sweep import default_sweep

            sweep = dataclasses.replace(default_sweep(), seed=args.seed)
    result = make_report(
        sweep,
        args.out,
        command=command_line(args),
        cache_dir=None if args.no_cache else "auto",
        show_progress=not args.json,
        executor=make_executor(args.workers, args.ray),
    )
    files = sorted(result.written)
    if args.json:
        print_json(
            {
                "out": args.out,
                "files": files,
                "figures": len(result.document.figures),
                "tables": len(result.document.tables),
                "records": len(result.document.records),
                "cells": result.cells,
                "cells_computed": result.computed,
                "cells_cached": result.cached,
                "cells_failed": result.failed,
                "not_computed": list(result.document.notes),
            },
            verb="report",
        )
    else:
        print(
            f"wrote {args.out}/index.html, report.md, results.csv and {len(result.document.figures)} plots "
            f"({result.cells} cells: {result.computed} computed, {result.cached} cached)"
        )
        for note in result.document.notes:
            print(f"moesim: warning: not computed: {note}", file=sys.stderr)
    if result.warning:
        print(f"moesim: warning: {result.warning}", file=sys.stderr)
    if result.failed:
        print(f"moesim: error: {result.failed} cell(s) failed with an internal error (see the report's "
              "'Cells not computed')", file=sys.stderr)
        return 1
    return 0
