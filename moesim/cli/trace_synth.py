"""``moesim trace synth`` and ``moesim trace fit``: synthetic traces fitted to real statistics."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from moesim.cli.common import (
    add_json_flag,
    int_list,
    int_range,
    nonnegative_int,
    output_file,
    positive_int,
    print_json,
    unit_fraction,
)
from moesim.errors import UserError
from moesim.limits import SYNTH_TOKENS
from moesim.specs import load_model
from moesim.traces.regimes import MAX_REGIMES
from moesim.traces.synth import MIN_TRIAL_TOKENS
from moesim.traces.synth_switch import DEFAULT_HOT_SHARE, MAX_SUBJECTS


def check_cache_sizes(sizes: list[int] | None, top_k: int, num_experts: int) -> None:
    """A per-layer cache holds a token's top-k experts at least, and at most every expert."""
    bad = [c for c in sizes or [] if not top_k <= c <= num_experts]
    if bad:
        raise UserError(f"expected cache sizes from top-k ({top_k}) to the number of experts "
                        f"({num_experts}), got {bad}", field="--cache-sizes")


def _scale(text: str) -> float:
    """A finite number from 0 to 10 (how far regimes move: 0 stationary, 1 as fitted)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 10.0:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 10, got {text!r}")
    return value


def add_synth_parsers(actions: argparse._SubParsersAction) -> None:
    """The ``synth`` and ``fit`` actions of ``moesim trace``."""
    sy = actions.add_parser(
        "synth",
        help="synthesise a trace fitted to real statistics",
        description="Generate a trace for a model from a generator fitted to a real trace "
        "(--fit) or to a shipped statistics profile (--profile).",
    )
    sy.add_argument("--model", required=True, help="built-in model name or spec (experts, top-k, MoE layers)")
    sy.add_argument("--tokens", type=int_range(1, SYNTH_TOKENS), required=True, help="number of token rows")
    sy.add_argument("--fit", default=None, metavar="REAL", help="real trace to fit the generator to")
    sy.add_argument(
        "--profile",
        default="deepseek-v2-lite",
        help="statistics profile when --fit is not given (shipped name or JSON)",
    )
    sy.add_argument("--seed", type=nonnegative_int, default=0, help="random seed (same seed, same file)")
    sy.add_argument("--trial-tokens", type=int_range(MIN_TRIAL_TOKENS, SYNTH_TOKENS), default=4096,
                    help="tokens of each calibration trial (more: closer fit, slower)")
    sy.add_argument("--seq-len", type=positive_int, default=None,
                    help="fixed sequence length (default: fitted)")
    sy.add_argument("--out", type=output_file, required=True, help="output .npz")
    sy.add_argument("--report", action="store_true", help="print fit quality: statistics side by side")
    sy.add_argument("--cache-sizes", type=int_list(1), default=None, help="cache sizes for the --report")
    sy.add_argument("--drift-scale", type=_scale, default=1.0, metavar="X",
                    help="how far the fitted regimes move from the overall popularity: 0 stationary, 1 as "
                    "fitted (default), 2 twice as far, e.g. --drift-scale 0.5")
    sy.add_argument("--regimes", type=int_range(1, MAX_REGIMES), default=None, metavar="N",
                    help="--fit: force N regimes instead of detecting them (1: no change of subject)")
    sy.add_argument("--stationary", action="store_true",
                    help="no drift model at all: the stationary generator (no regimes, no request spread)")
    sw = sy.add_mutually_exclusive_group()
    sw.add_argument("--switches", type=int_range(0, MAX_SUBJECTS - 1), default=None, metavar="N",
                    help="subject switches: cut the stream into N + 1 equal subjects, each with its own hot "
                    "experts (0: one hot set that never moves), e.g. --switches 1 --hot-share 0.5")
    sw.add_argument("--switch-every", type=positive_int, default=None, metavar="TOKENS",
                    help="subject switches every TOKENS rows (at the first request starting there), e.g. "
                    "--switch-every 8000")
    sy.add_argument("--hot-experts", type=positive_int, default=None, metavar="K",
                    help="with --switches/--switch-every: experts per layer in a subject's hot set "
                    "(default: an eighth of the experts, at least 1)")
    sy.add_argument("--hot-share", type=unit_fraction, default=None, metavar="S",
                    help="with --switches/--switch-every: share of each layer's routed slots the hot set "
                    f"carries, at most min(K, top-k)/top-k (default {DEFAULT_HOT_SHARE}: OLMoE's domains)")
    sy.add_argument("--gpus", type=positive_int, default=8, metavar="G",
                    help="GPUs of the static plan whose next-window imbalance --report compares (default 8)")
    add_json_flag(sy)
    sy.set_defaults(func=run_synth)

    fit = actions.add_parser(
        "fit",
        help="write a statistics-only synthesis profile of a real trace",
        description="Fit the generator's statistics profile (JSON, no token data).",
    )
    fit.add_argument("trace", metavar="NAME|PATH", help="real trace")
    fit.add_argument("--out", type=output_file, required=True, help="output JSON profile")
    fit.add_argument("--stationary", action="store_true",
                     help="leave out the drift model (faster: no generator fit), e.g. an old-style profile")
    add_json_flag(fit)
    fit.set_defaults(func=run_fit)


def run_synth(args: argparse.Namespace) -> int:
    import numpy as np

    from moesim.traces import RoutingTrace
    from moesim.traces.synth import write_synthetic
    from moesim.traces.synth_fit import fit_trace, from_profile
    from moesim.traces.synth_profile import load_profile

    if args.tokens < 1:
        raise UserError(f"expected at least 1 token, got {args.tokens}", field="--tokens")
    model = load_model(args.model)
    check_cache_sizes(args.cache_sizes, model.top_k, model.num_experts)
    shape = {"num_layers": model.num_moe_layers, "num_experts": model.num_experts, "top_k": model.top_k}
    real = None
    if args.fit:
        real = RoutingTrace.load(args.fit)
        params = fit_trace(real, seed=args.seed, trial_tokens=args.trial_tokens, drift=not args.stationary,
                           drift_scale=args.drift_scale, num_regimes=args.regimes, **shape)
        source = {"fit": Path(args.fit).name}
    else:
        prof = load_profile(args.profile)
        if args.stationary:
            prof = {k: v for k, v in prof.items() if k != "drift"}
        params = from_profile(prof, seed=args.seed, trial_tokens=args.trial_tokens,
                              drift_scale=args.drift_scale, **shape)
        source = {"profile": args.profile}
    params = _with_switch(params, args, model)
    meta = {
        "model": model.name,
        "synthesis": {
            **source,
            "seed": args.seed,
            "tokens": args.tokens,
            "command": "moesim trace " + " ".join(sys.argv[2:]),
        },
    }
    write_synthetic(
        args.out,
        params,
        args.tokens,
        seed=args.seed,
        meta=meta,
        layer_ids=np.asarray(model.moe_layers),
        seq_len=args.seq_len,
    )
    out: dict[str, Any] = {
        "path": args.out,
        "tokens": args.tokens,
        "layers": model.num_moe_layers,
        "top_k": model.top_k,
        "num_experts": model.num_experts,
        **source,
    }
    if args.report:
        out["fit_quality"] = _report(real, args, model)
    if args.json:
        print_json(out, verb="trace-synth")
    else:
        print(
            f"wrote {args.out}: {args.tokens} tokens x {model.num_moe_layers} layers x top-{model.top_k} "
            f"of {model.num_experts} experts"
        )
        if args.report:
            print(f"{'statistic':<42}{'real':>10}{'synthetic':>11}")
            for key, v in out["fit_quality"].items():
                print(f"{key:<42}{v['real']:>10.4f}{v['synthetic']:>11.4f}")
    return 0


def _with_switch(params, args: argparse.Namespace, model):
    """``params`` with the subject switches asked for (``--switches``/``--switch-every``), checked."""
    from dataclasses import replace

    from moesim.traces.synth_switch import SubjectSwitch, default_hot_experts

    if args.switches is None and args.switch_every is None:
        for flag, v in (("--hot-experts", args.hot_experts), ("--hot-share", args.hot_share)):
            if v is not None:
                raise UserError("needs --switches or --switch-every", field=flag)
        return params
    switch = SubjectSwitch.for_stream(
        args.tokens, switches=args.switches, every=args.switch_every,
        hot_experts=args.hot_experts or default_hot_experts(model.num_experts),
        hot_share=DEFAULT_HOT_SHARE if args.hot_share is None else args.hot_share)
    switch.check(model.num_experts, model.top_k)
    return replace(params, switch=switch)


def _report(real, args: argparse.Namespace, model) -> dict[str, dict[str, float]]:
    from moesim.traces import RoutingTrace
    from moesim.traces.stats import trace_stats
    from moesim.traces.synth_fit import compare
    from moesim.traces.synth_profile import load_profile
    from moesim.workflows.drift import compare_drift

    synth = RoutingTrace.load(args.out)
    sizes = args.cache_sizes or [model.top_k, 2 * model.top_k]
    s = trace_stats(synth, cache_sizes=sizes if real is not None else [])
    prof = load_profile(args.profile) if real is None else None
    recorded = ((prof or {}).get("drift") or {}).get("fitted", {}).get("real")
    drift = compare_drift(real if real is not None else recorded, synth, gpus=args.gpus) \
        if real is not None or recorded else {}
    if real is not None and real.num_experts == model.num_experts and real.top_k == model.top_k:
        return {**compare(trace_stats(real, cache_sizes=sizes), s), **drift}
    import numpy as np

    target_overlap = (
        np.mean(prof["consecutive_overlap"])
        if prof
        else trace_stats(real, segment_lengths=())["summary"]["consecutive_overlap"]
    )
    return {
        "consecutive_overlap": {
            "real": float(target_overlap),
            "synthetic": s["summary"]["consecutive_overlap"],
        },
        **drift,
    }


def run_fit(args: argparse.Namespace) -> int:
    from moesim.io import atomic_write_text
    from moesim.traces import RoutingTrace
    from moesim.workflows.drift import synthesis_profile

    prof = synthesis_profile(RoutingTrace.load(args.trace), drift=not args.stationary)
    atomic_write_text(args.out, json.dumps(prof, indent=1) + "\n")
    if args.json:
        print_json({"path": args.out, "fitted_to": prof["fitted_to"], "num_experts": prof["num_experts"],
                    "top_k": prof["top_k"], "num_layers": prof["num_layers"]}, verb="trace-fit")
    else:
        print(f"wrote {args.out}: statistics of {prof['fitted_to']['trace']}")
    return 0
