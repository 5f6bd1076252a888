"""Where op times come from: calibration tables (on the GPUs they were measured on) or the roofline.

:class:`Tables` answers table lookups for the GPUs a calibration applies to; :class:`SourceLog`
counts, per op, how many results came from each source (``CostModel.sources()``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

from moesim.errors import UserError
from moesim.specs.hardware import Cluster

Source = Literal["table", "roofline"]

OPS = (
    "expert",
    "cpu_expert",
    "pim_expert",
    "attention",
    "router",
    "permute_combine",
    "shared_expert",
    "dense_ffn",
    "transfer",
    "weight_fetch",
    "all_to_all",
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
}


def gpu_family(name: str) -> set[str]:
    """Model tokens of a GPU name ('NVIDIA H100 80GB HBM3' -> {'h100'}, 'rtx-4090' -> {'4090'}),
    to match a calibration's device to a hardware profile's device model."""
    tokens = re.findall(r"[a-z]*\d+[a-z]*", name.lower())
    return {t for t in tokens if not (t.endswith("gb") or t.startswith(("hbm", "sxm", "pcie", "gen", "nvl")))}


class Tables:
    """A calibration restricted to the GPUs it applies to."""

    def __init__(self, cluster: Cluster, calibration: Any | None, explicit: Sequence[str] | None = None):
        self.calibration = calibration
        self.devices = self._devices(cluster, calibration, explicit)

    @staticmethod
    def _devices(cluster: Cluster, calibration: Any | None, explicit: Sequence[str] | None) -> frozenset[str]:
        if calibration is None:
            return frozenset()
        gpus = cluster.gpus
        if explicit is not None:
            ids = {d.id for d in gpus}
            unknown = [d for d in explicit if d not in ids]
            if unknown:
                example = gpus[0].id if gpus else "n0.gpu0"
                raise UserError(
                    f"expected GPU ids of cluster {cluster.name} (such as {example}), "
                    f"got {', '.join(unknown)}",
                    field="calibrated_devices",
                )
            return frozenset(explicit)
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

    def __bool__(self) -> bool:
        return bool(self.devices)

    def covers(self, device_id: str) -> bool:
        return device_id in self.devices

    def time_s(self, device_id: str, table_op: str, **shape: Any) -> float | None:
        """The table's seconds for ``table_op`` at ``shape`` on ``device_id``; None where no table
        applies or the shape is outside the measured range."""
        if device_id not in self.devices:
            return None
        value = self.calibration.time_s(table_op, **shape)
        return None if value is None else float(value)

    def usable_ops(self) -> set[str]:
        """Cost ops whose tables the calibration holds."""
        if not self.devices:
            return set()
        listed = set(getattr(self.calibration, "ops", ()) or ())
        return {op for op, groups in TABLE_OPS.items() if any(all(t in listed for t in g) for g in groups)}


class SourceLog:
    """Counts of results per op and source."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {op: [0, 0] for op in OPS}

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
