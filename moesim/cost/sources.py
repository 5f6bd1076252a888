"""Where op times come from: calibration tables (on the GPUs they were measured on) or the roofline.

:class:`Tables` answers table lookups for the GPUs a calibration applies to; :class:`SourceLog`
counts, per op, how many results came from each source (``CostModel.sources()``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import numpy as np

from moesim.errors import UserError
from moesim.specs.hardware import Cluster, Device
from moesim.specs.model import MoEModel

Source = Literal["table", "roofline"]


class MeasuredTables(Protocol):
    """What the cost model needs of a loaded calibration (``moesim.calibration.Calibration``; CPU
    tables also carry ``cpu``, the CPU they were measured on)."""

    device: str
    """GPU name the tables were measured on."""

    @property
    def ops(self) -> tuple[str, ...]: ...

    def time_s(self, op: str, *, exact: bool = False, **shape: Any) -> float | None: ...


OPS = (
    "expert",
    "cpu_expert",
    "pim_expert",
    "attention",
    "router",
    "permute_combine",
    "shared_expert",
    "dense_ffn",
    "lm_head",
    "embedding",
    "transfer",
    "weight_fetch",
    "all_to_all",
    "all_reduce",
)

# Which calibration tables can answer each op (any one group; every table of the group needed).
TABLE_OPS: dict[str, tuple[tuple[str, ...], ...]] = {
    "expert": (("grouped_gemm",),),
    "router": (("gemm",),),
    "permute_combine": (("moe_align", "combine"), ("hbm_copy",)),
    "shared_expert": (("gemm",),),
    "dense_ffn": (("gemm",),),
    "transfer": (("p2p",), ("h2d",), ("d2h",)),
    "weight_fetch": (("h2d",),),
    "cpu_expert": (("cpu_expert",),),
}
CPU_TABLE_OPS = frozenset({"cpu_expert"})


def gpu_family(name: str) -> set[str]:
    """Model tokens of a GPU name ('NVIDIA H100 80GB HBM3' -> {'h100'}, 'rtx-4090' -> {'4090'}),
    to match a calibration's device to a hardware profile's device model."""
    tokens = re.findall(r"[a-z]*\d+[a-z]*", name.lower())
    return {t for t in tokens if not (t.endswith("gb") or t.startswith(("hbm", "sxm", "pcie", "gen", "nvl")))}


class Tables:
    """A calibration restricted to the GPUs (``devices``) and CPUs (``cpu_devices``) it applies to."""

    def __init__(self, cluster: Cluster, calibration: MeasuredTables | None,
                 explicit: Sequence[str] | None = None):
        self.calibration = calibration
        self.devices = self._devices(cluster, calibration, explicit)
        self.cpu_devices = self._cpu_devices(cluster, calibration, explicit)

    @staticmethod
    def _devices(cluster: Cluster, calibration: Any | None, explicit: Sequence[str] | None) -> frozenset[str]:
        if calibration is None:
            return frozenset()
        gpus = cluster.gpus
        if explicit is not None:
            ids = {d.id for d in gpus} | {d.id for d in cluster.devices_of("cpu")}
            unknown = [d for d in explicit if d not in ids]
            if unknown:
                example = gpus[0].id if gpus else "n0.gpu0"
                raise UserError(
                    f"expected GPU or CPU ids of cluster {cluster.name} (such as {example}), "
                    f"got {', '.join(unknown)}",
                    field="calibrated_devices",
                )
            return frozenset(d for d in explicit if cluster.device(d).kind == "gpu")
        if getattr(calibration, "cpu", "") and not getattr(calibration, "device", ""):
            return frozenset()  # CPU tables only
        measured = getattr(calibration, "device", None)
        if not measured:
            return frozenset(d.id for d in gpus)
        family = gpu_family(str(measured))
        hits = frozenset(d.id for d in gpus if family & gpu_family(d.spec.model))
        if not hits:
            models = sorted({d.spec.model for d in gpus})
            raise UserError(
                f"calibration was measured on {measured!r}, expected one of the cluster's GPUs "
                f"({', '.join(models) or 'none'}); name the GPUs it should apply to to override",
                field="calibration.device",
            )
        return hits

    @staticmethod
    def _cpu_devices(
        cluster: Cluster, calibration: Any | None, explicit: Sequence[str] | None
    ) -> frozenset[str]:
        """CPUs whose model number matches the measured CPU's; every CPU when the measured name has no
        model number (virtual machines report 'Intel(R) Xeon(R) Processor')."""
        measured = str(getattr(calibration, "cpu", "") or "")
        if not measured:
            return frozenset()
        cpus = cluster.devices_of("cpu")
        if explicit is not None:
            return frozenset(d for d in explicit if cluster.device(d).kind == "cpu")
        family = gpu_family(measured)
        if not family:
            return frozenset(d.id for d in cpus)
        hits = frozenset(d.id for d in cpus if family & gpu_family(d.spec.model))
        if cpus and not hits:
            models = sorted({d.spec.model for d in cpus})
            raise UserError(
                f"CPU tables were measured on {measured!r}, expected one of the cluster's CPUs "
                f"({', '.join(models)}); name the CPUs they should apply to to override",
                field="calibration.cpu",
            )
        return hits

    def __bool__(self) -> bool:
        return bool(self.devices or self.cpu_devices)

    def covers(self, device_id: str) -> bool:
        return device_id in self.devices

    def covers_cpu(self, cpu_id: str) -> bool:
        """True where a ``cpu_expert`` table applies to this CPU."""
        return cpu_id in self.cpu_devices and bool(getattr(self.calibration, "covers", lambda op: True)(
            "cpu_expert"))

    def cpu_expert_s(self, cpu_id: str, **shape: Any) -> float | None:
        """The ``cpu_expert`` table's seconds at ``shape`` (rows, hidden, ffn, dtype, impl) on
        ``cpu_id``; None where no table applies or the shape is outside the measured range."""
        if cpu_id not in self.cpu_devices:
            return None
        value = self.calibration.time_s("cpu_expert", **shape)
        return None if value is None else float(value)

    def time_s(self, device_id: str, table_op: str, **shape: Any) -> float | None:
        """The table's seconds for ``table_op`` at ``shape`` on ``device_id``; None where no table
        applies or the shape is outside the measured range."""
        if device_id not in self.devices:
            return None
        value = self.calibration.time_s(table_op, **shape)
        return None if value is None else float(value)

    # -- cost ops answered by tables (None: no table applies, the caller uses the roofline) --

    def grouped_experts_s(
        self, device_id: str, model: MoEModel, tokens_per_expert: np.ndarray, weight_dtype: str
    ) -> float | None:
        """``grouped_gemm`` at the mean tokens of the active experts (non-uniform loads use the mean)."""
        t = tokens_per_expert[tokens_per_expert > 0]
        if not len(t) or not self.covers(device_id):
            return None
        return self.time_s(
            device_id,
            "grouped_gemm",
            tokens_per_expert=float(t.mean()),
            num_experts=len(t),
            hidden=model.hidden_size,
            ffn=model.expert_intermediate_size,
            dtype=weight_dtype,
        )

    def gemm_s(self, device_id: str, m: float, n: int, k: int, dtype: str) -> float | None:
        return self.time_s(device_id, "gemm", m=int(m), n=n, k=k, dtype=dtype)

    def ffn_gemms_s(
        self, device_id: str, model: MoEModel, tokens: float, width: int, dtype: str
    ) -> float | None:
        """Gate/up and down GEMMs of one FFN of ``width`` (the activation is the caller's)."""
        up = self.gemm_s(device_id, tokens, (2 if model.gated else 1) * width, model.hidden_size, dtype)
        down = self.gemm_s(device_id, tokens, model.hidden_size, width, dtype) if up is not None else None
        return None if up is None or down is None else up + down

    def permute_combine_s(self, device_id: str, model: MoEModel, tokens: float) -> float | None:
        """The Triton kernels permute by index (``moe_align``), gather rows inside the GEMM, then
        ``combine``; without those tables, two device copies of the k copies of each token."""
        t = int(tokens)
        align = self.time_s(
            device_id, "moe_align", tokens=t, num_experts=model.num_experts, top_k=model.top_k
        )
        if align is not None:
            combine = self.time_s(
                device_id,
                "combine",
                tokens=t,
                top_k=model.top_k,
                hidden=model.hidden_size,
                dtype=model.activation_dtype,
            )
            if combine is not None:
                return align + combine
        copy = self.time_s(
            device_id, "hbm_copy", bytes=float(model.top_k * tokens * model.activation_bytes_per_token)
        )
        return None if copy is None else 2.0 * copy

    def transfer_s(self, src: Device, dst: Device, nbytes: float, pinned: bool) -> float | None:
        """``p2p`` between GPUs of one node, ``h2d`` / ``d2h`` between a CPU and a GPU."""
        if src.kind == "gpu" and dst.kind == "gpu" and src.node == dst.node:
            return self.time_s(dst.id, "p2p", bytes=nbytes)
        if src.kind == "cpu" and dst.kind == "gpu":
            return self.time_s(dst.id, "h2d", bytes=nbytes, pinned=pinned)
        if src.kind == "gpu" and dst.kind == "cpu":
            return self.time_s(src.id, "d2h", bytes=nbytes, pinned=pinned)
        return None

    def usable_ops(self) -> set[str]:
        """Cost ops whose tables the calibration holds, for devices they apply to."""
        listed = set(getattr(self.calibration, "ops", ()) or ())
        return {
            op for op, groups in TABLE_OPS.items()
            if (self.cpu_devices if op in CPU_TABLE_OPS else self.devices)
            and any(all(t in listed for t in g) for g in groups)
        }


# Memoised results per log (the simulator asks for the same shapes step after step).
MEMO_ENTRIES = 100_000


def arg_key(x: Any) -> Any:
    """A hashable key for a scalar, string, None or numpy array argument."""
    if isinstance(x, np.ndarray):
        return (x.shape, x.dtype.str, x.tobytes())
    return x if x is None or isinstance(x, (str, bool)) else float(x)


class SourceLog:
    """Counts of results per op and source, and a memo of results that replays those counts."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {op: [0, 0] for op in OPS}
        self._memo: dict[tuple[Any, ...], tuple[Any, int, int]] = {}

    def memoised(self, op: str, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` once per (op, key); a hit returns the result (a copy for arrays) and counts
        it under the sources the first call was counted under. Only for pure computations: the
        memo must never change an answer."""
        full = (op, *map(arg_key, key))
        counts = self.counts[op]
        hit = self._memo.get(full)
        if hit is None:
            before = tuple(counts)
            value = compute()
            if len(self._memo) >= MEMO_ENTRIES:
                self._memo.clear()
            hit = self._memo[full] = (value, counts[0] - before[0], counts[1] - before[1])
        else:
            counts[0] += hit[1]
            counts[1] += hit[2]
        return hit[0].copy() if isinstance(hit[0], np.ndarray) else hit[0]

    def note(self, op: str, source: Source, n: int = 1) -> None:
        self.counts[op][0 if source == "table" else 1] += n

    def labels(self, usable: set[str]) -> dict[str, str]:
        """``table`` / ``roofline`` / ``table+roofline`` per op; unused ops say what they would use."""
        out: dict[str, str] = {}
        for op, (table, roof) in self.counts.items():
            if table and roof:
                out[op] = "table+roofline"
            elif table or roof:
                out[op] = "table" if table else "roofline"
            else:
                out[op] = "table" if op in usable else "roofline"
        return out

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {op: {"table": t, "roofline": r} for op, (t, r) in self.counts.items()}
