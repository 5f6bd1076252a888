"""A stream that switches its hot experts half-way, and the pieces the re-placement tests share."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from moesim.planners import PLANNERS, PlanRequest
from moesim.plans.plan import Plan
from moesim.sim.config import SimConfig
from moesim.traces import RoutingTrace
from moesim.workflows.inputs import cluster_of, cost_model, model_of

MODEL, HW = "deepseek-v2-lite", "h100x8"


def switching_ids(tokens: int, layers: int, experts: int, k: int, hot: tuple[range, range], *,
                  share: float = 0.6, seed: int = 0) -> np.ndarray:
    """int16 ``[tokens, layers, k]``: distinct top-k draws where the experts of ``hot[0]`` (first half
    of the rows) then ``hot[1]`` (second half) carry ``share`` of the popularity (Gumbel top-k)."""
    rng = np.random.default_rng(seed)
    out = np.empty((tokens, layers, k), dtype=np.int16)
    half = tokens // 2
    for part, (a, b) in enumerate(((0, half), (half, tokens))):
        p = np.full(experts, (1.0 - share) / (experts - len(hot[part])))
        p[list(hot[part])] = share / len(hot[part])
        for c in range(a, b, 4096):  # blocks bound the [rows, layers, experts] temporary
            n = min(b, c + 4096) - c
            g = np.log(p)[None, None, :] - np.log(-np.log(rng.random((n, layers, experts))))
            out[c:c + n] = np.argpartition(-g, k - 1, axis=2)[:, :, :k]
    return out


def switching_trace(tokens: int = 64 * 60, seed: int = 0) -> RoutingTrace:
    """Decode tokens of DeepSeek-V2-Lite whose hot experts move from GPU 0's block to GPU 5's."""
    m = model_of(MODEL)
    ids = switching_ids(tokens, m.num_moe_layers, m.num_experts, m.top_k, (range(0, 8), range(40, 48)),
                        seed=seed)
    return RoutingTrace.build(ids, num_experts=m.num_experts, seq_id=np.arange(tokens) // 64, phase=1,
                             layer_ids=np.asarray(m.moe_layers))


def setting(trace: RoutingTrace, **kw) -> tuple[SimConfig, object, Plan]:
    """(config without re-placement, cost model, EPLB plan on the trace's first tenth) for ``trace``."""
    cluster, model = cluster_of(HW), model_of(MODEL)
    cost = cost_model(cluster, model)
    warm = trace.rows(0, trace.num_tokens // 10).load_matrix(windows=1)[0]
    devices = tuple(d.id for d in cluster.gpus)
    plan = PLANNERS["eplb"](PlanRequest(model=model, cluster=cluster, devices=devices, slots_per_device=9,
                                        load=warm[None].astype(np.float64), cost=cost))
    cfg = SimConfig(cluster=cluster, model=model, trace=trace, plan=plan, batch_size=64, phase="decode",
                    seed=0, **kw)
    return cfg, cost, plan


def with_replan(cfg: SimConfig, rc) -> SimConfig:
    return replace(cfg, replan=rc)
