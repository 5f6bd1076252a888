"""A chunk's records: the recorder's per-(step, layer, GPU) arrays, the run's pair totals and the
timeline's kept steps (:func:`record`). A chunk counted and timed by :mod:`moesim.sim.nodetimes` is
written in one compiled pass (numba, the ``[fast]`` extra; :func:`write`): the same floats as the
numpy path, without its [S, L, G] temporaries (the pre-dispatch time per layer gathered from its kind,
busy plus expert time, bytes from copies, the maxima).
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # optional: the [fast] extra
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    numba = None


def _write_py(busy: np.ndarray, phase: np.ndarray, bytes_sent: np.ndarray, bytes_received: np.ndarray,
              tokens_out: np.ndarray, expert_gpu: np.ndarray, total_k: np.ndarray, busy_k: np.ndarray,
              layer_kind: np.ndarray, moe_of: np.ndarray, expert: np.ndarray, sent: np.ndarray,
              received: np.ndarray, tokens: np.ndarray, dispatch: np.ndarray, combine: np.ndarray,
              dispatch_bytes: float, combine_bytes: float) -> None:
    """Per (step s, model layer l) of kind k = ``layer_kind[l]`` and MoE index m = ``moe_of[l]``
    (-1: dense): ``busy`` [S, L, G] = ``busy_k[k, s]`` (+ ``expert[s, m]``), ``phase[s, l]`` = (max of
    ``total_k[k, s]``, dispatch, slowest expert call, combine), bytes each GPU sends and receives
    (its dispatch copies out and combine copies back), its tokens and the slowest expert call.
    Dense layers get only their busy time and phase 0 (the rest stays as it was: zero)."""
    S, L, G = busy.shape
    for s in range(S):
        for layer in range(L):
            k = layer_kind[layer]
            m = moe_of[layer]
            top = total_k[k, s, 0]
            for g in range(1, G):
                top = max(top, total_k[k, s, g])
            phase[s, layer, 0] = top
            if m < 0:
                for g in range(G):
                    busy[s, layer, g] = busy_k[k, s, g]
                continue
            most = expert[s, m, 0]
            for g in range(G):
                e = expert[s, m, g]
                busy[s, layer, g] = busy_k[k, s, g] + e
                most = max(most, e)
                out, into = sent[s, m, g], received[s, m, g]
                bytes_sent[s, layer, g] = out * dispatch_bytes + into * combine_bytes
                bytes_received[s, layer, g] = into * dispatch_bytes + out * combine_bytes
                tokens_out[s, layer, g] = tokens[s, m, g]
            phase[s, layer, 1] = dispatch[s, m]
            phase[s, layer, 2] = most
            phase[s, layer, 3] = combine[s, m]
            expert_gpu[s, layer] = most


_write = numba.njit(cache=True, nogil=True)(_write_py) if numba is not None else None


def available() -> bool:
    return _write is not None


def write(busy: np.ndarray, phase: np.ndarray, bytes_sent: np.ndarray, bytes_received: np.ndarray,
          tokens_out: np.ndarray, expert_gpu: np.ndarray, total_k: np.ndarray, busy_k: np.ndarray,
          layer_kind: np.ndarray, moe_of: np.ndarray, expert: np.ndarray, sent: np.ndarray,
          received: np.ndarray, tokens: np.ndarray, dispatch: np.ndarray, combine: np.ndarray,
          dispatch_bytes: float, combine_bytes: float) -> None:
    """:func:`_write_py`, compiled (the recorder's views are written in place)."""
    assert _write is not None
    _write(busy, phase, bytes_sent, bytes_received, tokens_out, expert_gpu, total_k, busy_k,
           np.asarray(layer_kind, dtype=np.int64), np.asarray(moe_of, dtype=np.int64),
           np.ascontiguousarray(expert, dtype=np.float64), sent, received, tokens,
           np.ascontiguousarray(dispatch, dtype=np.float64), np.ascontiguousarray(combine, dtype=np.float64),
           float(dispatch_bytes), float(combine_bytes))


def record(m: Any, a: int, d: Any, c: Any) -> None:
    """Fill the recorder's arrays for chunk ``a`` of the run ``m`` (:class:`moesim.sim.engine.Machine`)
    from its dispatch ``d`` and costs ``c``: the parts that do not depend on the schedule. A chunk
    counted and timed in one pass (:mod:`moesim.sim.nodetimes`) is written by :func:`write`."""
    r, b, moe = m.rec, a + d.num_steps, m.moe_index
    pair = c.pair_copies
    if pair is None:  # node-level counts: the [G, G] totals and the timeline's steps only
        assert d.pair_total is not None
        m.total_pairs += d.pair_total
        if d.sent is not None and d.received is not None:
            out, into = d.sent, d.received
        else:
            assert d.node_rows is not None and d.node_cols is not None
            out, into = d.node_rows.sum(axis=3), d.node_cols.sum(axis=2)
    else:
        m.total_pairs += pair.sum(axis=(0, 1))
        out, into = pair.sum(axis=3), pair.sum(axis=2)
    if c.expert_group_bytes is not None:
        m.group_bytes += c.expert_group_bytes.sum(axis=(0, 1))
    if a < r.timeline_steps:
        head = pair if pair is not None else d.pair_head
    for s in range(a, min(b, r.timeline_steps)):
        m.keep_pairs[s] = head[s - a]
        m.keep_pre[s] = c.pre[s - a]
        if c.parts is not None:
            m.keep_parts[s] = (c.parts.step(s - a), c.parts.step_edge_bytes(s - a))
        if c.expert_group_bytes is not None:
            m.keep_expert_comm[s] = c.expert_comm_step(s - a)
    G = m.G
    if (m.moe_of is not None and c.parts is not None and d.sent is not None and d.received is not None
            and d.tokens is not None and c.expert_gather is None and m.offloaded is None):
        parts = c.parts
        write(r.busy_s[a:b, :, :G], r.phase_s[a:b], r.bytes_sent[a:b, :, :G], r.bytes_received[a:b, :, :G],
              r.tokens[a:b, :, :G], r.expert_gpu_s[a:b], parts.kind_total(), parts.kind_busy(),
              parts.layer_kind, m.moe_of, c.expert, d.sent, d.received, d.tokens, c.dispatch, c.combine,
              m.a2a.dispatch_bytes, m.a2a.combine_bytes)
        r.pre_parts_s[a:b] = parts.critical()
        return
    r.busy_s[a:b, :, :G] = c.pre if c.parts is None else c.parts.busy()
    r.phase_s[a:b, :, 0] = c.pre.max(axis=2)
    if c.parts is not None:
        r.pre_parts_s[a:b] = c.parts.critical()
    # a device sends its dispatch copies and, in the combine, returns the copies it received
    db, cb = m.a2a.dispatch_bytes, m.a2a.combine_bytes
    if isinstance(moe, slice):  # written in place: the same products and sums, no temporaries
        for view, first, second in ((r.bytes_sent[a:b, moe, :G], out, into),
                                    (r.bytes_received[a:b, moe, :G], into, out)):
            np.multiply(first, db, out=view)
            view += second * cb
    else:
        r.bytes_sent[a:b][:, moe, :G] = out * db + into * cb
        r.bytes_received[a:b][:, moe, :G] = into * db + out * cb
    if m.offloaded is None:
        r.busy_s[a:b][:, moe, :G] += c.expert
        r.tokens[a:b][:, moe, :G] = d.device_tokens
        r.phase_s[a:b][:, moe, 1] = c.dispatch
        r.phase_s[a:b][:, moe, 2] = c.expert_phase()
        r.phase_s[a:b][:, moe, 3] = c.combine
        r.expert_gpu_s[a:b][:, moe] = c.expert.max(axis=2)
