"""Roofline time of one op on one device: FLOPs and bytes against peak x size-dependent efficiency.

    t = max(flops / (peak[dtype] * eff_c(flops)), bytes / (bandwidth * eff_m(bytes))) + launches * t_launch

with ``t = 0`` for an op that has neither FLOPs nor bytes (an expert with no tokens costs nothing).
Everything is vectorised: ``flops`` and ``bytes`` may be numpy arrays of any (equal) shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from moesim.cost.efficiency import DeviceEfficiency, device_efficiency
from moesim.specs.hardware import DeviceSpec
from moesim.specs.precision import kernel_dtype


@dataclass(frozen=True)
class Roofline:
    """The cached constants of one device spec (shared by all devices of that spec)."""

    spec: DeviceSpec
    memory_bandwidth_bytes_per_s: float
    """Bandwidth the op streams its bytes at: HBM/DDR, or the PIM's internal bandwidth."""
    efficiency: DeviceEfficiency
    launch_overhead_s: float
    _peaks: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, spec: DeviceSpec) -> Roofline:
        bandwidth = spec.memory_bandwidth_bytes_per_s
        if spec.kind == "pim" and spec.internal_bandwidth_bytes_per_s:
            bandwidth = spec.internal_bandwidth_bytes_per_s
        return cls(spec, bandwidth, device_efficiency(spec), spec.launch_overhead_s)

    def peak(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype`` (memoised: the hot path calls this per op)."""
        value = self._peaks.get(dtype)
        if value is None:
            value = self.spec.peak_flops(dtype)
            self._peaks[dtype] = value
        return value

    def compute_dtype(self, weight_dtype: str, activation_dtype: str) -> str:
        """The dtype the tensor cores run at: the weights' kernel type where the device has a native
        rate for it (fp8 on Hopper, fp4 for mxfp4 on Blackwell), else the activations' type
        (weight-only int4/mxfp4/GGUF kernels dequantise to bf16; an A100 runs fp8 weights as bf16)."""
        kernel = kernel_dtype(weight_dtype)
        if kernel in self.spec.peak_flops_per_s:
            return kernel if kernel != "fp4" else weight_dtype
        return activation_dtype

    def compute_s(self, flops: np.ndarray | float, dtype: str) -> np.ndarray:
        """Compute-bound time at the size curve's fraction of the dtype's peak."""
        flops = np.asarray(flops, dtype=float)
        rate = self.peak(dtype) * self.efficiency.compute(flops)
        return np.divide(flops, rate, out=np.zeros_like(flops), where=flops > 0)

    def memory_s(self, nbytes: np.ndarray | float) -> np.ndarray:
        nbytes = np.asarray(nbytes, dtype=float)
        rate = self.memory_bandwidth_bytes_per_s * self.efficiency.memory(nbytes)
        return np.divide(nbytes, rate, out=np.zeros_like(nbytes), where=nbytes > 0)

    def time_s(
        self,
        flops: np.ndarray | float,
        nbytes: np.ndarray | float,
        dtype: str,
        *,
        launches: np.ndarray | float = 1,
    ) -> np.ndarray:
        """Roofline time (seconds) of ops with ``flops`` FLOP and ``nbytes`` bytes each."""
        flops = np.asarray(flops, dtype=float)
        nbytes = np.asarray(nbytes, dtype=float)
        busy = np.maximum(self.compute_s(flops, dtype), self.memory_s(nbytes))
        active = (flops > 0) | (nbytes > 0)
        return np.where(active, busy + np.asarray(launches, dtype=float) * self.launch_overhead_s, 0.0)
