"""OverlappedMoE: an MoE layer's dispatch -> experts -> combine as ``n`` pipelined micro-batches.

The all-to-all fabric and the (lockstep) expert compute are two FIFO SimPy resources: while one
micro-batch's tokens are on the wire, another's experts run. ``n == 2`` is the layer-level
(DeepSeek dual micro-batch) overlap; larger ``n`` is chunked overlap.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import simpy


def _micro_batch(env: simpy.Environment, net: simpy.Resource, gpu: simpy.Resource, dispatch_s: float,
                 expert_s: float, combine_s: float) -> Generator[Any, Any, None]:
    for resource, seconds in ((net, dispatch_s), (gpu, expert_s), (net, combine_s)):
        with resource.request() as req:
            yield req
            yield env.timeout(seconds)


def overlapped_moe(env: simpy.Environment, n: int, dispatch_s: float, expert_s: float,
                   combine_s: float) -> Generator[Any, Any, None]:
    """Run ``n`` micro-batches, each with the given per-micro-batch times; ends when all have combined."""
    net = simpy.Resource(env, capacity=1)
    gpu = simpy.Resource(env, capacity=1)
    yield env.all_of([env.process(_micro_batch(env, net, gpu, dispatch_s, expert_s, combine_s))
                      for _ in range(n)])
