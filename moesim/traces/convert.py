"""Converters from other routing recordings to the v1 trace (or to LoadCounts for counts-only data).

Formats (``--format``; guessed from the file when omitted):

- ``jsonl``: one JSON object per (token, layer): ``dataset``, ``problem_id``, ``layer``, ``token_idx``,
  ``experts``, ``gating_probs`` (the Mixtral vLLM logger form). Sequences are the distinct
  (dataset, problem_id) pairs in order of first appearance over the input files in the order given;
  a sequence has ``max(token_idx) + 1`` rows; (token, layer) pairs absent from the log stay -1.
- ``deepseek-csv``: ``Layer ID, Batch Number, Token, Activated Expert IDs`` with one row per
  (layer, token), grouped by layer; each input file is one sequence (prompt).
- ``vllm-routed``: vLLM ``--enable-return-routed-experts`` output, current and older layouts
  (HTTP responses, JSON lines of responses or choices, offline ``.npz``/``.npy``; moesim.traces.vllm).
  One sequence per completion; every row kept.
- ``sglang-stat``, ``sglang-per-pass``, ``sglang-per-token``: SGLang expert-distribution dumps
  (moesim.traces.sglang): dense layers dropped, rank files de-duplicated, requests linked.
- ``counts``: per-step count matrices, ``.npy`` ``[steps, layers, experts]`` or long CSV
  ``step,layer,expert,count``; ``counts-npz`` one key (``--key``) of an ``.npz`` of count arrays.
"""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.limits import TRACE_ROWS, checked_int16
from moesim.specs.model import MoEModel
from moesim.traces.counts import LoadCounts, counts_from_array, read_counts_csv
from moesim.traces.trace import DECODE, PREFILL, UNKNOWN, RoutingTrace, check_trace_dims

FORMATS = (
    "jsonl", "deepseek-csv", "vllm-routed", "sglang-per-token", "sglang-per-pass", "sglang-stat", "counts",
    "counts-npz",
)
SGLANG_FORMATS = ("sglang-per-token", "sglang-per-pass", "sglang-stat")
PHASES = {"prefill": PREFILL, "decode": DECODE, "unknown": UNKNOWN}


def guess_format(path: Path) -> str:
    """The format of ``path`` from its suffix and first bytes."""
    suffix = path.suffix.lower()
    if suffix == ".pt":
        from moesim.traces.sglang import guess_sglang_mode

        return guess_sglang_mode(path)
    if suffix == ".npy":
        return "counts"
    if suffix == ".npz":
        return "vllm-routed"
    with open(path, encoding="utf-8", errors="replace") as fh:
        head = fh.read(4096)
    if suffix == ".csv":
        first = head.splitlines()[0].lower() if head else ""
        if "activated expert ids" in first:
            return "deepseek-csv"
        if "expert" in first and "count" in first:
            return "counts"
    if "routed_experts" in head or '"choices"' in head:
        return "vllm-routed"
    if '"token_idx"' in head and '"experts"' in head:
        return "jsonl"
    raise UserError(
        "cannot tell the input format; pass --format (one of " + ", ".join(FORMATS) + ")", file=path
    )


def _json_records(path: Path) -> list[dict[str, Any]]:
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"line {i}: not valid JSON ({e.msg})", file=path) from None
            if not isinstance(rec, dict):
                raise UserError(f"line {i}: expected a JSON object", file=path)
            out.append(rec)
    return out


