"""A CPU entry's ``kernels:`` section -> :class:`~moesim.specs.hardware.CpuKernelSpec` per kernel kind.

    kernels:
      source: where the section's numbers come from
      amx-bf16:
        dtype: bf16                 # what it computes in
        weight_bits: 16             # what it streams from DDR per weight
        serves: [bf16, fp16]        # model weight dtypes it is chosen for by default
        peak: 72.1 TFLOP/s
        efficiency: [[1, 0.0375], [4, 0.15], [16, 0.3]]   # [rows per expert, fraction of peak]
        source: ...

See docs/hardware.md ("CPU expert kernels").
"""

from __future__ import annotations

import re

from moesim.errors import UserError
from moesim.specs.hardware import CpuKernelSpec
from moesim.specs.model import DTYPE_BYTES
from moesim.specs.yaml_fields import Fields, check_fraction

_SECTION_KEYS = frozenset({"source", "verified", "estimated", "notes"})
_KERNEL_KEYS = frozenset(
    {"dtype", "weight_bits", "serves", "peak", "efficiency", "impl", "source", "verified", "estimated",
     "notes"}
)
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")
COMPUTE_DTYPES = ("fp32", "bf16", "fp16", "int8")
# Rows beyond this are not a GEMM any CPU runs per expert in one call (a curve point past it is a typo).
MAX_ROWS = 1_000_000


def parse_kernels(section: Fields, provenance: object) -> tuple[dict[str, CpuKernelSpec], str]:
    """The kernels of one CPU entry (in file order) and the section's provenance text.

    ``provenance`` renders a section's ``source``/``verified``/``estimated`` (the catalog's own helper)."""
    names = [n for n in section.names() if n not in _SECTION_KEYS]
    if "source" not in section:
        raise section.error("source", "missing required field")
    if not names:
        raise section.error(None, "expected at least one kernel kind, such as amx-bf16: {...}")
    kernels: dict[str, CpuKernelSpec] = {}
    for name in names:
        if not _NAME.match(name):
            raise section.error(name, "expected a kernel kind in lower case, such as amx-bf16 or avx512-q4")
        kernels[name] = _parse_kernel(name, section.mapping(name), provenance)
    return kernels, provenance(section)  # type: ignore[operator]


def _parse_kernel(name: str, f: Fields, provenance: object) -> CpuKernelSpec:
    f.check_keys(_KERNEL_KEYS, required=("dtype", "weight_bits", "peak", "efficiency", "source"))
    dtype = f.str("dtype", choices=COMPUTE_DTYPES)
    bits = f.raw("weight_bits")
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or not 1 <= bits <= 32:
        raise f.error("weight_bits", f"expected bits per weight from 1 to 32, such as 4.84, got {bits!r}")
    peak = f.quantity("peak", "compute")
    serves = f.list("serves", [])
    for i, d in enumerate(serves):
        if not isinstance(d, str) or d not in DTYPE_BYTES:
            raise UserError(f"expected a weight dtype among {', '.join(DTYPE_BYTES)}, got {d!r}",
                            file=f.file("serves"), field=f"{f.field('serves')}[{i}]")
    impl = f.str("impl", "") if "impl" in f else ""
    return CpuKernelSpec(
        name=name,
        dtype=dtype,
        peak_flops_per_s=peak,
        efficiency=_rows_curve(f),
        weight_bits=float(bits),
        serves=tuple(serves),
        impl=impl,
        source=provenance(f),  # type: ignore[operator]
    )


def _rows_curve(f: Fields) -> tuple[tuple[float, float], ...]:
    points: list[tuple[float, float]] = []
    field = f.field("efficiency")
    for i, point in enumerate(f.list("efficiency")):
        where = f"{field}[{i}]"
        if not isinstance(point, list) or len(point) != 2:
            raise UserError(f"expected a pair [rows, fraction] such as [16, 0.3], got {point!r}",
                            file=f.file("efficiency"), field=where)
        rows = point[0]
        if isinstance(rows, bool) or not isinstance(rows, (int, float)) or not 1 <= rows <= MAX_ROWS:
            raise UserError(f"expected rows per expert between 1 and {MAX_ROWS}, got {rows!r}",
                            file=f.file("efficiency"), field=f"{where}[0]")
        frac = check_fraction(point[1], lambda msg, w=where: UserError(msg, file=f.file("efficiency"),
                                                                        field=f"{w}[1]"))
        if points and rows <= points[-1][0]:
            raise UserError("expected rows in increasing order", file=f.file("efficiency"),
                            field=f"{where}[0]")
        points.append((float(rows), frac))
    if not points:
        raise f.error("efficiency", "expected at least one [rows, fraction] point, such as [16, 0.3]")
    return tuple(points)
