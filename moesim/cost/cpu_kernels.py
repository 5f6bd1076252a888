"""CPU expert kernels: which kernel a CPU runs an expert with, and that expert's roofline seconds.

A CPU entry lists its kernels (``kernels:`` in hardware/devices.yaml, docs/hardware.md): each has its
own peak and an efficiency-vs-rows curve (the rows are the tokens routed to the expert). One expert:

    t = max(2 P r s / (peak_k * eff_k(r)),  (P s bits_k / 8 + r A s) / (DDR bandwidth * eff_m(bytes)))

with P the expert's parameters, r its rows, A its activation bytes per row, ``s`` the share of the
expert this socket computes (1, or 1/S under NUMA tensor parallelism) and eff_m the host-memory
curve of :mod:`moesim.cost.efficiency`. No FLOP-size curve: the rows curve is the kernel's own
measured shape (a GPU-shaped size curve made CPU prefill speed up with prompt length).

Which kernel: the one the run names (``--cpu-kernel``); else, where a torch calibration table covers
the CPU, the torch kernel serving the model's expert dtype (so the table prices what it measured);
else the first kernel whose ``serves`` lists the dtype (the catalog lists AMX before torch: bf16 runs
``amx-bf16`` where the CPU has AMX); else a kernel made from the entry's scalar
``compute.peak``/``compute.efficiency`` (flat in rows), for catalogs without ``kernels:``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moesim.cost.efficiency import Curve, validate_curve
from moesim.cost.roofline import Roofline
from moesim.errors import UserError
from moesim.specs.hardware import CpuKernelSpec, DeviceSpec
from moesim.specs.model import DTYPE_BYTES, MoEModel
from moesim.specs.precision import kernel_dtype

# The compute dtype a kernel made from scalar fields runs a weight dtype at (weight-only quantised
# experts are dequantised to the activations' type, as on GPUs).
_NATIVE = ("fp32", "bf16", "fp16", "int8")


def scalar_kernel(spec: DeviceSpec, model: MoEModel, weight_dtype: str, impl: str = "") -> CpuKernelSpec:
    """A kernel from a CPU entry's scalar fields: ``compute.efficiency`` of the peak of the dtype it
    computes in, flat in rows, streaming the model's own weight dtype. ``impl="torch"``: the kernel a
    torch calibration table of this CPU measured (named ``torch-<dtype>``)."""
    dtype = weight_dtype if weight_dtype in _NATIVE and weight_dtype in spec.peak_flops_per_s else (
        model.activation_dtype)
    return CpuKernelSpec(
        name=f"{impl}-{dtype}" if impl else "roofline",
        dtype=dtype,
        peak_flops_per_s=spec.peak_flops(dtype),
        efficiency=((1.0, spec.compute_efficiency),),
        weight_bits=8.0 * DTYPE_BYTES[weight_dtype],
        serves=(weight_dtype,),
        impl=impl,
        source=f"scalar compute.efficiency of {spec.model} (no kernels: section)",
    )


def choose_kernel(
    spec: DeviceSpec, model: MoEModel, weight_dtype: str, requested: str | None = None,
    *, measured_impl: str | None = None,
) -> CpuKernelSpec:
    """The kernel ``spec`` runs experts of ``weight_dtype`` with (see the module docstring).

    ``measured_impl``: a calibration table measured this CPU with that implementation (``torch``);
    unless a kernel is requested, a kernel of that implementation serving the dtype is preferred,
    so the table prices what was measured."""
    kernels = spec.cpu_kernels
    if requested is not None:
        if requested not in kernels:
            known = ", ".join(kernels) or "none (the entry has no kernels: section)"
            raise UserError(f"CPU {spec.model} has no kernel {requested!r}; expected one of: {known}",
                            field="--cpu-kernel")
        return kernels[requested]
    family = kernel_dtype(weight_dtype)  # a GGUF q4_k_m expert is served like int4
    serving = ([k for k in kernels.values() if weight_dtype in k.serves]
               or [k for k in kernels.values() if family in k.serves])
    if measured_impl is not None:
        measured = [k for k in serving if k.impl == measured_impl]
        return measured[0] if measured else scalar_kernel(spec, model, weight_dtype, measured_impl)
    if serving:
        return serving[0]
    return scalar_kernel(spec, model, weight_dtype)


@dataclass(frozen=True)
class CpuKernel:
    """A kernel ready to price experts of one model on one CPU spec."""

    spec: CpuKernelSpec
    rows_curve: Curve
    params: float
    """Parameters of one expert."""
    activation_bytes_per_row: float

    @classmethod
    def of(cls, kernel: CpuKernelSpec, device: DeviceSpec, model: MoEModel) -> CpuKernel:
        what = f"kernels.{kernel.name}.efficiency of {device.model}"
        from moesim.cost.ops import ffn_activation_elements_per_token

        act = ffn_activation_elements_per_token(model, model.expert_intermediate_size)
        return cls(
            spec=kernel,
            rows_curve=Curve.of(validate_curve(kernel.efficiency, what=what)),
            params=float(model.expert_params),
            activation_bytes_per_row=act * DTYPE_BYTES[model.activation_dtype],
        )

    @property
    def weight_bytes(self) -> float:
        """One whole expert's weights as this kernel stores them."""
        return self.params * self.spec.weight_bits / 8.0

    def compute_s(self, rows: np.ndarray, share: float = 1.0) -> np.ndarray:
        r = np.asarray(rows, dtype=float)
        rate = self.spec.peak_flops_per_s * self.rows_curve(np.maximum(r, 1.0))
        return np.where(r > 0, 2.0 * self.params * r * share / rate, 0.0)

    def bytes(self, rows: np.ndarray, share: float = 1.0) -> np.ndarray:
        """Bytes one socket streams for its ``share`` of each expert (0 for experts without rows)."""
        r = np.asarray(rows, dtype=float)
        return np.where(r > 0, (self.weight_bytes + r * self.activation_bytes_per_row) * share, 0.0)

    def expert_s(self, roof: Roofline, rows: np.ndarray, share: float = 1.0) -> np.ndarray:
        """Seconds per expert on one socket reading everything from its own DDR."""
        return np.maximum(self.compute_s(rows, share), roof.memory_s(self.bytes(rows, share)))
