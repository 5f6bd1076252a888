"""``moesim trace``: inspect, validate, convert, record, synthesise and analyse routing traces."""

from __future__ import annotations

import argparse
from typing import Any

from moesim.cli.common import (
    add_json_flag,
    add_verb,
    int_list,
    int_range,
    nonnegative_int,
    positive_int,
    print_json,
)
from moesim.cli.trace_concat import add_concat_parser
from moesim.cli.trace_convert import add_convert_parsers
from moesim.cli.trace_synth import add_synth_parsers
from moesim.errors import UserError
from moesim.limits import EXPERTS, MAX_WINDOWS
from moesim.workflows.traces import trace_summary

_EXAMPLES = """\
  moesim trace info deepseek-v2-lite-synth                  a shipped trace: shape, sequences, phases
  moesim trace stats mixtral-8x7b-synth --cache-sizes 2,4,6  skew, reuse, affinity, cache hit rates
  moesim trace stats run.npz --cache-sizes 8,16 --json      the same as one JSON object
      needs run.npz: moesim trace synth --model deepseek-v2-lite --tokens 500 --trial-tokens 512 --out run.npz
  moesim trace stats run.npz --drift --gpus 32              how far the load moves between windows
      needs run.npz: moesim trace synth --model deepseek-v2-lite --tokens 500 --trial-tokens 512 --out run.npz
  moesim trace validate run.npz --model deepseek-v2-lite    check a file against a model spec
      needs run.npz: moesim trace synth --model deepseek-v2-lite --tokens 500 --trial-tokens 512 --out run.npz
  moesim trace convert a_routing.jsonl b_routing.jsonl out.npz --phase decode --model mixtral-8x7b
      needs a_routing.jsonl, b_routing.jsonl: routing logs of a vLLM run (format: docs/traces.md)
  moesim trace convert dump.pt out.npz --format sglang-per-token --model deepseek-v3
      needs dump.pt: SGLang's expert distribution recorder in per_token mode (docs/traces.md)
  moesim trace convert stat.pt counts.npz --model deepseek-v3 --passes 5000   SGLang stat dump -> counts
      needs stat.pt: SGLang's expert distribution recorder in stat mode (docs/traces.md)
  moesim trace convert responses.jsonl out.npz --format vllm-routed --model qwen3-30b-a3b
      needs responses.jsonl: vLLM responses with --enable-return-routed-experts (docs/traces.md)
  moesim trace export real.npz logical_count.json --model deepseek-v3 --ep-size 32 --redundant-experts 32
      needs real.npz: moesim trace synth --model deepseek-v3 --tokens 200 --trial-tokens 64 --out real.npz
  moesim trace synth --model deepseek-v3 --tokens 5000 --seed 1 --trial-tokens 256 --out v3.npz
  moesim trace record --model MixtralForCausalLM --tiny --prompts "hi there" --max-new-tokens 4 --out r.npz
  moesim trace synth --model mixtral-8x7b --tokens 4000 --fit real.npz --report --out mx.npz
      needs real.npz: moesim trace record --model MixtralForCausalLM --tiny --prompts "hi" --out real.npz
  moesim trace synth --model mixtral-8x7b --tokens 2000 --fit real.npz --drift-scale 2 --out x.npz
      needs real.npz: moesim trace record --model MixtralForCausalLM --tiny --prompts "hi" --out real.npz
  moesim trace synth --model deepseek-v2-lite --tokens 4000 --switches 1 --hot-share 0.5 --out sw.npz
      (a subject switch: the hot eighth of the experts moves half-way; docs/traces.md section 7)
  moesim trace concat deepseek-v2-lite-synth deepseek-v2-lite-switch --out stream.npz   one stream, in order
  moesim trace fit real.npz --out profile.json              statistics-only profile for synth
      needs real.npz: moesim trace record --model MixtralForCausalLM --tiny --prompts "hi" --out real.npz
"""


def _model(name: str | None):
    if name is None:
        return None
    from moesim.specs import load_model

    return load_model(name)