def from_jsonl(
    paths: list[Path], *, num_experts: int | None, phase: int, meta: dict[str, Any]
) -> RoutingTrace:
    """The Mixtral logger JSONL form (see module doc) -> RoutingTrace."""
    seqs: dict[tuple[str, Any], int] = {}
    recs: list[tuple[int, int, int, list[int], list[float] | None]] = []
    for path in paths:
        for i, r in enumerate(_json_records(path), start=1):
            try:
                key = (str(r["dataset"]), r["problem_id"])
                s = seqs.setdefault(key, len(seqs))
                experts = [int(x) for x in r["experts"]]
                probs = [float(x) for x in r["gating_probs"]] if "gating_probs" in r else None
                if probs is not None and len(probs) != len(experts):
                    raise ValueError(f"{len(probs)} gating_probs for {len(experts)} experts")
                recs.append((s, int(r["token_idx"]), int(r["layer"]), experts, probs))
            except (KeyError, TypeError, ValueError, OverflowError) as e:
                raise UserError(
                    f"record {i}: expected dataset, problem_id, layer, token_idx, experts "
                    f"({type(e).__name__}: {e})",
                    file=path,
                ) from None
    if not recs:
        raise UserError("no routing records", file=paths[0])
    k = max(len(r[3]) for r in recs)
    layers = np.array(sorted({r[2] for r in recs}))
    lengths = np.zeros(len(seqs), np.int64)
    for s, t, *_ in recs:
        if t < 0:
            raise UserError(f"negative token_idx {t}", file=paths[0])
        TRACE_ROWS.check(t + 1, file=paths[0], field="token_idx")
        lengths[s] = max(lengths[s], t + 1)
    offsets = np.r_[0, np.cumsum(lengths)]
    n = int(offsets[-1])
    check_trace_dims((n, len(layers), k), paths[0])  # before allocating [n, layers, k]
    checked_int16(layers, "layer", paths[0], minimum=0)
    checked_int16([x for r in recs for x in r[3]], "experts", paths[0])
    ids = np.full((n, len(layers), k), -1, np.int16)
    gw = np.full((n, len(layers), k), np.nan, np.float32)
    col = {int(layer): i for i, layer in enumerate(layers)}
    has_probs = all(r[4] is not None for r in recs)
    for s, t, layer, experts, probs in recs:
        row = offsets[s] + t
        ids[row, col[layer], : len(experts)] = experts
        if probs is not None:
            gw[row, col[layer], : len(probs)] = probs
    seq_id = np.repeat(np.arange(len(seqs)), lengths)
    pos = np.arange(n) - np.repeat(offsets[:-1], lengths)
    sequences = [
        {"seq_id": s, "dataset": d, "problem_id": p, "n_tokens": int(lengths[s])}
        for (d, p), s in seqs.items()
    ]
    e = num_experts if num_experts is not None else int(ids.max()) + 1
    return RoutingTrace.build(
        ids,
        num_experts=e,
        seq_id=seq_id,
        pos=pos,
        phase=phase,
        layer_ids=layers,
        gate_weights=gw if has_probs else None,
        meta={
            **meta,
            "sequences": sequences,
            "missing_layer_slots": int((ids < 0).all(-1).sum()),
            "converted_from": [str(p) for p in paths],
            "source_format": "jsonl",
        },
    )


def from_deepseek_csv(
    paths: list[Path], *, num_experts: int | None, phase: int, meta: dict[str, Any]
) -> RoutingTrace:
    """The DeepSeek-V2-Lite hook CSV (one file per prompt, rows grouped by layer) -> RoutingTrace."""
    blocks, tokens_all, seq_all = [], [], []
    layer_ids: np.ndarray | None = None
    for s, path in enumerate(paths):
        per_layer: dict[int, list[list[int]]] = {}
        tokens: dict[int, list[str]] = {}
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            if header[:4] != ["layer id", "batch number", "token", "activated expert ids"]:
                raise UserError(
                    f"expected header 'Layer ID,Batch Number,Token,Activated Expert IDs', "
                    f"found {','.join(header)}",
                    file=path,
                )
            for i, row in enumerate(reader, start=2):
                try:
                    layer = int(row[0])
                    experts = [int(x) for x in ast.literal_eval(row[3].strip())]
                except (ValueError, IndexError, SyntaxError, TypeError):
                    raise UserError(
                        f"line {i}: expected 'layer,batch,token,[ids]', found {row}", file=path
                    ) from None
                per_layer.setdefault(layer, []).append(experts)
                tokens.setdefault(layer, []).append(row[2])
        if not per_layer:
            raise UserError("no data rows", file=path)
        lids = np.array(sorted(per_layer))
        if layer_ids is None:
            layer_ids = lids
        elif not np.array_equal(lids, layer_ids):
            raise UserError(
                f"layers {lids.tolist()} differ from the first file's {layer_ids.tolist()}", file=path
            )
        n = {len(v) for v in per_layer.values()}
        if len(n) != 1:
            raise UserError(f"layers have different token counts {sorted(n)}", file=path)
        try:
            blocks.append(np.stack([np.array(per_layer[int(layer)]) for layer in lids], axis=1))
        except ValueError:
            raise UserError("rows have different numbers of expert ids", file=path) from None
        tokens_all.extend(tokens[int(lids[0])])
        seq_all.append(np.full(n.pop(), s))
    ids = np.concatenate(blocks)
    e = num_experts if num_experts is not None else int(ids.max()) + 1
    return RoutingTrace.build(
        ids,
        num_experts=e,
        seq_id=np.concatenate(seq_all),
        phase=phase,
        layer_ids=layer_ids,
        extras={"token_str": np.array(tokens_all)},
        meta={
            **meta,
            "k_order": "as in the source (DeepSeek gate: unordered)",
            "converted_from": [str(p) for p in paths],
            "source_format": "deepseek-csv",
        },
    )


