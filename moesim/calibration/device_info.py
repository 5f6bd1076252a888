"""What a calibration table's header records about the machine it was measured on."""

from __future__ import annotations

import datetime as dt
import platform
import shutil
import subprocess
from typing import Any

import moesim


def _nvidia_smi(index: int) -> dict[str, Any]:
    """Driver, clocks and power from ``nvidia-smi`` (read-only queries); empty without the tool."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {}
    fields = ["driver_version", "clocks.sm", "clocks.mem", "clocks.max.sm", "clocks.max.mem", "power.draw",
              "power.limit", "temperature.gpu", "pstate", "persistence_mode"]
    try:
        cmd = [exe, f"--id={index}", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.splitlines()[0].split(",")] if out else []
    return dict(zip(fields, values, strict=False))


def collect_header(device: Any) -> dict[str, Any]:
    """The header fields of docs/calibration.md for ``device`` (a CUDA ``torch.device``)."""
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    index = device.index or 0
    props = torch.cuda.get_device_properties(device)
    smi = _nvidia_smi(index)
    return {
        "gpu": torch.cuda.get_device_name(device),
        "gpu_count": torch.cuda.device_count(),
        "compute_capability": f"{props.major}.{props.minor}",
        "memory_bytes": int(props.total_memory),
        "sm_count": int(props.multi_processor_count),
        "l2_bytes": int(getattr(props, "L2_cache_size", 0) or 0),
        "driver": smi.get("driver_version", "unknown"),
        "cuda": str(torch.version.cuda),
        "torch": torch.__version__,
        "triton": triton_version,
        "moesim": moesim.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "clocks": {
            "sm_mhz": smi.get("clocks.sm"), "mem_mhz": smi.get("clocks.mem"),
            "max_sm_mhz": smi.get("clocks.max.sm"), "max_mem_mhz": smi.get("clocks.max.mem"),
            "power_w": smi.get("power.draw"), "power_limit_w": smi.get("power.limit"),
            "temperature_c": smi.get("temperature.gpu"), "pstate": smi.get("pstate"),
        },
    }
