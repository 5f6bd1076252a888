"""WeightFetcher: queues expert-weight copies host -> GPU on each GPU's link and knows when they arrive.

A copy the cache keeps is remembered per (MoE layer, GPU, expert) until the next one; a copy into
a scratch buffer (static pinning's misses) separately, so the causality record can find either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from moesim.sim.costs import OffloadCosts
from moesim.sim.recorder import Recorder
from moesim.sim.resources import HostLinks
from moesim.sim.stores import ExpertStore

Key = tuple[int, int, int]
"""(MoE layer row, GPU index, expert)."""


@dataclass(eq=False)
class Copy:
    """One copy of an expert's weights over a GPU's host link (a :class:`moesim.sim.resources.Job`)."""

    fetcher: WeightFetcher
    step: int
    layer: int
    g: int
    expert: int
    seconds: float
    nbytes: float
    droppable: bool
    """A prefetch or background copy: dropped when its expert was evicted while it queued."""
    done_s: float | None = field(default=None)
    """When it arrived (or was dropped); None while it queues."""

    def start(self, now_s: float) -> float | None:
        f = self.fetcher
        if self.droppable and not f.store.resident(self.layer, self.g, self.expert):
            self.done_s = now_s  # dropped: it moved no bytes and took no link time
            return None
        col = f.moe_cols[self.layer]
        gpu = f.devices[self.g]
        f.rec.fetch_bytes[self.step, col, self.g] += self.nbytes
        f.rec.add_link_bytes(f.costs.path(f.hosts.host(gpu), gpu), self.nbytes)
        self.done_s = f.copying_until[self.g] = now_s + self.seconds
        return self.seconds

    def finish(self, start_s: float, end_s: float) -> None:
        f = self.fetcher
        if self.step < f.rec.timeline_steps:
            gpu = f.devices[self.g]
            label = f"fetch L{f.moe_cols[self.layer]} E{self.expert}"
            track = f"{f.hosts.host(gpu)}->{gpu}"
            f.rec.span(self.step, track, label, start_s, end_s - start_s, bytes=self.nbytes)

    def pending_at(self, now_s: float) -> bool:
        """Not arrived (nor dropped) by ``now_s`` (one arriving exactly then still counts as on its way)."""
        return self.done_s is None or self.done_s >= now_s


class WeightFetcher:
    """Copies of expert weights over each GPU's host link (:class:`HostLinks`)."""

    def __init__(self, hosts: HostLinks, costs: OffloadCosts, rec: Recorder, store: ExpertStore,
                 devices: Sequence[str], moe_cols: Sequence[int], *, bytes_of: Callable[[str | None], float]):
        """``bytes_of(dtype)``: one expert's bytes as copied in ``dtype`` (None: the model's own)."""
        self.hosts, self.costs, self.rec, self.store = hosts, costs, rec, store
        self.devices = tuple(devices)
        self.moe_cols = [int(c) for c in moe_cols]
        self.bytes_of = bytes_of
        self.ready: dict[Key, Copy] = {}
        self.scratch: dict[Key, Copy] = {}
        self.copying_until = [0.0] * len(self.devices)
        """Per GPU: when the copy on its host link now ends (a new copy waits at least that long)."""
        self._links = [hosts.link(gpu) for gpu in self.devices]

    def backlog_s(self, g: int, now_s: float) -> float:
        """Seconds until GPU ``g``'s host link finishes the copy it is making at ``now_s``."""
        return max(0.0, self.copying_until[g] - now_s)

    def pending(self, layer: int, g: int, expert: int, now_s: float) -> Copy | None:
        """The copy of ``expert`` the cache keeps that has not arrived by ``now_s``, if any."""
        c = self.ready.get((layer, g, expert))
        return c if c is not None and c.pending_at(now_s) else None

    def arrival(self, layer: int, g: int, expert: int) -> Copy | None:
        """The latest copy of ``expert`` to GPU ``g`` (kept or scratch); None if never copied."""
        key = (layer, g, expert)
        c = self.ready.get(key)
        return c if c is not None else self.scratch.get(key)

    def fetch(self, step: int, layer: int, g: int, expert: int, now_s: float, *, keep: bool,
              dtype: str | None, prefetch: bool = False, background: bool = False) -> Copy:
        """Queue a copy of ``expert``'s weights to GPU ``g`` in ``dtype`` (None: the model's) at
        ``now_s``. Demand fetches (the GPU waits) go first, then prefetches, then ``background``
        copies of experts that ran elsewhere; a prefetch or background copy whose expert was evicted
        while it queued is dropped, a demand fetch never."""
        pending = self.pending(layer, g, expert, now_s) if keep else None
        if pending is not None:
            return pending  # already queued: it will copy the expert if still wanted when its turn comes
        seconds = self.costs.fetch_s(self.devices[g], dtype)
        copy = Copy(self, step, layer, g, expert, seconds, self.bytes_of(dtype),
                    droppable=keep and (prefetch or background))
        (self.ready if keep else self.scratch)[(layer, g, expert)] = copy
        self._links[g].request(copy, now_s, 2 if background else 1 if prefetch else 0)
        return copy
