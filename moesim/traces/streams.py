"""Streams built from recorded traces: concatenations and sequence reorderings (subject switches).

Real traces rarely switch subject inside one recording; a stream that does is made by playing one
recording (or one subject set of prompts) after another. Only whole sequences are moved, so every
sequence keeps its own token order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from moesim.errors import UserError
from moesim.traces.trace import RoutingTrace


def sequence_bounds(trace: RoutingTrace) -> np.ndarray:
    """``[S + 1]`` row boundaries of the trace's sequences (runs of equal ``seq_id``)."""
    seq = np.asarray(trace.seq_id)
    return np.r_[0, np.flatnonzero(seq[1:] != seq[:-1]) + 1, len(seq)].astype(np.int64)


def reorder_sequences(trace: RoutingTrace, order: Sequence[int] | np.ndarray) -> RoutingTrace:
    """The sequences of ``trace`` (runs of ``seq_id``, numbered 0.. in row order) played in ``order``.

    ``order`` may drop sequences; ``seq_id`` is renumbered 0.. in the new order.
    """
    b = sequence_bounds(trace)
    order = np.asarray(order, np.int64)
    if order.size == 0 or order.min() < 0 or order.max() >= len(b) - 1:
        raise UserError(f"expected sequence indices in [0, {len(b) - 1}), got {order.size} of them")
    rows = np.concatenate([np.arange(b[i], b[i + 1]) for i in order])
    lengths = (b[1:] - b[:-1])[order]
    out = trace.select(rows)
    seq = np.repeat(np.arange(len(order), dtype=np.int32), lengths)
    from dataclasses import replace

    return replace(out, seq_id=seq, meta={**out.meta, "n_sequences": len(order)})


def concatenate(traces: Sequence[RoutingTrace]) -> RoutingTrace:
    """One stream: the traces' rows one after the other (same experts, top-k and layer columns)."""
    if not traces:
        raise UserError("expected at least one trace to concatenate")
    first = traces[0]
    for t in traces[1:]:
        if (t.num_experts, t.top_k) != (first.num_experts, first.top_k) or not np.array_equal(
            t.layer_ids, first.layer_ids
        ):
            raise UserError(
                f"cannot concatenate {t.source or 'a trace'}: {t.num_experts} experts, top-{t.top_k}, "
                f"layers {t.layer_ids.tolist()} differ from {first.num_experts}, top-{first.top_k}, "
                f"{first.layer_ids.tolist()}"
            )
    seq, offset = [], 0
    for t in traces:
        s = np.asarray(t.seq_id, np.int64)
        _, dense = np.unique(s, return_inverse=True)
        seq.append(dense + offset)
        offset += int(dense.max()) + 1 if len(s) else 0
    weights = None
    if all(t.gate_weights is not None for t in traces):
        weights = np.concatenate([np.asarray(t.gate_weights) for t in traces])
    return RoutingTrace.build(
        np.concatenate([np.asarray(t.expert_ids) for t in traces]),
        num_experts=first.num_experts,
        seq_id=np.concatenate(seq),
        pos=np.concatenate([np.asarray(t.pos) for t in traces]),
        phase=np.concatenate([np.asarray(t.phase) for t in traces]),
        layer_ids=first.layer_ids,
        gate_weights=weights,
        meta={"model": first.model_name,
              "concatenated_from": [t.source and t.source.rsplit("/", 1)[-1] for t in traces],
              "concatenated_rows": [t.num_tokens for t in traces]},
    )


__all__ = ["concatenate", "reorder_sequences", "sequence_bounds"]
