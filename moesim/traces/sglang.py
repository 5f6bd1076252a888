"""SGLang expert-distribution dumps (``--expert-distribution-recorder-mode``) -> moesim traces.

Format facts from sgl-project/sglang ``python/sglang/srt/eplb/expert_distribution.py`` (@02295fe5) and
its own reader ``python/sglang/srt/eplb/eplb_simulator/reader.py`` (5d2c83e6). Every dump has one row
per *hidden* layer of the model (``num_hidden_layers``): rows of dense layers are empty (0 counts,
-1 ids) and are dropped, by the model spec when one is given, else because they are empty.

- ``stat``: ``expert_distribution_recorder_<time>.pt`` (rank 0), ``logical_count`` int
  ``[buffer_size, layers, num_logical]`` summed over ranks, in a **circular buffer** whose write
  index is not dumped: while it has not wrapped, the filled rows are a prefix and the all-zero tail
  is dropped; once every row is filled the oldest row is unknown unless ``passes`` (forward passes
  recorded since ``/start_expert_distribution_record``) is given, which rotates it into time order;
  otherwise the rows are kept as stored and a warning says so. -> LoadCounts.
- ``per_pass``: ``expert_distribution_recorder_<time>_<rank>.pt`` per rank: ``records`` of
  ``{forward_pass_id, rank, global_physical_count [layers, num_physical]}`` and
  ``last_physical_to_logical_map [layers, num_physical]`` -> LoadCounts, one step per forward pass.
- ``per_token``: the same files whose records also hold ``topk_ids_of_layer [layers, tokens, 8]``
  (physical ids, -1 = none), ``input_ids``, ``positions``, ``extend_seq_lens`` and
  ``forward_mode`` -> RoutingTrace, rows in forward-pass order.

**Rank files.** A (forward pass, rank) pair may appear once (as SGLang's reader asserts). Under
tensor parallelism every rank records the same tokens; under DP attention each rank its own. So
``ranks="auto"`` (default) keeps one copy of records that are identical on several ranks and keeps
(per_token) or sums (per_pass, as SGLang's reader does) the ones that differ; ``"sum"`` always
sums/keeps all, ``"first"`` keeps the lowest rank only.

**Requests** (per_token). The dump has no request ids (SGLang leaves ``rids`` out), so
``extend_seq_lens`` cuts extend passes into requests and tokens are linked to a request by
position continuity: a segment starting at position 0 opens a new sequence; one starting at p > 0
continues the earliest-opened sequence of the same rank whose next position is p (chunked prefill,
decode steps), else opens one (a prefix-cache hit); a decoding sequence missing from a decode pass
has finished. ``forward_mode`` 1 (EXTEND) is prefill, 2 (DECODE) decode, 3 (MIXED) per segment.

Files are read with ``torch.load(weights_only=True)``: tensors, dicts, lists and numbers only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.specs.model import MoEModel
from moesim.traces.counts import LoadCounts, counts_from_array
from moesim.traces.trace import DECODE, PREFILL, UNKNOWN, RoutingTrace

_EXTEND, _DECODE, _MIXED = 1, 2, 3
_MODE_NAMES = {"EXTEND": _EXTEND, "DECODE": _DECODE, "MIXED": _MIXED}
RANK_MERGES = ("auto", "sum", "first")


def load_pt(path: Path) -> Any:
    """``torch.load`` restricted to plain data (no pickle of arbitrary objects)."""
    import pickle

    try:
        import torch
    except ImportError:
        raise UserError("reading a .pt dump needs PyTorch: pip install torch (or moesim[record])",
                        file=path) from None
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
    if isinstance(data, dict) and isinstance(data.get("records"), list):
        recs = data["records"]
        if recs and isinstance(recs[0], dict) and "topk_ids_of_layer" not in recs[0]:
            return "sglang-per-pass"
        return "sglang-per-token"
    raise UserError("a .pt file that is not an SGLang stat, per_pass or per_token dump; pass --format",
                    file=path)


def _moe_rows(num_rows: int, nonempty: np.ndarray, model: MoEModel | None, file: Path) -> np.ndarray:
    """Indices of the dump's layer rows to keep: the model's MoE layers, else the non-empty rows."""
    if model is not None:
        if num_rows == model.num_layers:
            return np.asarray(model.moe_layers)
        if num_rows == model.num_moe_layers:
            return np.arange(num_rows)
        raise UserError(f"the dump has {num_rows} layer rows; {model.name} has {model.num_layers} layers "
                        f"({model.num_moe_layers} MoE)", file=file)
    return np.flatnonzero(nonempty)


def _layer_ids(rows: np.ndarray, num_rows: int, model: MoEModel | None) -> np.ndarray:
    if model is not None and num_rows == model.num_moe_layers and num_rows != model.num_layers:
        return np.asarray(model.moe_layers)
    return rows  # a row index of the dump is the model's own layer index


def read_stat(path: Path, *, model: MoEModel | None = None, layer_ids: np.ndarray | None = None,
              passes: int | None = None, meta: dict[str, Any] | None = None) -> LoadCounts:
    """A ``stat`` dump (module doc) -> LoadCounts of the MoE layers, steps in time order where known."""
    data = load_pt(path)
    if not isinstance(data, dict) or "logical_count" not in data:
        raise UserError("expected a dict with 'logical_count' (SGLang stat dump)", file=path)
    counts = _np(data["logical_count"], path, "logical_count")
    if counts.ndim != 3 or counts.dtype.kind not in "iu":
        raise UserError(f"expected integer [steps, layers, experts], found {counts.dtype} "
                        f"{list(counts.shape)}", file=path, field="logical_count")
    size = len(counts)
    filled = counts.reshape(size, -1).any(axis=1)
    if not filled.any():
        raise UserError("no counts recorded (every step of the buffer is zero)", file=path,
                        field="logical_count")
    warnings: list[str] = []
    if not filled.all():  # not wrapped: written from row 0, the all-zero tail was never filled
        last = int(np.flatnonzero(filled)[-1])
        counts, order = counts[: last + 1], "time order (buffer not wrapped)"
    elif passes is None:
        order = "stored order (buffer full; oldest step unknown)"
        warnings.append(
            f"{path}: all {size} steps of SGLang's circular buffer are filled, so it may have wrapped and "
            "the step order is rotated by an unknown amount (totals are exact); pass --passes N (forward "
            "passes recorded) to restore time order")
    elif passes < size:
        raise UserError(f"{passes} passes cannot fill a buffer of {size} steps", file=path, field="--passes")
    else:
        start = passes % size  # the ring's next write index = its oldest row
        counts, order = np.concatenate([counts[start:], counts[:start]]), f"time order (rotated by {start})"
    rows = _moe_rows(counts.shape[1], counts.any(axis=(0, 2)), model, path)
    lids = layer_ids if layer_ids is not None else _layer_ids(rows, counts.shape[1], model)
    return counts_from_array(
        counts[:, rows],
        file=str(path),
        layer_ids=lids,
        meta={
            **(meta or {}),
            "source_format": "sglang-stat",
            "rank": data.get("rank"),
            "average_utilization_rate_over_window": data.get("average_utilization_rate_over_window"),
            "step_order": order,
            "warnings": warnings,
        },
    )


@dataclass
class _Record:
    path: Path
    rank: int
    pass_id: int
    data: dict[str, Any]
    phys_map: np.ndarray | None


def _records(paths: list[Path]) -> list[_Record]:
    out: list[_Record] = []
    seen: dict[tuple[int, int], Path] = {}
    for file_rank, path in enumerate(paths):
        data = load_pt(path)
        if not isinstance(data, dict) or not isinstance(data.get("records"), list):
            raise UserError("expected a dict with a 'records' list (SGLang per_pass/per_token dump)",
                            file=path)
        m = data.get("last_physical_to_logical_map")
        phys_map = None if m is None else _np(m, path, "last_physical_to_logical_map").astype(np.int64)
        if phys_map is not None and phys_map.ndim != 2:
            raise UserError(f"expected [layers, physical], found {list(phys_map.shape)}", file=path,
                            field="last_physical_to_logical_map")
        for i, rec in enumerate(data["records"]):
            if not isinstance(rec, dict):
                raise UserError("expected a dict", file=path, field=f"records[{i}]")
            try:
                rank = int(rec.get("rank", file_rank))
                pass_id = int(rec.get("forward_pass_id", i))
            except (TypeError, ValueError):
                raise UserError("rank and forward_pass_id must be integers", file=path,
                                field=f"records[{i}]") from None
            if (pass_id, rank) in seen:
                raise UserError(f"forward pass {pass_id} of rank {rank} appears twice (also in "
                                f"{seen[(pass_id, rank)]})", file=path, field=f"records[{i}]")
            seen[(pass_id, rank)] = path
            out.append(_Record(path, rank, pass_id, rec, phys_map))
    out.sort(key=lambda r: (r.pass_id, r.rank))  # stable: file order breaks no ties (pairs are unique)
    return out


def _by_pass(records: list[_Record]) -> list[list[_Record]]:
    groups: dict[int, list[_Record]] = defaultdict(list)
    for r in records:
        groups[r.pass_id].append(r)
    return [groups[k] for k in sorted(groups)]


def _to_logical(phys: np.ndarray, phys_map: np.ndarray | None, file: Path) -> np.ndarray:
    """Physical ids ``[layers, ...]`` -> logical ids (-1 stays -1)."""
    if phys_map is None:
        return phys
    if phys_map.shape[0] != phys.shape[0]:
        raise UserError(f"physical_to_logical_map has {phys_map.shape[0]} layers, the records "
                        f"{phys.shape[0]}", file=file)
    if phys.max(initial=-1) >= phys_map.shape[1]:
        raise UserError(f"physical id {int(phys.max())} outside the map's {phys_map.shape[1]} slots",
                        file=file)
    layer = np.arange(phys.shape[0]).reshape((-1,) + (1,) * (phys.ndim - 1))
    return np.where(phys >= 0, phys_map[layer, np.maximum(phys, 0)], -1)


def read_per_pass(paths: list[Path], *, model: MoEModel | None = None, num_experts: int | None = None,
                  layer_ids: np.ndarray | None = None, ranks: str = "auto",
                  meta: dict[str, Any] | None = None) -> LoadCounts:
    """``per_pass`` rank files (module doc) -> LoadCounts, one step per forward pass, logical experts."""
    if ranks not in RANK_MERGES:
        raise UserError(f"expected one of {', '.join(RANK_MERGES)}, got {ranks!r}", field="--ranks")
    steps, merged_dups = [], 0
    for group in _by_pass(_records(paths)):
        arrays = []
        for r in group:
            if "global_physical_count" not in r.data:
                raise UserError(f"forward pass {r.pass_id}: no global_physical_count", file=r.path)
            a = _np(r.data["global_physical_count"], r.path, "global_physical_count").astype(np.int64)
            if a.ndim != 2:
                raise UserError(f"expected [layers, physical], found {list(a.shape)}", file=r.path,
                                field=f"forward pass {r.pass_id}.global_physical_count")
            arrays.append((a, r))
        if ranks == "first" or (ranks == "auto" and all(np.array_equal(arrays[0][0], a) for a, _ in arrays)):
            merged_dups += len(arrays) - 1
            arrays = arrays[:1]
        steps.append(_logical_counts(arrays, num_experts or (model.num_experts if model else None)))
    shapes = {s.shape for s in steps}
    if not steps:
        raise UserError("no per_pass records", file=paths[0])
    if len(shapes) != 1:
        raise UserError(f"passes disagree on [layers, experts]: {sorted(shapes)}", file=paths[0])
    counts = np.stack(steps)
    rows = _moe_rows(counts.shape[1], counts.any(axis=(0, 2)), model, paths[0])
    return counts_from_array(
        counts[:, rows], file=str(paths[0]),
        layer_ids=layer_ids if layer_ids is not None else _layer_ids(rows, counts.shape[1], model),
        meta={**(meta or {}), "source_format": "sglang-per-pass", "rank_merge": ranks,
              "duplicate_rank_records_dropped": merged_dups, "converted_from": [str(p) for p in paths]},
    )


def _logical_counts(arrays: list[tuple[np.ndarray, _Record]], num_experts: int | None) -> np.ndarray:
    """Sum of the ranks' physical counts, mapped to logical experts through each file's map."""
    out: np.ndarray | None = None
    for a, r in arrays:
        if r.phys_map is None:
            logical = a
        else:
            if r.phys_map.shape != a.shape:
                raise UserError(f"global_physical_count is {list(a.shape)}, the map {list(r.phys_map.shape)}",
                                file=r.path)
            e = num_experts or int(r.phys_map.max()) + 1
            logical = np.zeros((a.shape[0], e), np.int64)
            for layer in range(a.shape[0]):
                logical[layer] = np.bincount(r.phys_map[layer], weights=a[layer], minlength=e)[:e]
        if out is not None and out.shape != logical.shape:
            raise UserError(f"ranks disagree on [layers, experts]: {list(out.shape)} vs "
                            f"{list(logical.shape)}", file=r.path)
        out = logical if out is None else out + logical
    assert out is not None
    return out


@dataclass
class _Linker:
    """Request identity from positions (module doc), one pool of open sequences per rank."""

    next_id: int = 0
    open_: dict[int, dict[int, tuple[int, bool]]] = field(default_factory=lambda: defaultdict(dict))
    joined_midway: int = 0

    def segment(self, rank: int, start_pos: int, length: int, used: set[int], decode_step: bool) -> int:
        pool = self.open_[rank]  # seq -> (next position, last segment was a decode step); insertion order
        seq = None
        if start_pos > 0:
            seq = next((s for s, (nxt, _) in pool.items() if nxt == start_pos and s not in used), None)
            if seq is None:
                self.joined_midway += 1
        if seq is None:
            seq, self.next_id = self.next_id, self.next_id + 1
        pool[seq] = (start_pos + length, decode_step)
        used.add(seq)
        return seq

    def end_decode_pass(self, rank: int, used: set[int]) -> None:
        pool = self.open_[rank]
        for s in [s for s, (_, decoding) in pool.items() if decoding and s not in used]:
            del pool[s]


def _mode(rec: dict[str, Any]) -> int | None:
    mode = rec.get("forward_mode")
    mode = getattr(mode, "name", mode)
    if isinstance(mode, str):
        return _MODE_NAMES.get(mode.upper())
    return int(mode) if isinstance(mode, int) else None


def read_per_token(paths: list[Path], *, model: MoEModel | None = None, num_experts: int | None = None,
                   top_k: int | None = None, layer_ids: np.ndarray | None = None, ranks: str = "auto",
                   meta: dict[str, Any] | None = None) -> RoutingTrace:
    """``per_token`` rank files (module doc) -> RoutingTrace of logical ids, rows in forward-pass order."""
    if ranks not in RANK_MERGES:
        raise UserError(f"expected one of {', '.join(RANK_MERGES)}, got {ranks!r}", field="--ranks")
    blocks, pos, steps, phases, seqs, rank_col = [], [], [], [], [], []
    linker, dropped = _Linker(), 0
    for group in _by_pass(_records(paths)):
        kept: list[tuple[_Record, np.ndarray, np.ndarray]] = []
        for r in group:
            where = f"forward pass {r.pass_id} rank {r.rank}"
            if "topk_ids_of_layer" not in r.data:
                raise UserError(f"{where}: no topk_ids_of_layer", file=r.path)
            ids = _np(r.data["topk_ids_of_layer"], r.path, "topk_ids_of_layer").astype(np.int64)
            if ids.ndim != 3:
                raise UserError(f"{where}: expected [layers, tokens, k], found {list(ids.shape)}",
                                file=r.path, field="topk_ids_of_layer")
            n = ids.shape[1]
            p = r.data.get("positions")
            p_arr = _np(p, r.path, "positions").reshape(-1)[:n].astype(np.int64) if p is not None else None
            if p_arr is not None and len(p_arr) != n:
                raise UserError(f"{where}: {len(p_arr)} positions for {n} tokens", file=r.path,
                                field="positions")
            dup = any(np.array_equal(ids, k_ids) and (p_arr is None or np.array_equal(p_arr, k_pos))
                      for _, k_ids, k_pos in kept)
            if kept and (ranks == "first" or (ranks == "auto" and dup)):
                dropped += 1
                continue
            kept.append((r, ids, p_arr if p_arr is not None else np.arange(n)))
        for r, ids, p_arr in kept:
            n = ids.shape[1]
            logical = _to_logical(ids, r.phys_map, r.path)
            blocks.append(logical.transpose(1, 0, 2))
            pos.append(p_arr)
            steps.append(np.full(n, r.pass_id))
            rank_col.append(np.full(n, r.rank))
            s, ph = _link(linker, r, p_arr)
            seqs.append(s)
            phases.append(ph)
    if not blocks:
        raise UserError("no per-token records", file=paths[0])
    shapes = {b.shape[1:] for b in blocks}
    if len(shapes) != 1:
        raise UserError(f"records disagree on [layers, k]: {sorted(shapes)}", file=paths[0])
    logical = np.concatenate(blocks)
    rows = _moe_rows(logical.shape[1], (logical >= 0).any(axis=(0, 2)), model, paths[0])
    width = logical.shape[1]
    logical = logical[:, rows]
    k = top_k or (model.top_k if model else int((logical >= 0).sum(-1).max(initial=1)))
    logical = -np.sort(-logical, axis=-1)[..., :k] if k < logical.shape[2] else logical
    e = num_experts or (model.num_experts if model else int(logical.max(initial=0)) + 1)
    return RoutingTrace.build(
        logical,
        num_experts=e,
        seq_id=np.concatenate(seqs),
        pos=np.concatenate(pos),
        phase=np.concatenate(phases),
        layer_ids=layer_ids if layer_ids is not None else _layer_ids(rows, width, model),
        extras={"step_id": np.concatenate(steps).astype(np.int32),
                "rank": np.concatenate(rank_col).astype(np.int16)},
        meta={
            **(meta or {}),
            "source_format": "sglang-per-token",
            "k_order": "descending id (SGLang pads top-k to 8 with -1)",
            "rank_merge": ranks,
            "duplicate_rank_records_dropped": dropped,
            "sequences": "linked by extend_seq_lens and position continuity (no request ids in the dump)",
            "sequences_started_mid_way": linker.joined_midway,
            "converted_from": [str(p) for p in paths],
        },
    )


def _link(linker: _Linker, r: _Record, p_arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """seq_id and phase of one record's tokens."""
    n = len(p_arr)
    mode = _mode(r.data)
    lens = r.data.get("extend_seq_lens")
    lens = [int(x) for x in _np(lens, r.path, "extend_seq_lens").reshape(-1)] if lens is not None else []
    if mode == _DECODE or not lens or sum(lens) != n or min(lens) < 1:
        lens = [1] * n  # a decode pass: one token per running request
    seq = np.empty(n, np.int64)
    phase = np.full(n, UNKNOWN, np.int8)
    used: set[int] = set()
    start = 0
    for length in lens:
        p0 = int(p_arr[start])
        continuing = p0 > 0 and any(nxt == p0 for nxt, _ in linker.open_[r.rank].values())
        decode_step = mode == _DECODE or (mode == _MIXED and length == 1 and continuing)
        seq[start: start + length] = linker.segment(r.rank, p0, length, used, decode_step)
        if mode in (_EXTEND, _DECODE, _MIXED):
            phase[start: start + length] = DECODE if decode_step else PREFILL
        start += length
    if mode == _DECODE:
        linker.end_decode_pass(r.rank, used)
    return seq, phase

