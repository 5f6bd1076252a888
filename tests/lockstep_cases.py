"""Lockstep (non-offloaded) runs over planners, replicas, all-to-all modes, precisions, runtimes,
TP/DP, batch sizes 1..1024, EP8..EP64, overlap modes and re-placement, and a fingerprint of everything
a run outputs (summary, per-step and per-(step, layer, device) tables, timeline), to compare two
implementations of the lockstep path bit for bit.

``tests/data/lockstep_golden.json`` holds the fingerprints of these cases recorded with the engine
before the lockstep speed-up (one SimPy event per (step, layer), the timeline's link loads built at
the end of every run): commit 30bbe03, the re-placement and expert-TP cases on 22f1b3c (whose
re-placement changed and which added expert TP), and the overlap cases after the fix that prices a
micro-batch's fractional token counts exactly (they were truncated to integers when de-duplicated:
0.5 tokens became an idle expert). ``python -m tests.lockstep_cases --record``
rewrites it (only do that on purpose, with the old engine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from moesim.cost import CostModel
from moesim.errors import UserError
from moesim.planners import PLANNERS, PlanRequest
from moesim.sim import SimConfig, simulate
from moesim.specs import load_cluster, load_model, with_weight_dtype
from moesim.specs.runtime import load_runtime
from moesim.traces import RoutingTrace
from tests.offload_cases import outputs

GOLDEN = Path(__file__).parent / "data" / "lockstep_golden.json"


@dataclass(frozen=True)
class Case:
    """One lockstep run: a synthetic skewed trace of ``steps * batch`` rows (2% of ids -1)."""

    model: str
    hw: str
    nodes: int | None
    batch: int
    steps: int
    planner: str | None = None
    slots: int = 0
    """Slots per GPU for the planner (0: as many as the default layout needs)."""
    cfg: tuple[tuple[str, Any], ...] = ()
    weight_dtype: str | None = None
    runtime: str | None = None
    replan: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        kw = ",".join(f"{k}={v}" for k, v in self.cfg)
        rp = ",".join(f"{k}={v}" for k, v in sorted(self.replan.items()))
        return (f"{self.model}@{self.weight_dtype or 'default'}/{self.hw}x{self.nodes or 1}/b{self.batch}x"
                f"{self.steps}/{self.planner or 'default'}{self.slots or ''}/{kw}/{self.runtime or '-'}/{rp}")

    def __hash__(self) -> int:
        return hash(self.name)


def cases() -> Iterator[Case]:
    v2, v3 = "deepseek-v2-lite", "deepseek-v3"
    for a2a in ("flat", "hierarchical", "low-latency"):
        for batch in (1, 7, 256):
            yield Case(v2, "h100x8", None, batch, 6, cfg=(("a2a", a2a),))
        yield Case(v2, "h100x8x4", 2, 96, 5, "greedy", 10, (("a2a", a2a),))
        yield Case(v2, "h100x8x4", 2, 64, 5, "greedy", 10, (("a2a", a2a), ("dispatch", "local")))
        yield Case(v2, "h100x8x4", 2, 33, 5, "greedy", 10, (("a2a", a2a), ("replica_split", "random")))
        yield Case(v2, "h100x8x4", 2, 64, 4, "greedy", 10, (("a2a", a2a), ("overlap", "layer")))
        yield Case(v2, "h100x8x4", 2, 64, 4, None, 0, (("a2a", a2a), ("overlap", "chunked"), ("chunks", 3)))
        yield Case(v2, "h100x8x4", 2, 48, 4, None, 0, (("a2a", a2a), ("phase", "prefill")))
    for planner in ("eplb", "round-robin", "engine-default"):
        yield Case(v2, "h100x8", None, 64, 6, planner, 9)
    yield Case(v2, "h100x8", None, 64, 6, None, 0, (("tp", 2), ("dp", 4)), runtime="vllm")
    yield Case(v2, "h100x8", None, 64, 6, None, 0, (("tp", 8), ("dp", 1)))
    yield Case(v2, "h100x8", None, 1024, 3, None, 0, runtime="vllm-eager")
    yield Case(v2, "h100x8", None, 16, 5, None, 0, weight_dtype="bf16")
    for hw, nodes in (("h200x8", None), ("h100x8x4", 2), ("h100x8x4", 4), ("h100x8x4", 8)):
        # DeepSeek-V3 EP8..EP64: fp8 weights, fp8 dispatch + bf16 combine
        yield Case(v3, hw, nodes, 256, 3, cfg=(("a2a", "flat"),))
        yield Case(v3, hw, nodes, 1, 4, cfg=(("a2a", "low-latency"),))
    yield Case(v3, "h100x8x4", 8, 1024, 2, cfg=(("a2a", "hierarchical"),))
    yield Case(v3, "h100x8x4", 2, 128, 3, "eplb", 18, (("a2a", "low-latency"),))
    # tensor parallelism inside experts (EP groups of 2 or 4 GPUs)
    yield Case(v2, "h100x8", None, 64, 5, cfg=(("ep", 4),))
    yield Case(v2, "h100x8x4", 2, 48, 4, cfg=(("ep", 4), ("a2a", "low-latency")))
    yield Case(v3, "h100x8x4", 4, 128, 3, cfg=(("ep", 16), ("a2a", "flat")))
    yield Case(v3, "h100x8x4", 8, 1, 3, cfg=(("ep", 32), ("a2a", "flat")))
    yield Case(v2, "h100x8", None, 64, 40, "eplb", 9, replan={"policy": "periodic"})
    yield Case(v2, "h100x8", None, 64, 40, "eplb", 9,
               replan={"policy": "periodic", "migration": "overlapped"})
    yield Case(v2, "h100x8", None, 64, 40, "eplb", 9, (("overlap", "layer"),),
               replan={"policy": "drift", "threshold": 0.01})


@cache
def _trace(model: str, rows: int, seed: int) -> RoutingTrace:
    m = load_model(model)
    rng = np.random.default_rng(seed)
    E, L, K = m.num_experts, m.num_moe_layers, m.top_k
    hot = rng.dirichlet(np.full(E, 0.3), size=L)
    # Gumbel top-k: distinct experts per (token, layer) drawn from each layer's skewed popularity
    g = np.log(hot)[None] - np.log(-np.log(rng.random((rows, L, E))))
    ids = np.argpartition(-g, K - 1, axis=2)[:, :, :K].astype(np.int16)
    ids[rng.random(ids.shape) < 0.02] = -1
    return RoutingTrace.build(ids, num_experts=E, seq_id=np.arange(rows) // 8, layer_ids=list(m.moe_layers))


def config(case: Case) -> tuple[SimConfig, CostModel]:
    model = load_model(case.model)
    model = with_weight_dtype(model, case.weight_dtype) if case.weight_dtype else model
    cluster = load_cluster(case.hw, nodes=case.nodes)
    trace = _trace(case.model, case.batch * case.steps, case.batch + case.steps)
    runtime = load_runtime(case.runtime) if case.runtime else None
    cost = CostModel(cluster, model, runtime=runtime)
    plan = None
    if case.planner:
        gpus = tuple(d.id for d in cluster.gpus)
        load = trace.rows(0, max(1, trace.num_tokens // 4)).load_matrix(windows=1)[0]
        plan = PLANNERS[case.planner](PlanRequest(model=model, cluster=cluster, devices=gpus,
                                                  slots_per_device=case.slots, load=load[None].astype(float),
                                                  cost=cost))
    cfg = SimConfig(cluster, model, trace, plan=plan, batch_size=case.batch, runtime=runtime,
                    timeline_steps=3, check_invariants=True, **dict(case.cfg))
    if case.replan:
        from moesim.workflows.replan import ReplanOptions, replan_config

        assert plan is not None
        opts = ReplanOptions(**{"interval_steps": 10, "window_steps": 10, **case.replan})
        cfg = SimConfig(**{**cfg.__dict__, "replan": replan_config(opts, plan, model, cluster, cost)})
    return cfg, cost


def fingerprint(case: Case) -> str:
    """sha256 of the case's outputs (:func:`tests.offload_cases.outputs`) or of its one-line error."""
    try:
        cfg, cost = config(case)
        out: Any = outputs(simulate(cfg, cost))
    except UserError as e:
        out = {"error": str(e)}
    text = json.dumps(out, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--record", action="store_true", help=f"rewrite {GOLDEN}")
    args = ap.parse_args()
    prints = {}
    for c in cases():
        prints[c.name] = fingerprint(c)
        print(c.name, prints[c.name][:12], flush=True)
    if args.record:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    print(f"{len(prints)} cases")


if __name__ == "__main__":
    main()
