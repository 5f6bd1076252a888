"""``moesim trace``: inspect, validate, convert, record, synthesise and analyse routing traces."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from moesim.cli.common import (
    add_json_flag,
    add_verb,
    check_output,
    int_list,
    int_range,
    nonnegative_int,
    output_file,
    positive_int,
    print_json,
)
from moesim.cli.trace_concat import add_concat_parser
from moesim.cli.trace_synth import add_synth_parsers
from moesim.errors import UserError
from moesim.limits import EXPERTS, INT16_MAX, MAX_WINDOWS, TOP_K

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

    cv = actions.add_parser(
        "convert",
        help="convert other recordings to the v1 trace (or to load counts)",
        description="Convert IN... to OUT. Formats: jsonl, deepseek-csv, vllm-routed, "
        "sglang-per-token, sglang-per-pass, sglang-stat, counts, counts-npz (docs/traces.md). Give --model "
        "with engine dumps: their columns are the model's hidden layers and the dense ones are dropped.",
    )
    cv.add_argument("paths", nargs="+", metavar="IN... OUT", help="input file(s) then the output .npz")
    cv.add_argument("--format", dest="fmt", default=None, help="input format (guessed when omitted)")
    cv.add_argument(
        "--model", help="built-in model name or spec: sets num_experts, top-k, layer ids, meta.model"
    )
    cv.add_argument(
        "--num-experts", type=int_range(1, EXPERTS), default=None,
        help="routed experts (default: from --model or ids)"
    )
    cv.add_argument("--layer-ids", type=int_list(0, INT16_MAX), default=None,
                    help="model layer id of each column")
    cv.add_argument(
        "--phase",
        default="unknown",
        choices=["prefill", "decode", "unknown"],
        help="phase of every row, where the format does not say",
    )
    cv.add_argument("--top-k", type=int_range(1, TOP_K), default=None,
                    help="k of SGLang per_token dumps (padded to 8)")
    cv.add_argument("--key", default=None, help="array name inside a counts-npz file")
    cv.add_argument("--passes", type=positive_int, default=None, metavar="N",
                    help="sglang-stat: forward passes recorded since /start_expert_distribution_record "
                    "(restores the time order of a wrapped circular buffer)")
    cv.add_argument("--ranks", default="auto", choices=("auto", "sum", "first"),
                    help="sglang per_pass/per_token rank files: auto = one copy of records identical on "
                    "several ranks (tensor parallel), all of those that differ (DP attention)")
    cv.add_argument("--uncompressed", action="store_true", help="store uncompressed (memory-mappable)")
    add_json_flag(cv)
    cv.set_defaults(func=run_convert)

    add_synth_parsers(actions)
    add_concat_parser(actions)

    ex = actions.add_parser(
        "export",
        help="write a trace's expert loads for SGLang's own EPLB ({\"logical_count\": ...})",
        description="Sum the expert selections of a trace or counts file per MoE layer and write "
        "SGLang's --init-expert-location {\"logical_count\": [[...]]} (one row per hidden layer; "
        "SGLang computes the placement at start-up), with the launch flags beside it (OUT.flags.txt).",
    )
    ex.add_argument("trace", metavar="NAME|PATH", help="routing trace or load-counts file")
    ex.add_argument("out", type=output_file, metavar="OUT.json", help="output file")
    ex.add_argument("--model", required=True, help="model spec (rows = its hidden layers)")
    ex.add_argument("--ep-size", type=positive_int, default=None, metavar="G",
                    help="EP size the engine will use")
    ex.add_argument("--redundant-experts", type=nonnegative_int, default=0, metavar="R",
                    help="--ep-num-redundant-experts to launch with ((experts + R) divisible by G)")
    ex.add_argument("--windows", type=int_range(1, MAX_WINDOWS), default=1, metavar="W",
                    help="write W consecutive windows [W][layers][experts] (SGLang sums them)")
    add_json_flag(ex)
    ex.set_defaults(func=run_export)

    rec = actions.add_parser(
        "record",
        help="record routing of a Hugging Face MoE model",
        description="Run prompts through a Hugging Face MoE model with hooks on its "
        "routers and write the v1 trace (prefill rows phase 0, decode rows phase 1).",
    )
    rec.add_argument(
        "--model",
        required=True,
        help="HF model id or local dir (config + weights), config.json, or a model class name",
    )
    rec.add_argument(
        "--tiny",
        action="store_true",
        help="random weights on a tiny config of that class (tests, no download)",
    )
    rec.add_argument("--prompts", nargs="+", default=None, help="prompt strings")
    rec.add_argument("--prompts-file", default=None, help="text file, one prompt per line")
    rec.add_argument("--max-new-tokens", type=int_range(0, 100_000), default=16,
                     help="decode steps per prompt")
    rec.add_argument("--seed", type=nonnegative_int, default=0,
                     help="seed (random weights, token ids of --tiny)")
    rec.add_argument("--name", default=None, help="meta.model to write (e.g. a built-in model name)")
    rec.add_argument("--out", type=output_file, required=True, help="output .npz")
    add_json_flag(rec)
    rec.set_defaults(func=run_record)


def _trace_or_counts(name: str, model_name: str | None = None, key: str | None = None):
    from moesim.traces.routing_data import load_routing_data

    return load_routing_data(name, model=_model(model_name), key=key)


def _info(trace) -> dict[str, Any]:
    import numpy as np

    from moesim.traces.counts import LoadCounts

    if isinstance(trace, LoadCounts):
        return {
            "path": trace.source,
            "kind": "load-counts",
            "steps": trace.num_steps,
            "layers": trace.num_layers,
            "num_experts": trace.num_experts,
            "layer_ids": trace.layer_ids.tolist(),
            "selections": int(trace.counts.sum()),
        }
    phases, counts = np.unique(np.asarray(trace.phase), return_counts=True)
    return {
        "path": trace.source,
        "kind": "routing-trace",
        "model": trace.model_name,
        "tokens": trace.num_tokens,
        "layers": trace.num_layers,
        "top_k": trace.top_k,
        "num_experts": trace.num_experts,
        "sequences": trace.num_sequences,
        "layer_ids": trace.layer_ids.tolist(),
        "phases": {
            {0: "prefill", 1: "decode", -1: "unknown"}[int(p)]: int(c)
            for p, c in zip(phases, counts, strict=True)
        },
        "gate_weights": trace.gate_weights is not None,
        "memory_mapped": isinstance(trace.expert_ids, np.memmap),
        "extra_keys": sorted(trace.extras),
    }


def run_info(args: argparse.Namespace) -> int:
    info = _info(_trace_or_counts(args.trace, args.model))
    if args.json:
        print_json(info, verb="trace-info")
    else:
        for k, v in info.items():
            print(f"{k:>14}: {v}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    out = [_info(_trace_or_counts(p, args.model)) for p in args.paths]
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


def run_convert(args: argparse.Namespace) -> int:
    from moesim.traces.convert import convert

    if len(args.paths) < 2:
        raise UserError("expected at least one input and one output path")
    *inputs, out = args.paths
    check_output(out, flag="OUT")  # before the conversion, not after it
    model = _model(args.model)
    num_experts = args.num_experts or (model.num_experts if model else None)
    result = convert(
        inputs,
        args.fmt,
        num_experts=num_experts,
        layer_ids=args.layer_ids,
        phase=args.phase,
        model_name=model.name if model else None,
        top_k=args.top_k or (model.top_k if model else None),
        key=args.key,
        model=model,
        passes=args.passes,
        ranks=args.ranks,
    )
    for warning in result.meta.get("warnings", []):
        print(f"moesim: warning: {warning}", file=sys.stderr)
    from moesim.traces import RoutingTrace

    if isinstance(result, RoutingTrace):
        if model is not None and args.layer_ids is None and result.num_layers == model.num_moe_layers:
            from dataclasses import replace

            import numpy as np

            result = replace(result, layer_ids=np.asarray(model.moe_layers, np.int16))
        if model is not None:
            result.validate(model)
        result.save(out, compress=not args.uncompressed)
    else:
        if model is not None:
            result.check_model(model)
        result.save(out)
    info = _info(result)
    info["path"] = out
    if args.json:
        print_json(info, verb="trace-convert")
    else:
        print(
            f"wrote {out}: "
            + ", ".join(
                f"{k} {info[k]}" for k in ("tokens", "steps", "layers", "top_k", "num_experts") if k in info
            )
        )
    return 0


def run_export(args: argparse.Namespace) -> int:
    import numpy as np

    from moesim.plans.export import export_sglang_logical_count

    model = _model(args.model)
    data = _trace_or_counts(args.trace, args.model)
    if args.windows < 1:
        raise UserError(f"expected at least 1 window, got {args.windows}", field="--windows")
    load = data.load_matrix(args.windows)
    lids = [int(x) for x in np.asarray(data.layer_ids)]
    if sorted(lids) != list(model.moe_layers):
        raise UserError(f"the data records layers {lids[:6]}...; {model.name}'s MoE layers are "
                        f"{list(model.moe_layers)[:6]}... (every MoE layer is needed)", file=args.trace)
    load = load[:, [lids.index(x) for x in model.moe_layers]]
    launch = export_sglang_logical_count(load if args.windows > 1 else load[0], model, args.out,
                                         ep_size=args.ep_size, redundant=args.redundant_experts)
    if args.json:
        print_json({"path": args.out, "selections": int(load.sum()), "windows": args.windows,
                    "engine_launch": launch.to_dict()}, verb="trace-export")
    else:
        print(f"wrote {args.out} ({int(load.sum())} selections over {model.num_moe_layers} MoE layers)")
        print(f"SGLang: launch with {launch.command_line()}\n  (also in {args.out}.flags.txt)")
    return 0


def run_record(args: argparse.Namespace) -> int:
    from moesim.traces.record import record_prompts

    prompts = list(args.prompts or [])
    if args.prompts_file:
        try:
            prompts += [
                ln.strip()
                for ln in Path(args.prompts_file).read_text(encoding="utf-8").splitlines()
                if ln.strip()
            ]
        except OSError as e:
            raise UserError(f"cannot read prompts ({e.strerror})", file=args.prompts_file) from None
    if not prompts:
        raise UserError("give --prompts or --prompts-file")
    trace = record_prompts(
        args.model,
        prompts,
        max_new_tokens=args.max_new_tokens,
        tiny=args.tiny,
        seed=args.seed,
        name=args.name,
    )
    trace.save(args.out)
    info = _info(trace)
    info["path"] = args.out
    if args.json:
        print_json(info, verb="trace-record")
    else:
        print(f"wrote {args.out}: {trace.num_tokens} tokens x {trace.num_layers} layers x top-{trace.top_k}")
    return 0
