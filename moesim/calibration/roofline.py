"""The harness's derived figures: how close each measured call came to the device's roofline.

For a call with ``flops`` arithmetic and ``bytes_moved`` (the fewest HBM bytes: each active
expert's weights once, tokens in and out once), the roofline time is
``max(flops / peak_flops, bytes / peak_bandwidth)``. A call is *memory-bound* when the bytes
term is the larger (decode shapes: few tokens per expert) and *compute-bound* otherwise
(prefill). The figure of merit is the achieved fraction of the bound that applies:
``bytes / t / peak_bandwidth`` for memory-bound calls, ``flops / t / peak_flops`` for
compute-bound ones. Peaks are vendor datasheet numbers (dense, no sparsity; each entry
names its source); the ceilings measured in the same run (largest hbm_copy bandwidth, fastest gemm) are
reported beside them, because datasheet peaks are not reachable in practice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DevicePeaks:
    name: str
    hbm_bytes_per_s: float
    bf16_flops_per_s: float
    """Dense BF16/FP16 tensor-core peak."""
    source: str


# Datasheet numbers, dense. Matched by substring of the driver's GPU name;
# more specific entries first.
_PEAKS: tuple[tuple[str, DevicePeaks], ...] = (
    ("H100 PCIE", DevicePeaks("H100 PCIe", 2.0e12, 756e12, "NVIDIA H100 datasheet, PCIe column (sparse/2)")),
    ("H100", DevicePeaks("H100 SXM5", 3.35e12, 989.4e12,
                         "NVIDIA H100 datasheet, SXM5 column; glennklockwood.com/garden/processors/h100")),
    ("H200", DevicePeaks("H200 SXM", 4.8e12, 989.4e12,
                         "NVIDIA H200 specifications (4.8 TB/s; the H100 SXM5 tensor cores)")),
    ("B200", DevicePeaks("B200", 8.0e12, 2250e12,
                         "HGX B200 1000 W, glennklockwood.com/garden/processors/B200; pytorch/ao#4002")),
    ("A100", DevicePeaks("A100 80GB SXM4", 2.039e12, 312e12,
                         "NVIDIA A100 datasheet, 80GB SXM4 (glennklockwood.com/garden/processors/A100)")),
    ("L40S", DevicePeaks("L40S", 864e9, 362e12, "NVIDIA L40S datasheet (dense = sparse/2)")),
    ("4090", DevicePeaks("RTX 4090", 1.008e12, 165.2e12,
                         "waredb.com RTX 4090: FP16 tensor with FP32 accumulate, dense")),
)


def peaks_for(gpu_name: str) -> DevicePeaks | None:
    """Datasheet peaks of a GPU by its driver name (``NVIDIA H100 80GB HBM3``), None if unknown."""
    upper = gpu_name.upper()
    for token, peaks in _PEAKS:
        if token in upper:
            return peaks
    return None


def measured_ceilings(rows_by_op: Mapping[str, Iterable[Mapping[str, Any]]]) -> dict[str, float | None]:
    """Best bandwidth among hbm_copy rows and best FLOP/s among gemm rows of the run."""
    bw = [r["bytes_moved"] / r["seconds_median"] for r in rows_by_op.get("hbm_copy", ())
          if r.get("bytes_moved") and r["seconds_median"] > 0]
    fl = [r["flops"] / r["seconds_median"] for r in rows_by_op.get("gemm", ())
          if r.get("flops") and r["seconds_median"] > 0 and r.get("dtype") in ("bf16", "fp16")]
    return {"hbm_bytes_per_s": max(bw) if bw else None, "bf16_flops_per_s": max(fl) if fl else None}


def roofline_row(row: Mapping[str, Any], peaks: DevicePeaks,
                 ceilings: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """Achieved rates and fractions of one measured call (a table row with flops and bytes_moved)."""
    t = float(row["seconds_median"])
    flops = float(row.get("flops") or 0.0)
    nbytes = float(row.get("bytes_moved") or 0.0)
    t_mem = nbytes / peaks.hbm_bytes_per_s
    t_comp = flops / peaks.bf16_flops_per_s
    bound = "memory" if t_mem >= t_comp else "compute"
    out: dict[str, Any] = {
        "bound": bound,
        "achieved_tflops_per_s": flops / t / 1e12 if t > 0 else None,
        "achieved_gbytes_per_s": nbytes / t / 1e9 if t > 0 else None,
        "fraction_of_hbm_peak": (t_mem / t) if t > 0 else None,
        "fraction_of_bf16_peak": (t_comp / t) if t > 0 else None,
        "fraction_of_roofline": max(t_mem, t_comp) / t if t > 0 else None,
    }
    ceilings = ceilings or {}
    if ceilings.get("hbm_bytes_per_s") and t > 0:
        out["fraction_of_measured_hbm"] = nbytes / t / ceilings["hbm_bytes_per_s"]
    if ceilings.get("bf16_flops_per_s") and t > 0:
        out["fraction_of_measured_gemm"] = flops / t / ceilings["bf16_flops_per_s"]
    return out


def kernel_figures(rows_by_op: Mapping[str, Iterable[Mapping[str, Any]]], gpu_name: str,
                   ops: tuple[str, ...] = ("fused_moe", "grouped_gemm")) -> list[dict[str, Any]]:
    """One record per measured MoE kernel row: its shape, time and roofline fractions."""
    peaks = peaks_for(gpu_name)
    if peaks is None:
        return []
    ceilings = measured_ceilings(rows_by_op)
    out = []
    for op in ops:
        for row in rows_by_op.get(op, ()):
            if not row.get("flops"):
                continue
            out.append({"op": op, **{k: v for k, v in row.items() if k != "op"},
                        **roofline_row(row, peaks, ceilings)})
    return out


def summarise(figures: Iterable[Mapping[str, Any]], impl: str = "triton") -> dict[str, Any]:
    """Median fraction of the HBM roofline over memory-bound rows, of BF16 peak over compute-bound rows."""
    from statistics import median

    rows = [f for f in figures if f.get("impl", impl) == impl]
    mem = [f["fraction_of_hbm_peak"] for f in rows if f["bound"] == "memory"]
    comp = [f["fraction_of_bf16_peak"] for f in rows if f["bound"] == "compute"]
    return {"memory_bound_cases": len(mem), "median_fraction_of_hbm_peak": median(mem) if mem else None,
            "compute_bound_cases": len(comp), "median_fraction_of_bf16_peak": median(comp) if comp else None}
