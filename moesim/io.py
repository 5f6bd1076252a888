"""Writing output files atomically: a reader never sees a half-written file.

The temporary file is created with mode 0666 minus the process umask, like ``open(path, "w")``
(``tempfile.mkstemp`` would make it 0600, unreadable to an engine container running as another
user).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_temp(path: Path) -> tuple[int, str]:
    """A new file beside ``path`` opened for writing; the kernel applies the umask to its 0o666."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # astronomically unlikely: draw another name
            continue


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def check_parquet_writable(path: str | Path, *, field: str | None = None) -> None:
    """Before a long run: a ``.parquet`` output needs pyarrow (or fastparquet); one line if missing."""
    import importlib.util

    if Path(path).suffix.lower() != ".parquet":
        return
    if not any(importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet")):
        from moesim.errors import UserError

        raise UserError("writing Parquet needs pyarrow: pip install pyarrow (or moesim[parquet]), or write "
                        ".csv instead", file=path, field=field)


def write_frame(frame: Any, path: str | Path) -> None:
    """A pandas DataFrame as CSV, or Parquet when the name ends in ``.parquet``; atomically."""
    path = Path(path)
    if path.suffix == ".parquet":
        with atomic_open(path, "wb") as fh:
            frame.to_parquet(fh, index=False)
    else:
        with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
            frame.to_csv(fh, index=False)


def write_table_csv(path: str | Path, rows: dict[str, dict[str, Any]], *, key: str) -> None:
    """``{name: {column: value}}`` as CSV, one row per name (first column ``key``), atomically.

    Nested mappings become ``outer.inner`` columns; None is an empty cell; columns in first-seen order.
    """
    import csv

    def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    table = [{key: name, **flat(r)} for name, r in rows.items()]
    columns = list(dict.fromkeys(c for r in table for c in r))
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows([{c: ("" if v is None else v) for c, v in r.items()} for r in table])
