"""The words of moesim's options: one ``StrEnum`` per policy family.

CLI choices, config checks, plan-file validation and the docs all derive from these, so a new value
is added here once. Members are ``str``s, so ``Phase.DECODE == "decode"`` and they print and
serialise as their value.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, TypeVar

from moesim.errors import UserError


class Phase(StrEnum):
    """What a simulated step is."""

    DECODE = "decode"
    PREFILL = "prefill"


class Overlap(StrEnum):
    """How all-to-all overlaps expert compute: not at all, two micro-batches, or ``chunks`` of them."""

    NONE = "none"
    LAYER = "layer"
    CHUNKED = "chunked"


class Dispatch(StrEnum):
    """Which replicas a token may use: any (``even``), or its own GPU, else node, else any (``local``)."""

    EVEN = "even"
    LOCAL = "local"


class ReplicaSplit(StrEnum):
    """How a replicated expert's tokens are split among its candidate replicas."""

    EVEN = "even"
    RANDOM = "random"


class CachePolicy(StrEnum):
    """The expert cache in GPU memory (``none``: every expert resident)."""

    NONE = "none"
    LRU = "lru"
    LFU = "lfu"
    BELADY = "belady"
    STATIC = "static"


class CacheScope(StrEnum):
    """What an expert cache's capacity covers: one MoE layer (``layer``), or all layers of a GPU
    together, over (layer, expert) keys (``global``)."""

    LAYER = "layer"
    GLOBAL = "global"


class CacheReset(StrEnum):
    """When the expert caches empty: never, or when a step starts a new sequence."""

    NONE = "none"
    SEQUENCE = "sequence"


class MissMode(StrEnum):
    """What a cache miss does: copy the weights, run on the CPU, copy in low precision, run on PIM,
    or choose among those per expert."""

    FETCH = "fetch"
    CPU = "cpu"
    LOWBIT = "lowbit"
    PIM = "pim"
    AUTO = "auto"
    """Per (step, layer, expert), whichever of the others the cluster can run is predicted fastest."""


class Prefetch(StrEnum):
    """Next-layer prefetch: none, the true experts (an upper bound), or a cross-layer predictor."""

    NONE = "none"
    ORACLE = "oracle"
    PREDICTOR = "predictor"


class AllToAll(StrEnum):
    """How the expert-parallel all-to-all moves tokens: one copy per (token, expert) over the
    topology (``flat``); once per destination node over RDMA, then forwarded over NVLink inside the
    node (``hierarchical``, DeepEP's normal kernels, for prefill); one RDMA message per (token,
    expert) straight to every destination GPU with fixed buffers (``low-latency``, DeepEP's
    low-latency kernels, for decode)."""

    FLAT = "flat"
    HIERARCHICAL = "hierarchical"
    LOW_LATENCY = "low-latency"


class CpuNuma(StrEnum):
    """How a multi-socket host runs CPU experts: each expert split over every socket from local DDR
    (KTransformers' NUMA tensor parallelism), whole experts spread over the sockets, the host socket
    alone with pages interleaved over all sockets, or the host socket alone from its own DDR."""

    TENSOR_PARALLEL = "tensor-parallel"
    PARTITION = "partition"
    INTERLEAVE = "interleave"
    ONE_SOCKET = "one-socket"


class Replan(StrEnum):
    """When the simulator re-plans expert placement while serving (``moesim.sim.replan_policies``):
    never, every N steps, when recent load has moved far enough from the load the plan was made on,
    or once, for several recent windows at a time (a hedged static plan)."""

    STATIC = "static"
    PERIODIC = "periodic"
    DRIFT = "drift"
    HEDGED = "hedged"


class Migration(StrEnum):
    """How a new plan's expert weights are moved: serving stops until the copies land (``blocking``),
    or they use the links while the all-to-alls leave them idle and the plan switches when they
    land (``overlapped``)."""

    BLOCKING = "blocking"
    OVERLAPPED = "overlapped"


class MigrationSource(StrEnum):
    """Where a new replica's weights come from: the nearest GPU holding the expert (``gpu``, the
    engines' peer-to-peer copies), or that or the host's pinned copy over PCIe, whichever is faster
    (``host``: the host keeps every expert)."""

    GPU = "gpu"
    HOST = "host"


AUTO = "auto"
"""The cache planner may also be asked to choose a policy, miss mode or prefetch itself."""

E = TypeVar("E", bound=StrEnum)


def choices(enum: type[StrEnum], *extra: str) -> tuple[str, ...]:
    """The values of ``enum`` (plus ``extra`` words such as ``auto``), for argparse ``choices``."""
    return (*(m.value for m in enum), *extra)


def parse(enum: type[E], value: Any, *, field: str, file: str | None = None) -> E:
    """``value`` as a member of ``enum``, or a :class:`UserError` naming the field and the choices."""
    try:
        return enum(value)
    except ValueError:
        raise UserError(f"expected one of {', '.join(choices(enum))}, got {value!r}",
                        file=file, field=field) from None
