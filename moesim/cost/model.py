"""CostModel: seconds for each op of an MoE layer on each device of a cluster, and for moving bytes.

Compute ops use the roofline of :mod:`moesim.cost.roofline` with the size-dependent efficiency of
:mod:`moesim.cost.efficiency`, or a measured calibration table (a loaded
``moesim.calibration.Calibration``, given by the caller) where one covers the op's shape on that
GPU. Communication uses the topology (:mod:`moesim.cost.collectives`, :mod:`moesim.cost.transfers`).
All times are seconds; array arguments are vectorised. ``sources()`` says, per op, whether results
came from a table or the roofline. See docs/cost.md for the formulas and the named factors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from moesim.cost import experts, ops
from moesim.cost.allreduce import Ring
from moesim.cost.collectives import CollectiveCosts
from moesim.cost.cpu_experts import CpuExperts, CpuOptions
from moesim.cost.experts import ExpertCoefficients
from moesim.cost.layerops import LayerOps, _out, check_compute_dtypes
from moesim.cost.roofline import Roofline
from moesim.cost.sources import MeasuredTables, SourceLog, Tables
from moesim.cost.transfers import host_of, lowbit_bytes, path_pinned, point_to_point_s
from moesim.errors import UserError
from moesim.specs.hardware import Cluster
from moesim.specs.model import MoEModel
from moesim.specs.precision import kernel_dtype
from moesim.specs.runtime import Runtime


class CostModel(LayerOps, CollectiveCosts):
    """Op times for ``model`` on ``cluster``; ``calibration`` (a ``Calibration``) replaces the
    roofline where its tables cover a shape. Instances memoise routes and count table/roofline use;
    they hold no other state."""

    def __init__(
        self,
        cluster: Cluster,
        model: MoEModel,
        calibration: MeasuredTables | None = None,
        *,
        infinite_bandwidth: bool = False,
        calibrated_devices: Sequence[str] | None = None,
        cpu: CpuOptions | None = None,
        runtime: Runtime | None = None,
    ):
        """``calibration``: loaded tables (``moesim.calibration.load_calibration(folder)``; the
        workflows' ``cost_model`` also loads a profile's ``calibration:`` folder). They apply to the
        GPUs whose model matches ``calibration.device`` (CPU tables: ``calibration.cpu``), or to
        ``calibrated_devices`` if given; without them every op uses the roofline. ``cpu``: the CPU
        expert kernel and NUMA mode (docs/cost.md). ``runtime``: the serving framework's overheads
        (:mod:`moesim.specs.runtime`; with CUDA graphs a GPU kernel launch costs its ``graph_launch``)."""
        if isinstance(calibration, (str, Path)):
            raise TypeError("CostModel takes loaded tables: moesim.calibration.load_calibration(folder), "
                            "or moesim.workflows.cost_model(cluster, model, folder)")
        super().__init__(cluster, infinite_bandwidth=infinite_bandwidth)
        self.model = model
        self.calibration = calibration
        self._explicit_devices = None if calibrated_devices is None else tuple(calibrated_devices)
        self.runtime = runtime or Runtime()
        by_spec: dict[int, Roofline] = {}
        self._roof: dict[str, Roofline] = {}
        for d in cluster.devices:
            key = id(d.spec)
            if key not in by_spec:
                roof = Roofline.of(d.spec)
                if d.kind == "gpu":
                    launch = self.runtime.launch_overhead_s(roof.launch_overhead_s)
                    roof = replace(roof, launch_overhead_s=launch)
                by_spec[key] = roof
            self._roof[d.id] = by_spec[key]
        self._coef: dict[tuple[int, str | None], ExpertCoefficients] = {}
        self._log = SourceLog()
        self._hosts: dict[str, str] = {}
        self._tables = Tables(cluster, calibration, self._explicit_devices)
        check_compute_dtypes(cluster, model)
        self.cpu_options = cpu or CpuOptions()
        self.cpu = CpuExperts(cluster, model, self.roofline, self._tables, self.cpu_options,
                              infinite_bandwidth=infinite_bandwidth)

    # ---------------------------------------------------------------- bookkeeping

    def _note(self, op: str, source: str, n: int = 1) -> None:
        self._log.note(op, "table" if source == "table" else "roofline", n)

    def _memoised(self, op: str, device_id: str, args: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (op, device spec, table coverage, args) (see :class:`SourceLog`)."""
        return self._log.memoised(
            op, (id(self.roofline(device_id)), self._tables.covers(device_id), *args), compute
        )

    @property
    def calibrated_devices(self) -> frozenset[str]:
        """GPU ids the calibration tables apply to (empty without a calibration)."""
        return self._tables.devices

    def sources(self) -> dict[str, str]:
        """Per op: ``"table"``, ``"roofline"``, or ``"table+roofline"`` when both were used. Ops not
        used yet report ``"table"`` when the calibration holds the tables they use, else
        ``"roofline"``."""
        return self._log.labels(self._tables.usable_ops())

    def source_counts(self) -> dict[str, dict[str, int]]:
        """How many results of each op came from a table and from the roofline."""
        return self._log.as_dict()

    def with_infinite_bandwidth(self) -> CostModel:
        """The same cost model with every link (NVLink, PCIe, NIC, fabric) costing only its latency."""
        return CostModel(
            self.cluster,
            self.model,
            self.calibration,
            infinite_bandwidth=True,
            calibrated_devices=self._explicit_devices,
            cpu=self.cpu_options,
            runtime=self.runtime,
        )

    def roofline(self, device_id: str) -> Roofline:
        try:
            return self._roof[device_id]
        except KeyError:
            raise UserError(f"no device {device_id!r} in cluster {self.cluster.name}") from None

    def op_time_s(
        self, device_id: str, flops: Any, nbytes: Any, dtype: str | None = None, *, launches: Any = 1
    ) -> Any:
        """Roofline time of a generic op (FLOPs, bytes) on ``device_id``."""
        roof = self.roofline(device_id)
        return _out(roof.time_s(flops, nbytes, dtype or self.model.activation_dtype, launches=launches))

    # ---------------------------------------------------------------- experts

    def _coefficients(self, roof: Roofline, dtype: str | None) -> ExpertCoefficients:
        key = (id(roof), dtype)
        coef = self._coef.get(key)
        if coef is None:
            pinned = self.model.compute_dtype_of("routed_experts")
            coef = self._coef[key] = ExpertCoefficients.of(self.model, roof, dtype,
                                                           compute=kernel_dtype(pinned) if pinned else None)
        return coef

    def expert_compute_s(
        self, device_id: str, tokens_per_expert: np.ndarray, dtype: str | None = None
    ) -> float:
        """One grouped expert call (gate/up GEMM, activation, down GEMM) over the experts of
        ``device_id``; experts with 0 tokens cost nothing, weights are read once per active expert.
        CPU and PIM devices are dispatched to :meth:`cpu_expert_s` / :meth:`pim_expert_s`."""
        kind = self._device(device_id).kind
        if kind == "cpu":
            return self.cpu_expert_s(device_id, tokens_per_expert, dtype)
        if kind == "pim":
            return self.pim_expert_s(device_id, tokens_per_expert, dtype)
        roof = self._roof[device_id]
        coef = self._coefficients(roof, dtype)
        t = np.asarray(tokens_per_expert, dtype=float)
        if self._tables.covers(device_id):
            value = self._tables.grouped_experts_s(device_id, self.model, t, coef.weight_dtype)
            if value is not None:
                self._note("expert", "table")
                return value
        self._note("expert", "roofline")
        return experts.grouped_call_s(roof, coef, t)

    def expert_tile_rows(self, device_id: str, dtype: str | None = None) -> int:
        """Rows each expert's GEMM pads its tokens to on ``device_id`` (the kernel's M tile; 1: none)."""
        return int(self._coefficients(self.roofline(device_id), dtype).tile_rows)

    def expert_aggregates_s(self, device_id: str, rows: np.ndarray, active: np.ndarray, tokens: np.ndarray,
                            dtype: str | None = None) -> np.ndarray | None:
        """:meth:`expert_compute_batch_s` of grouped calls on ``device_id`` given by aggregates (arrays
        of one shape): ``rows`` the experts' tokens padded to :meth:`expert_tile_rows` and summed,
        ``active`` the experts with tokens, ``tokens`` their sum. The same floats as pricing the
        calls' token rows whenever every per-expert FLOP and byte term is a whole number (sums of
        whole numbers below 2**53 are exact in any order), which is checked; None where it does not
        hold or a calibration table prices the device."""
        if self._device(device_id).kind != "gpu" or self._tables.covers(device_id):
            return None
        roof = self._roof[device_id]
        coef = self._coefficients(roof, dtype)
        terms = (coef.flops_per_row, coef.weight_bytes, coef.activation_bytes_per_token)
        if not all(float(x).is_integer() and x >= 0 for x in terms):
            return None
        rows, active, tokens = (np.asarray(x, dtype=float) for x in (rows, active, tokens))
        flops = coef.flops_per_row * rows
        nbytes = coef.weight_bytes * active + coef.activation_bytes_per_token * tokens
        if flops.size and max(float(flops.max()), float(nbytes.max())) >= 2.0 ** 53:
            return None
        self._note("expert", "roofline", int(flops.size))
        return roof.time_s(flops, nbytes, coef.compute_dtype, launches=ops.LAUNCHES["expert"] * (tokens > 0))

    def expert_compute_batch_s(
        self, device_ids: Sequence[str], tokens_per_expert: np.ndarray, dtype: str | None = None,
        tp: int = 1,
    ) -> np.ndarray:
        """:meth:`expert_compute_s` for several GPUs at once: ``tokens_per_expert`` is [D, E_local]
        (pad with zeros); returns [D] seconds. ``tp`` > 1: one GPU's 1/tp shard of each expert (its
        gate/up columns and down rows: 1/tp of the FLOPs and weight bytes, whole activations in and
        out; :mod:`moesim.plans.ep_groups`)."""
        model = self.model if tp == 1 else replace(
            self.model, expert_intermediate_size=self.model.expert_intermediate_size // tp)
        t = np.asarray(tokens_per_expert, dtype=float)
        if t.ndim != 2 or t.shape[0] != len(device_ids):
            raise ValueError(f"tokens_per_expert must be [{len(device_ids)}, experts], got {t.shape}")
        out = np.full(len(device_ids), np.nan)
        groups: dict[int, list[int]] = {}
        group_of: dict[str, list[int]] = {}
        for d in dict.fromkeys(device_ids):  # each distinct id checked once (rows repeat ids)
            self._device(d, "gpu")
            group_of[d] = groups.setdefault(id(self._roof[d]), [])
        for i, d in enumerate(device_ids):
            group_of[d].append(i)
        for rows in groups.values():
            roof = self._roof[device_ids[rows[0]]]
            coef = self._coefficients(roof, dtype)
            covered = {d for d in group_of if group_of[d] is rows and self._tables.covers(d)}
            for i in (rows if covered else ()):
                if device_ids[i] in covered:
                    value = self._tables.grouped_experts_s(device_ids[i], model, t[i], coef.weight_dtype)
                    if value is not None:
                        out[i] = value
                        self._note("expert", "table")
            idx = np.asarray(rows, dtype=np.int64)
            todo = idx[np.isnan(out[idx])]
            if len(todo):
                out[todo] = experts.grouped_calls_s(roof, model, coef, t[todo])
                self._note("expert", "roofline", len(todo))
        return out

    def expert_times_s(
        self, device_id: str, tokens_per_expert: np.ndarray, dtype: str | None = None
    ) -> np.ndarray:
        """Per-expert seconds, each expert as if run alone with no launch overhead (for planners,
        which add them up); 0 for experts with no tokens."""
        roof = self.roofline(device_id)
        coef = self._coefficients(roof, dtype)
        t = np.asarray(tokens_per_expert, dtype=float)
        out = np.full(t.shape, np.nan)
        out[t <= 0] = 0.0
        if self._tables.covers(device_id):
            for n in np.unique(t[t > 0]):
                value = self._tables.grouped_experts_s(
                    device_id, self.model, np.array([n]), coef.weight_dtype
                )
                if value is not None:
                    out[t == n] = value
                    self._note("expert", "table", int(np.sum(t == n)))
        todo = np.isnan(out)
        out[todo] = experts.standalone_s(roof, self.model, coef, t[todo])
        self._note("expert", "roofline", int(todo.sum()))
        return out

    def _sequential_experts_s(
        self, device_id: str, tokens_per_expert: np.ndarray, dtype: str | None, op: str
    ) -> float:
        roof = self._roof[device_id]
        self._note(op, "roofline")
        t = np.asarray(tokens_per_expert, dtype=float)
        return experts.sequential_s(roof, self.model, self._coefficients(roof, dtype), t)

    def cpu_expert_s(
        self, cpu_id: str, tokens_per_expert: np.ndarray, dtype: str | None = None,
        *, experts: np.ndarray | None = None,
    ) -> float:
        """Experts executed on a CPU host (Fiddler, KTransformers): one after another per socket with
        the CPU's kernel for the dtype, the node's sockets shared as the NUMA mode says
        (:mod:`moesim.cost.cpu_experts`); ``experts``: their ids (default 0..n-1)."""
        self._device(cpu_id, "cpu")
        seconds, source = self.cpu.time_s(cpu_id, tokens_per_expert, dtype, experts)
        self._note("cpu_expert", source)
        return seconds

    def pim_expert_s(self, pim_id: str, tokens_per_expert: np.ndarray, dtype: str | None = None) -> float:
        """Experts executed near memory (Duplex Logic-PIM): bytes at the internal bandwidth."""
        self._device(pim_id, "pim")
        return self._sequential_experts_s(pim_id, tokens_per_expert, dtype, "pim_expert")

    # ---------------------------------------------------------------- communication

    def ring(self, device_ids: Sequence[str]) -> Ring:
        """The (memoised) ring of a tensor-parallel group (:mod:`moesim.cost.allreduce`)."""
        memo: dict[tuple[str, ...], Ring] = self.__dict__.setdefault("_rings", {})
        key = tuple(device_ids)
        if key not in memo:
            for d in key:
                self._device(d)
            memo[key] = Ring.build(self, key)
        return memo[key]

    def all_reduce_s(self, device_ids: Sequence[str], nbytes: Any, kind: str = "all_reduce") -> Any:
        """A ring ``all_reduce`` (or ``reduce_scatter``/``all_gather``) of ``nbytes`` per device among
        ``device_ids`` on the topology (0 for one device or no bytes)."""
        self._note("all_reduce", "roofline")
        return self.ring(device_ids).time_s(nbytes, kind, infinite_bandwidth=self.infinite_bandwidth)

    def transfer_s(self, src: str, dst: str, nbytes: Any, *, pinned: bool = True) -> Any:
        """Path latency + bytes / bottleneck bandwidth from ``src`` to ``dst`` (a ``p2p``, ``h2d`` or
        ``d2h`` table when calibrated)."""
        a, b = self._device(src), self._device(dst)
        nb = np.asarray(nbytes, dtype=float)
        if not self.infinite_bandwidth and nb.ndim == 0 and nb > 0 and src != dst:
            value = self._tables.transfer_s(a, b, float(nb), pinned and path_pinned(self.cluster, src, dst))
            if value is not None:
                self._note("transfer", "table")
                return value
        self._note("transfer", "roofline")
        return _out(
            point_to_point_s(
                self.cluster, src, dst, nb, pinned=pinned, infinite_bandwidth=self.infinite_bandwidth
            )
        )

    def weight_fetch_s(
        self,
        dst_gpu: str,
        nbytes: Any,
        *,
        lowbit_dtype: str | None = None,
        pinned: bool = True,
        src: str | None = None,
    ) -> Any:
        """Host -> GPU fetch of ``nbytes`` of expert weights (given in the model's weight dtype)
        over PCIe from ``src`` (default: the GPU's host CPU); ``lowbit_dtype`` sends them in that
        precision instead (HOBBIT)."""
        self._device(dst_gpu, "gpu")
        host = (
            src or self._hosts.get(dst_gpu) or self._hosts.setdefault(dst_gpu, host_of(self.cluster, dst_gpu))
        )
        nb = lowbit_bytes(nbytes, self.model.weight_dtype, lowbit_dtype)
        if not self.infinite_bandwidth and nb.ndim == 0 and nb > 0:
            staged = not (pinned and path_pinned(self.cluster, host, dst_gpu))
            value = self._tables.time_s(dst_gpu, "h2d", bytes=float(nb), pinned=not staged)
            if value is not None:
                self._note("weight_fetch", "table")
                return value
        self._note("weight_fetch", "roofline")
        return _out(
            point_to_point_s(
                self.cluster, host, dst_gpu, nb, pinned=pinned, infinite_bandwidth=self.infinite_bandwidth
            )
        )

