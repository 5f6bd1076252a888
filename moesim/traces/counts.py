"""Counts-only routing data: how many selections each expert got per step and layer, no token order.

Some sources record only per-step expert counts (SGLang's ``stat`` dump, per-step count matrices,
aggregate counters). They cannot drive a token-level replay or a cache simulation, so they are not
expanded into fake tokens: they become a ``LoadCounts`` (schema ``moe-load-counts/v1``), which
planners use through the same ``load_matrix(windows)`` as a RoutingTrace.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.limits import EXPERTS, INFLATION, LAYERS, TRACE_ROWS, checked_int16, inflated_bytes_allowed
from moesim.traces.npz import read_npz, write_npz

COUNTS_SCHEMA = "moe-load-counts/v1"


@dataclass(frozen=True, eq=False)
class LoadCounts:
    """int64 ``counts [steps, L, E]`` (selections per step, layer column and expert), ``layer_ids [L]``."""

    counts: np.ndarray
    layer_ids: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None

    @property
    def num_steps(self) -> int:
        return int(self.counts.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.counts.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.counts.shape[2])

    @property
    def model_name(self) -> str | None:
        return self.meta.get("model")

    def split(self, fraction: float) -> tuple[LoadCounts, LoadCounts]:
        """``(first round(steps * fraction) steps, the rest)``, like ``RoutingTrace.split`` on rows."""
        cut = round(self.num_steps * fraction)
        return (LoadCounts(self.counts[:cut], self.layer_ids, self.meta, self.source),
                LoadCounts(self.counts[cut:], self.layer_ids, self.meta, self.source))

    def check_model(self, model: Any) -> None:
        """The counts fit ``model`` (a MoEModel): same expert count, layer ids among its MoE layers."""
        if self.num_experts != model.num_experts:
            raise UserError(f"expected {model.num_experts} experts ({model.name}), found {self.num_experts}",
                            file=self.source, field="counts")
        bad = sorted(set(self.layer_ids.tolist()) - set(model.moe_layers))
        if bad:
            raise UserError(f"layer ids {bad[:6]} are not MoE layers of {model.name}", file=self.source,
                            field="layer_ids")

    def validate(self) -> None:
        c = self.counts
        if c.ndim != 3 or c.dtype.kind not in "iu":
            raise UserError(
                f"expected integer [steps, layers, experts], found {c.dtype} {c.shape}",
                file=self.source,
                field="counts",
            )
        if c.size and int(c.min()) < 0:
            raise UserError("counts must be >= 0", file=self.source, field="counts")
        if self.layer_ids.shape != (c.shape[1],):
            raise UserError(
                f"expected [{c.shape[1]}] layer ids, found shape {self.layer_ids.shape}",
                file=self.source,
                field="layer_ids",
            )

    def load_matrix(self, windows: int = 1) -> np.ndarray:
        """int64 ``[W, L, E]``: counts summed over ``windows`` equal consecutive groups of steps."""
        if windows < 1:
            raise UserError(f"windows must be >= 1, got {windows}")
        bounds = np.linspace(0, self.num_steps, windows + 1).round().astype(np.int64)
        c = self.counts.astype(np.int64)
        return np.stack([c[bounds[w] : bounds[w + 1]].sum(0) for w in range(windows)])

    def save(self, path: str | Path) -> None:
        meta = {"schema": COUNTS_SCHEMA, **self.meta}
        write_npz(
            path,
            {
                "counts": self.counts.astype(np.int64),
                "layer_ids": self.layer_ids.astype(np.int16),
                "meta_json": np.array(json.dumps(meta)),
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> LoadCounts:
        arrays = read_npz(path)
        if "counts" not in arrays:
            raise UserError("missing array 'counts' (not a moe-load-counts/v1 file)", file=path)
        try:
            meta = json.loads(str(arrays["meta_json"][()])) if "meta_json" in arrays else {}
        except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
            raise UserError(f"not valid JSON ({type(e).__name__})", file=path, field="meta_json") from None
        if not isinstance(meta, dict):
            raise UserError("expected a JSON object", file=path, field="meta_json")
        c = arrays["counts"]
        lc = cls(
            counts=c,
            layer_ids=arrays.get("layer_ids", np.arange(c.shape[1] if c.ndim == 3 else 0)),
            meta=meta,
            source=str(path),
        )
        lc.validate()
        return lc


def is_counts_file(path: str | Path) -> bool:
    """True for a ``.npz`` holding a ``counts`` member (checked by name only, nothing is read)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            return "counts.npy" in zf.namelist() and "expert_ids.npy" not in zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False


