"""SGLang expert-distribution dumps (``--expert-distribution-recorder-mode``) -> moesim traces.

Format facts: sgl-project/sglang ``python/sglang/srt/eplb/expert_distribution.py`` @02295fe5.

- ``stat``: one ``.pt`` with ``logical_count`` int ``[buffer_steps, layers, num_logical]`` (a
  circular buffer; all-zero rows are steps not yet filled and are dropped) -> LoadCounts.
- ``per_token``: ``.pt`` files (one per rank) with ``records``: per forward pass ``forward_pass_id``,
  ``topk_ids_of_layer [layers, tokens, 8]`` (physical ids, -1 = none), ``positions``,
  ``forward_mode``, plus ``last_physical_to_logical_map [layers, num_physical]``. Physical ids are
  mapped to logical ones with that map. Rows keep execution order; request identity is not in the
  dump, so ``seq_id`` is 0, ``pos`` the recorded position and ``step_id`` the forward pass.
  Layers whose ids are all -1 (dense layers) are dropped. ``forward_mode`` EXTEND (1) is prefill,
  DECODE (2) decode, anything else unknown (SGLang's ``ForwardMode`` IntEnum; names accepted too).

Files are read with ``torch.load(weights_only=True)``: tensors, dicts, lists and numbers only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.traces.counts import LoadCounts, counts_from_array
from moesim.traces.trace import DECODE, PREFILL, UNKNOWN, RoutingTrace

_MODES = {1: PREFILL, 2: DECODE, "EXTEND": PREFILL, "DECODE": DECODE}


def load_pt(path: Path) -> Any:
    """``torch.load`` restricted to plain data (no pickle of arbitrary objects)."""
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"not a plain-data torch file (loaded with weights_only=True): {first}", file=path
        ) from None


def _np(x: Any, file: Path, fld: str) -> np.ndarray:
    try:
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    except (TypeError, ValueError):
        raise UserError(f"expected a tensor, found {type(x).__name__}", file=file, field=fld) from None


def guess_sglang_mode(path: Path) -> str:
    data = load_pt(path)
    if isinstance(data, dict) and "logical_count" in data:
        return "sglang-stat"
    if isinstance(data, dict) and "records" in data:
        return "sglang-per-token"
    raise UserError("a .pt file that is neither an SGLang stat nor per_token dump; pass --format", file=path)


def read_stat(path: Path, *, layer_ids: np.ndarray | None, meta: dict[str, Any]) -> LoadCounts:
    data = load_pt(path)
    if not isinstance(data, dict) or "logical_count" not in data:
        raise UserError("expected a dict with 'logical_count' (SGLang stat dump)", file=path)
    counts = _np(data["logical_count"], path, "logical_count")
    if counts.ndim != 3:
        raise UserError(
            f"expected [steps, layers, experts], found shape {counts.shape}", file=path, field="logical_count"
        )
    counts = counts[counts.reshape(len(counts), -1).any(axis=1)]  # unfilled ring-buffer rows
    util = data.get("average_utilization_rate_over_window")
    return counts_from_array(
        counts,
        file=str(path),
        layer_ids=layer_ids,
        meta={
            **meta,
            "source_format": "sglang-stat",
            "rank": data.get("rank"),
            "average_utilization_rate_over_window": util,
        },
    )


def read_per_token(
    paths: list[Path], *, num_experts: int | None, top_k: int | None, meta: dict[str, Any]
) -> RoutingTrace:
    blocks, pos, steps, phases = [], [], [], []
    phys_map: np.ndarray | None = None
    for path in paths:
        data = load_pt(path)
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise UserError("expected a dict with a 'records' list (SGLang per_token dump)", file=path)
        if data.get("last_physical_to_logical_map") is not None:
            phys_map = _np(data["last_physical_to_logical_map"], path, "last_physical_to_logical_map")
        for i, rec in enumerate(data["records"]):
            if not isinstance(rec, dict) or "topk_ids_of_layer" not in rec:
                raise UserError(f"record {i} has no topk_ids_of_layer", file=path, field="records")
            ids = _np(rec["topk_ids_of_layer"], path, f"records[{i}].topk_ids_of_layer").astype(np.int64)
            if ids.ndim != 3:
                raise UserError(
                    f"expected [layers, tokens, k], found {ids.shape}",
                    file=path,
                    field=f"records[{i}].topk_ids_of_layer",
                )
            n = ids.shape[1]
            blocks.append(ids.transpose(1, 0, 2))
            p = rec.get("positions")
            pos.append(_np(p, path, "positions").reshape(-1)[:n] if p is not None else np.arange(n))
            steps.append(np.full(n, int(rec.get("forward_pass_id", i))))
            mode = rec.get("forward_mode")
            mode = getattr(mode, "name", mode)
            phases.append(
                np.full(n, _MODES.get(mode if not isinstance(mode, str) else mode.upper(), UNKNOWN))
            )
    if not blocks:
        raise UserError("no per-token records", file=paths[0])
    shapes = {b.shape[1:] for b in blocks}
    if len(shapes) != 1:
        raise UserError(f"records disagree on [layers, k]: {sorted(shapes)}", file=paths[0])
    phys = np.concatenate(blocks)
    if phys_map is not None:
        if phys_map.shape[0] != phys.shape[1]:
            raise UserError(
                f"physical_to_logical_map has {phys_map.shape[0]} layers, records {phys.shape[1]}",
                file=paths[-1],
            )
        if phys.max(initial=-1) >= phys_map.shape[1]:
            raise UserError(
                f"physical id {phys.max()} outside the map's {phys_map.shape[1]} slots", file=paths[-1]
            )
        layer_idx = np.broadcast_to(np.arange(phys.shape[1])[None, :, None], phys.shape)
        logical = np.where(phys >= 0, phys_map[layer_idx, np.maximum(phys, 0)], -1)
    else:
        logical = phys
    keep = (logical >= 0).any(axis=(0, 2))
    logical = logical[:, keep]
    k = top_k or int((logical >= 0).sum(-1).max(initial=1))
    logical = -np.sort(-logical, axis=-1)[..., :k] if k < logical.shape[2] else logical
    e = num_experts if num_experts is not None else int(logical.max()) + 1
    return RoutingTrace.build(
        logical,
        num_experts=e,
        pos=np.concatenate(pos),
        phase=np.concatenate(phases),
        layer_ids=np.flatnonzero(keep),
        extras={"step_id": np.concatenate(steps).astype(np.int32)},
        meta={
            **meta,
            "source_format": "sglang-per-token",
            "k_order": "descending id (SGLang pads top-k to 8 with -1)",
            "converted_from": [str(p) for p in paths],
        },
    )
