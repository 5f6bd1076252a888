"""OffloadedExperts: one GPU's experts of one (step, MoE layer) when not every expert is resident.

Hits run on the GPU once their weights have arrived; misses are fetched over PCIe first (``fetch``,
``lowbit``) or run on the host CPU / a PIM device while the GPU runs the hits (``cpu``, ``pim``),
their weights then copied in the background so the cache holds them as its policy says.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import numpy as np
import simpy


def _wait_ready(ctx: Any, layer: int, g: int, experts: np.ndarray) -> list[simpy.Event]:
    pending = []
    for e in experts.tolist():
        ev = ctx.ready.get((layer, g, e))
        if ev is not None and not ev.triggered:
            pending.append(ev)
    return pending


def _side_executor(env: simpy.Environment, ctx: Any, step: int, col: int, g: int, tokens: np.ndarray,
                   experts: np.ndarray) -> Generator[Any, Any, None]:
    """Misses on the host CPU (activations over PCIe both ways) or on a PIM device (in place)."""
    gpu = ctx.devices[g]
    side = ctx.side_device(gpu)
    nbytes = float(tokens.sum()) * ctx.act_bytes
    with ctx.executor(side).request() as req:
        yield req
        start = env.now
        key = tuple(tokens.tolist())
        if ctx.miss == "cpu":
            t_in, t_out = ctx.transfer_s(gpu, side, nbytes), ctx.transfer_s(side, gpu, nbytes)
            run_s = ctx.memo(("cpu", side, key), lambda: float(ctx.cost.cpu_expert_s(side, tokens)))
            ctx.rec.add_link_bytes(ctx.path(gpu, side), nbytes)
            ctx.rec.add_link_bytes(ctx.path(side, gpu), nbytes)
        else:
            t_in = t_out = 0.0
            run_s = ctx.memo(("pim", side, key), lambda: float(ctx.cost.pim_expert_s(side, tokens)))
        yield env.timeout(t_in + run_s + t_out)
    i = ctx.rec.device_index(side)
    ctx.rec.busy_s[step, col, i] += run_s
    ctx.rec.tokens[step, col, i] += int(tokens.sum())
    ctx.rec.span(step, side, f"experts L{ctx.layer_ids[col]}", start, env.now - start,
                 experts=experts.tolist(), gpu=gpu)


def offloaded_experts(env: simpy.Environment, ctx: Any, step: int, m: int, g: int, experts: np.ndarray,
                      tokens: np.ndarray) -> Generator[Any, Any, None]:
    """Run ``experts`` (unique ids) with ``tokens`` pairs each on GPU ``g`` at MoE layer row ``m``."""
    col = int(ctx.moe_cols[m])
    hit = ctx.store.access(m, g, experts)
    gpu = ctx.devices[g]
    keep = ctx.store.policy != "static"
    on_gpu = np.ones(len(experts), dtype=bool)
    waits: list[simpy.Event] = []
    side = None
    if ctx.miss in ("fetch", "lowbit"):
        for e in experts[~hit].tolist():
            waits.append(ctx.fetch(step, m, g, e, keep=keep))
        waits += _wait_ready(ctx, m, g, experts[hit])
    else:
        # a hit still on the wire also runs beside the GPU rather than waiting for its weights
        late = {e for e in experts[hit].tolist() if (ev := ctx.ready.get((m, g, e))) is not None
                and not ev.triggered}
        on_gpu = hit & np.array([e not in late for e in experts.tolist()], dtype=bool)
        for e in experts[~hit].tolist():
            if keep:
                ctx.fetch(step, m, g, e, keep=True)  # background copy; nobody waits for it now
        if (~on_gpu).any():
            side = env.process(_side_executor(env, ctx, step, col, g, tokens[~on_gpu], experts[~on_gpu]))
    if waits:
        yield env.all_of(waits)
    start = env.now
    # causality record: when did the weights of each expert run here arrive (0: resident from the start)
    arrived = [ev.value if ev.triggered else float("inf") for e in experts[on_gpu].tolist()
               if (ev := ctx.ready.get((m, g, e), ctx.scratch.get((m, g, e)))) is not None]
    ctx.causality.append((start, max(arrived, default=0.0)))
    run = tokens[on_gpu]
    gpu_s = ctx.memo(("gpu", gpu, tuple(run.tolist())), lambda: float(ctx.cost.expert_compute_s(gpu, run))) \
        if run.size else 0.0
    if gpu_s > 0:
        yield env.timeout(gpu_s)
        ctx.rec.span(step, gpu, f"experts L{ctx.layer_ids[col]}", start, gpu_s,
                     experts=experts[on_gpu].tolist(), waited_s=start - ctx.phase_start)
    ctx.rec.busy_s[step, col, g] += gpu_s
    ctx.rec.tokens[step, col, g] += int(tokens[on_gpu].sum())
    if side is not None:
        yield side
