"""A chunk's per-(step, layer, GPU) records written in one compiled pass (numba, the ``[fast]``
extra): what :meth:`moesim.sim.engine.Machine.record` writes with numpy for a chunk counted and timed
by :mod:`moesim.sim.nodetimes`, the same floats, without its [S, L, G] temporaries (the pre-dispatch
time per layer gathered from its kind, busy plus expert time, bytes from copies, the maxima).
"""

from __future__ import annotations

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
