"""Reading and writing ``.npz`` archives safely: no pickle, large stored members memory-mapped.

``np.load`` on an ``.npz`` decompresses each member into memory. A 10M-token trace of 61 layers x 8
experts is ~10 GB of int16, so a member stored uncompressed (``ZIP_STORED``) and larger than
``MMAP_MIN_BYTES`` is opened as an ``np.memmap`` at its offset inside the zip file instead; writing
streams arrays chunk by chunk into the archive (memmaps included) so nothing is held twice.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import numpy as np

from moesim.errors import UserError
from moesim.io import atomic_open

MMAP_MIN_BYTES = 32 * 2**20
"""Stored members at least this large are memory-mapped rather than read into memory."""

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes
_READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, struct.error)


def _read_header(fp: IO[bytes], file: str, key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, Fortran order and dtype of the ``.npy`` stream at ``fp``; rejects object dtypes."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
    except _READ_ERRORS as e:
        raise UserError(f"not a valid .npy member ({e})", file=file, field=key) from None
    if dtype.hasobject:
        raise UserError(f"object array (would need pickle; refused), dtype {dtype}", file=file, field=key)
    return shape, fortran, dtype


def _stored_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """Byte offset of a stored member's data inside the zip file (after its local header)."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if fields[0] != b"PK\x03\x04":
        raise zipfile.BadZipFile("bad local file header")
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def _mmap_member(path: Path, info: zipfile.ZipInfo, key: str) -> np.ndarray:
    start = _stored_offset(path, info)
    with open(path, "rb") as fh:
        fh.seek(start)
        shape, fortran, dtype = _read_header(fh, str(path), key)
        data_offset = fh.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if data_offset + nbytes > path.stat().st_size or data_offset - start + nbytes > info.file_size:
        raise UserError("member is truncated (file shorter than its array header says)", file=path, field=key)
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=shape, order=order)


def release_pages(arr: np.ndarray) -> None:
    """Drop the resident pages of a read-only memmap so streaming a large trace keeps RSS bounded.

    Pages of a file mapping count towards the process's RSS once touched; MADV_DONTNEED on a
    read-only file mapping just lets them go (they are re-read from the file if touched again).
    """
    import mmap

    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def read_npz(path: str | Path, *, mmap: bool = True) -> dict[str, np.ndarray]:
    """All members of an ``.npz`` as arrays (large stored ones memory-mapped); UserError if corrupt."""
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as e:
        raise UserError(f"not a readable .npz (zip) archive: truncated or corrupt ({e})", file=path) from None
    out: dict[str, np.ndarray] = {}
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[:-4]
            try:
                if mmap and info.compress_type == zipfile.ZIP_STORED and info.file_size >= MMAP_MIN_BYTES:
                    out[key] = _mmap_member(path, info, key)
                    continue
                with zf.open(info) as fp:
                    _read_header(fp, str(path), key)  # refuses object arrays before reading
                    fp.seek(0)
                    out[key] = np.lib.format.read_array(fp, allow_pickle=False)
            except UserError:
                raise
            except _READ_ERRORS as e:
                msg = f"cannot read member: truncated or corrupt ({e})"
                raise UserError(msg, file=path, field=key) from None
    return out


def _member(key: str, method: int) -> zipfile.ZipInfo:
    """A member entry with a fixed timestamp, so the same arrays always give the same bytes."""
    info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = method
    return info


Chunks = tuple[tuple[int, ...], np.dtype, Callable[[], Iterable[np.ndarray]]]
"""A member written chunk by chunk: full shape, dtype, and a factory of C-ordered row chunks."""


def write_npz(
    path: str | Path,
    arrays: dict[str, np.ndarray],
    *,
    compress: bool = True,
    streamed: dict[str, Chunks] | None = None,
) -> None:
    """Write an ``.npz`` atomically; ``streamed`` members are written from row chunks (never whole)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_open(path, "wb") as fh, zipfile.ZipFile(fh, "w", compression=method, allowZip64=True) as zf:
        for key, arr in arrays.items():
            with zf.open(_member(key, method), "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(arr), allow_pickle=False)
        for key, (shape, dtype, chunks) in (streamed or {}).items():
            dtype = np.dtype(dtype)
            with zf.open(_member(key, method), "w", force_zip64=True) as out:
                header = {
                    "descr": np.lib.format.dtype_to_descr(dtype),
                    "fortran_order": False,
                    "shape": tuple(shape),
                }
                np.lib.format.write_array_header_2_0(out, header)
                written = 0
                for chunk in chunks():
                    chunk = np.ascontiguousarray(chunk, dtype=dtype)
                    if chunk.shape[1:] != tuple(shape[1:]):
                        raise ValueError(f"{key}: chunk shape {chunk.shape} does not fit {shape}")
                    out.write(chunk.tobytes())
                    written += chunk.shape[0]
                if written != shape[0]:
                    raise ValueError(f"{key}: wrote {written} rows, header says {shape[0]}")
