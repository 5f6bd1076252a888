"""Bad inputs of issue 17, built on disk: zip bombs, forged headers, impossible hardware, broken plans.

Shared by the case tests (test_robustness.py) and the fuzz tests. Every builder writes into ``folder``
and returns the path; none of them needs more than a few MB of memory or disk.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

CLUSTER = """\
kind: cluster
source: test
node:
  devices:
    gpu: {model: my-gpu, count: 2}
    cpu: {model: xeon-platinum-8480}
  switches: [sw]
  links:
    - {link: my-link, from: "gpu[0-1]", to: sw}
    - {link: pcie-gen5-x16, from: gpu0, to: cpu0}
devices:
  my-gpu:
    extends: h100-sxm5
    memory: {capacity: 80 GB, bandwidth: 3.35 TB/s, source: test}
    compute: {peak: {bf16: 989 TFLOP/s}, source: test}
links:
  my-link: {bandwidth: 450 GB/s, latency: 1 us, source: test}
"""

CPU_ONLY = """\
kind: cluster
source: test
node:
  devices:
    cpu: {model: xeon-platinum-8480}
"""


def npy_header(shape: tuple[int, ...], descr: str = "<i2") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _crc32_after_zeros(crc: int, n: int) -> int:
    """``zlib.crc32(data + bytes(n))`` from ``crc = zlib.crc32(data)`` without touching n bytes."""

    def times(mat: list[int], vec: int) -> int:
        out, i = 0, 0
        while vec:
            if vec & 1:
                out ^= mat[i]
            vec, i = vec >> 1, i + 1
        return out

    op = [0xEDB88320] + [1 << i for i in range(31)]  # one zero bit through the reflected register
    state = ~crc & 0xFFFFFFFF
    bits = 8 * n
    while bits:
        if bits & 1:
            state = times(op, state)
        op = [times(op, op[i]) for i in range(32)]
        bits >>= 1
    return ~state & 0xFFFFFFFF


def _write_zip(path: Path, members: list[tuple[str, int, int, int, bytes]], flags: int = 0) -> Path:
    """A zip written by hand: (name, method, crc, uncompressed size, compressed data) per member."""
    out, central = bytearray(), bytearray()
    for name, method, crc, size, data in members:
        raw = name.encode()
        offset = len(out)
        sizes = (crc, len(data), size, len(raw))
        out += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, flags, method, 0, 0x21, *sizes, 0) + raw + data
        central += struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, flags, method, 0, 0x21, *sizes,
                               0, 0, 0, 0, 0, offset) + raw
    eocd = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(out), 0)
    path.write_bytes(bytes(out + central + eocd))
    return path


def zip_bomb(folder: Path, inflated: int = 3_700_000_000) -> Path:
    """An ``.npz`` whose deflated ``expert_ids`` member (valid, CRC included) inflates to ``inflated``."""
    zeros = inflated - 128
    head = npy_header((zeros // 2,))
    head = head + bytes(128 - len(head))  # header padded to 128 bytes; the rest is the array's zeros
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = 1 << 20
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)  # the same bytes for every MB
    whole, rest = divmod(zeros, chunk)
    tail = comp.compress(bytes(rest)) + comp.flush()
    data = first + block * whole + tail
    crc = _crc32_after_zeros(zlib.crc32(head), zeros)
    return _write_zip(folder / "bomb.npz", [("expert_ids.npy", zipfile.ZIP_DEFLATED, crc, inflated, data)])


def forged_header(folder: Path, name: str, key: str, shape: tuple[int, ...], compressed: bool) -> Path:
    """An ``.npz`` whose member ``key`` claims ``shape`` in its header but holds 64 bytes of data."""
    payload = npy_header(shape) + bytes(64)
    path = folder / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{key}.npy", payload)
    return path


def patched_zip(folder: Path, name: str, *, method: int | None = None, flags: int | None = None) -> Path:
    """A valid small trace ``.npz`` whose headers then claim another compression method or encryption."""
    path = folder / name
    buf = io.BytesIO()
    np.savez_compressed(buf, expert_ids=np.zeros((4, 2, 2), np.int16))
    data = bytearray(buf.getvalue())
    for sig, flag_at, method_at in ((b"PK\x03\x04", 6, 8), (b"PK\x01\x02", 8, 10)):
        at = data.find(sig)
        while at >= 0:
            if flags is not None:
                data[at + flag_at : at + flag_at + 2] = struct.pack("<H", flags)
            if method is not None:
                data[at + method_at : at + method_at + 2] = struct.pack("<H", method)
            at = data.find(sig, at + 4)
    path.write_bytes(bytes(data))
    return path


def trace_npz(folder: Path, name: str, rows: int = 8, meta: dict | None = None) -> Path:
    """A small valid-looking v1 trace (2 layers, top-2 of 8) with ``meta`` as its meta_json."""
    path = folder / name
    rng = np.random.default_rng(0)
    pairs = [rng.permutation(8)[:2] for _ in range(rows * 2)]
    ids = np.array(pairs, np.int16).reshape(rows, 2, 2)
    arrays = {"expert_ids": ids, "meta_json": np.array(json.dumps(meta or {"num_experts": 8}))}
    np.savez(path, **arrays)
    return path


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path
