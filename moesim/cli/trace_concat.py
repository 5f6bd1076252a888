"""``moesim trace concat``: one stream from several traces played in order (a subject switch)."""

from __future__ import annotations

import argparse

from moesim.cli.common import add_json_flag, output_file, print_json


def add_concat_parser(actions: argparse._SubParsersAction) -> None:
    """The ``concat`` action of ``moesim trace``."""
    cc = actions.add_parser(
        "concat",
        help="play traces one after the other as one stream (e.g. a subject switch)",
        description="Write one trace holding the rows of the given traces in order (same experts, "
        "top-k and MoE layers); sequence ids are renumbered so no two traces share one, and "
        "meta.concatenated_from lists the inputs. Example: moesim trace concat "
        "deepseek-v2-lite-synth deepseek-v2-lite-switch --out stream.npz",
    )
    cc.add_argument("traces", nargs="+", metavar="NAME|PATH",
                    help="traces (files or shipped names), in order")
    cc.add_argument("--out", type=output_file, required=True, metavar="OUT.npz", help="output .npz")
    add_json_flag(cc)
    cc.set_defaults(func=run_concat)


def run_concat(args: argparse.Namespace) -> int:
    from moesim.traces.streams import concatenate
    from moesim.traces.trace import RoutingTrace

    stream = concatenate([RoutingTrace.load(t) for t in args.traces])
    stream.save(args.out)
    out = {"out": str(args.out), "tokens": stream.num_tokens,
           "rows_per_trace": stream.meta["concatenated_rows"]}
    if args.json:
        print_json(out, verb="trace-concat")
    else:
        print(f"wrote {args.out}: {stream.num_tokens} tokens from {len(args.traces)} traces "
              f"({', '.join(map(str, out['rows_per_trace']))} rows)")
    return 0
