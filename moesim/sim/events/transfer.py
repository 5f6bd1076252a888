"""WeightFetch: expert weights moving host -> GPU over the GPU's PCIe link (a FIFO SimPy resource)."""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

import simpy

from moesim.sim.recorder import Recorder


def weight_fetch(env: simpy.Environment, link: simpy.PriorityResource, duration_s: float,
                 done: simpy.Event, log: Recorder, step: int, track: str, label: str, *,
                 priority: int = 0, wanted: Callable[[], bool] | None = None,
                 on_start: Callable[[], None] | None = None,
                 nbytes: float | None = None) -> Generator[Any, Any, None]:
    """Wait for the link (lower ``priority`` first: demand fetches before prefetches), hold it
    ``duration_s``, then trigger ``done`` (the weights have arrived). A copy whose expert was
    evicted while it queued (``wanted()`` false) is dropped: it takes no link time."""
    with link.request(priority=priority) as req:
        yield req
        if wanted is not None and not wanted():
            done.succeed(env.now)
            return
        if on_start is not None:
            on_start()
        start = env.now
        yield env.timeout(duration_s)
    log.span(step, track, label, start, env.now - start, **({} if nbytes is None else {"bytes": nbytes}))
    done.succeed(env.now)
