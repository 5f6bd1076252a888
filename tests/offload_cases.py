"""Offloaded runs over the combinations of cache policy, miss mode, prefetch and cache scope, and
a fingerprint of everything a run outputs (summary, per-step and per-(step, layer, device) tables,
timeline), to compare two implementations of the offloaded path bit for bit.

``tests/data/offload_golden.json`` holds the fingerprints of these cases recorded with the SimPy
implementation (one process per fetch and per executor call) before the resource clocks replaced it:
``python -m tests.offload_cases --record`` rewrites it (only do that on purpose).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from moesim.errors import UserError
from moesim.sim import SimConfig, simulate
from moesim.sim.results import SimResult
from moesim.sim.timeline import trace_events
from moesim.specs import load_cluster, load_model, with_weight_dtype
from moesim.traces import RoutingTrace

GOLDEN = Path(__file__).parent / "data" / "offload_golden.json"


@dataclass(frozen=True)
class Case:
    """One offloaded run (a SimConfig's offloading fields on a small slice of a shipped trace)."""

    hw: str
    model: str
    weight_dtype: str | None
    trace: str
    rows: int
    batch: int
    policy: str
    miss: str
    prefetch: str
    cache_size: int
    scope: str = "layer"
    reset: str = "none"

    @property
    def name(self) -> str:
        return (f"{self.hw}/{self.model}@{self.weight_dtype or 'default'}/b{self.batch}x{self.rows}/"
                f"{self.policy}{self.cache_size}/{self.miss}/{self.prefetch}/{self.scope}/{self.reset}")


def cases() -> Iterator[Case]:
    """Every (policy, miss, prefetch, scope) on one GPU at batch 1 and 4; the same on eight GPUs
    behind two PCIe switches (L4 server); PIM and auto on the Duplex cluster; sequence resets."""
    one = ("rtx4090-workstation", "mixtral-8x7b", "fp8", "mixtral-8x7b-synth")
    grid = itertools.product(("lru", "lfu", "belady", "static"), ("fetch", "cpu", "lowbit", "auto"),
                             ("none", "oracle", "predictor"), ("layer", "global"))
    for policy, miss, prefetch, scope in grid:
        yield Case(*one, 24, 1, policy, miss, prefetch, 3, scope)
        yield Case(*one, 48, 4, policy, miss, prefetch, 3, scope)
    l4 = ("l4-server", "deepseek-v2-lite", None, "deepseek-v2-lite-synth")
    for policy, miss, prefetch in itertools.product(("lru", "belady", "static"), ("fetch", "cpu", "auto"),
                                                    ("none", "predictor")):
        yield Case(*l4, 64, 8, policy, miss, prefetch, 6)
    duplex = ("h100-duplex", "mixtral-8x7b", "fp8", "mixtral-8x7b-synth")  # fp8: every GPU holds 2 per layer
    for policy, miss in itertools.product(("lru", "lfu"), ("pim", "auto")):
        yield Case(*duplex, 64, 8, policy, miss, "oracle", 2)
    for policy, miss in itertools.product(("lru", "belady"), ("fetch", "cpu")):
        yield Case(*one, 400, 16, policy, miss, "predictor", 3, "layer", "sequence")


@cache
def _inputs(hw: str, model: str, weight_dtype: str | None, trace: str, rows: int):
    spec = load_model(model)
    spec = with_weight_dtype(spec, weight_dtype) if weight_dtype else spec
    return load_cluster(hw), spec, RoutingTrace.load(trace, model=spec).rows(0, rows)


def config(case: Case) -> SimConfig:
    cluster, model, trace = _inputs(case.hw, case.model, case.weight_dtype, case.trace, case.rows)
    return SimConfig(cluster, model, trace, batch_size=case.batch, cache_policy=case.policy,
                     cache_size=case.cache_size, miss=case.miss, prefetch=case.prefetch,
                     cache_scope=case.scope, cache_reset=case.reset, timeline_steps=1 << 20,
                     check_invariants=True)


def outputs(result: SimResult) -> dict[str, Any]:
    """Everything a run writes, as JSON-ready data (floats kept exact by ``repr``)."""
    summary = result.summary()
    summary.pop("timing")
    frame, steps = io.StringIO(), io.StringIO()
    result.frame.to_csv(frame, index=False, float_format=repr)
    result.step_frame.to_csv(steps, index=False, float_format=repr)
    return {"summary": summary, "frame": frame.getvalue(), "steps": steps.getvalue(),
            "timeline": trace_events(result.spans(), result.rec.devices),
            "causality": sorted(result.causality)}


def fingerprint(case: Case) -> str:
    """sha256 of the case's :func:`outputs` (or of its one-line error)."""
    try:
        out: Any = outputs(simulate(config(case)))
    except UserError as e:
        out = {"error": str(e)}
    text = json.dumps(out, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--record", action="store_true", help=f"rewrite {GOLDEN}")
    args = ap.parse_args()
    prints = {c.name: fingerprint(c) for c in cases()}
    if args.record:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    print(f"{len(prints)} cases")


if __name__ == "__main__":
    main()
