"""Miss modes: what a GPU does with an expert that is not in its memory, one class per mode.

``fetch`` and ``lowbit`` copy the weights over PCIe and the GPU waits for them (``lowbit`` in a
smaller dtype, HOBBIT); ``cpu`` (Fiddler) and ``pim`` (Duplex) run the expert beside the GPU, on its
host CPU (activations cross PCIe both ways) or on a PIM device (in place), while the GPU runs the
hits; ``auto`` chooses one of those the cluster can run per (step, layer, expert) by predicted time
(:mod:`moesim.sim.miss_lanes`). A new mode is one :class:`MissHandler` subclass plus one entry in
:data:`MISS_HANDLERS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from moesim.errors import UserError
from moesim.sim.costs import OffloadCosts
from moesim.sim.miss_lanes import assign
from moesim.sim.resources import HostLinks
from moesim.specs.hardware import Cluster
from moesim.vocab import MissMode


@dataclass(frozen=True)
class MissSetup:
    """What a miss handler may need: the cluster, the GPUs of the run, their host links, and the
    dtype of low-precision fetches."""

    cluster: Cluster
    gpus: Sequence[str]
    hosts: HostLinks
    lowbit_dtype: str


@dataclass(frozen=True)
class SideRun:
    """Missed experts run beside the GPU: seconds to move the activations in, run, move them
    back, and the bytes that crossed each path (link directions, bytes)."""

    in_s: float
    run_s: float
    out_s: float
    moved: list[tuple[list[tuple[str, str]], float]] = field(default_factory=list)


class MissHandler(ABC):
    """One miss mode."""

    mode: ClassVar[MissMode]
    waits_for_fetch: ClassVar[bool]
    """True: a miss is copied to the GPU, which waits; False: it runs on :meth:`side_device`."""
    chooses: ClassVar[bool] = False
    """:meth:`choose` picks per expert (else it is this handler for every one, unasked)."""

    def choose(self, costs: OffloadCosts, gpu: str, tokens: np.ndarray, hit_tokens: np.ndarray,
               act_bytes: float, link_backlog_s: float = 0.0) -> list[MissHandler]:
        """The handler of each missed expert of one GPU call (``tokens`` each; the call's hits
        have ``hit_tokens``; the GPU's host link is busy ``link_backlog_s`` more): this one for
        every expert, except for ``auto``."""
        return [self] * len(tokens)

    def fetch_dtype(self) -> str | None:
        """Dtype weights are copied in (None: the model's own)."""
        return None

    def side_device(self, gpu: str) -> str:
        """The device that runs ``gpu``'s missed experts."""
        raise NotImplementedError(f"{type(self).__name__} fetches its misses")

    def side_run(self, costs: OffloadCosts, gpu: str, side: str, tokens: np.ndarray,
                 act_bytes: float) -> SideRun:
        """Timing of running experts with ``tokens`` each on ``side`` for ``gpu``."""
        raise NotImplementedError(f"{type(self).__name__} fetches its misses")

    @classmethod
    @abstractmethod
    def build(cls, setup: MissSetup) -> MissHandler:
        """The handler for a run (refuses a cluster it cannot run on, before the run)."""


class FetchMiss(MissHandler):
    """``fetch``: copy the weights host -> GPU; the GPU waits."""

    mode = MissMode.FETCH
    waits_for_fetch = True

    @classmethod
    def build(cls, setup: MissSetup) -> MissHandler:
        return cls()


class LowbitMiss(FetchMiss):
    """``lowbit``: copy the weights in ``lowbit_dtype`` (fewer bytes, same wait)."""

    mode = MissMode.LOWBIT

    def __init__(self, dtype: str):
        self.dtype = dtype

    @classmethod
    def build(cls, setup: MissSetup) -> MissHandler:
        return cls(setup.lowbit_dtype)

    def fetch_dtype(self) -> str | None:
        return self.dtype


class CpuMiss(MissHandler):
    """``cpu``: run on the GPU's host CPU from its DDR; the activations cross PCIe both ways."""

    mode = MissMode.CPU
    waits_for_fetch = False

    def __init__(self, hosts: HostLinks):
        self.hosts = hosts

    @classmethod
    def build(cls, setup: MissSetup) -> MissHandler:
        return cls(setup.hosts)

    def side_device(self, gpu: str) -> str:
        return self.hosts.host(gpu)

    def side_run(self, costs: OffloadCosts, gpu: str, side: str, tokens: np.ndarray,
                 act_bytes: float) -> SideRun:
        nbytes = float(tokens.sum()) * act_bytes
        return SideRun(costs.transfer_s(gpu, side, nbytes), costs.cpu_experts_s(side, tokens),
                       costs.transfer_s(side, gpu, nbytes),
                       [(costs.path(gpu, side), nbytes), (costs.path(side, gpu), nbytes)])


class PimMiss(MissHandler):
    """``pim``: run on a PIM device of the GPU's node (the first one; else of the cluster), in place."""

    mode = MissMode.PIM
    waits_for_fetch = False

    def __init__(self, pim_of: dict[str, str]):
        self.pim_of = pim_of

    @classmethod
    def build(cls, setup: MissSetup) -> MissHandler:
        cluster = setup.cluster
        pim_of = {}
        for gpu in setup.gpus:
            node = cluster.device(gpu).node
            pims = cluster.devices_of("pim", node) or cluster.devices_of("pim")
            if not pims:
                raise UserError(f"cluster {cluster.name} has no pim device to run missed experts on",
                                field="miss")
            pim_of[gpu] = pims[0].id
        return cls(pim_of)

    def side_device(self, gpu: str) -> str:
        return self.pim_of[gpu]

    def side_run(self, costs: OffloadCosts, gpu: str, side: str, tokens: np.ndarray,
                 act_bytes: float) -> SideRun:
        return SideRun(0.0, costs.pim_experts_s(side, tokens), 0.0)


class AutoMiss(MissHandler):
    """``auto``: per missed expert, the mode whose predicted time (its tokens x that mode's cost)
    finishes the GPU's call soonest, among those the cluster can run (Fiddler-style; the choice is
    a makespan over lanes, :func:`moesim.sim.miss_lanes.assign`)."""

    mode = MissMode.AUTO
    waits_for_fetch = True
    chooses = True
    """Unused: the handlers it picks decide each expert."""

    def __init__(self, handlers: Sequence[MissHandler]):
        self.handlers = tuple(handlers)
        self._chosen: dict[tuple, list[MissHandler]] = {}
        """Choices per (costs, GPU, tokens, hit tokens, activation bytes, backlog): a decode run asks
        the same few thousand times."""

    @classmethod
    def build(cls, setup: MissSetup) -> MissHandler:
        handlers: list[MissHandler] = [FetchMiss(), LowbitMiss(setup.lowbit_dtype)]
        if setup.cluster.devices_of("cpu"):
            handlers.append(CpuMiss(setup.hosts))
        if setup.cluster.devices_of("pim"):
            handlers.append(PimMiss.build(setup))
        return cls(handlers)

    def choose(self, costs: OffloadCosts, gpu: str, tokens: np.ndarray, hit_tokens: np.ndarray,
               act_bytes: float, link_backlog_s: float = 0.0) -> list[MissHandler]:
        if not len(tokens):
            return []
        key = (id(costs), gpu, tuple(tokens.tolist()), tuple(hit_tokens.tolist()), act_bytes, link_backlog_s)
        chosen = self._chosen.get(key)
        if chosen is None:
            chosen = self._choose(costs, gpu, tokens, hit_tokens, act_bytes, link_backlog_s)
            self._chosen[key] = chosen
        return list(chosen)

    def _choose(self, costs: OffloadCosts, gpu: str, tokens: np.ndarray, hit_tokens: np.ndarray,
                act_bytes: float, link_backlog_s: float) -> list[MissHandler]:
        link = [h for h in self.handlers if h.waits_for_fetch]
        fetch_s = {h: costs.fetch_s(gpu, h.fetch_dtype()) for h in link}
        best = min(link, key=lambda h: fetch_s[h])  # ties: the first, full-precision fetch
        sides = [h for h in self.handlers if not h.waits_for_fetch]
        side_s = np.array([[_side_s(h, costs, gpu, t, act_bytes) for t in tokens.tolist()] for h in sides])
        link_s = np.array([fetch_s[best] + costs.gpu_experts_s(gpu, np.array([t])) for t in tokens.tolist()])
        base = costs.gpu_experts_s(gpu, hit_tokens) if len(hit_tokens) else 0.0
        lanes = assign(link_s, side_s.reshape(len(sides), len(tokens)), base, link_backlog_s)
        return [best if lane == 0 else sides[lane - 1] for lane in lanes.tolist()]


def _side_s(handler: MissHandler, costs: OffloadCosts, gpu: str, tokens: float, act_bytes: float) -> float:
    """Seconds of one expert with ``tokens`` run beside ``gpu`` by ``handler`` (moves included)."""
    run = handler.side_run(costs, gpu, handler.side_device(gpu), np.array([tokens]), act_bytes)
    return run.in_s + run.run_s + run.out_s


MISS_HANDLERS: dict[MissMode, type[MissHandler]] = {
    MissMode.FETCH: FetchMiss,
    MissMode.LOWBIT: LowbitMiss,
    MissMode.CPU: CpuMiss,
    MissMode.PIM: PimMiss,
    MissMode.AUTO: AutoMiss,
}


def make_miss_handler(mode: MissMode, setup: MissSetup) -> MissHandler:
    """The handler of miss ``mode``."""
    return MISS_HANDLERS[mode].build(setup)
