"""Miss modes: what a GPU does with an expert that is not in its memory, one class per mode.

``fetch`` and ``lowbit`` copy the weights over PCIe and the GPU waits for them (``lowbit`` in a
smaller dtype, HOBBIT); ``cpu`` (Fiddler) and ``pim`` (Duplex) run the expert beside the GPU, on its
host CPU (activations cross PCIe both ways) or on a PIM device (in place), while the GPU runs the
hits. A new mode is one :class:`MissHandler` subclass plus one entry in :data:`MISS_HANDLERS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from moesim.errors import UserError
from moesim.sim.costs import OffloadCosts
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

    waits_for_fetch: ClassVar[bool]
    """True: a miss is copied to the GPU, which waits; False: it runs on :meth:`side_device`."""

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

    waits_for_fetch = True

    @classmethod
    def build(cls, setup: MissSetup) -> MissHandler:
        return cls()


class LowbitMiss(FetchMiss):
    """``lowbit``: copy the weights in ``lowbit_dtype`` (fewer bytes, same wait)."""

    def __init__(self, dtype: str):
        self.dtype = dtype

    @classmethod
    def build(cls, setup: MissSetup) -> MissHandler:
        return cls(setup.lowbit_dtype)

    def fetch_dtype(self) -> str | None:
        return self.dtype


class CpuMiss(MissHandler):
    """``cpu``: run on the GPU's host CPU from its DDR; the activations cross PCIe both ways."""

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


MISS_HANDLERS: dict[MissMode, type[MissHandler]] = {
    MissMode.FETCH: FetchMiss,
    MissMode.LOWBIT: LowbitMiss,
    MissMode.CPU: CpuMiss,
    MissMode.PIM: PimMiss,
}


def make_miss_handler(mode: MissMode, setup: MissSetup) -> MissHandler:
    """The handler of miss ``mode``."""
    return MISS_HANDLERS[mode].build(setup)
