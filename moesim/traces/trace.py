"""RoutingTrace: which experts each token chose at each MoE layer (schema ``moe-routing-trace/v1``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from moesim.errors import UserError
from moesim.limits import EXPERTS, LAYERS, TOP_K, TRACE_ROWS, checked_int16
from moesim.traces.npz import Chunks, read_npz, release_pages, write_npz

if TYPE_CHECKING:
    from moesim.specs.model import MoEModel

SCHEMA = "moe-routing-trace/v1"
PREFILL, DECODE, UNKNOWN = 0, 1, -1
CORE_KEYS = ("expert_ids", "gate_weights", "seq_id", "pos", "phase", "layer_ids", "meta_json")
CHUNK_BYTES = 64 * 2**20
"""Rows are processed in chunks of about this many bytes of ``expert_ids`` (bounded memory)."""


def check_trace_dims(shape: tuple[int, ...], file: str | None) -> None:
    """Rows, layer columns and k of ``expert_ids`` within moesim.limits (before anything is read)."""
    TRACE_ROWS.check(int(shape[0]), file=file, field="expert_ids")
    LAYERS.check(int(shape[1]), file=file, field="expert_ids")
    TOP_K.check(int(shape[2]), file=file, field="expert_ids")


def row_chunks(num_rows: int, row_bytes: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges of about ``chunk_bytes`` each."""
    step = max(1, chunk_bytes // max(1, row_bytes))
    for start in range(0, num_rows, step):
        yield start, min(num_rows, start + step)


@dataclass(frozen=True, eq=False)
class RoutingTrace:
    """Token x MoE-layer x top-k routed expert ids, rows in stream order (sequences contiguous).

    ``expert_ids`` int16 ``[N, L, K]`` (-1 = not recorded; may be a read-only memmap);
    ``gate_weights`` float32 ``[N, L, K]`` or None; ``seq_id``/``pos`` int32 ``[N]``; ``phase`` int8
    ``[N]`` (0 prefill, 1 decode, -1 unknown); ``layer_ids`` int16 ``[L]`` (model layer index of each
    column); ``meta`` the parsed ``meta_json``; ``extras`` any other arrays of the file (``step_id``,
    ``token_id``, ...), per-row ones sliced along with the rows.
    """

    expert_ids: np.ndarray
    seq_id: np.ndarray
    pos: np.ndarray
    phase: np.ndarray
    layer_ids: np.ndarray
    meta: dict[str, Any]
    gate_weights: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    source: str | None = None
    """Path the trace was loaded from (for messages); None when built in memory."""

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def build(
        cls,
        expert_ids: np.ndarray,
        *,
        num_experts: int,
        seq_id: np.ndarray | None = None,
        pos: np.ndarray | None = None,
        phase: np.ndarray | int | None = None,
        layer_ids: np.ndarray | None = None,
        gate_weights: np.ndarray | None = None,
        meta: dict[str, Any] | None = None,
        extras: dict[str, np.ndarray] | None = None,
    ) -> RoutingTrace:
        """A trace from in-memory arrays, cast to the v1 dtypes and validated (defaults: one sequence)."""
        ids = np.asarray(expert_ids)
        if ids.ndim != 3:
            raise UserError(f"expected expert_ids of shape [tokens, layers, k], got shape {ids.shape}")
        check_trace_dims(ids.shape, None)
        EXPERTS.check(int(num_experts), field="num_experts")
        n, layers, k = ids.shape
        seq = np.zeros(n, np.int32) if seq_id is None else np.asarray(seq_id, np.int32)
        if pos is None:
            starts = np.r_[0, np.flatnonzero(np.diff(seq)) + 1] if n else np.zeros(0, np.int64)
            pos_arr = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        else:
            pos_arr = np.asarray(pos)
        if phase is None:
            phase = UNKNOWN
        ph = np.full(n, phase, np.int8) if np.isscalar(phase) else np.asarray(phase, np.int8)
        lids = np.arange(layers) if layer_ids is None else np.asarray(layer_ids)
        full_meta = {
            "schema": SCHEMA,
            **(meta or {}),
            "num_experts": int(num_experts),
            "top_k": int(k),
            "n_tokens": int(n),
            "n_moe_layers": int(layers),
            "has_gate_weights": gate_weights is not None,
        }
        trace = cls(
            expert_ids=checked_int16(ids, "expert_ids", minimum=-1),
            seq_id=seq,
            pos=pos_arr.astype(np.int32),
            phase=ph,
            layer_ids=checked_int16(lids, "layer_ids", minimum=0),
            gate_weights=None if gate_weights is None else np.asarray(gate_weights, np.float32),
            meta=full_meta,
            extras=dict(extras or {}),
        )
        trace.validate()
        return trace

    @classmethod
    def load(
        cls, path_or_name: str | Path, *, model: MoEModel | None = None, mmap: bool = True
    ) -> RoutingTrace:
        """Load a v1 ``.npz`` (a path or a shipped trace's name) and validate it (against ``model``)."""
        from moesim.resources import resolve

        path = resolve("trace", path_or_name)
        file = str(path)

        def check(key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
            if key == "expert_ids":
                if len(shape) != 3 or 0 in shape[1:]:
                    raise UserError(f"expected int16 [tokens, layers, k] with layers, k >= 1, found shape "
                                    f"{shape}", file=file, field=key)
                check_trace_dims(shape, file)

        arrays = read_npz(path, mmap=mmap, check=check)
        if "expert_ids" not in arrays:
            others = ", ".join(sorted(arrays)[:4])
            msg = (f"missing array 'expert_ids' (not a moe-routing-trace/v1 file; it holds {others}, ...; "
                   "for count arrays use --key KEY or 'trace convert --format counts-npz')")
            raise UserError(msg, file=file)
        meta: dict[str, Any] = {}
        if "meta_json" in arrays:
            raw = arrays["meta_json"]
            if raw.shape != () or raw.dtype.kind not in "US":
                msg = f"expected a 0-d string, got {raw.dtype} {raw.shape}"
                raise UserError(msg, file=file, field="meta_json")
            try:
                meta = json.loads(str(raw[()]))
            except json.JSONDecodeError as e:
                raise UserError(f"not valid JSON ({e})", file=file, field="meta_json") from None
            except (RecursionError, ValueError) as e:  # nesting too deep, integers of 10^4 digits
                msg = f"not readable JSON ({type(e).__name__})"
                raise UserError(msg, file=file, field="meta_json") from None
            if not isinstance(meta, dict):
                raise UserError("expected a JSON object", file=file, field="meta_json")
        ids = arrays["expert_ids"]
        n = ids.shape[0] if ids.ndim else 0
        trace = cls(
            expert_ids=ids,
            seq_id=arrays.get("seq_id", np.zeros(n, np.int32)),
            pos=arrays.get("pos", np.arange(n, dtype=np.int32)),
            phase=arrays.get("phase", np.full(n, UNKNOWN, np.int8)),
            layer_ids=arrays.get(
                "layer_ids", np.arange(ids.shape[1] if ids.ndim == 3 else 0, dtype=np.int16)
            ),
            gate_weights=arrays.get("gate_weights"),
            meta=meta,
            extras={k: v for k, v in arrays.items() if k not in CORE_KEYS},
            source=file,
        )
        trace.validate(model)
        return trace

    def save(self, path: str | Path, *, compress: bool = True) -> None:
        """Write the v1 ``.npz`` atomically (``compress=False`` keeps it memory-mappable on load)."""
        arrays: dict[str, np.ndarray] = {
            "seq_id": self.seq_id,
            "pos": self.pos,
            "phase": self.phase,
            "layer_ids": self.layer_ids,
            "meta_json": np.array(json.dumps(self.meta)),
            **self.extras,
        }
        row_bytes = int(np.prod(self.expert_ids.shape[1:])) * 2
        streamed: dict[str, Chunks] = {
            "expert_ids": (
                self.expert_ids.shape,
                np.dtype(np.int16),
                lambda: (self.expert_ids[a:b] for a, b in row_chunks(self.num_tokens, row_bytes)),
            )
        }
        if self.gate_weights is not None:
            gw = self.gate_weights
            n = self.num_tokens
            streamed["gate_weights"] = (
                gw.shape,
                np.dtype(np.float32),
                lambda: (gw[a:b] for a, b in row_chunks(n, row_bytes * 2)),
            )
        write_npz(path, arrays, compress=compress, streamed=streamed)

    # ----------------------------------------------------------------------------- validation
    def validate(self, model: MoEModel | None = None) -> None:
        """Raise UserError (one line) unless shapes, dtypes, ids and layers are consistent."""
        file = self.source
        ids = self.expert_ids

        def bad(msg: str, fld: str) -> UserError:
            return UserError(msg, file=file, field=fld)

        if ids.dtype != np.int16 or ids.ndim != 3:
            raise bad(
                f"expected int16 [tokens, layers, k], found {ids.dtype} with shape {ids.shape}", "expert_ids"
            )
        n, layers, k = ids.shape
        for name, arr, dtypes in (
            ("seq_id", self.seq_id, (np.int32,)),
            ("pos", self.pos, (np.int32,)),
            ("phase", self.phase, (np.int8,)),
        ):
            if arr.shape != (n,) or arr.dtype not in dtypes:
                raise bad(
                    f"expected {np.dtype(dtypes[0])} [{n}], found {arr.dtype} with shape {arr.shape}", name
                )
        if self.layer_ids.shape != (layers,) or self.layer_ids.dtype.kind not in "iu":
            raise bad(
                f"expected integer [{layers}], found {self.layer_ids.dtype} {self.layer_ids.shape}",
                "layer_ids",
            )
        if len(np.unique(self.layer_ids)) != layers:
            raise bad(f"layer ids must be distinct, found {self.layer_ids.tolist()}", "layer_ids")
        if self.gate_weights is not None and (
            self.gate_weights.shape != ids.shape or self.gate_weights.dtype != np.float32
        ):
            raise bad(
                f"expected float32 {list(ids.shape)}, found {self.gate_weights.dtype} "
                f"{list(self.gate_weights.shape)}",
                "gate_weights",
            )
        if n and not np.isin(self.phase, (PREFILL, DECODE, UNKNOWN)).all():
            raise bad("phase values must be 0 (prefill), 1 (decode) or -1 (unknown)", "phase")
        for key, arr in self.extras.items():
            if arr.dtype.hasobject:
                raise bad("object arrays are refused (pickle)", key)
        e = self.meta.get("num_experts")
        if e is not None and (not isinstance(e, int) or isinstance(e, bool) or e < 1):
            raise bad(f"expected a positive integer, found {e!r}", "meta_json.num_experts")
        if e is not None:
            EXPERTS.check(e, file=file, field="meta_json.num_experts")
        top_k = self.meta.get("top_k")
        if top_k is not None and top_k != k:
            raise bad(f"meta top_k {top_k!r} differs from the expert_ids k dimension {k}", "meta_json.top_k")
        lo, hi = self._id_range()
        limit = e if e is not None else (model.num_experts if model is not None else None)
        if lo < -1 or (limit is not None and hi >= limit):
            raise bad(f"expert ids must lie in [-1, {limit}), found range [{lo}, {hi}]", "expert_ids")
        if model is not None:
            self.check_model(model)

    def check_model(self, model: MoEModel) -> None:
        """UserError unless experts, top-k and layer ids agree with ``model``."""
        file = self.source
        if self.num_experts > model.num_experts or (
            self.meta.get("num_experts") is not None and self.meta["num_experts"] != model.num_experts
        ):
            raise UserError(
                f"model {model.name} has {model.num_experts} routed experts, trace has {self.num_experts}",
                file=file,
                field="meta_json.num_experts",
            )
        if self.top_k != model.top_k:
            raise UserError(
                f"model {model.name} routes top-{model.top_k}, trace has k = {self.top_k}",
                file=file,
                field="expert_ids",
            )
        extra = sorted(set(self.layer_ids.tolist()) - set(model.moe_layers))
        if extra:
            raise UserError(
                f"layer ids {extra} are not MoE layers of {model.name} "
                f"(MoE layers {model.moe_layers[0]}..{model.moe_layers[-1]})",
                file=file,
                field="layer_ids",
            )

    def _id_range(self) -> tuple[int, int]:
        lo, hi = 0, -1
        row_bytes = int(np.prod(self.expert_ids.shape[1:])) * 2
        for a, b in row_chunks(self.num_tokens, row_bytes):
            chunk = self.expert_ids[a:b]
            if chunk.size:  # rows of zero layers or zero slots hold no id
                lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
            release_pages(self.expert_ids)
        return lo, hi

    # ----------------------------------------------------------------------------- properties
    @property
    def num_tokens(self) -> int:
        return int(self.expert_ids.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.expert_ids.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.expert_ids.shape[2])

    @property
    def num_experts(self) -> int:
        """``meta.num_experts``; without it, 1 + the largest id seen."""
        e = self.meta.get("num_experts")
        if e is not None:
            return int(e)
        return max(1, self._id_range()[1] + 1)

    @property
    def model_name(self) -> str | None:
        """The model as written in the metadata (a built-in name for traces moesim wrote)."""
        m = self.meta.get("model")
        return None if m is None else str(m)

    @property
    def num_sequences(self) -> int:
        return len(np.unique(self.seq_id))

    # ----------------------------------------------------------------------------- views
    def _row_extras(self, index: slice | np.ndarray) -> dict[str, np.ndarray]:
        n = self.num_tokens
        return {k: (v[index] if v.ndim and v.shape[0] == n else v) for k, v in self.extras.items()}

    def _sliced(self, index: slice | np.ndarray) -> RoutingTrace:
        ids = self.expert_ids[index]
        meta = {**self.meta, "n_tokens": int(ids.shape[0])}
        return replace(
            self,
            expert_ids=ids,
            seq_id=self.seq_id[index],
            pos=self.pos[index],
            phase=self.phase[index],
            gate_weights=None if self.gate_weights is None else self.gate_weights[index],
            extras=self._row_extras(index),
            meta=meta,
        )

    def rows(self, start: int, stop: int) -> RoutingTrace:
        """Rows ``start:stop`` (a view; memmaps stay memmaps)."""
        return self._sliced(slice(start, stop))

    def select(self, index: np.ndarray) -> RoutingTrace:
        """Rows by integer index or boolean mask (a copy), e.g. ``trace.select(trace.phase == 1)``."""
        return self._sliced(np.asarray(index))

    def layers(self, columns: np.ndarray | list[int]) -> RoutingTrace:
        """Only the given layer columns (positions, not model layer ids)."""
        cols = np.asarray(columns, dtype=np.int64)
        return replace(
            self,
            expert_ids=self.expert_ids[:, cols],
            layer_ids=self.layer_ids[cols],
            gate_weights=None if self.gate_weights is None else self.gate_weights[:, cols],
            meta={**self.meta, "n_moe_layers": len(cols)},
        )

    def split(self, fraction: float) -> tuple[RoutingTrace, RoutingTrace]:
        """``(train, eval)``: the first ``fraction`` of rows and the rest, in row order."""
        if not 0.0 <= fraction <= 1.0:
            raise UserError(f"split fraction must be in [0, 1], got {fraction}")
        cut = round(self.num_tokens * fraction)
        return self.rows(0, cut), self.rows(cut, self.num_tokens)

    def window_bounds(self, windows: int) -> np.ndarray:
        """``windows + 1`` row boundaries cutting the rows into equal consecutive time windows."""
        if windows < 1:
            raise UserError(f"windows must be >= 1, got {windows}")
        return np.linspace(0, self.num_tokens, windows + 1).round().astype(np.int64)

    def windows(self, windows: int) -> list[RoutingTrace]:
        b = self.window_bounds(windows)
        return [self.rows(int(b[i]), int(b[i + 1])) for i in range(windows)]

    def load_matrix(self, windows: int = 1) -> np.ndarray:
        """int64 ``[W, L, E]``: per window, layer and expert, how many (token, slot) chose it (-1 skipped)."""
        e, layers = self.num_experts, self.num_layers
        bounds = self.window_bounds(windows)
        out = np.zeros((windows, layers, e), np.int64)
        offsets = (np.arange(layers, dtype=np.int64) * e)[None, :, None]
        row_bytes = int(np.prod(self.expert_ids.shape[1:])) * 8  # processed as int64
        for w in range(windows):
            for a, b in row_chunks(int(bounds[w + 1] - bounds[w]), row_bytes):
                ids = np.asarray(self.expert_ids[bounds[w] + a : bounds[w] + b], dtype=np.int64)
                flat = ids + offsets
                flat = flat.ravel() if ids.min(initial=0) >= 0 else flat[ids >= 0]  # no mask unless a -1
                out[w] += np.bincount(flat, minlength=layers * e).reshape(layers, e)
                release_pages(self.expert_ids)
        return out

    def layer_stream(self, column: int) -> np.ndarray:
        """``[N, K]`` ids of one layer column in row order: the access stream of that layer's cache."""
        return self.expert_ids[:, column, :]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Row-index arrays cutting the stream into consecutive batches of ``batch_size`` (last shorter)."""
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        for start in range(0, self.num_tokens, batch_size):
            yield np.arange(start, min(start + batch_size, self.num_tokens))

    def step_batches(self, key: str = "step_id") -> Iterator[np.ndarray]:
        """Row-index arrays, one per distinct value of ``extras[key]``, in order of first appearance."""
        if key not in self.extras or self.extras[key].shape != (self.num_tokens,):
            have = sorted(k for k, v in self.extras.items() if v.shape == (self.num_tokens,))
            raise UserError(
                f"trace has no per-row key {key!r} (per-row keys: {', '.join(have) or 'none'})",
                file=self.source,
                field=key,
            )
        values = np.asarray(self.extras[key])
        uniq, first, inverse = np.unique(values, return_index=True, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(inverse, minlength=len(uniq)))[:-1])
        for g in np.argsort(first, kind="stable"):
            yield groups[g]
