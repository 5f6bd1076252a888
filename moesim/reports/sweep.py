"""What a report compares: studies read from flags or a ``sweep.yaml`` file, validated.

A sweep holds *placement studies* (one hardware profile, model and trace; several placement
planners) and *offload studies* (one hardware profile, model and trace; several cache policies,
cache sizes, expert-cache budgets and miss modes). ``moesim report`` with no flags uses
:data:`DEFAULT_SWEEP`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.planners import PLANNERS
from moesim.reports.replan_study import ReplanStudy, parse_replan
from moesim.reports.serving_study import ServingStudy, parse_serving
from moesim.safe_yaml import parse_yaml
from moesim.specs.model import DTYPE_BYTES
from moesim.vocab import CachePolicy, Dispatch, MissMode, choices

PLACEMENT_PLANNERS = tuple(PLANNERS)
CACHE_POLICIES = tuple(p for p in choices(CachePolicy) if p != CachePolicy.NONE)
MISS_MODES = choices(MissMode)


@dataclass(frozen=True)
class PlacementStudy:
    """Placement planners compared on one (hardware, model, trace), as ``moesim plan`` does."""

    hw: str
    model: str
    trace: str
    planners: tuple[str, ...] = ("engine-default", "contiguous", "round-robin", "greedy", "eplb", "ilp")
    slots_per_gpu: int | None = None
    """Physical expert slots per GPU (None: the planner's default, no replicas)."""
    train_fraction: float = 0.5
    """Plan on this leading fraction of the trace's tokens, evaluate on the rest."""
    time_limit_s: float = 20.0
    """Solver time limit of the ILP planner, seconds."""
    nodes: int | None = None
    batch_tokens: int | None = None
    """Tokens per simulated step (None: ``moesim plan``'s default)."""
    steps: int | None = None
    """Simulated steps on the evaluation tokens (None: as many as they fill)."""
    dispatch: str = "even"
    """How tokens pick among an expert's replicas (``moesim plan --dispatch``): even or local."""


@dataclass(frozen=True)
class OffloadStudy:
    """Expert caching and offloading on one (hardware, model, trace), as ``moesim simulate`` does."""

    hw: str
    model: str
    trace: str
    policies: tuple[str, ...] = CACHE_POLICIES
    cache_sizes: tuple[int, ...] = ()
    """Cache sizes (experts per MoE layer) of the hit-rate curve; empty: top-k .. all experts."""
    expert_cache: tuple[str, ...] = ()
    """Expert-cache budgets per GPU (``"20 GiB"``, ``moesim simulate --expert-cache``) of the tokens/s
    curve; empty: none."""
    miss_modes: tuple[str, ...] = MISS_MODES
    memory_policy: str = "lru"
    """Cache policy used in the tokens/s vs expert-cache curve."""
    batch: int = 1
    steps: int | None = None
    """Simulated decode steps of the tokens/s curve (None: the whole trace)."""
    calibration: str | None = None
    """Calibration folder (``moesim calibrate`` tables) for the cost model (None: the roofline)."""
    weight_dtype: str | None = None
    """Serve the routed experts in this dtype (``moesim simulate --weight-dtype``; None: the spec's)."""


@dataclass(frozen=True)
class Sweep:
    """Everything one report compares."""

    title: str = "moesim comparison report"
    seed: int = 0
    placement: tuple[PlacementStudy, ...] = ()
    offload: tuple[OffloadStudy, ...] = ()
    serving: tuple[ServingStudy, ...] = ()
    replan: tuple[ReplanStudy, ...] = ()
    timeline_planner: str = "ilp"
    """Planner whose one-step timeline is drawn (first placement study; falls back to the first planner)."""
    source: str = "defaults"
    """Where the sweep came from, for captions: ``defaults``, ``flags`` or the config path."""
    base_dir: str = field(default=".", compare=False)


DEFAULT_SWEEP: dict[str, Any] = {
    "title": "moesim default comparison: shipped synthetic traces",
    "seed": 0,
    "placement": [
        {
            "hw": "h100x8",
            "model": "deepseek-v2-lite",
            "trace": "deepseek-v2-lite-synth",
            "planners": ["engine-default", "contiguous", "round-robin", "greedy", "eplb", "ilp"],
            "slots_per_gpu": 9,
            "train_fraction": 0.5,
            "time_limit_s": 20,
        }
    ],
    "offload": [
        {
            "hw": "rtx4090-workstation",
            "model": "mixtral-8x7b",
            "weight_dtype": "fp8",
            "trace": "mixtral-8x7b-synth",
            "policies": ["lru", "lfu", "belady", "static"],
            "cache_sizes": [2, 3, 4, 5, 6, 7, 8],
            "expert_cache": ["11 GiB", "16 GiB", "21.1 GiB"],
            "miss_modes": ["fetch", "cpu", "lowbit"],  # the box has no PIM
            "memory_policy": "lru",
            "batch": 1,
            "steps": 128,
        }
    ],
}


# ---- validation -------------------------------------------------------------------------------


def _fail(msg: str, file: str | None, fld: str) -> UserError:
    return UserError(msg, file=file, field=fld)


def _str(v: Any, file: str | None, fld: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _fail(f"expected a non-empty string, got {v!r}", file, fld)
    return v


def _int(v: Any, file: str | None, fld: str, *, minimum: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise _fail(f"expected an integer >= {minimum}, got {v!r}", file, fld)
    return v


def _float(v: Any, file: str | None, fld: str, *, lo: float, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= lo or (hi is not None and v >= hi):
        rng = f"in ({lo}, {hi})" if hi is not None else f"> {lo}"
        raise _fail(f"expected a number {rng}, got {v!r}", file, fld)
    return float(v)


def _choices(v: Any, allowed: Sequence[str], file: str | None, fld: str, *,
             allow_empty: bool = False) -> tuple[str, ...]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or (not items and not allow_empty):
        raise _fail(f"expected a non-empty list of {', '.join(allowed)}, got {v!r}", file, fld)
    for i, x in enumerate(items):
        if x not in allowed:
            raise _fail(f"expected one of {', '.join(allowed)}, got {x!r}", file, f"{fld}[{i}]")
    if len(set(items)) != len(items):
        raise _fail(f"duplicate entries in {items!r}", file, fld)
    return tuple(items)


def _ints(v: Any, file: str | None, fld: str) -> tuple[int, ...]:
    if not isinstance(v, list):
        raise _fail(f"expected a list of integers, got {v!r}", file, fld)
    return tuple(_int(x, file, f"{fld}[{i}]", minimum=1) for i, x in enumerate(v))


def _quantities(v: Any, file: str | None, fld: str) -> tuple[str, ...]:
    from moesim.units import parse_quantity

    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list):
        raise _fail(f"expected a list of memory sizes such as '20 GiB', got {v!r}", file, fld)
    for i, x in enumerate(items):
        parse_quantity(x, "bytes", file=file, field=f"{fld}[{i}]")
    return tuple(str(x) for x in items)


def _known_keys(d: Any, cls: type, file: str | None, fld: str) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise _fail(f"expected a mapping, got {d!r}", file, fld)
    allowed = {f.name for f in fields(cls)}
    if "gpu_memory" in d and "expert_cache" in allowed:
        raise _fail("gpu_memory is now expert_cache (the budget for expert weights alone, as "
                    "'moesim simulate --expert-cache' takes it)", file, f"{fld}.gpu_memory")
    for key in d:
        if key not in allowed:
            raise _fail(f"unknown key {key!r}; expected some of {', '.join(sorted(allowed))}", file, fld)
    return d


def _path_or_name(v: Any, file: str | None, fld: str, base: Path) -> str:
    """Names stay names; relative paths are taken relative to the config file's folder."""
    text = _str(v, file, fld)
    if ("/" in text or text.endswith((".yaml", ".yml", ".npz"))) and not Path(text).is_absolute():
        # Shown relative to the working directory, so commands in captions stay short and portable.
        return os.path.relpath(os.path.normpath(base.resolve() / text))
    return text


def _workload(d: Mapping[str, Any], file: str | None, fld: str, base: Path) -> dict[str, str]:
    out = {}
    for key in ("hw", "model", "trace"):
        if key not in d:
            raise _fail("missing field", file, f"{fld}.{key}")
        out[key] = _path_or_name(d[key], file, f"{fld}.{key}", base)
    return out


def _placement(d: Any, file: str | None, fld: str, base: Path) -> PlacementStudy:
    d = _known_keys(d, PlacementStudy, file, fld)
    kw: dict[str, Any] = _workload(d, file, fld, base)
    if "planners" in d:
        kw["planners"] = _choices(d["planners"], PLACEMENT_PLANNERS, file, f"{fld}.planners")
    if d.get("slots_per_gpu") is not None:
        kw["slots_per_gpu"] = _int(d["slots_per_gpu"], file, f"{fld}.slots_per_gpu", minimum=1)
    if "train_fraction" in d:
        kw["train_fraction"] = _float(d["train_fraction"], file, f"{fld}.train_fraction", lo=0.0, hi=1.0)
    if "time_limit_s" in d:
        kw["time_limit_s"] = _float(d["time_limit_s"], file, f"{fld}.time_limit_s", lo=0.0)
    if d.get("dispatch") is not None:
        kw["dispatch"] = _choices([d["dispatch"]], choices(Dispatch), file, f"{fld}.dispatch")[0]
    for key in ("nodes", "batch_tokens", "steps"):
        if d.get(key) is not None:
            kw[key] = _int(d[key], file, f"{fld}.{key}", minimum=1)
    return PlacementStudy(**kw)


def _offload(d: Any, file: str | None, fld: str, base: Path) -> OffloadStudy:
    d = _known_keys(d, OffloadStudy, file, fld)
    kw: dict[str, Any] = _workload(d, file, fld, base)
    if "policies" in d:
        kw["policies"] = _choices(d["policies"], CACHE_POLICIES, file, f"{fld}.policies", allow_empty=True)
    if "cache_sizes" in d:
        kw["cache_sizes"] = _ints(d["cache_sizes"], file, f"{fld}.cache_sizes")
    if "expert_cache" in d:
        kw["expert_cache"] = _quantities(d["expert_cache"], file, f"{fld}.expert_cache")
    if "miss_modes" in d:
        kw["miss_modes"] = _choices(d["miss_modes"], MISS_MODES, file, f"{fld}.miss_modes")
    if "memory_policy" in d:
        kw["memory_policy"] = _choices(d["memory_policy"], CACHE_POLICIES, file, f"{fld}.memory_policy")[0]
    if "batch" in d:
        kw["batch"] = _int(d["batch"], file, f"{fld}.batch", minimum=1)
    if d.get("steps") is not None:
        kw["steps"] = _int(d["steps"], file, f"{fld}.steps", minimum=1)
    if d.get("weight_dtype") is not None:
        dtypes = tuple(DTYPE_BYTES)
        kw["weight_dtype"] = _choices([d["weight_dtype"]], dtypes, file, f"{fld}.weight_dtype")[0]
    if d.get("calibration") is not None:
        text = _str(d["calibration"], file, f"{fld}.calibration")
        here = base.resolve() / text
        # A folder beside the config file (or any path) is a path; a bare name may be a built-in table.
        is_path = here.exists() or "/" in text
        kw["calibration"] = os.path.relpath(os.path.normpath(here)) if is_path else text
    return OffloadStudy(**kw)


def sweep_from_dict(
    d: Any, *, file: str | None = None, base_dir: str | Path = ".", source: str | None = None
) -> Sweep:
    """Validate a parsed sweep mapping; every mistake is one :class:`UserError` naming the field."""
    base = Path(base_dir)
    if not isinstance(d, Mapping):
        raise _fail(f"expected a mapping with placement: and/or offload:, got {type(d).__name__}", file, "")
    allowed = {"title", "seed", "placement", "offload", "serving", "replan", "timeline_planner"}
    for key in d:
        if key not in allowed:
            raise _fail(f"unknown key {key!r}; expected some of {', '.join(sorted(allowed))}", file, str(key))
    kw: dict[str, Any] = {"source": source or (file or "defaults"), "base_dir": str(base)}
    if "title" in d:
        kw["title"] = _str(d["title"], file, "title")
    if "seed" in d:
        kw["seed"] = _int(d["seed"], file, "seed")
    if "timeline_planner" in d:
        kw["timeline_planner"] = _choices(
            d["timeline_planner"], PLACEMENT_PLANNERS, file, "timeline_planner"
        )[0]
    for key, parse in (("placement", _placement), ("offload", _offload),
                       ("serving", lambda x, f, k, b: parse_serving(x, f, k, b, _workload, _path_or_name)),
                       ("replan", lambda x, f, k, b: parse_replan(x, f, k, b, _path_or_name))):
        items = d.get(key) or []
        if not isinstance(items, list):
            raise _fail(f"expected a list of studies, got {items!r}", file, key)
        kw[key] = tuple(parse(x, file, f"{key}[{i}]", base) for i, x in enumerate(items))
    if not any(kw.get(k) for k in ("placement", "offload", "serving", "replan")):
        raise _fail("nothing to compare: give at least one placement or offload study", file, "placement")
    return Sweep(**kw)


def load_sweep(path: str | Path) -> Sweep:
    """Read a ``sweep.yaml`` (moesim.safe_yaml); relative paths inside are relative to its folder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError("no such sweep config file", file=path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the sweep config: {e}", file=path) from None
    data = parse_yaml(text, file=path)
    return sweep_from_dict(data, file=str(path), base_dir=path.resolve().parent, source=str(path))


def default_sweep() -> Sweep:
    return sweep_from_dict(DEFAULT_SWEEP, source="defaults")


def _pairs(models: Sequence[str], traces: Sequence[str]) -> list[tuple[str, str]]:
    """(model, trace) workloads: zipped when the lists have one length, broadcast when one has one item."""
    if len(models) == len(traces):
        return list(zip(models, traces, strict=True))
    if len(models) == 1:
        return [(models[0], t) for t in traces]
    if len(traces) == 1:
        return [(m, traces[0]) for m in models]
    raise UserError(
        f"expected as many --trace as --model (or one of either), got {len(models)} models "
        f"and {len(traces)} traces",
        field="--trace",
    )


def sweep_from_flags(
    *,
    hw: Sequence[str] | None,
    model: Sequence[str] | None,
    trace: Sequence[str] | None,
    planners: Sequence[str] | None,
    cache_policies: Sequence[str] | None,
    expert_cache: Sequence[str] | None,
    cache_sizes: Sequence[int] | None = None,
    miss_modes: Sequence[str] | None = None,
    slots_per_gpu: int | None = None,
    time_limit_s: float | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> Sweep:
    """The grid hardware x (model, trace) x planners / policies x expert cache from command-line flags.

    Flags left out take the defaults' values. A hardware profile with one GPU gets only the
    offloading study (placement needs at least two GPUs to differ).
    """
    base = default_sweep()
    p0, o0 = base.placement[0], base.offload[0]
    if not (hw or model or trace):
        placements = [(p0.hw, p0.model, p0.trace)]
        offloads = [(o0.hw, o0.model, o0.trace)]
    else:
        if trace and not model:
            raise UserError("give --model with --trace (the model the trace was recorded from)",
                            field="--model")
        hws = list(hw or [p0.hw, o0.hw])
        work = _pairs(list(model), list(trace)) if model and trace else None
        if work is None:
            work = [(m, f"{m}-synth") for m in (model or [])] or None
        placements, offloads = [], []
        for h in hws:
            pairs = work or ([(p0.model, p0.trace)] if _gpu_count(h) > 1 else [(o0.model, o0.trace)])
            for m, t in pairs:
                if _gpu_count(h) > 1:
                    placements.append((h, m, t))
                offloads.append((h, m, t))
    d: dict[str, Any] = {"title": "moesim comparison report", "seed": seed, "placement": [], "offload": []}
    for h, m, t in placements if planners != [] else []:
        entry: dict[str, Any] = {
            "hw": h, "model": m, "trace": t, "planners": list(planners or p0.planners),
            "train_fraction": p0.train_fraction,
            "time_limit_s": time_limit_s if time_limit_s is not None else p0.time_limit_s,
        }
        sp = slots_per_gpu if slots_per_gpu is not None else (
            p0.slots_per_gpu if (m, t) == (p0.model, p0.trace) else None)
        if sp is not None:
            entry["slots_per_gpu"] = sp
        d["placement"].append(entry)
    for h, m, t in offloads if cache_policies != [] else []:
        same = (m, t) == (o0.model, o0.trace)
        entry = {
            "hw": h, "model": m, "trace": t, "policies": list(cache_policies or o0.policies),
            "miss_modes": list(miss_modes or o0.miss_modes), "batch": o0.batch,
            "steps": steps if steps is not None else o0.steps,
        }
        sizes = cache_sizes or (o0.cache_sizes if same else ())
        if sizes:
            entry["cache_sizes"] = list(sizes)
        mem = expert_cache or (o0.expert_cache if same and h == o0.hw else ())
        if mem:
            entry["expert_cache"] = list(mem)
        if same and o0.weight_dtype:  # the default budgets are sized for the default study's dtype
            entry["weight_dtype"] = o0.weight_dtype
        d["offload"].append(entry)
    return sweep_from_dict(d, file=None, source="flags")


def _gpu_count(hw: str) -> int:
    from moesim.specs import load_cluster

    return len(load_cluster(hw).gpus)
