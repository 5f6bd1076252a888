"""``moesim calibrate``: measure kernel and copy times on a GPU (or CPU experts and host copies on the
CPU, ``--device cpu``) into calibration tables, or validate them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from moesim.cli.common import add_json_flag, add_verb, positive_int, print_json
from moesim.errors import UserError
from moesim.progress import progress

EXAMPLES = """\
  moesim calibrate --out hardware/calibration/h100-sxm --quick
      needs a CUDA GPU
  moesim calibrate --out /tmp/calib --device cuda:1 --models mixtral-8x7b,qwen3-30b-a3b
      needs a CUDA GPU
  moesim calibrate --validate hardware/calibration/h100-sxm --batches 1,32,512
      needs a CUDA GPU, hardware/calibration/h100-sxm: moesim calibrate --out hardware/calibration/h100-sxm
  moesim calibrate --device cpu --out hardware/calibration/cpu-my-xeon --quick
"""
CPU_DEFAULT_MODEL = "deepseek-v2-lite"


def register(sub: argparse._SubParsersAction) -> None:
    p = add_verb(
        sub, "calibrate", help="measure MoE kernels and copies on a GPU into calibration tables",
        description=(
            "Time the Triton MoE kernels (fused_moe, grouped GEMM, align, combine), plain GEMMs, HBM\n"
            "copies, host<->device copies (pinned and pageable) and peer copies on a CUDA GPU, over the\n"
            "shapes of the built-in models, and write CSV tables that 'moesim simulate --calibration DIR'\n"
            "interpolates (format: docs/calibration.md). With --validate, time whole MoE layers and print\n"
            "predicted vs measured. Needs a CUDA GPU: exits 2 without one.\n"
            "With --device cpu (no GPU, no Triton): time one model's expert (gate/up GEMM, SiLU, down\n"
            "GEMM) with torch in fp32, bf16 and int8 over 1..2048 rows (--quick, under 2 minutes) or\n"
            "1..8192 rows, plus host memcpy bandwidth, into cpu_expert.csv and host_copy.csv; simulate\n"
            "--calibration DIR then prices CPU experts from them."),
        examples=EXAMPLES)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--out", metavar="DIR",
                      help="folder to write the tables (<op>.csv), figures.json and skipped.json into")
    mode.add_argument("--validate", metavar="DIR",
                      help="calibration folder to check against whole-layer timings")
    p.add_argument("--device", default="cuda:0",
                   help="CUDA device to measure on, or 'cpu' for this machine's CPU experts and host copies")
    p.add_argument("--quick", action="store_true",
                   help="a small sweep (3 models, 5 token counts, bf16) that takes minutes; with --device "
                        "cpu: 12 row counts and 3 copy sizes, under 2 minutes on 2 cores")
    p.add_argument("--models", default=None,
                   help="comma-separated built-in model names (None: all gated MoE models; 3 with --quick); "
                        f"with --device cpu one model (None: {CPU_DEFAULT_MODEL})")
    p.add_argument("--repeats", type=positive_int, default=None,
                   help="timed repetitions per shape, median reported (None: 30 on a GPU, 5 on the CPU)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="with --device cpu: torch threads (None: torch's default, one per core); on a "
                        "machine shared with other jobs 1 thread times stably")
    p.add_argument("--tune", action="store_true",
                   help="first search kernel block sizes per model shape (slow: ~35 configs per token "
                        "bucket), save them as kernel_configs.json in --out and use them for the sweep")
    p.add_argument("--configs", default=None, metavar="FILE",
                   help="tuned kernel block-config table (JSON written by moesim.kernels.bench.tune_configs)")
    p.add_argument("--batches", default=None,
                   help="with --validate: comma-separated token counts per layer (None: 1,8,32,128,512,2048)")
    p.add_argument("--hw", default=None,
                   help="with --validate: cluster profile the cost model prices (None: chosen by GPU name)")
    add_json_flag(p)
    p.set_defaults(func=run)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"expected comma-separated integers, found {text!r}", field=flag) from None
    if not values or min(values) < 1:
        raise UserError(f"expected positive integers, found {text!r}", field=flag)
    return values


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def _require_gpu(device: str) -> None:
    try:
        import torch
    except ImportError:
        raise UserError("no CUDA GPU available: torch is not installed "
                        "(pip install 'moesim[kernels]')") from None
    if not torch.cuda.is_available():
        raise UserError("no CUDA GPU available (torch.cuda.is_available() is False); calibration needs one")
    if not device.startswith("cuda"):
        raise UserError(f"expected a CUDA device such as cuda:0, found {device!r}", field="--device")


def run(args: argparse.Namespace) -> int:
    if not args.out and not args.validate:
        raise UserError("expected --out DIR (measure) or --validate DIR (check a calibration)")
    if args.repeats is not None and args.repeats < 3:
        raise UserError(f"expected at least 3 repeats, found {args.repeats}", field="--repeats")
    models = _names(args.models)
    if args.device == "cpu":
        return _run_cpu(args, models)
    args.repeats = args.repeats or 30
    if args.validate:
        from moesim.calibration.tables import load_calibration

        calibration = load_calibration(args.validate)
        batches = _int_list(args.batches, "--batches") if args.batches else None
        _require_gpu(args.device)
        return _run_validate(args, calibration, models, batches)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError("expected a folder for the tables, found a file", file=str(out), field="--out")
    configs = None
    if args.configs:
        from moesim.kernels.configs import ConfigTable

        configs = ConfigTable.load(args.configs)
    _require_gpu(args.device)
    return _run_measure(args, out, models, configs)


def _run_measure(args: argparse.Namespace, out: Path, models: list[str] | None, configs: Any) -> int:
    import torch

    from moesim.calibration.device_info import collect_header
    from moesim.calibration.gpu_runner import GpuRunner
    from moesim.calibration.sweep import (
        FULL,
        QUICK,
        QUICK_MODELS,
        compare_impls,
        model_shapes,
        plan_cases,
        run_sweep,
    )

    shapes = model_shapes(models or (QUICK_MODELS if args.quick else None))
    if models and not shapes:
        raise UserError(f"none of {models} is a built-in gated MoE model", field="--models")
    plan = QUICK if args.quick else FULL
    if args.tune:
        configs = _tune(args, out, shapes, plan, configs)
    runner = GpuRunner(args.device, repeats=args.repeats, configs=configs)
    header = collect_header(runner.device)
    header["method"] = ("median of repeats; CUDA events with a >=2x L2 flush before each; Triton kernels "
                        "replayed from a CUDA graph; routing redrawn per repetition; pageable and peer "
                        "copies by host clock around a synchronised copy")
    header["sweep"] = "quick" if args.quick else "full"
    cc = torch.cuda.get_device_capability(runner.device)
    cases = plan_cases(shapes, plan, gpu_count=torch.cuda.device_count(),
                       memory_bytes=float(header["memory_bytes"]),
                       grouped_mm=hasattr(torch, "_grouped_mm") and cc >= (9, 0))
    rows = run_sweep(cases, runner, out, header, device=str(runner.device),
                     progress=lambda c: progress(c, desc="calibrate", total=len(cases)))
    import json

    figures = json.loads((out / "figures.json").read_text())
    skipped = json.loads((out / "skipped.json").read_text())
    comparison = compare_impls(rows.get("fused_moe", []))
    result = {"out": str(out), "gpu": header["gpu"], "rows": {op: len(r) for op, r in rows.items()},
              "skipped": len(skipped), "summary": figures["summary"],
              "measured_ceilings": figures["measured_ceilings"], "comparison": comparison}
    if args.json:
        print_json(result, verb="calibrate")
        return 0
    print(f"{header['gpu']}: wrote {sum(result['rows'].values())} rows in {len(rows)} tables to {out} "
          f"({len(skipped)} cases skipped, see skipped.json)")
    s = figures["summary"]
    lines = (("memory-bound (decode) shapes: median fraction of HBM peak", "median_fraction_of_hbm_peak",
              "memory_bound_cases"),
             ("compute-bound (prefill) shapes: median fraction of BF16 peak", "median_fraction_of_bf16_peak",
              "compute_bound_cases"))
    for label, key, n in lines:
        value = s.get(key)
        print(f"  {label}: {'-' if value is None else f'{value:.1%}'} over {s.get(n, 0)} cases")
    for rec in comparison:
        ratios = ", ".join(f"{k[len('speedup_vs_'):]} x{v:.2f}" for k, v in rec.items()
                           if k.startswith("speedup_vs_") and v)
        suffix = f" ({ratios})" if ratios else ""
        print(f"  fused_moe E={rec['num_experts']} K={rec['top_k']} H={rec['hidden']} F={rec['ffn']} "
              f"{rec['dtype']} T={rec['tokens']}: {rec['triton_s'] * 1e6:.1f} us{suffix}")
    return 0


def _run_cpu(args: argparse.Namespace, models: list[str] | None) -> int:
    """``--device cpu``: the CPU expert and host copy tables (moesim.calibration.cpu_runner)."""
    if args.validate or args.tune or args.configs:
        flag = "--validate" if args.validate else "--tune" if args.tune else "--configs"
        raise UserError(f"{flag} needs a GPU; with --device cpu only --out is measured", field=flag)
    if not args.out:
        raise UserError("expected --out DIR for the CPU tables", field="--out")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UserError("expected a folder for the tables, found a file", file=str(out), field="--out")
    if models and len(models) > 1:
        raise UserError(f"expected one model with --device cpu, found {len(models)}", field="--models")
    from moesim.specs import load_model

    model = load_model((models or [CPU_DEFAULT_MODEL])[0])
    try:
        import torch
    except ImportError:
        raise UserError("torch is not installed (pip install 'moesim[kernels]')") from None
    if args.threads is not None:
        import os

        if not 1 <= args.threads <= (os.cpu_count() or 1):
            raise UserError(f"expected 1 to {os.cpu_count()} threads, found {args.threads}",
                            field="--threads")
        torch.set_num_threads(args.threads)
    from moesim.calibration.cpu_runner import run_cpu_calibration

    result = run_cpu_calibration(
        out, hidden=model.hidden_size, ffn=model.expert_intermediate_size, model=model.name,
        quick=args.quick, repeats=args.repeats or 5,
        progress=lambda jobs: progress(jobs, desc="calibrate cpu", total=len(jobs)))
    head = result["header"]
    if args.json:
        print_json({"out": str(out), "cpu": head["cpu"], "threads": head["threads"],
                    "duration_s": head["duration_s"], "cpu_expert": result["cpu_expert"],
                    "host_copy": result["host_copy"]}, verb="calibrate")
        return 0
    experts, copies = result["cpu_expert"], result["host_copy"]
    print(f"{head['cpu']} ({head['threads']} threads): wrote cpu_expert.csv ({len(experts)} rows) and "
          f"host_copy.csv ({len(copies)} rows) to {out} in {head['duration_s']} s")
    largest = max(r["rows"] for r in experts)
    for r in experts:
        if r["rows"] in (1, 16, 256, largest):
            print(f"  expert {model.name} {r['dtype']:>4} {r['rows']:>5} rows: "
                  f"{r['seconds_median'] * 1e3:9.3f} ms {r['tflops_per_s'] * 1e3:8.1f} GFLOP/s")
    for r in copies:
        mib = int(r["bytes"]) >> 20
        print(f"  copy {mib:>5} MiB, {r['threads']} thread(s): {r['gbytes_per_s']:.2f} GB/s")
    return 0


def _tune(args: argparse.Namespace, out: Path, shapes: list[Any], plan: Any, configs: Any) -> Any:
    """Search block sizes for every (shape, dtype) at a few token buckets; save and return the table."""
    from moesim.kernels.bench import require_cuda, tune_configs
    from moesim.kernels.configs import candidate_configs

    device = require_cuda(args.device)
    buckets = [t for t in (1, 16, 128, 1024, 8192) if t <= max(plan.tokens)]
    todo = [(s, dtype) for s in shapes for dtype in plan.dtypes]
    for s, dtype in progress(todo, desc="tune", total=len(todo)):
        configs = tune_configs(buckets, s.num_experts, s.top_k, s.hidden, s.ffn, dtype, device,
                               candidate_configs(dtype), table=configs)
    if configs is not None:
        configs.save(out / "kernel_configs.json")
    return configs


def _run_validate(args: argparse.Namespace, calibration: Any, models: list[str] | None,
                  batches: tuple[int, ...] | None) -> int:
    from moesim.calibration.validate import DEFAULT_BATCHES, DEFAULT_MODELS, error_summary, validate

    todo_models = tuple(models or DEFAULT_MODELS)
    todo_batches = batches or DEFAULT_BATCHES
    total = len(todo_models) * len(todo_batches)
    cases = validate(calibration, args.device, models=todo_models, batches=todo_batches, cluster=args.hw,
                     repeats=args.repeats, progress=lambda c: progress(c, desc="validate", total=total))
    summary = error_summary(cases)
    if args.json:
        print_json({"calibration": str(args.validate), "device": calibration.device, "summary": summary,
                    "cases": [{"model": c.model, "tokens": c.tokens, "measured_s": c.measured_s,
                               "predicted_s": c.predicted_s, "error": c.error, "source": c.source}
                              for c in cases]}, verb="calibrate-validate")
        return 0
    print(f"{'model':<22} {'tokens':>6} {'measured us':>12} {'predicted us':>13} {'error':>8}  source")
    for c in cases:
        pred = "-" if c.predicted_s is None else f"{c.predicted_s * 1e6:.1f}"
        err = "-" if c.error is None else f"{c.error:+.1%}"
        print(f"{c.model:<22} {c.tokens:>6} {c.measured_s * 1e6:>12.1f} {pred:>13} {err:>8}  {c.source}")
    med, p90 = summary["median_abs_error"], summary["p90_abs_error"]
    med_text = "-" if med is None else f"{med:.1%}"
    p90_text = "-" if p90 is None else f"{p90:.1%}"
    print(f"median |error| {med_text}, p90 |error| {p90_text} "
          f"over {summary['predicted']} of {summary['cases']} cases")
    return 0
