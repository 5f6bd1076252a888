"""Reading and writing ``.npz`` archives safely: no pickle, large stored members memory-mapped.

``np.load`` on an ``.npz`` decompresses each member into memory. A 10M-token trace of 61 layers x 8
experts is ~10 GB of int16, so a member stored uncompressed (``ZIP_STORED``) and larger than
``MMAP_MIN_BYTES`` is opened as an ``np.memmap`` at its offset inside the zip file instead; writing
streams arrays chunk by chunk into the archive (memmaps included) so nothing is held twice.

Before anything is allocated, the sizes the archive claims are checked (moesim.limits): compressed
members together may inflate to at most ``INFLATION`` times the file size and ``ARRAY_BYTES``
(a zip bomb is refused, not decompressed), and an array header must fit in the bytes its member
holds (a header claiming shape (10^12, 32, 2) is refused, not preallocated). Encrypted members and
compression methods other than stored/deflate (deflate64...) are refused by name.
"""

from __future__ import annotations

import math
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

import numpy as np

from moesim.errors import UserError
from moesim.io import atomic_open
from moesim.limits import ARRAY_BYTES, INFLATION, inflated_bytes_allowed

MMAP_MIN_BYTES = 32 * 2**20
"""Stored members at least this large are memory-mapped rather than read into memory."""

_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # zip local file header, 30 bytes
# what zipfile, zlib and numpy's header parser raise on a corrupt archive (a flipped byte in a header
# reaches ast/tokenize: SyntaxError, TokenError)
_READ_ERRORS = (
    zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error, struct.error, NotImplementedError,
    RuntimeError, OverflowError, SyntaxError, TypeError, KeyError, tokenize.TokenError,
)
_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_METHOD_NAMES = {zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma", 9: "deflate64", 93: "zstandard"}

HeaderCheck = Callable[[str, tuple[int, ...], np.dtype], None]
"""Called with (member name, shape, dtype) after a member's header is read, before its data is:
raises UserError to refuse it (RoutingTrace.load checks the trace's dimensions against the limits)."""


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


def _check_fits(shape: tuple[int, ...], dtype: np.dtype, room: int, file: str, key: str) -> None:
    """Refuse a header whose array needs more bytes than its member holds (checked before allocating)."""
    count = math.prod(shape)
    need = count * max(1, dtype.itemsize)  # zero-width items (S0) still count: no 10^18-element arrays
    if need > room:
        raise UserError(
            f"array header claims shape {shape} of {dtype} ({need:,} bytes) but the member holds "
            f"{max(room, 0):,} bytes: truncated or forged",
            file=file,
            field=key,
        )


def _mmap_member(path: Path, info: zipfile.ZipInfo, key: str, check: HeaderCheck | None) -> np.ndarray:
    start = _stored_offset(path, info)
    with open(path, "rb") as fh:
        fh.seek(start)
        shape, fortran, dtype = _read_header(fh, str(path), key)
        data_offset = fh.tell()
    if check is not None:
        check(key, shape, dtype)
    room = min(path.stat().st_size - data_offset, info.file_size - (data_offset - start))
    _check_fits(shape, dtype, room, str(path), key)
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=data_offset, shape=shape, order=order)


def _check_members(path: Path, infos: list[zipfile.ZipInfo], mmap: bool) -> None:
    """Refuse encrypted members, unknown compression and inflated sizes beyond the limits, up front."""
    inflated = in_memory = 0
    for info in infos:
        key = info.filename[:-4]
        if info.flag_bits & 0x1:
            raise UserError("member is encrypted; expected a plain .npz (numpy.savez)", file=path, field=key)
        if info.compress_type not in _METHODS:
            method = _METHOD_NAMES.get(info.compress_type, f"method {info.compress_type}")
            raise UserError(
                f"member is compressed with {method}; expected stored or deflate (numpy.savez, "
                "numpy.savez_compressed)",
                file=path,
                field=key,
            )
        if info.compress_type != zipfile.ZIP_STORED:
            inflated += info.file_size
        if not (mmap and info.compress_type == zipfile.ZIP_STORED and info.file_size >= MMAP_MIN_BYTES):
            in_memory += info.file_size
    size = path.stat().st_size
    allowed = inflated_bytes_allowed(size)
    if inflated > allowed:
        limit = INFLATION if allowed < ARRAY_BYTES.value() else ARRAY_BYTES
        raise UserError(
            f"compressed members would inflate to {inflated:,} bytes, {inflated / max(size, 1):,.0f} times "
            f"the file's {size:,}; the limit is {allowed:,} (set {limit.env} to raise it)",
            file=path,
        )
    ARRAY_BYTES.check(in_memory, file=path)


def release_pages(arr: np.ndarray) -> None:
    """Drop the resident pages of a read-only memmap so streaming a large trace keeps RSS bounded.

    Pages of a file mapping count towards the process's RSS once touched; MADV_DONTNEED on a
    read-only file mapping just lets them go (they are re-read from the file if touched again).
    """
    import mmap

    mm = getattr(arr, "_mmap", None)
    if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
        mm.madvise(mmap.MADV_DONTNEED)


def read_npz(
    path: str | Path, *, mmap: bool = True, check: HeaderCheck | None = None
) -> dict[str, np.ndarray]:
    """All members of an ``.npz`` as arrays (large stored ones memory-mapped); UserError if corrupt.

    ``check`` sees each member's shape and dtype before its data is read (see :data:`HeaderCheck`).
    """
    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except _READ_ERRORS as e:
        raise UserError(f"not a readable .npz (zip) archive: truncated or corrupt ({e})", file=path) from None
    out: dict[str, np.ndarray] = {}
    with zf:
        infos = [info for info in zf.infolist() if info.filename.endswith(".npy")]
        _check_members(path, infos, mmap)
        for info in infos:
            key = info.filename[:-4]
            try:
                if mmap and info.compress_type == zipfile.ZIP_STORED and info.file_size >= MMAP_MIN_BYTES:
                    out[key] = _mmap_member(path, info, key, check)
                    continue
                with zf.open(info) as fp:
                    shape, _, dtype = _read_header(fp, str(path), key)  # refuses object arrays
                    if check is not None:
                        check(key, shape, dtype)
                    _check_fits(shape, dtype, info.file_size - fp.tell(), str(path), key)
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
