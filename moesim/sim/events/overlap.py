"""OverlappedMoE: an MoE layer's dispatch -> experts -> combine as ``n`` pipelined micro-batches.

The all-to-all fabric and the (lockstep) expert compute are two FIFO SimPy resources: while one
micro-batch's tokens are on the wire, another's experts run. ``n == 2`` is the layer-level
(DeepSeek dual micro-batch) overlap; larger ``n`` is chunked overlap.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

Slice = tuple[str, int, float, float]
"""(``dispatch``/``experts``/``combine``, micro-batch index, start_s, dur_s)."""


def _micro_batch(env: simpy.Environment, net: simpy.Resource, gpu: simpy.Resource, dispatch_s: float,
                 expert_s: float, combine_s: float, index: int,
                 on_slice: Callable[[Slice], None] | None) -> Generator[Any, Any, None]:
    for kind, resource, seconds in (("dispatch", net, dispatch_s), ("experts", gpu, expert_s),
                                    ("combine", net, combine_s)):
        with resource.request() as req:
            yield req
            start = env.now
            yield env.timeout(seconds)
        if on_slice is not None:
            on_slice((kind, index, start, seconds))


def overlapped_moe(env: simpy.Environment, n: int, dispatch_s: float, expert_s: float, combine_s: float,
                   on_slice: Callable[[Slice], None] | None = None) -> Generator[Any, Any, None]:
    """Run ``n`` micro-batches, each with the given per-micro-batch times; ends when all have combined.
    ``on_slice((kind, micro_batch, start_s, dur_s))`` hears of each dispatch/experts/combine slice."""
    net = simpy.Resource(env, capacity=1)
    gpu = simpy.Resource(env, capacity=1)
    yield env.all_of([env.process(_micro_batch(env, net, gpu, dispatch_s, expert_s, combine_s, i, on_slice))
                      for i in range(n)])
