"""The calibration table file: CSV rows of measured calls under a YAML header in ``#`` comments.

One file per op (``fused_moe.csv``, ``gemm.csv``, ...). The header says where and how the
numbers were measured; each row is one measured call shape. Full description: docs/calibration.md.

    # schema: moesim-calibration/v1
    # op: fused_moe
    # gpu: NVIDIA H100 80GB HBM3
    # ...
    op,tokens,num_experts,top_k,hidden,ffn,dtype,device,seconds_median,repeats,...
    fused_moe,64,8,2,4096,14336,bf16,cuda:0,0.000412,200,...
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from moesim.errors import UserError
from moesim.io import atomic_write_text
from moesim.safe_yaml import parse_yaml

SCHEMA = "moesim-calibration/v1"


@dataclass(frozen=True)
class OpSchema:
    """The columns of one op's table and how a lookup treats them."""

    axes: tuple[str, ...]
    """Numeric columns interpolated log-log, innermost first (e.g. tokens, then num_experts)."""
    keys: tuple[str, ...] = ()
    """Columns a lookup matches: exactly, or (for ``scaled``) the nearest measured value."""
    scaled: tuple[str, ...] = ()
    """Keys the time is proportional to (work grows linearly): the nearest value, time scaled."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """Values of keys a lookup may leave out (e.g. ``impl="triton"``)."""
    description: str = ""
    device: str = "gpu"
    """What measured it: ``gpu`` tables carry the GPU header, ``cpu`` tables the CPU header."""

    @property
    def shape_columns(self) -> tuple[str, ...]:
        return self.axes + tuple(k for k in self.keys if k not in self.axes)


OPS: dict[str, OpSchema] = {
    "fused_moe": OpSchema(
        axes=("tokens",), keys=("num_experts", "top_k", "hidden", "ffn", "dtype", "impl"),
        scaled=("hidden", "ffn"), defaults={"impl": "triton"},
        description="routed experts of one MoE layer: align, gated grouped GEMM, down GEMM, combine; "
                    "tokens routed uniformly at random to top_k distinct experts"),
    "grouped_gemm": OpSchema(
        axes=("tokens_per_expert", "num_experts"), keys=("hidden", "ffn", "dtype", "impl"),
        scaled=("hidden", "ffn"), defaults={"impl": "triton"},
        description="both expert GEMMs with SwiGLU on rows already grouped by expert, num_experts "
                    "experts with tokens_per_expert rows each (no align, no combine)"),
    "gemm": OpSchema(axes=("m",), keys=("n", "k", "dtype", "impl"), scaled=("n", "k"),
                     defaults={"impl": "torch"}, description="dense [m, k] x [k, n] matmul"),
    "moe_align": OpSchema(axes=("tokens",), keys=("num_experts", "top_k"),
                          description="block-padded permutation of (token, slot) pairs by expert"),
    "combine": OpSchema(axes=("tokens",), keys=("top_k", "hidden", "dtype"), scaled=("hidden",),
                        description="weighted sum of each token's top_k expert outputs"),
    "hbm_copy": OpSchema(axes=("bytes",), description="device-to-device copy of `bytes` bytes on one GPU"),
    "h2d": OpSchema(axes=("bytes",), keys=("pinned",), defaults={"pinned": True},
                    description="host-to-device copy from pinned or pageable host memory"),
    "d2h": OpSchema(axes=("bytes",), keys=("pinned",), defaults={"pinned": True},
                    description="device-to-host copy into pinned or pageable host memory"),
    "p2p": OpSchema(axes=("bytes",), description="peer copy between two GPUs of one node"),
    "cpu_expert": OpSchema(
        axes=("rows",), keys=("hidden", "ffn", "dtype", "impl"), scaled=("hidden", "ffn"),
        defaults={"impl": "torch"}, device="cpu",
        description="one gated expert on the CPU (gate/up GEMM, SiLU x up, down GEMM) on `rows` rows, "
                    "its weights cold (rotated through more copies than the last-level cache holds)"),
    "host_copy": OpSchema(axes=("bytes",), keys=("threads",), device="cpu",
                          description="host memcpy of `bytes` bytes between two buffers, `threads` threads"),
}

TIME_COLUMNS = ("device", "seconds_median", "repeats")
OPTIONAL_COLUMNS = ("seconds_p10", "seconds_p90", "method", "config", "flops", "bytes_moved",
                    "tflops_per_s", "gbytes_per_s", "src", "dst")
INT_COLUMNS = {"tokens", "num_experts", "top_k", "hidden", "ffn", "m", "n", "k", "repeats", "rows", "threads"}
FLOAT_COLUMNS = {"tokens_per_expert", "bytes", "seconds_median", "seconds_p10", "seconds_p90", "flops",
                 "bytes_moved", "tflops_per_s", "gbytes_per_s"}
BOOL_COLUMNS = {"pinned"}
HEADER_REQUIRED = ("schema", "op", "gpu", "driver", "cuda", "torch", "triton", "date")
HEADER_REQUIRED_CPU = ("schema", "op", "cpu", "cores", "threads", "torch", "date", "command")


def header_required(op: str) -> tuple[str, ...]:
    """Header fields a table of ``op`` must carry (GPU tables and CPU tables differ)."""
    return HEADER_REQUIRED_CPU if OPS[op].device == "cpu" else HEADER_REQUIRED


def columns(op: str) -> list[str]:
    """Column order of ``op``'s file (required columns, then the optional ones)."""
    return ["op", *OPS[op].shape_columns, *TIME_COLUMNS, *OPTIONAL_COLUMNS]