def register(sub: argparse._SubParsersAction) -> None:
    parser = add_verb(
        sub,
        "trace",
        help="inspect, convert, record, synthesise and analyse routing traces",
        description="Routing traces (moe-routing-trace/v1 .npz): which experts each token "
        "chose at each MoE layer. Names of shipped traces work wherever a path does.",
        examples=_EXAMPLES,
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    info = actions.add_parser(
        "info",
        help="shape, sequences and metadata of a trace",
        description="Load and validate a trace, print its shape and metadata.",
    )
    info.add_argument("trace", metavar="NAME|PATH", help="trace file or shipped trace name")
    info.add_argument("--model", help="model spec to validate against (built-in name or YAML)")
    add_json_flag(info)
    info.set_defaults(func=run_info)

    val = actions.add_parser(
        "validate",
        help="check trace files (exit 2 on the first bad one)",
        description="Validate shapes, dtypes, expert ids and layer ids of each file.",
    )
    val.add_argument("paths", nargs="+", metavar="PATH", help="trace files")
    val.add_argument("--model", help="model spec the traces must match")
    add_json_flag(val)
    val.set_defaults(func=run_validate)

    st = actions.add_parser(
        "stats",
        help="load skew, reuse, cross-layer affinity, local consistency, hit rates",
        description="Statistics of a trace (definitions in docs/traces.md). A counts-only "
        "file (moe-load-counts/v1) gets the load statistics only.",
    )
    st.add_argument("trace", metavar="NAME|PATH", help="trace file or shipped trace name")
    st.add_argument(
        "--cache-sizes",
        type=int_list(1),
        default=[],
        metavar="C,C,...",
        help="per-layer expert cache sizes for LRU/LFU/Belady hit rates (each >= top-k)",
    )
    st.add_argument("--policies", default="lru,lfu,belady", help="cache policies to simulate")
    st.add_argument(
        "--segment-lengths",
        type=int_list(1),
        default=[4, 16, 64],
        metavar="M,M,...",
        help="segment lengths (tokens) of the local routing consistency metrics",
    )
    st.add_argument(
        "--cache-tokens",
        type=nonnegative_int,
        default=0,
        metavar="N",
        help="simulate the caches on the first N rows only (default 0 = all rows; e.g. --cache-tokens "
        "200000 on a 10M-row trace without the numba extra)",
    )
    st.add_argument("--model", help="model spec to validate against")
    st.add_argument("--key", default=None, help="one [layers, experts] count array of an aggregate .npz")
    st.add_argument("--drift", action="store_true",
                    help="also how far the load moves between windows: TV between consecutive windows and "
                    "its noise floor, and the next-window imbalance of a static plan (docs/traces.md)")
    st.add_argument("--windows", type=int_range(2, MAX_WINDOWS), default=None, metavar="W",
                    help="--drift: cut the stream into W equal windows (default 8), e.g. --windows 16")
    st.add_argument("--window-tokens", type=positive_int, default=None, metavar="T",
                    help="--drift: windows of T rows instead (tokens; steps of a counts file), e.g. 4096")
    st.add_argument("--gpus", type=int_range(1, EXPERTS), default=8, metavar="G",
                    help="--drift: GPUs of the static plan (default 8), e.g. --gpus 32")
    st.add_argument("--slots-per-gpu", type=int_range(1, EXPERTS), default=None, metavar="S",
                    help="--drift: expert slots per GPU (default ceil(E/G) + 1, at most E), e.g. 3")
    st.add_argument("--planner", default="greedy",
                    help="--drift: planner of the static plan (default greedy), e.g. eplb, engine-default")
    add_json_flag(st)
    st.set_defaults(func=run_stats)

    add_convert_parsers(actions)
    add_synth_parsers(actions)
    add_concat_parser(actions)


def _trace_or_counts(name: str, model_name: str | None = None, key: str | None = None):
    from moesim.traces.routing_data import load_routing_data

    return load_routing_data(name, model=_model(model_name), key=key)


def run_info(args: argparse.Namespace) -> int:
    info = trace_summary(_trace_or_counts(args.trace, args.model))
    if args.json:
        print_json(info, verb="trace-info")
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    out = [trace_summary(_trace_or_counts(p, args.model)) for p in args.paths]
    if args.json:
        print_json({"valid": out}, verb="trace-validate")
    else:
        for i in out:
            print(f"ok  {i['path']}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from moesim.workflows.traces import trace_statistics

    drift = None
    if args.drift:
        if args.windows is not None and args.window_tokens is not None:
            raise UserError("give --windows or --window-tokens, not both", field="--window-tokens")
        drift = {"windows": args.windows, "window_rows": args.window_tokens, "gpus": args.gpus,
                 "slots_per_gpu": args.slots_per_gpu, "planner": args.planner}
    try:
        out = trace_statistics(args.trace, model=args.model, key=args.key, cache_sizes=args.cache_sizes,
                               policies=[p.strip() for p in args.policies.split(",") if p.strip()],
                               segment_lengths=args.segment_lengths, cache_tokens=args.cache_tokens or None,
                               drift=drift)
    except UserError as e:  # the drift statistics' fields are these flags
        raise UserError(e.message, file=e.file, field=_DRIFT_FLAGS.get(e.field or "", e.field)) from None
    if args.json:
        print_json(out, verb="trace-stats")
    else:
        print(format_stats(out))
        if args.drift:
            from moesim.workflows.drift import format_drift

            print(format_drift(out["drift"]))
    return 0


_DRIFT_FLAGS = {"windows": "--windows", "window_rows": "--window-tokens", "devices": "--gpus",
                "slots_per_device": "--slots-per-gpu", "planner": "--planner"}


def format_stats(st: dict[str, Any]) -> str:
    """A short human-readable summary of ``trace_stats`` output."""
    lines = [
        f"{st.get('path')}: "
        + ", ".join(f"{k} {st[k]}" for k in ("tokens", "steps", "layers", "top_k", "num_experts") if k in st)
    ]
    pl = st["per_layer"]
    for key, vals in pl.items():
        clean = [v for v in vals if v == v]
        if clean:
            lines.append(
                f"  {key:<24} mean {sum(clean) / len(clean):9.4f}  min {min(clean):9.4f}  "
                f"max {max(clean):9.4f}"
            )
    if "cross_layer" in st:
        for key, vals in st["cross_layer"].items():
            clean = [v for v in vals if v == v]
            if clean:
                lines.append(f"  cross_layer.{key:<12} mean {sum(clean) / len(clean):9.4f}")
    if "local_consistency" in st:
        lc = st["local_consistency"]
        lines.append(
            "  segment routing best performance (SRP): "
            + ", ".join(f"m={m}: {v:.4f}" for m, v in lc["srp"].items())
        )
        for m, by in lc["sch"].items():
            lines.append(
                f"  segment cache best hit rate (SCH) m={m}: "
                + ", ".join(f"C={c}: {v:.4f}" for c, v in by.items())
            )
    for pol, by in st.get("cache_hit_rate", {}).items():
        lines.append(f"  hit rate {pol:<7} " + "  ".join(f"C={c}: {v:.4f}" for c, v in by.items()))
    return "\n".join(lines)
