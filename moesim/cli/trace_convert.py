"""``moesim trace convert``, ``export`` and ``record``: traces into and out of moesim's format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moesim.cli.common import (
    add_json_flag,
    check_output,
    int_list,
    int_range,
    nonnegative_int,
    output_file,
    positive_int,
    print_json,
)
from moesim.errors import UserError
from moesim.limits import EXPERTS, INT16_MAX, MAX_WINDOWS, TOP_K
from moesim.workflows.traces import trace_summary


def _model(name: str | None):
    if name is None:
        return None
    from moesim.specs import load_model

    return load_model(name)


def add_convert_parsers(actions: argparse._SubParsersAction) -> None:
    """The ``convert``, ``export`` and ``record`` actions of ``moesim trace``."""
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
    info = trace_summary(result)
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
    from moesim.traces.routing_data import load_routing_data

    data = load_routing_data(args.trace, model=model)
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
    info = trace_summary(trace)
    info["path"] = args.out
    if args.json:
        print_json(info, verb="trace-record")
    else:
        print(f"wrote {args.out}: {trace.num_tokens} tokens x {trace.num_layers} layers x top-{trace.top_k}")
    return 0
