"""vLLM routed-experts output (``--enable-return-routed-experts``) -> RoutingTrace.

Every row of every request is kept; each completion choice is one sequence, its rows contiguous.
Layouts read (arrays may be nested JSON lists or base64 ``.npy`` strings in any of them):

- **current** (vLLM 0.34: ``CompletionResponseChoice.routed_experts`` in
  ``vllm/entrypoints/openai/completion/protocol.py``, filled from ``RoutedExpertsCapturer``): per
  choice, a base64 ``.npy`` of uint8/uint16 ``[num_tokens - 1, num_hidden_layers, top_k]``: prompt
  rows then generated rows (the last sampled token was never fed forward, so it has no row). The
  capture buffer has one column per *hidden* layer; dense layers' columns stay 0 and are dropped
  (by the model spec, or as all-zero columns when K > 1). The prompt length, which splits prefill
  rows from decode rows, is the choice's ``prompt_token_ids`` (request ``"return_token_ids": true``)
  or, for a one-choice response, ``usage.prompt_tokens``; without either the phase is unknown.
- **v0.21** (docs.vllm.ai/en/v0.21.0/training/routed_experts_replay): response-level
  ``prompt_routed_experts [prompt_len, num_moe_layers, top_k]`` shared by the choices, per choice
  ``routed_experts [gen_len, num_moe_layers, top_k]`` int16: prompt rows then generated rows.
- **flat**: JSON objects ``{"prompt_routed_experts", "routed_experts"}``, one per completion.
- **offline** ``.npz``: ``routed_experts_<i>`` (current layout, ``CompletionOutput.routed_experts``)
  with optional ``prompt_len_<i>`` (scalar) or ``prompt_token_ids_<i>``; or
  ``prompt_routed_experts_<i>`` + ``routed_experts_<i>`` (v0.21). A ``.npy`` is one request.

A file holds one JSON document (a response, a list of responses/choices/completions) or JSON lines
of them.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moesim.errors import UserError
from moesim.specs.model import MoEModel
from moesim.traces.trace import DECODE, PREFILL, UNKNOWN, RoutingTrace

_MAX_ID = np.iinfo(np.int16).max


@dataclass(frozen=True)
class _Request:
    """One completion's rows ``[n, L, K]`` and how many of them are prompt tokens (None: unknown)."""

    rows: np.ndarray
    prompt_len: int | None
    layout: str
    where: str


def _decode_npy(text: str, file: Path, where: str) -> np.ndarray:
    from moesim.traces.npz import _read_header

    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise UserError("expected a base64 string of .npy bytes", file=file, field=where) from None
    buf = io.BytesIO(raw)
    shape, fortran, dtype = _read_header(buf, str(file), where)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - buf.tell() < nbytes:
        raise UserError(f"the .npy data is shorter than its header's shape {list(shape)}", file=file,
                        field=where)
    arr = np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=buf.tell())
    return arr.reshape(shape, order="F" if fortran else "C")


def _array(value: Any, file: Path, where: str) -> np.ndarray:
    """``[n, L, K]`` int64 ids from a base64 ``.npy`` string, nested lists or an array."""
    if isinstance(value, str):
        a = _decode_npy(value, file, where)
    else:
        try:
            a = np.asarray(value)
        except (ValueError, TypeError):
            a = np.empty(0, object)
        if a.dtype == object or (a.size == 0 and a.ndim != 3):
            raise UserError("expected a rectangular [tokens][layers][top_k] integer array or a base64 "
                            ".npy string", file=file, field=where)
    if a.dtype.kind not in "iu" or a.ndim != 3:
        raise UserError(f"expected integer ids [tokens, layers, top_k], found {a.dtype} {list(a.shape)}",
                        file=file, field=where)
    if a.size and (int(a.max()) > _MAX_ID or int(a.min()) < -1):
        raise UserError(f"expert ids must lie in [0, {_MAX_ID}], found {int(a.min())}..{int(a.max())}",
                        file=file, field=where)
    return a.astype(np.int64)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _from_choice(ch: dict[str, Any], shared_prompt: Any, usage_prompt: int | None, file: Path,
                 where: str) -> _Request:
    prompt = ch.get("prompt_routed_experts", shared_prompt)
    gen = _array(ch["routed_experts"], file, f"{where}.routed_experts")
    if prompt is not None:  # v0.21 / flat: prompt and generated rows come separately
        p = _array(prompt, file, f"{where}.prompt_routed_experts")
        if p.shape[1:] != gen.shape[1:]:
            raise UserError(f"prompt_routed_experts is [*, {p.shape[1]}, {p.shape[2]}], routed_experts "
                            f"[*, {gen.shape[1]}, {gen.shape[2]}]", file=file, field=where)
        return _Request(np.concatenate([p, gen]), len(p), "v0.21", where)
    ids = ch.get("prompt_token_ids")
    prompt_len = len(ids) if isinstance(ids, list) else usage_prompt
    if prompt_len is not None and prompt_len > len(gen):
        raise UserError(f"prompt of {prompt_len} tokens but only {len(gen)} routed rows", file=file,
                        field=where)
    out = ch.get("token_ids")
    if prompt_len is not None and isinstance(out, list) and out and prompt_len + len(out) - 1 != len(gen):
        raise UserError(f"expected {prompt_len} prompt + {len(out)} generated - 1 = "
                        f"{prompt_len + len(out) - 1} routed rows, found {len(gen)}", file=file, field=where)
    return _Request(gen, prompt_len, "current", where)