def counts_from_array(
    arr: np.ndarray, *, file: str, layer_ids: np.ndarray | None = None, meta: dict[str, Any] | None = None
) -> LoadCounts:
    """``[steps, L, E]`` (or ``[L, E]``, one step) integer counts as a LoadCounts."""
    a = np.asarray(arr)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and not np.all(a == np.round(a))):
        raise UserError(
            f"expected integer counts [steps, layers, experts], found {a.dtype} {a.shape}", file=file
        )
    lids = np.arange(a.shape[1]) if layer_ids is None else np.asarray(layer_ids)
    lids = checked_int16(lids, "layer_ids", file, minimum=0)
    lc = LoadCounts(a.astype(np.int64), lids, dict(meta or {}), file)
    lc.validate()
    return lc


def read_counts_csv(path: str | Path, *, layer_ids: np.ndarray | None = None) -> LoadCounts:
    """Long-form CSV with header ``step,layer,expert,count`` (layer = model layer id) -> LoadCounts."""
    rows: list[tuple[int, int, int, int]] = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        need = {"step", "layer", "expert", "count"}
        if not reader.fieldnames or not need <= {f.strip() for f in reader.fieldnames}:
            raise UserError(
                f"expected CSV header with columns {sorted(need)}, found {reader.fieldnames}", file=path
            )
        for i, rec in enumerate(reader, start=2):
            try:
                rows.append(tuple(int(rec[k]) for k in ("step", "layer", "expert", "count")))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise UserError(f"line {i}: expected integers, found {rec}", file=path) from None
    if not rows:
        raise UserError("no data rows", file=path)
    if any(not -(2**62) <= v < 2**62 for row in rows for v in row):
        raise UserError("expected integers that fit 64 bits", file=path)
    a = np.array(rows, np.int64)
    if (a[:, 2] < 0).any() or (a[:, 3] < 0).any() or (a[:, 0] < 0).any():
        raise UserError("step, expert and count must be >= 0", file=path)
    layers = np.unique(a[:, 1]) if layer_ids is None else np.asarray(layer_ids)
    col = np.searchsorted(layers, a[:, 1])
    if (col >= len(layers)).any() or (layers[np.minimum(col, len(layers) - 1)] != a[:, 1]).any():
        raise UserError("layer ids in the CSV are not in the given layer list", file=path)
    steps, experts = int(a[:, 0].max()) + 1, int(a[:, 2].max()) + 1
    TRACE_ROWS.check(steps, file=path, field="step")
    EXPERTS.check(experts, file=path, field="expert")
    LAYERS.check(len(layers), file=path, field="layer")
    dense = steps * len(layers) * experts * 8  # the [steps, L, E] int64 matrix the sparse rows fill
    allowed = inflated_bytes_allowed(Path(path).stat().st_size)
    if dense > allowed:
        shape = f"[{steps}, {len(layers)}, {experts}]"
        raise UserError(f"the counts would fill a {shape} matrix of {dense:,} bytes; the limit for this "
                        f"file is {allowed:,} (set {INFLATION.env} to raise it)", file=path)
    counts = np.zeros((steps, len(layers), experts), np.int64)
    np.add.at(counts, (a[:, 0], col, a[:, 2]), a[:, 3])
    return counts_from_array(counts, file=str(path), layer_ids=layers)