@dataclass(frozen=True)
class Table:
    """One op's rows (values typed) and the header they were measured under."""

    op: str
    header: dict[str, Any]
    rows: tuple[dict[str, Any], ...]
    path: str = ""


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def render_table(op: str, header: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]) -> str:
    """The text of one table file. ``header`` must hold the fields of ``HEADER_REQUIRED`` (but schema/op)."""
    if op not in OPS:
        raise UserError(f"unknown calibration op {op!r}; expected one of {sorted(OPS)}", field="op")
    head = {"schema": SCHEMA, "op": op, **{k: v for k, v in header.items() if k not in ("schema", "op")}}
    missing = [k for k in header_required(op) if k not in head]
    if missing:
        raise UserError(f"calibration header lacks {missing}", field="header")
    text = yaml.safe_dump(head, sort_keys=False, default_flow_style=False, allow_unicode=False)
    out = io.StringIO()
    for line in text.splitlines():
        out.write(f"# {line}\n")
    cols = columns(op)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(cols)
    required = ["op", *OPS[op].shape_columns, *TIME_COLUMNS]
    for i, row in enumerate(rows):
        lacking = [c for c in required[1:] if row.get(c) is None]
        if lacking:
            raise UserError(f"row {i} lacks {lacking}", field=op)
        extra = set(row) - set(cols)
        if extra:
            raise UserError(f"row {i} has unknown columns {sorted(extra)}; expected some of {cols}", field=op)
        writer.writerow([op if c == "op" else _format(row.get(c)) for c in cols])
    return out.getvalue()


def write_table(path: str | Path, op: str, header: Mapping[str, Any],
                rows: Sequence[Mapping[str, Any]]) -> None:
    """Write one table atomically."""
    atomic_write_text(path, render_table(op, header, rows))


def _parse_value(column: str, text: str, *, path: str, line: int) -> Any:
    if text == "":
        return None
    try:
        if column in INT_COLUMNS:
            return int(text)
        if column in FLOAT_COLUMNS:
            value = float(text)
            if not math.isfinite(value) or value < 0:
                raise ValueError(text)
            return value
    except ValueError:
        kind = "an integer" if column in INT_COLUMNS else "a non-negative number"
        raise UserError(f"expected {kind}, found {text!r}", file=path,
                        field=f"line {line}: {column}") from None
    if column in BOOL_COLUMNS:
        if text.lower() not in ("true", "false", "1", "0"):
            raise UserError(f"expected true or false, found {text!r}", file=path,
                            field=f"line {line}: {column}")
        return text.lower() in ("true", "1")
    return text


def parse_table(text: str, *, path: str = "<text>") -> Table:
    """Parse a table file's text; UserError naming the line and column for anything malformed."""
    lines = text.splitlines()
    head_lines: list[str] = []
    first = 0
    while first < len(lines) and lines[first].startswith("#"):
        head_lines.append(lines[first][2:] if lines[first].startswith("# ") else lines[first][1:])
        first += 1
    try:
        header = parse_yaml("\n".join(head_lines), file=path) or {}
    except UserError as e:
        raise UserError(f"expected a YAML header in '# ' comment lines: {e.message}", file=path,
                        field="header") from None
    if not isinstance(header, dict):
        raise UserError("expected the header to be a YAML mapping", file=path, field="header")
    if header.get("schema") != SCHEMA:
        raise UserError(f"expected schema {SCHEMA!r}, found {header.get('schema')!r}", file=path,
                        field="schema")
    op = header.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise UserError(f"unknown op {op!r}; expected one of {sorted(OPS)}", file=path, field="op")
    required = header_required(op)
    missing = [k for k in required if k not in header]
    if missing:
        raise UserError(f"expected header fields {list(required)}, missing {missing}", file=path,
                        field="header")
    reader = csv.reader(lines[first:])
    try:
        names = next(reader)
    except StopIteration:
        raise UserError("expected a CSV column line after the header", file=path) from None
    required = ["op", *OPS[op].shape_columns, *TIME_COLUMNS]
    absent = [c for c in required if c not in names]
    if absent:
        raise UserError(f"expected columns {required}, missing {absent}", file=path, field="columns")
    rows = []
    for offset, cells in enumerate(reader):
        line = first + 2 + offset
        if not cells:
            continue
        if len(cells) != len(names):
            raise UserError(f"expected {len(names)} cells, found {len(cells)}", file=path,
                            field=f"line {line}")
        row = {c: _parse_value(c, v, path=path, line=line) for c, v in zip(names, cells, strict=True)}
        if row["op"] != op:
            raise UserError(f"expected op {op!r}, found {row['op']!r}", file=path, field=f"line {line}: op")
        for c in required:
            if row[c] is None:
                raise UserError("expected a value", file=path, field=f"line {line}: {c}")
        rows.append(row)
    return Table(op=op, header=header, rows=tuple(rows), path=path)


def read_table(path: str | Path) -> Table:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read calibration table: {e}", file=path) from None
    return parse_table(text, path=str(path))