def _from_object(obj: Any, file: Path, where: str) -> list[_Request]:
    if not isinstance(obj, dict):
        raise UserError("expected a JSON object (a vLLM response, choice or completion)", file=file,
                        field=where)
    if "choices" in obj:  # an HTTP response of /v1/completions or /v1/chat/completions
        choices = obj["choices"]
        if not isinstance(choices, list):
            raise UserError("expected a list", file=file, field=f"{where}.choices")
        usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        usage_prompt = _int_or_none(usage.get("prompt_tokens")) if len(choices) == 1 else None
        out = []
        for j, ch in enumerate(choices):
            at = f"{where}.choices[{j}]"
            if not isinstance(ch, dict):
                raise UserError("expected a JSON object", file=file, field=at)
            if ch.get("routed_experts") is not None:
                out.append(_from_choice(ch, obj.get("prompt_routed_experts"), usage_prompt, file, at))
        return out
    if obj.get("routed_experts") is not None or obj.get("prompt_routed_experts") is not None:
        if obj.get("routed_experts") is None:  # a prompt-only completion (max_tokens 0 in v0.21)
            p = _array(obj["prompt_routed_experts"], file, f"{where}.prompt_routed_experts")
            return [_Request(p, len(p), "v0.21", where)]
        return [_from_choice(obj, None, None, file, where)]
    keys = ", ".join(sorted(map(str, obj))[:8]) or "nothing"
    raise UserError(f"expected 'choices' (a vLLM response) or 'routed_experts', found {keys}", file=file,
                    field=where)


