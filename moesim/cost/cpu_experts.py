"""CPU experts on a (multi-socket) host: the chosen kernel per socket, NUMA placement, tables.

Experts run one after another on a socket (Fiddler, KTransformers), each priced by
:mod:`moesim.cost.cpu_kernels` or, where a ``cpu_expert`` calibration table covers the CPU and
measured that kernel's implementation, by the table. A node's sockets are the CPU devices of its
node, the GPU's host socket first. How a multi-socket node shares the work (``--cpu-numa``):

- ``tensor-parallel`` (default): every expert is split over the S sockets, each computing 1/S of
  its columns from its own DDR (KTransformers' NUMA-aware tensor parallelism); the sockets run in
  parallel, each added socket adding TP_SOCKET_GAIN of one socket's rate; the rows go to every other
  socket and the partial outputs come back over UPI/xGMI.
- ``partition``: whole experts live on socket ``expert_id mod S`` and run there, the sockets in
  parallel; the rows of a remote socket's experts cross UPI/xGMI both ways.
- ``interleave``: the host socket runs every expert; pages are interleaved over the S sockets, so
  (S-1)/S of each expert's bytes stream over UPI/xGMI at the link's bandwidth.
- ``one-socket``: the host socket alone, from its own DDR (``numactl -N0 -m0``; a single socket).

A single-socket node always runs ``one-socket``. See docs/cost.md ("CPU experts").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from moesim.cost.cpu_kernels import CpuKernel, choose_kernel
from moesim.cost.roofline import Roofline
from moesim.cost.transfers import point_to_point_s
from moesim.errors import UserError
from moesim.specs.hardware import Cluster, CpuKernelSpec
from moesim.specs.model import DTYPE_BYTES, MoEModel
from moesim.vocab import CpuNuma, parse

# Each socket beyond the first adds this fraction of one socket's rate under NUMA tensor parallelism:
# KTransformers' NUMA-aware TP "yields up to 63% decoding throughput improvement on dual-socket
# servers" (lmsys.org/blog/2025-10-22-KTransformers). Its v0.2 prefill went 54.21 -> 82.94 tokens/s
# from one socket to two (+53%, kvcache-ai/ktransformers doc/en/DeepseekR1_V3_tutorial.md @034a116).
TP_SOCKET_GAIN = 0.63


@dataclass(frozen=True)
class CpuOptions:
    """Per-run choices for CPU experts: a kernel kind (None: by the expert dtype) and the NUMA mode."""

    kernel: str | None = None
    numa: CpuNuma = CpuNuma.TENSOR_PARALLEL

    @classmethod
    def of(cls, kernel: str | None = None, numa: str | None = None) -> CpuOptions:
        mode = CpuNuma.TENSOR_PARALLEL if numa is None else parse(CpuNuma, numa, field="--cpu-numa")
        return cls(kernel=kernel, numa=mode)


class CpuExperts:
    """Seconds of the experts a CPU (socket) is given, with the node's other sockets as the NUMA mode
    says. Holds memoised kernels only."""

    def __init__(
        self,
        cluster: Cluster,
        model: MoEModel,
        roofline: Callable[[str], Roofline],
        tables: object | None = None,
        options: CpuOptions | None = None,
        *,
        infinite_bandwidth: bool = False,
    ):
        self.cluster = cluster
        self.model = model
        self.roofline = roofline
        self.tables = tables
        self.options = options or CpuOptions()
        self.infinite_bandwidth = infinite_bandwidth
        self._kernels: dict[tuple[str, str], CpuKernel] = {}
        wanted = self.options.kernel
        for spec in {d.spec.model: d.spec for d in cluster.devices_of("cpu")}.values():
            if wanted is not None and wanted not in spec.cpu_kernels:
                known = ", ".join(spec.cpu_kernels) or "none (the entry has no kernels: section)"
                raise UserError(f"CPU {spec.model} has no kernel {wanted!r}; expected one of: {known}",
                                field="--cpu-kernel")

    # ------------------------------------------------------------------ kernels and sockets

    def kernel(self, cpu_id: str, dtype: str | None = None) -> CpuKernelSpec:
        """The kernel ``cpu_id`` runs experts of ``dtype`` (default: the model's) with."""
        return self._kernel(cpu_id, dtype).spec

    def _kernel(self, cpu_id: str, dtype: str | None) -> CpuKernel:
        weight = dtype or self.model.weight_dtype
        if weight not in DTYPE_BYTES:
            raise UserError(f"expected a weight dtype among {', '.join(DTYPE_BYTES)}, got {weight!r}")
        spec = self.cluster.device(cpu_id).spec
        key = (spec.model, weight)
        if key not in self._kernels:
            impl = self._measured_impl(cpu_id)
            chosen = choose_kernel(spec, self.model, weight, self.options.kernel, measured_impl=impl)
            self._kernels[key] = CpuKernel.of(chosen, spec, self.model)
        return self._kernels[key]

    def _measured_impl(self, cpu_id: str) -> str | None:
        covers = getattr(self.tables, "covers_cpu", None)
        return "torch" if covers is not None and covers(cpu_id) else None

    def sockets(self, cpu_id: str) -> tuple[str, ...]:
        """The CPU devices of ``cpu_id``'s node, ``cpu_id`` first."""
        node = self.cluster.device(cpu_id).node
        others = [d.id for d in self.cluster.devices_of("cpu", node) if d.id != cpu_id]
        return (cpu_id, *others)

    def numa(self, cpu_id: str) -> CpuNuma:
        return self.options.numa if len(self.sockets(cpu_id)) > 1 else CpuNuma.ONE_SOCKET

    # ------------------------------------------------------------------ pricing

    def time_s(
        self,
        cpu_id: str,
        tokens_per_expert: np.ndarray,
        dtype: str | None = None,
        experts: np.ndarray | None = None,
    ) -> tuple[float, str]:
        """Seconds of the experts with ``tokens_per_expert`` rows each (``experts``: their ids, for the
        ``partition`` mode's home socket; default 0..n-1) and whether a table or the roofline priced
        them (``"table"``, ``"roofline"``)."""
        t = np.asarray(tokens_per_expert, dtype=float).ravel()
        ids = np.arange(len(t)) if experts is None else np.asarray(experts, dtype=np.int64).ravel()
        if ids.shape != t.shape:
            raise ValueError(f"experts must match tokens_per_expert ({t.shape}), got {ids.shape}")
        kernel = self._kernel(cpu_id, dtype)
        keep = t > 0
        t, ids = t[keep], ids[keep]
        if not len(t):
            return 0.0, "roofline"
        sockets = self.sockets(cpu_id)
        mode = self.numa(cpu_id)
        used: set[str] = set()
        if mode == CpuNuma.ONE_SOCKET:
            seconds = float(self._per_expert(cpu_id, kernel, t, 1.0, used).sum())
        elif mode == CpuNuma.TENSOR_PARALLEL:
            share = 1.0 / len(sockets)
            per = np.max([self._per_expert(s, kernel, t, share, used) for s in sockets], axis=0)
            per *= len(sockets) / (1.0 + TP_SOCKET_GAIN * (len(sockets) - 1))
            rows_bytes = float(t.sum()) * self.model.activation_bytes_per_token
            seconds = float(per.sum()) + max(self._round_trip_s(cpu_id, s, rows_bytes) for s in sockets[1:])
        elif mode == CpuNuma.PARTITION:
            home = ids % len(sockets)
            seconds = 0.0
            for i, s in enumerate(sockets):
                mine = t[home == i]
                if not len(mine):
                    continue
                busy = float(self._per_expert(s, kernel, mine, 1.0, used).sum())
                rows_bytes = float(mine.sum()) * self.model.activation_bytes_per_token
                busy += self._round_trip_s(cpu_id, s, rows_bytes)
                seconds = max(seconds, busy)
        else:
            seconds = float(self._interleaved(cpu_id, sockets, kernel, t, used).sum())
        return seconds, "table" if used == {"table"} else "roofline"

    def _table(self, cpu_id: str, kernel: CpuKernel, rows: np.ndarray, share: float) -> np.ndarray:
        """Table seconds of each expert's ``share`` (NaN where no table covers the shape)."""
        out = np.full(rows.shape, np.nan)
        lookup = getattr(self.tables, "cpu_expert_s", None)
        if lookup is None or not kernel.spec.impl:
            return out
        m = self.model
        for r in np.unique(rows):
            value = lookup(cpu_id, rows=float(r), hidden=m.hidden_size,
                           ffn=m.expert_intermediate_size * share, dtype=kernel.spec.dtype,
                           impl=kernel.spec.impl)
            if value is not None:
                out[rows == r] = value
        return out

    @staticmethod
    def _note(out: np.ndarray, used: set[str]) -> np.ndarray:
        todo = np.isnan(out)
        if (~todo).any():
            used.add("table")
        if todo.any():
            used.add("roofline")
        return todo

    def _per_expert(self, cpu_id: str, kernel: CpuKernel, rows: np.ndarray, share: float,
                    used: set[str]) -> np.ndarray:
        """Seconds of each expert's ``share`` on socket ``cpu_id`` from its own DDR: the table where it
        covers the shape, else the kernel's roofline."""
        out = self._table(cpu_id, kernel, rows, share)
        todo = self._note(out, used)
        out[todo] = kernel.expert_s(self.roofline(cpu_id), rows[todo], share)
        return out

    def _interleaved(self, host: str, sockets: tuple[str, ...], kernel: CpuKernel, rows: np.ndarray,
                     used: set[str]) -> np.ndarray:
        """The host socket computes (table time, else the kernel's compute time); each socket serves
        1/S of every expert's bytes, the remote parts over the host's path to that socket, at most at
        that socket's DDR rate."""
        base = self._table(host, kernel, rows, 1.0)
        todo = self._note(base, used)
        base[todo] = kernel.compute_s(rows[todo])
        part = kernel.bytes(rows, 1.0 / len(sockets))
        slowest = self.roofline(host).memory_s(part)
        for s in sockets[1:]:
            wire = 0.0 if self.infinite_bandwidth else part / self.cluster.bottleneck_bandwidth(host, s)
            link = wire + self.cluster.path_latency(host, s)
            slowest = np.maximum(slowest, np.maximum(self.roofline(s).memory_s(part), link))
        return np.maximum(base, slowest)

    def _round_trip_s(self, host: str, socket: str, nbytes: float) -> float:
        """Rows to ``socket`` and results back (0 when ``socket`` is the host)."""
        if socket == host or nbytes <= 0:
            return 0.0
        inf = self.infinite_bandwidth
        out = point_to_point_s(self.cluster, host, socket, nbytes, infinite_bandwidth=inf)
        back = point_to_point_s(self.cluster, socket, host, nbytes, infinite_bandwidth=inf)
        return float(out) + float(back)
