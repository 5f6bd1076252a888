"""WeightFetcher: starts expert-weight copies host -> GPU and keeps their arrival events.

A copy the cache keeps is remembered per (MoE layer, GPU, expert) until the next one; a copy into
a scratch buffer (static pinning's misses) separately, so the causality record can find either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import simpy

from moesim.sim.costs import OffloadCosts
from moesim.sim.events.transfer import weight_fetch
from moesim.sim.recorder import Recorder
from moesim.sim.resources import HostLinks
from moesim.sim.stores import ExpertStore

Key = tuple[int, int, int]
"""(MoE layer row, GPU index, expert)."""


class WeightFetcher:
    """Copies of expert weights over each GPU's host link (:class:`HostLinks`)."""

    def __init__(self, env: simpy.Environment, hosts: HostLinks, costs: OffloadCosts, rec: Recorder,
                 store: ExpertStore, devices: Sequence[str], moe_cols: Sequence[int], *,
                 bytes_of: Callable[[str | None], float]):
        """``bytes_of(dtype)``: one expert's bytes as copied in ``dtype`` (None: the model's own)."""
        self.env, self.hosts, self.costs, self.rec, self.store = env, hosts, costs, rec, store
        self.devices, self.moe_cols = devices, moe_cols
        self.bytes_of = bytes_of
        self.ready: dict[Key, simpy.Event] = {}
        self.scratch: dict[Key, simpy.Event] = {}
        self._copying_until: dict[str, float] = {}
        """Per GPU: when the copy on its host link now ends (a new copy waits at least that long)."""

    def backlog_s(self, g: int) -> float:
        """Seconds until GPU ``g``'s host link finishes the copy it is making now."""
        return max(0.0, self._copying_until.get(self.devices[g], 0.0) - self.env.now)

    def pending(self, layer: int, g: int, expert: int) -> simpy.Event | None:
        """The not yet arrived copy of ``expert`` the cache keeps, if any."""
        ev = self.ready.get((layer, g, expert))
        return ev if ev is not None and not ev.triggered else None

    def arrival(self, layer: int, g: int, expert: int) -> simpy.Event | None:
        """The latest copy of ``expert`` to GPU ``g`` (kept or scratch); None if never copied."""
        return self.ready.get((layer, g, expert), self.scratch.get((layer, g, expert)))

    def fetch(self, step: int, layer: int, g: int, expert: int, *, keep: bool, dtype: str | None,
              prefetch: bool = False, background: bool = False) -> simpy.Event:
        """Start copying ``expert``'s weights to GPU ``g`` in ``dtype`` (None: the model's); the
        event fires on arrival. Demand fetches (the GPU waits) go first, then prefetches, then
        ``background`` copies of experts that ran elsewhere; a prefetch or background copy whose
        expert was evicted while it queued is dropped, a demand fetch never."""
        pending = self.pending(layer, g, expert) if keep else None
        if pending is not None:
            return pending  # already queued: it will copy the expert if still wanted when its turn comes
        nbytes = self.bytes_of(dtype)
        gpu = self.devices[g]
        seconds = self.costs.fetch_s(gpu, dtype)
        done = self.env.event()
        (self.ready if keep else self.scratch)[(layer, g, expert)] = done
        host = self.hosts.host(gpu)
        col = self.moe_cols[layer]

        def account() -> None:  # when the copy starts: a dropped copy moved no bytes
            self.rec.fetch_bytes[step, col, g] += nbytes
            self.rec.add_link_bytes(self.costs.path(host, gpu), nbytes)
            self._copying_until[gpu] = self.env.now + seconds

        def wanted() -> bool:  # still resident when its turn comes (not evicted while it queued)
            return self.store.resident(layer, g, expert)

        self.env.process(weight_fetch(self.env, self.hosts.link(gpu), seconds, done, self.rec, step,
                                      f"{host}->{gpu}", f"fetch L{col} E{expert}",
                                      priority=2 if background else 1 if prefetch else 0,
                                      wanted=wanted if keep and (prefetch or background) else None,
                                      on_start=account, nbytes=nbytes))
        return done