def convert(
    inputs: list[str | Path],
    fmt: str | None = None,
    *,
    num_experts: int | None = None,
    layer_ids: list[int] | None = None,
    phase: str = "unknown",
    model_name: str | None = None,
    top_k: int | None = None,
    key: str | None = None,
    model: MoEModel | None = None,
    passes: int | None = None,
    ranks: str = "auto",
) -> RoutingTrace | LoadCounts:
    """Read ``inputs`` (one or more files of one format) as a RoutingTrace or LoadCounts.

    ``model`` (optional) tells engine dumps which of their per-hidden-layer columns are MoE layers;
    ``passes`` and ``ranks`` are the SGLang options (moesim.traces.sglang).
    """
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise UserError("no such input file", file=p)
    fmt = fmt or guess_format(paths[0])
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if phase not in PHASES:
        raise UserError(f"unknown phase {phase!r}; expected prefill, decode or unknown")
    name = model_name or (model.name if model is not None else None)
    meta: dict[str, Any] = {"model": name} if name else {}
    lids = None if layer_ids is None else np.asarray(layer_ids)
    if fmt == "jsonl":
        return from_jsonl(paths, num_experts=num_experts, phase=PHASES[phase], meta=meta)
    if fmt == "deepseek-csv":
        return from_deepseek_csv(paths, num_experts=num_experts, phase=PHASES[phase], meta=meta)
    if fmt == "vllm-routed":
        from moesim.traces.vllm import from_vllm_routed

        return from_vllm_routed(paths, model=model, num_experts=num_experts, layer_ids=lids, meta=meta)
    if fmt in SGLANG_FORMATS:
        from moesim.traces import sglang

        if fmt == "sglang-stat":
            if len(paths) != 1:
                raise UserError("a stat dump is one file (rank 0 writes the all-reduced counts), "
                                f"got {len(paths)}")
            return sglang.read_stat(paths[0], model=model, layer_ids=lids, passes=passes, meta=meta)
        if fmt == "sglang-per-pass":
            return sglang.read_per_pass(paths, model=model, num_experts=num_experts, layer_ids=lids,
                                        ranks=ranks, meta=meta)
        return sglang.read_per_token(paths, model=model, num_experts=num_experts, top_k=top_k, layer_ids=lids,
                                     ranks=ranks, meta=meta)
    if len(paths) != 1:
        raise UserError(f"format {fmt} takes one input file, got {len(paths)}")
    if fmt == "counts-npz":
        from moesim.traces.npz import read_npz

        arrays = read_npz(paths[0], mmap=False)
        names = sorted(k for k in arrays if k != "meta_json")
        if key not in arrays:
            raise UserError(
                f"--key must name one array of the file: {', '.join(names[:8])}...", file=paths[0]
            )
        return counts_from_array(arrays[key], file=str(paths[0]), layer_ids=lids, meta={**meta, "key": key})
    if paths[0].suffix.lower() == ".npy":
        from moesim.traces.npz import _read_header

        with open(paths[0], "rb") as fh:
            _read_header(fh, str(paths[0]), "counts")
        try:
            arr = np.load(paths[0], allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UserError(f"cannot read .npy ({e})", file=paths[0]) from None
        return counts_from_array(arr, file=str(paths[0]), layer_ids=lids, meta=meta)
    return read_counts_csv(paths[0], layer_ids=lids)
