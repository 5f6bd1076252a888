"""Resource clocks offloading queues on: each GPU's PCIe link to its host, and the devices (GPU
beside its host CPU, PIM) that run missed experts one call at a time.

A :class:`Lane` is one resource that serves one job at a time, waiting jobs by priority then
request order; a :class:`Clock` orders every lane's grants and releases in simulated time, ties in
the order they were scheduled. That is the order SimPy's (priority) resources give: a job requested
while its lane is free is granted at once, whatever its priority; the grant takes effect (the job
starts, or is dropped) after everything else already scheduled for that instant; a release grants
the next waiting job at the same instant. No process, no event object per job.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

from moesim.cost.transfers import host_of
from moesim.specs.hardware import Cluster

_GRANT, _RELEASE = 0, 1


class Job(Protocol):
    """What a lane serves."""

    def start(self, now_s: float) -> float | None:
        """Begin at ``now_s``: seconds it holds the lane, or None to be dropped (no lane time)."""

    def finish(self, start_s: float, end_s: float) -> None:
        """It held the lane from ``start_s`` to ``end_s``."""


class Clock:
    """Grants and releases of every lane, in (time, scheduling order)."""

    def __init__(self) -> None:
        self._events: list[tuple[float, int, int, Lane, Job, float]] = []
        self._order = itertools.count()

    def schedule(self, time_s: float, kind: int, lane: Lane, job: Job, start_s: float = 0.0) -> None:
        heapq.heappush(self._events, (time_s, next(self._order), kind, lane, job, start_s))

    def step(self) -> None:
        """Handle the next event."""
        time_s, _, kind, lane, job, start_s = heapq.heappop(self._events)
        if kind == _GRANT:
            hold_s = job.start(time_s)
            if hold_s is None:
                lane.release(time_s)
            else:
                self.schedule(time_s + hold_s, _RELEASE, lane, job, time_s)
        else:
            job.finish(start_s, time_s)
            lane.release(time_s)

    def run_before(self, time_s: float) -> None:
        """Handle every event before ``time_s`` (those at ``time_s`` come after its other work)."""
        events = self._events
        while events and events[0][0] < time_s:
            self.step()

    def run_while(self, waiting: Callable[[], bool]) -> None:
        """Handle events in order while ``waiting()`` (something not yet started or finished)."""
        while waiting():
            self.step()

    def run_all(self) -> None:
        while self._events:
            self.step()


class Lane:
    """One resource serving one job at a time (lower ``priority`` first, then request order)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self._waiting: list[tuple[int, float, int, Job]] = []
        self._order = itertools.count()
        self._busy = False

    def request(self, job: Job, now_s: float, priority: int = 0) -> None:
        if not self._busy:
            self._busy = True
            self.clock.schedule(now_s, _GRANT, self, job)
        else:
            heapq.heappush(self._waiting, (priority, now_s, next(self._order), job))

    def release(self, now_s: float) -> None:
        if self._waiting:
            self.clock.schedule(now_s, _GRANT, self, heapq.heappop(self._waiting)[3])
        else:
            self._busy = False


class HostLinks:
    """Each GPU's host CPU and its host -> GPU link (demand fetches, priority 0, go before queued
    prefetches, 1, and background copies, 2; one copy at a time)."""

    def __init__(self, cluster: Cluster, clock: Clock | None = None):
        self.cluster = cluster
        self.clock = clock or Clock()
        self._hosts: dict[str, str] = {}
        self._links: dict[str, Lane] = {}

    def host(self, gpu: str) -> str:
        """The CPU whose memory holds ``gpu``'s offloaded experts."""
        if gpu not in self._hosts:
            self._hosts[gpu] = host_of(self.cluster, gpu)
        return self._hosts[gpu]

    def link(self, gpu: str) -> Lane:
        if gpu not in self._links:
            self._links[gpu] = Lane(self.clock)
        return self._links[gpu]


class Executors:
    """One FIFO lane per device that runs missed experts (a host CPU, a PIM device)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self._units: dict[str, Lane] = {}

    def of(self, device: str) -> Lane:
        if device not in self._units:
            self._units[device] = Lane(self.clock)
        return self._units[device]