def _json_documents(path: Path) -> list[tuple[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        items = data if isinstance(data, list) else [data]
        return [(f"[{i}]" if isinstance(data, list) else "response", x) for i, x in enumerate(items)]
    except json.JSONDecodeError:
        pass
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                out.append((f"line {i}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"line {i}: not valid JSON ({e.msg})", file=path) from None
    return out


def _from_npz(path: Path) -> list[_Request]:
    from moesim.traces.npz import read_npz

    arrays = read_npz(path, mmap=False)
    idx = sorted({int(k.rsplit("_", 1)[1]) for k in arrays
                  if k.rsplit("_", 1)[-1].isdigit() and k.rsplit("_", 1)[0].endswith("routed_experts")})
    out = []
    for i in idx:
        gen, prompt = arrays.get(f"routed_experts_{i}"), arrays.get(f"prompt_routed_experts_{i}")
        rows = _array(gen if gen is not None else prompt, path, f"routed_experts_{i}")
        if prompt is not None and gen is not None:
            p = _array(prompt, path, f"prompt_routed_experts_{i}")
            if p.shape[1:] != rows.shape[1:]:
                raise UserError(f"prompt rows are {list(p.shape[1:])}, generated {list(rows.shape[1:])}",
                                file=path, field=f"routed_experts_{i}")
            out.append(_Request(np.concatenate([p, rows]), len(p), "v0.21", f"routed_experts_{i}"))
            continue
        if prompt is not None:
            out.append(_Request(rows, len(rows), "v0.21", f"prompt_routed_experts_{i}"))
            continue
        plen: int | None = None
        if f"prompt_len_{i}" in arrays:
            plen = int(np.asarray(arrays[f"prompt_len_{i}"]).reshape(-1)[0])
        elif f"prompt_token_ids_{i}" in arrays:
            plen = int(np.asarray(arrays[f"prompt_token_ids_{i}"]).size)
        if plen is not None and not 0 <= plen <= len(rows):
            raise UserError(f"prompt length {plen} outside 0..{len(rows)}", file=path,
                            field=f"prompt_len_{i}")
        out.append(_Request(rows, plen, "current", f"routed_experts_{i}"))
    return out


def _from_npy(path: Path) -> list[_Request]:
    from moesim.traces.npz import _read_header

    with open(path, "rb") as fh:
        _read_header(fh, str(path), "routed_experts")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"cannot read .npy ({e})", file=path) from None
    return [_Request(_array(arr, path, "routed_experts"), None, "current", "routed_experts")]


def read_requests(path: Path) -> list[_Request]:
    """The routed-experts requests of one file (any layout in the module doc)."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return _from_npz(path)
    if suffix == ".npy":
        return _from_npy(path)
    out: list[_Request] = []
    for where, doc in _json_documents(path):
        out.extend(_from_object(doc, path, where))
    return out


def _columns(width: int, ids: np.ndarray, model: MoEModel | None, layer_ids: np.ndarray | None,
             file: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """Which columns to keep and their model layer ids, and how they were chosen."""
    if layer_ids is not None:
        if len(layer_ids) != width:
            raise UserError(f"--layer-ids names {len(layer_ids)} layers, the arrays have {width} columns",
                            file=file)
        return np.arange(width), np.asarray(layer_ids), "given"
    if model is not None:
        if width == model.num_layers and width != model.num_moe_layers:
            cols = np.asarray(model.moe_layers)
            return cols, cols, f"model {model.name}: dense layer columns dropped"
        if width == model.num_moe_layers:
            return np.arange(width), np.asarray(model.moe_layers), f"model {model.name}: MoE layers"
        raise UserError(f"the arrays have {width} layer columns; {model.name} has {model.num_layers} layers "
                        f"of which {model.num_moe_layers} are MoE", file=file)
    k = ids.shape[2]
    dense = (ids == 0).all(axis=(0, 2)) if k > 1 and len(ids) else np.zeros(width, bool)
    cols = np.flatnonzero(~dense)
    if dense.any():
        return cols, cols, "all-zero columns dropped (dense layers; column index = model layer id)"
    return cols, cols, "all columns kept"


def _phases(r: _Request) -> np.ndarray:
    if r.prompt_len is None:
        return np.full(len(r.rows), UNKNOWN, np.int8)
    phase = np.full(len(r.rows), DECODE, np.int8)
    phase[: r.prompt_len] = PREFILL
    return phase


def from_vllm_routed(paths: list[Path], *, model: MoEModel | None, num_experts: int | None,
                     layer_ids: np.ndarray | None, meta: dict[str, Any]) -> RoutingTrace:
    """vLLM routed-experts files (module doc) -> RoutingTrace, one sequence per completion."""
    reqs = [(p, r) for p in paths for r in read_requests(p)]
    if not reqs:
        raise UserError("no routed_experts arrays found (was vLLM started with "
                        "--enable-return-routed-experts?)", file=paths[0])
    shape = reqs[0][1].rows.shape[1:]
    for p, r in reqs:
        if r.rows.shape[1:] != shape:
            raise UserError(f"rows are [*, {r.rows.shape[1]}, {r.rows.shape[2]}], the first request's "
                            f"[*, {shape[0]}, {shape[1]}]", file=p, field=r.where)
    ids = np.concatenate([r.rows for _, r in reqs])
    cols, lids, how = _columns(shape[0], ids, model, layer_ids, paths[0])
    ids = ids[:, cols]
    lengths = np.array([len(r.rows) for _, r in reqs])
    phase = np.concatenate([_phases(r) for _, r in reqs])
    e = num_experts or (model.num_experts if model else int(ids.max(initial=0)) + 1)
    unknown = sum(r.prompt_len is None for _, r in reqs)
    return RoutingTrace.build(
        ids,
        num_experts=e,
        seq_id=np.repeat(np.arange(len(reqs)), lengths),
        phase=phase,
        layer_ids=lids,
        meta={
            **meta,
            "converted_from": [str(p) for p in paths],
            "source_format": "vllm-routed",
            "vllm_layouts": sorted({r.layout for _, r in reqs}),
            "layer_columns": how,
            "requests_without_prompt_length": unknown,
            "k_order": "as vLLM returns them (router top-k order)",
        },
    )
