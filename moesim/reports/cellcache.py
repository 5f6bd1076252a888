"""Finished report cells on disk, keyed by a hash of everything the cell's numbers depend on.

The key hashes the cell's kind and parameters, the *contents* of its input files (hardware
profile, model spec, trace; never their paths, so a moved file still hits and an edited one
misses) and the source code of moesim itself (a changed planner or simulator recomputes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moesim.io import atomic_write_text

CACHE_SCHEMA = "moesim-report-cell/v1"


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
        {"schema": CACHE_SCHEMA, "kind": kind, "params": params, "files": file_digests, "code": code},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CellCache:
    """A folder of ``<key>.json`` results. ``folder=None`` disables caching (every cell is computed)."""

    folder: Path | None
    hits: int = 0
    misses: int = 0
    _memo: dict[tuple[str, int, int], str] = field(default_factory=dict, repr=False)

    def digest(self, path: str | Path) -> str:
        return file_digest(path, memo=self._memo)

    def get(self, key: str) -> dict[str, Any] | None:
        if self.folder is None:
            return None
        p = self.folder / f"{key}.json"
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict) or data.get("schema") != CACHE_SCHEMA or "result" not in data:
            return None
        return data["result"]

    def put(self, key: str, kind: str, params: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        if self.folder is None:
            return
        text = json.dumps(
            {"schema": CACHE_SCHEMA, "kind": kind, "params": params, "result": result},
            indent=1,
            sort_keys=True,
            allow_nan=False,
            default=str,
        )
        atomic_write_text(self.folder / f"{key}.json", text + "\n")
