"""The all-to-all buffers a GPU registers: DeepEP's normal and low-latency layouts (bytes per GPU).

Counted by :mod:`moesim.memory` beside the weights and caches; NCCL's all-to-all needs none beyond the
activation workspace.
"""

from __future__ import annotations

from moesim.errors import UserError
from moesim.specs.model import MoEModel

DEEPEP_SCHEMES = ("none", "deepep-normal", "deepep-low-latency")


def comm_buffer_bytes(model: MoEModel, scheme: str, *, ep: int, max_tokens_per_rank: int = 128) -> float:
    """Bytes of the all-to-all buffers one GPU registers, by DeepEP's own sizing (deepseek-ai/DeepEP
    ``csrc/config.hpp`` @030cdf0; configs from ``deep_ep/buffer.py`` ``get_dispatch_config``, 20 SMs).

    ``deepep-low-latency``: ``LowLatencyLayout`` for ``max_tokens_per_rank`` tokens: two symmetric
    send, receive and signaling buffers, a dispatch message being 16 + max(2H, H + 4H/128) bytes and a
    combine message 4H/128 + 2H. ``deepep-normal``: ``get_nvl_buffer_size_hint`` (10 channels x the
    node's ranks x 256 receive tokens, 288 from 16 ranks on, of 2H bytes plus 128 top-k indices,
    weights and scales) and, across nodes, ``get_rdma_buffer_size_hint`` (10 channels x the nodes x
    128 tokens, doubled, plus 1 MiB). ``none``: NCCL's all-to-all, whose payload is the activation
    workspace already counted."""
    if scheme not in DEEPEP_SCHEMES:
        raise UserError(f"expected one of {', '.join(DEEPEP_SCHEMES)}, got {scheme!r}", field="comm_buffer")
    h, e = model.hidden_size, model.num_experts
    if scheme == "none":
        return 0.0
    if scheme == "deepep-low-latency":
        scales = h // 128
        dispatch_msg = 16 + max(2 * h, h + 4 * scales)
        combine_msg = 4 * scales + 2 * h
        t = max_tokens_per_rank
        send = max(t * dispatch_msg, e * t * combine_msg)
        recv = max(e * t * dispatch_msg, e * t * combine_msg)
        signaling = -(-(e * 4) // 128) * 128
        return float(2 * (send + recv + signaling))
    channels, nvl_ranks, rdma_ranks = 10, min(ep, 8), max(ep // 8, 1)
    nvl_recv = 256 if ep <= 8 else 288 if ep <= 64 else 560 if ep <= 128 else 720
    slots = 128 * 8 + 128 * 4 + 128 * 4  # top-k indices (int64), weights and scales (float) per token
    nvl = channels * nvl_ranks * ((2 * rdma_ranks + 3) * 4 + nvl_recv * (2 * h + slots))
    if ep <= 8:
        return float(nvl)
    rdma = channels * rdma_ranks * ((8 * 2 + 2) * 2 * 4 + 128 * (2 * h + slots + 16) * 2) + (1 << 20)
    return float(nvl + rdma)


COMM_BUFFER_SCHEMES = {"flat": "none", "hierarchical": "deepep-normal", "low-latency": "deepep-low-latency"}
"""The buffers each all-to-all mode (:mod:`moesim.cost.a2a`) registers: NCCL's flat all-to-all moves
the activation workspace; DeepEP's normal and low-latency kernels their own buffers."""


def run_comm_buffer_bytes(model: MoEModel, a2a_mode: str, gpus: int, max_tokens_per_rank: int) -> float:
    """Bytes of all-to-all buffers per GPU for a run of ``gpus`` GPUs whose all-to-all is ``a2a_mode``
    (none on one GPU)."""
    scheme = COMM_BUFFER_SCHEMES[str(a2a_mode)] if gpus > 1 else "none"
    return comm_buffer_bytes(model, scheme, ep=gpus, max_tokens_per_rank=max(1, int(max_tokens_per_rank)))
