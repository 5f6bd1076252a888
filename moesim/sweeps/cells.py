"""A cell (one call of a workflow, named by its kind and parameters) and its content hash.

The hash covers the cell's kind and parameters, the *contents* of the files it reads (hardware
profile, model spec, trace, plan, calibration folder) and moesim's own source code, so an edited
input file or a changed planner or simulator gives a new hash and the cell is computed again, while
an unchanged cell is found in a sweep dataset (or a report's cell store) and skipped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CELL_SCHEMA = "moesim-cell/v1"


@dataclass(frozen=True)
class Cell:
    """One unit of work: ``kind`` (a :class:`~moesim.sweeps.schema.CellKind`'s name) and its parameters."""

    kind: str
    params: tuple[tuple[str, Any], ...]
    """Sorted (name, value) pairs; values are plain JSON scalars or tuples."""

    @classmethod
    def make(cls, kind: str, **params: Any) -> Cell:
        pairs = ((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items())
        return cls(kind, tuple(sorted(pairs)))

    @property
    def p(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def label(self) -> str:
        return f"{self.kind}(" + ", ".join(f"{k}={v}" for k, v in self.params if v is not None) + ")"


def file_digest(path: str | Path, *, memo: dict[tuple[str, int, int], str] | None = None) -> str:
    """SHA-256 of a file's bytes (memoised on path, size and mtime when ``memo`` is given)."""
    p = Path(path)
    st = p.stat()
    k = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if memo is not None and k in memo:
        return memo[k]
    h = hashlib.sha256()
    with p.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if memo is not None:
        memo[k] = digest
    return digest


def code_digest() -> str:
    """SHA-256 over moesim's Python sources (planners and kernels included), in a stable order."""
    import moesim

    root = Path(moesim.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        if "__pycache__" in f.parts:
            continue
        h.update(str(f.relative_to(root)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def cell_key(kind: str, params: Mapping[str, Any], file_digests: Mapping[str, str], code: str) -> str:
    """The hex key of one cell: its kind, its parameters, its files' digests and the code digest."""
    blob = json.dumps(
        {"schema": CELL_SCHEMA, "kind": kind, "params": params, "files": file_digests, "code": code},
        sort_keys=True, separators=(",", ":"), default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Hasher:
    """Cell keys against one code digest, each input file read once."""

    code: str = field(default_factory=code_digest)
    _memo: dict[tuple[str, int, int], str] = field(default_factory=dict, repr=False)

    def digest(self, path: str | Path) -> str:
        return file_digest(path, memo=self._memo)

    def inputs(self, params: Mapping[str, Any], files: Mapping[str, str]) -> dict[str, str]:
        """Digests of the files the parameters name: ``files`` maps a parameter to ``hardware``, ``model``,
        ``trace`` (built-in names or paths) or ``path`` (a file, or a folder's csv/json/yaml files)."""
        from moesim.resources import resolve

        out: dict[str, str] = {}
        for key, what in files.items():
            value = params.get(key)
            if value is None:
                continue
            if what != "path" and isinstance(value, (tuple, list)):  # traces played in order
                out.update({f"{key}[{i}]": self.digest(resolve(what, v)) for i, v in enumerate(value)})
                continue
            if what != "path":
                out[key] = self.digest(resolve(what, value))
                continue
            p = Path(str(value))
            if p.is_file():
                out[key] = self.digest(p)
            elif p.is_dir():  # a calibration folder: every table and the validation summary
                for f in sorted(p.iterdir()):
                    if f.is_file() and f.suffix in (".csv", ".json", ".yaml"):
                        out[f"{key}/{f.name}"] = self.digest(f)
        return out

    def key(self, cell: Cell, files: Mapping[str, str]) -> str:
        params = cell.p
        return cell_key(cell.kind, params, self.inputs(params, files), self.code)
