"""Limits on the size of what a user file or flag may ask for, checked before anything is allocated.

A routing trace, a model spec or a hardware profile is data from outside: a header that claims 10^12
rows, ``count: 10000000`` devices or a 3 MB ``.npz`` that inflates to 4 GB must end in one line, not
in a MemoryError or an hour of work. Each :class:`Limit` has a default generous for real use and an
environment variable that raises it for the rare real case; docs/limits.md lists them all. The value
is read from the environment at each check (no module state).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moesim.errors import UserError


@dataclass(frozen=True)
class Limit:
    """One documented bound: ``check(n)`` raises a one-line UserError naming it when ``n`` exceeds it."""

    name: str
    """What is counted, in messages: ``trace rows``."""
    env: str
    """Environment variable that sets another bound: ``MOESIM_MAX_TRACE_ROWS``."""
    default: int
    doc: str
    """Why this default, for docs/limits.md."""
    hard: int | None = None
    """A bound the environment cannot raise (a format's integer range), or None."""

    def value(self) -> int:
        """The bound in force: the environment variable if set, else the default."""
        text = os.environ.get(self.env)
        if text is None or not text.strip():
            return self.default
        try:
            value = int(float(text)) if "e" in text.lower() else int(text)
        except (ValueError, OverflowError):  # "many", "1e999"
            raise UserError(f"expected a whole number >= 1, got {text!r}", field=self.env) from None
        if value < 1:
            raise UserError(f"expected a whole number >= 1, got {text!r}", field=self.env)
        return min(value, self.hard) if self.hard is not None else value

    def check(self, n: int, *, file: str | Path | None = None, field: str | None = None) -> int:
        """``n`` unchanged when within the limit; a UserError that says how to raise it otherwise."""
        bound = self.value()
        if n > bound:
            if self.hard is not None and bound >= self.hard:
                how = f"the most the format allows is {self.hard:,}"
            else:
                how = f"set {self.env} to raise it"
            msg = f"{n:,} {self.name} exceed the limit of {bound:,} ({how})"
            raise UserError(msg, file=file, field=field)
        return n


INT16_MAX = int(np.iinfo(np.int16).max)
MAX_WINDOWS = 1024
"""Most time windows 'plan --windows' plans against at once (each is a [layers, experts] load matrix)."""
MAX_WIDTH = 2**24
"""Largest whole number any other field of a spec may hold (hidden size, FFN width, heads, vocabulary):
a sanity range, not a limit to raise (the largest real vocabularies are about 2^18)."""

TRACE_ROWS = Limit(
    "trace rows", "MOESIM_MAX_TRACE_ROWS", 100_000_000,
    "token rows of one routing trace; 10^8 rows of 61 layers x top-8 are 98 GB of int16 ids",
)
LAYERS = Limit(
    "layers", "MOESIM_MAX_LAYERS", 1024,
    "layers of a model and MoE layer columns of a trace (the largest MoE models have about 100)",
)
EXPERTS = Limit(
    "experts", "MOESIM_MAX_EXPERTS", INT16_MAX + 1,
    "routed experts per layer; trace files store expert ids as int16, so 32,768 is also the format's bound",
    hard=INT16_MAX + 1,
)
TOP_K = Limit(
    "experts per token (top-k)", "MOESIM_MAX_TOP_K", 256, "routed experts per token (models use 1-16)"
)
NODES = Limit(
    "nodes", "MOESIM_MAX_NODES", 1024,
    "nodes of a cluster (a profile's nodes: or --nodes); 1,024 nodes of 8 GPUs is 8,192 GPUs",
)
VERTICES_PER_NODE = Limit(
    "devices and switches per node", "MOESIM_MAX_DEVICES_PER_NODE", 1024,
    "devices (a device entry's count:) plus switches of one node template",
)
CLUSTER_LINKS = Limit(
    "links", "MOESIM_MAX_LINKS", 1_000_000,
    "links of a whole cluster once the node template is repeated (a mesh of n vertices has n(n-1)/2)",
)
SYNTH_TOKENS = Limit(
    "tokens to synthesise", "MOESIM_MAX_SYNTH_TOKENS", 100_000_000,
    "rows 'trace synth --tokens' writes (the file is streamed, its sequence index is held in memory)",
)
ARRAY_BYTES = Limit(
    "bytes of arrays in memory", "MOESIM_MAX_ARRAY_BYTES", 16 * 2**30,
    "bytes one input file may make moesim hold in memory: its decompressed (or small stored) .npz members "
    "together, a dense count matrix (large stored members are memory-mapped and do not count)",
)
INFLATION = Limit(
    "times the file's size in memory", "MOESIM_MAX_INFLATION", 100,
    "arrays built from a compressed or sparse file (inflated .npz members, a dense count matrix from a "
    "CSV) relative to the file's size, beyond INFLATION_FLOOR_BYTES; real traces compress 2-5x, a zip "
    "bomb about 1000x",
)
INFLATION_FLOOR_BYTES = 64 * 2**20
"""Arrays up to this total are accepted from any file whatever the ratio (a small file of mostly -1)."""
YAML_BYTES = Limit(
    "bytes of YAML/JSON text", "MOESIM_MAX_YAML_BYTES", 16 * 2**20,
    "size of a hardware profile, model spec, plan, sweep or synthesis profile file",
)
YAML_DEPTH = Limit(
    "levels of YAML/JSON nesting", "MOESIM_MAX_YAML_DEPTH", 64,
    "nesting of lists and mappings (moesim's own files use at most 6)",
)
YAML_NODES = Limit(
    "YAML values (aliases expanded)", "MOESIM_MAX_YAML_NODES", 2_000_000,
    "values of one YAML document counting each alias as a copy of what it names (a 'billion laughs' "
    "file is small but expands to 10^9)",
)

ALL: tuple[Limit, ...] = (
    TRACE_ROWS, LAYERS, EXPERTS, TOP_K, NODES, VERTICES_PER_NODE, CLUSTER_LINKS, SYNTH_TOKENS,
    ARRAY_BYTES, INFLATION, YAML_BYTES, YAML_DEPTH, YAML_NODES,
)


def inflated_bytes_allowed(file_bytes: int) -> int:
    """Bytes of arrays a file of ``file_bytes`` may inflate to (compressed .npz members, CSV counts)."""
    by_ratio = max(INFLATION_FLOOR_BYTES, INFLATION.value() * file_bytes)
    return min(by_ratio, ARRAY_BYTES.value())


def checked_int16(values: Iterable[int] | np.ndarray, field: str, file: str | Path | None = None, *,
                  minimum: int = -1) -> np.ndarray:
    """``values`` as int16 after checking that each lies in ``[minimum, 32767]`` (no silent wrap-around).

    Expert ids (``-1`` = not recorded) and layer ids are stored as int16 in trace files; casting
    ``70000`` would silently give ``4464``.
    """
    arr = np.asarray(values)
    if arr.dtype == np.int16 and minimum <= -(2**15):
        return arr
    if arr.size:
        if arr.dtype.kind == "b" or arr.dtype.kind not in "iuf":
            raise UserError(f"expected integers, found {arr.dtype}", file=file, field=field)
        lo, hi = arr.min(), arr.max()
        whole = np.isfinite(lo) and np.isfinite(hi) and bool(np.all(arr == np.round(arr)))
        if arr.dtype.kind == "f" and not whole:
            msg = "expected whole numbers, found fractions or non-finite values"
            raise UserError(msg, file=file, field=field)
        if lo < minimum or hi > INT16_MAX:
            found = f"{_num(lo)}..{_num(hi)}"
            msg = f"expected values from {minimum} to {INT16_MAX} (stored as int16), found {found}"
            raise UserError(msg, file=file, field=field)
    return arr.astype(np.int16)


def _num(x: object) -> str:
    f = float(x)  # type: ignore[arg-type]
    return str(int(f)) if f.is_integer() else repr(f)
