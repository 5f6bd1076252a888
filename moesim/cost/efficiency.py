"""Size-dependent efficiency: the achieved fraction of a device's peak, as Calculon models it.

A curve is a tuple of ``(size, fraction)`` points. Sizes are FLOP for ``compute`` curves and bytes
for ``memory`` curves (CPU expert kernels have rows curves: moesim.cost.cpu_kernels). Between points the
fraction is interpolated linearly in size; below the first point and above the last it is held
constant. (Calculon itself uses a step function, ``calculon/processor.py``; interpolation keeps an
op's time continuous in its size, so a simulator sweep over batch sizes has no jumps.)

Curves given in a hardware profile (``DeviceSpec.efficiency_curves``) are *absolute* fractions of
the peak and replace the device's scalar factor. Where the profile has none, a named default shape
per device kind (below, normalised to 1.0 at large sizes) is multiplied by the device's scalar
``compute_efficiency`` / ``memory_efficiency``.

Every curve must keep time monotonic: an op of size ``s2 > s1`` may not finish sooner than one of
size ``s1`` (time = size / fraction). :func:`validate_curve` enforces that.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise

import numpy as np

from moesim.errors import UserError
from moesim.specs.hardware import DeviceSpec, EfficiencyCurve

GFLOP = 1e9
MB = 1e6

# Calculon's H100 curves (systems/h100_80g_nvl8.json, calculon-ai/calculon @4f81f02): matrix
# gflops_efficiency [[128,0.95],[16,0.9],[1,0.6],[0,0.1]] (GFLOP), mem1 MB_efficiency
# [[100,0.90],[10,0.75],[1,0.6],[0,0.3]] (MB), mem2 (host DDR tier) [[100,0.95],[10,0.9],[1,0.7],
# [0,0.3]]. Normalised here by their large-size value so the device's own scalar sets the ceiling.
GPU_COMPUTE_SHAPE: EfficiencyCurve = (
    (0.0, 0.1 / 0.95),
    (1 * GFLOP, 0.6 / 0.95),
    (16 * GFLOP, 0.9 / 0.95),
    (128 * GFLOP, 1.0),
)
GPU_MEMORY_SHAPE: EfficiencyCurve = (
    (0.0, 0.3 / 0.9),
    (1 * MB, 0.6 / 0.9),
    (10 * MB, 0.75 / 0.9),
    (100 * MB, 1.0),
)
HOST_MEMORY_SHAPE: EfficiencyCurve = (
    (0.0, 0.3 / 0.95),
    (1 * MB, 0.7 / 0.95),
    (10 * MB, 0.9 / 0.95),
    (100 * MB, 1.0),
)

FLAT: EfficiencyCurve = ((0.0, 1.0),)

# GPU grouped GEMMs pad each expert's rows to the kernel's M tile: vLLM's fused_moe uses
# BLOCK_SIZE_M = 16 for small batches (get_default_config in vllm-project/vllm
# vllm/model_executor/layers/fused_moe/fused_moe.py @000d145: BM16 when M <= E).
GPU_TILE_ROWS = 16

CURVE_KEYS = ("compute", "memory")


def validate_curve(curve: Sequence[Sequence[float]], *, what: str = "efficiency curve") -> EfficiencyCurve:
    """Check and normalise a curve: sorted sizes >= 0, fractions in (0, 1], time monotonic in size."""
    points = tuple((float(s), float(f)) for s, f in curve)
    if not points:
        raise UserError(f"{what}: expected at least one (size, fraction) point, got none")
    points = tuple(sorted(points))
    for size, frac in points:
        if size < 0 or not 0.0 < frac <= 1.0:
            raise UserError(f"{what}: expected size >= 0 and 0 < fraction <= 1, got ({size:g}, {frac:g})")
    for (s1, f1), (s2, f2) in pairwise(points):
        if s2 == s1:
            raise UserError(f"{what}: two points at size {s1:g}")
        # On a segment f(s) = a + b*s; time s/f(s) is non-decreasing iff a >= 0.
        slope = (f2 - f1) / (s2 - s1)
        if f1 - slope * s1 < -1e-12:
            raise UserError(
                f"{what}: fraction rises too steeply between sizes {s1:g} and {s2:g} "
                f"({f1:g} -> {f2:g}): a larger op would finish sooner than a smaller one"
            )
    return points


@dataclass(frozen=True)
class Curve:
    """An evaluated efficiency curve: ``fraction(size)`` vectorised over numpy arrays."""

    sizes: np.ndarray
    fractions: np.ndarray
    scale: float = 1.0

    @classmethod
    def of(cls, points: EfficiencyCurve, scale: float = 1.0) -> Curve:
        pts = validate_curve(points)
        return cls(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]), float(scale))

    def __call__(self, size: np.ndarray | float) -> np.ndarray:
        return np.interp(size, self.sizes, self.fractions) * self.scale

    def scalar(self, size: float) -> float:
        """``self(size)`` for one Python float, without numpy's per-call overhead (hot path)."""
        xs, ys = self._points
        if size <= xs[0]:
            return ys[0] * self.scale
        if size >= xs[-1]:
            return ys[-1] * self.scale
        i = bisect_right(xs, size)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return (y0 + (y1 - y0) * (size - x0) / (x1 - x0)) * self.scale

    @cached_property
    def _points(self) -> tuple[list[float], list[float]]:
        return self.sizes.tolist(), self.fractions.tolist()


@dataclass(frozen=True)
class DeviceEfficiency:
    """The two curves of one device spec plus its GEMM tile rows."""

    compute: Curve
    memory: Curve
    tile_rows: int


def default_shapes(kind: str) -> Mapping[str, EfficiencyCurve]:
    """The named default curve shapes of a device kind (multiplied by the spec's scalar factors)."""
    if kind == "gpu":
        return {"compute": GPU_COMPUTE_SHAPE, "memory": GPU_MEMORY_SHAPE}
    if kind == "cpu":
        # CPU experts take their compute rate from their kernel (moesim.cost.cpu_kernels), flat in FLOPs.
        return {"compute": FLAT, "memory": HOST_MEMORY_SHAPE}
    # PIM streams from its own banks through wide internal paths: no size ramp is documented.
    return {"compute": FLAT, "memory": FLAT}


def device_efficiency(spec: DeviceSpec) -> DeviceEfficiency:
    """Curves for ``spec``: the profile's own curves where given, else the kind's default shapes."""
    unknown = set(spec.efficiency_curves) - set(CURVE_KEYS)
    if unknown:
        raise UserError(
            f"efficiency_curves of {spec.model}: expected keys among {', '.join(CURVE_KEYS)}, "
            f"got {', '.join(sorted(unknown))}"
        )
    defaults = default_shapes(spec.kind)
    scalars = {"compute": spec.compute_efficiency, "memory": spec.memory_efficiency}
    curves = {}
    for key in CURVE_KEYS:
        what = f"efficiency_curves.{key} of {spec.model}"
        if key in spec.efficiency_curves:
            curves[key] = Curve.of(validate_curve(spec.efficiency_curves[key], what=what))
        else:
            curves[key] = Curve.of(defaults[key], scale=scalars[key])
    return DeviceEfficiency(
        compute=curves["compute"],
        memory=curves["memory"],
        tile_rows=GPU_TILE_ROWS if spec.kind == "gpu" else 1,
    )
