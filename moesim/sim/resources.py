"""The SimPy resources offloading queues on: each GPU's PCIe link to its host, and the devices
(GPU beside its host CPU, PIM) that run experts one call at a time."""

from __future__ import annotations

import simpy

from moesim.cost.transfers import host_of
from moesim.specs.hardware import Cluster


class HostLinks:
    """Each GPU's host CPU and its host -> GPU link: a priority queue (demand fetches, priority 0,
    go before queued prefetches, priority 1), one copy at a time."""

    def __init__(self, env: simpy.Environment, cluster: Cluster):
        self.env = env
        self.cluster = cluster
        self._hosts: dict[str, str] = {}
        self._links: dict[str, simpy.PriorityResource] = {}

    def host(self, gpu: str) -> str:
        """The CPU whose memory holds ``gpu``'s offloaded experts."""
        if gpu not in self._hosts:
            self._hosts[gpu] = host_of(self.cluster, gpu)
        return self._hosts[gpu]

    def link(self, gpu: str) -> simpy.PriorityResource:
        if gpu not in self._links:
            self._links[gpu] = simpy.PriorityResource(self.env, capacity=1)
        return self._links[gpu]


class Executors:
    """One FIFO resource per device that runs missed experts (a host CPU, a PIM device)."""

    def __init__(self, env: simpy.Environment):
        self.env = env
        self._units: dict[str, simpy.Resource] = {}

    def of(self, device: str) -> simpy.Resource:
        if device not in self._units:
            self._units[device] = simpy.Resource(self.env, capacity=1)
        return self._units[device]
