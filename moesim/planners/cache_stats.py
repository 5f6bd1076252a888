"""What the cache planners measure before they optimise: per-step expert requests, next-layer
predictability, and the window a prefetch can hide behind (memory: :mod:`moesim.memory`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.specs.model import MoEModel
from moesim.traces.transitions import Transitions

# ---- routing statistics ----------------------------------------------------------------------------


def request_stats(
    trace_or_load: Any, model: MoEModel, batch_size: int = 1
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(q, n, info)``: per ``[moe layer, expert]`` the probability a decode step of ``batch_size``
    tokens requests the expert and its mean tokens when requested. A RoutingTrace is counted per
    batch of consecutive rows; a plain load ``[L, E]`` / ``[W, L, E]`` assumes independent tokens."""
    L, E, K = model.num_moe_layers, model.num_experts, model.top_k
    info: dict[str, Any] = {}
    ids = getattr(trace_or_load, "expert_ids", None)
    if ids is None:
        load = np.asarray(trace_or_load, dtype=np.float64)
        if load.ndim == 3:
            load = load.sum(axis=0)
        if load.shape != (L, E) or (load < 0).any():
            raise UserError(f"expected a non-negative load [{L}, {E}] or [W, {L}, {E}] for {model.name}, "
                            f"got shape {np.shape(trace_or_load)}", field="load")
        tokens = load.sum(axis=1, keepdims=True) / K
        p = np.divide(load, tokens, out=np.full_like(load, K / E), where=tokens > 0).clip(0, 1)
        q = 1.0 - (1.0 - p) ** batch_size
        n = np.divide(batch_size * p, q, out=np.ones_like(p), where=q > 0)
        info["stats_from"] = "load (independent tokens)"
        return q, n, info
    columns = trace_columns(trace_or_load, model)
    q = np.full((L, E), 1.0 - (1.0 - K / E) ** batch_size)
    n = np.ones((L, E))
    N = ids.shape[0]
    nb = -(-N // batch_size)
    chunk = max(1, (1 << 22) // max(E, 1))  # batches per pass: bounded memory
    for i, col in enumerate(columns):
        if col is None:
            continue
        present = np.zeros(E)
        total = np.zeros(E)
        for b0 in range(0, nb, chunk):
            b1 = min(nb, b0 + chunk)
            block = np.asarray(ids[b0 * batch_size:b1 * batch_size, col, :], dtype=np.int64)
            rows = np.arange(block.shape[0])[:, None] // batch_size
            ok = block >= 0
            counts = np.bincount((rows * E + block)[ok], minlength=(b1 - b0) * E).reshape(b1 - b0, E)
            present += (counts > 0).sum(axis=0)
            total += counts.sum(axis=0)
        q[i] = present / nb
        n[i] = np.divide(total, present, out=np.ones(E), where=present > 0)
    missing = [model.moe_layers[i] for i, c in enumerate(columns) if c is None]
    info["stats_from"] = f"trace ({N} tokens, batches of {batch_size})"
    info["layers_without_data"] = missing  # uniform prior there
    return q, n, info


def trace_columns(trace: Any, model: MoEModel) -> list[int | None]:
    if int(getattr(trace, "num_experts", model.num_experts)) != model.num_experts:
        raise UserError(f"trace has {trace.num_experts} experts, {model.name} has {model.num_experts}",
                        field="trace")
    layer_ids = [int(x) for x in np.asarray(getattr(trace, "layer_ids", model.moe_layers))]
    unknown = sorted(set(layer_ids) - set(model.moe_layers))
    if unknown:
        raise UserError(f"trace layers {unknown} are not MoE layers of {model.name}", field="trace.layer_ids")
    where = {layer: c for c, layer in enumerate(layer_ids)}
    return [where.get(layer) for layer in model.moe_layers]


def prefetch_accuracy(trace: Any, model: MoEModel, *, train_fraction: float = 0.5,
                      max_eval_tokens: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """``(predictor, frequency)`` recall@K per MoE layer of next-layer prediction on held-out rows.

    The predictor is the simulator's (:class:`moesim.traces.transitions.Transitions`, fitted on
    the first ``train_fraction`` of the rows): a token's top-K experts at layer l by how often they
    followed its layer l-1 experts. The baseline predicts the K most frequent experts of layer l.
    Recall is over the recorded (id >= 0) selections of the held-out rows. Layer 0 and layers
    without data get 0 (nothing before them to predict from)."""
    ids = trace.expert_ids
    L, K = model.num_moe_layers, model.top_k
    cols = trace_columns(trace, model)
    N = ids.shape[0]
    cut = int(N * train_fraction)
    pred, freq = np.zeros(L), np.zeros(L)
    if cut == 0 or cut >= N:
        return pred, freq
    model_tr = Transitions.fit(ids, model.num_experts, stop=cut, columns=cols)
    ev = slice(cut, min(N, cut + max_eval_tokens))
    for i in range(1, L):
        a, b = cols[i - 1], cols[i]
        if a is None or b is None:
            continue
        eprev, enext = (np.asarray(ids[ev, c, :], np.int64) for c in (a, b))
        hits, recorded = model_tr.recall(i - 1, eprev, enext, K)
        if not recorded:
            continue
        pred[i] = hits / recorded
        freq[i] = float(np.isin(enext[enext >= 0], model_tr.frequent(i - 1, K)).sum()) / recorded
    return pred, freq


def prefetch_window_s(cost: Any, gpu: str, model: MoEModel, batch_size: int, context_tokens: int) -> float:
    """Seconds of GPU work in one decode layer (attention, router, shared and routed experts with the
    batch's K assignments spread over distinct experts): the time a next-layer prefetch can hide."""
    E, K = model.num_experts, model.top_k
    active = min(E, batch_size * K)
    per_expert = math.ceil(batch_size * K / active)
    return float(cost.attention_s(gpu, batch_size, context_tokens, "decode")) \
        + float(cost.router_s(gpu, batch_size)) + float(cost.shared_expert_s(gpu, batch_size)) \
        + float(cost.expert_compute_s(gpu, np.full(active, per_expert)))
