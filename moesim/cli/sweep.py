"""``moesim sweep``: a grid (and samples) of simulate / plan / serve cells into a Parquet dataset folder."""

from __future__ import annotations

import argparse
import shlex
import sys

from moesim.cli.common import (
    add_json_flag,
    add_verb,
    nonnegative_int,
    output_file,
    output_folder,
    positive_int,
    print_json,
)
from moesim.errors import UserError

EXAMPLES = """\
  moesim sweep --init spec.yaml                              write a small spec to start from (8 cells)
  moesim sweep spec.yaml --out out/s --workers 2             two local worker processes
      needs spec.yaml: moesim sweep --init spec.yaml
  moesim sweep spec.yaml --out out/s --dry-run               the cells' command lines; nothing run
      needs spec.yaml: moesim sweep --init spec.yaml
  moesim sweep spec.yaml --out out/s --ray                   a local Ray instance
      needs Ray: pip install 'moesim[ray]'
  moesim sweep spec.yaml --out out/s --ray auto              the Ray cluster this node belongs to
      needs a Ray cluster: ray start --head (docs/sweeps.md)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub, "sweep",
        help="run a grid of simulate / plan / serve cells on a process pool or Ray; results as a Parquet "
        "dataset",
        description="Expand SPEC.yaml (kind:, fixed:, grid:, sample:; docs/sweeps.md) into cells, each one "
        "call of the workflow behind 'moesim simulate', 'moesim plan' or 'moesim simulate --workload' "
        "(kind: simulate, plan or serve), and append one row per cell to "
        "the Parquet dataset in --out (every parameter and metric a column, plus the cell's command "
        "line and content hash). Cells already in the dataset are skipped, so an interrupted sweep "
        "resumes where it stopped. A cell the workflow refuses, or that crashes, is a row with its "
        "error; a worker that dies is retried.",
        examples=EXAMPLES,
    )
    p.add_argument("spec", nargs="?", metavar="SPEC.yaml", help="the sweep spec (docs/sweeps.md)")
    p.add_argument("--out", type=output_folder, metavar="DIR",
                   help="dataset folder (created; an existing one of the same kind is resumed); required "
                   "with SPEC.yaml")
    p.add_argument("--init", type=output_file, metavar="FILE",
                   help="write a small example spec to FILE (not over an existing file) and stop")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="local worker processes (default: the cores this process may use; 1: run in this "
                   "process); with --ray, the CPUs of the local Ray instance it starts")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run the cells on Ray: alone, start a local instance; 'auto' or HOST:PORT, join a "
                   "running cluster (ray start --head), e.g. --ray auto")
    p.add_argument("--retries", type=nonnegative_int, default=2, metavar="N",
                   help="times a cell whose worker died is run again before it is recorded as failed")
    p.add_argument("--dry-run", action="store_true", help="list the cells' command lines; compute nothing")
    add_json_flag(p)
    p.set_defaults(func=run)


def _init(path: str) -> int:
    from pathlib import Path

    from moesim.io import atomic_write_text
    from moesim.sweeps.spec import EXAMPLE

    if Path(path).exists():
        raise UserError("exists already: --init writes a new file only", file=path, field="--init")
    atomic_write_text(path, EXAMPLE)
    print(f"wrote {path}: run it with  moesim sweep {path} --out DIR")
    return 0


def run(args: argparse.Namespace) -> int:
    from moesim.sweeps import load_spec, make_executor, run_sweep

    if args.init:
        if args.spec:
            raise UserError("give SPEC.yaml or --init FILE, not both", field="--init")
        return _init(args.init)
    if not args.spec or not args.out:
        raise UserError("expected SPEC.yaml and --out DIR (or --init FILE)",
                        field="--out" if args.spec else "SPEC.yaml")
    spec = load_spec(args.spec)
    executor = make_executor(args.workers, args.ray, retries=args.retries)
    if args.dry_run:
        cells = spec.cells()
        commands = [spec.kind.command(c.p) for c in cells]
        if args.json:
            print_json({"kind": spec.kind.name, "cells": len(cells), "commands": commands}, verb="sweep")
        else:
            print(f"{len(cells)} {spec.kind.name} cells; {executor.describe()} would run them:")
            print("\n".join(commands))
        return 0
    command = shlex.join(["moesim", "sweep", args.spec, "--out", args.out])
    try:
        done = run_sweep(spec, args.out, executor=executor, show_progress=not args.json, command=command)
    except KeyboardInterrupt:
        print(f"moesim: finished cells are saved in {args.out}; rerun the same command to compute the rest",
              file=sys.stderr)
        raise
    r = done.run
    if args.json:
        print_json({"out": args.out, "kind": spec.kind.name, "cells": done.cells, "computed": r.computed,
                    "skipped": r.skipped, "refused": r.refused, "failed": r.failed,
                    "executor": executor.describe()}, verb="sweep")
    else:
        print(f"{args.out}: {done.cells} {spec.kind.name} cells: {r.computed} computed on "
              f"{executor.describe()} ({r.refused} refused by the workflow, {r.failed} failed), {r.skipped} "
              "already in the dataset")
    if r.failed:
        print(f"moesim: error: {r.failed} cell(s) failed (their rows hold the error; a rerun retries them)",
              file=sys.stderr)
        return 1
    return 0
