"""``moesim calibrate --device cpu``: time this machine's CPU expert GEMMs and host copies with torch.

No GPU and no Triton: plain ``torch`` on the CPU. Two tables (docs/calibration.md):

- ``cpu_expert``: one gated expert (x @ [gate|up], SiLU(gate) * up, @ down) on ``rows`` rows for a
  model's expert shape, per dtype: ``fp32`` and ``bf16`` as torch matmuls (oneDNN/MKL: AMX where the
  CPU has it), ``int8`` as ``torch._int_mm`` (int8 x int8 -> int32) with per-row activation and
  per-column weight scales. Each call uses the next of several weight copies that together exceed
  twice the last-level cache, so the weights come from DRAM as an expert's do in MoE serving.
- ``host_copy``: ``dst.copy_(src)`` of ``bytes`` bytes with 1 thread and with every thread: the
  one-thread rate is the staging memcpy of a pageable host->GPU copy (moesim.cost.transfers).

Times are wall clock (median of repeats, p10/p90 beside it); on a shared machine they include
other processes' load, which the header records (``loadavg``).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import moesim
from moesim.calibration.format import write_table

QUICK_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
FULL_ROWS = tuple(sorted({round(2 ** (i / 2)) for i in range(0, 27)}))  # 1 .. 8192, sqrt(2) steps
QUICK_COPY = tuple(4**i * 2**20 for i in (1, 3, 4))  # 4 MiB, 64 MiB, 256 MiB
FULL_COPY = tuple(4**i * 2**20 for i in range(0, 6))  # 1 MiB .. 1 GiB
DTYPES = ("fp32", "bf16", "int8")
# Weight copies rotated per call: enough to exceed 2x the last-level cache, at most this many bytes.
ROTATE_BYTES_MAX = 1.5e9


@dataclass(frozen=True)
class Timing:
    seconds_median: float
    seconds_p10: float
    seconds_p90: float
    repeats: int


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def _read_int(path: str, default: int = 0) -> int:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return default
    scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    digits = text[:-1] if scale > 1 else text
    return int(digits) * scale if digits.isdigit() else default


def last_level_cache_bytes() -> int:
    """The largest cache of CPU 0 (sysfs); 32 MiB when it cannot be read."""
    sizes = [_read_int(f"/sys/devices/system/cpu/cpu0/cache/index{i}/size") for i in range(5)]
    return max(sizes) or 32 * 2**20


def _memory_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_header(threads: int, command: str) -> dict[str, Any]:
    """The header fields of a CPU table (docs/calibration.md), before the run's duration is known."""
    import torch

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")
    numa = len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))) or 1
    return {
        "cpu": info.get("model name") or platform.processor() or "unknown CPU",
        "cpu_family_model": f"{info.get('cpu family', '?')}/{info.get('model', '?')}",
        "cpu_flags": [f for f in wanted if f in flags],
        "cores": os.cpu_count() or 1,
        "threads": threads,
        "numa_nodes": numa,
        "last_level_cache_bytes": last_level_cache_bytes(),
        "memory_bytes": _memory_bytes(),
        "torch": str(torch.__version__),
        "torch_cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "moesim": moesim.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": command,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "method": ("wall clock per call (time.perf_counter), median of repeats after one warm-up call; "
                   "expert weights rotated through copies exceeding 2x the last-level cache"),
    }


def _timed(fn: Callable[[int], Any], repeats: int) -> Timing:
    fn(0)  # warm-up: first-touch, oneDNN primitive creation
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(i + 1)
        times.append(time.perf_counter() - start)
    times.sort()
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return Timing(statistics.median(times), q[0], q[-1], repeats)


class CpuExpertBench:
    """One expert shape in one dtype: its rotated weight copies and a timed forward per row count."""

    def __init__(self, hidden: int, ffn: int, dtype: str, *, rotate_bytes: int, seed: int = 0):
        import torch

        self.hidden, self.ffn, self.dtype = hidden, ffn, dtype
        gen = torch.Generator().manual_seed(seed)
        elem = {"fp32": 4, "bf16": 2, "int8": 1}[dtype]
        expert_bytes = 3 * hidden * ffn * elem
        copies = max(2, math.ceil(rotate_bytes / expert_bytes))
        copies = max(2, min(copies, int(ROTATE_BYTES_MAX // expert_bytes)))
        self.rotated_bytes = copies * expert_bytes
        self.weights = [self._expert(gen) for _ in range(copies)]

    def _expert(self, gen: Any) -> tuple[Any, ...]:
        import torch

        h, f = self.hidden, self.ffn
        if self.dtype == "int8":
            up = torch.randint(-127, 128, (h, 2 * f), dtype=torch.int8, generator=gen)
            down = torch.randint(-127, 128, (f, h), dtype=torch.int8, generator=gen)
            return up, torch.rand(2 * f, generator=gen) / 127, down, torch.rand(h, generator=gen) / 127
        dt_ = torch.float32 if self.dtype == "fp32" else torch.bfloat16
        up = (torch.randn(h, 2 * f, generator=gen) / math.sqrt(h)).to(dt_)
        down = (torch.randn(f, h, generator=gen) / math.sqrt(f)).to(dt_)
        return up, down

    def forward(self, x: Any, i: int) -> Any:
        import torch
        import torch.nn.functional as F

        w = self.weights[i % len(self.weights)]
        if self.dtype != "int8":
            gate, up = (x @ w[0]).chunk(2, dim=-1)
            return (F.silu(gate) * up) @ w[1]
        up_w, up_s, down_w, down_s = w

        def q(a: Any) -> tuple[Any, Any]:  # per-row symmetric int8
            scale = a.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8) / 127
            return torch.round(a / scale).to(torch.int8), scale

        xq, xs = q(x)
        gate, up = (torch._int_mm(xq, up_w).float() * xs * up_s).chunk(2, dim=-1)
        hq, hs = q(F.silu(gate) * up)
        return torch._int_mm(hq, down_w).float() * hs * down_s

    def measure(self, rows: int, repeats: int) -> Timing:
        import torch

        dt_ = torch.bfloat16 if self.dtype == "bf16" else torch.float32
        x = torch.randn(rows, self.hidden, dtype=torch.float32).to(dt_)
        with torch.inference_mode():
            return _timed(lambda i: self.forward(x, i), repeats)


def measure_copy(nbytes: int, threads: int, repeats: int) -> Timing:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        src = torch.ones(nbytes, dtype=torch.uint8)
        dst = torch.empty_like(src)
        return _timed(lambda i: dst.copy_(src), repeats)
    finally:
        torch.set_num_threads(before)


def run_cpu_calibration(out: Path, *, hidden: int, ffn: int, model: str, quick: bool, repeats: int,
                        dtypes: Iterable[str] = DTYPES, command: str | None = None,
                        progress: Callable[[list[tuple[Any, ...]]], Iterable[tuple[Any, ...]]] = lambda x: x,
                        rows: Iterable[int] | None = None, copy_sizes: Iterable[int] | None = None,
                        rotate_bytes: int | None = None) -> dict[str, Any]:
    """Measure both tables and write ``cpu_expert.csv`` and ``host_copy.csv`` into ``out``.

    ``rows``/``copy_sizes`` replace the sweep's; ``rotate_bytes`` the rotated weights' total
    (default twice the last-level cache)."""
    import torch

    started = time.perf_counter()
    threads = torch.get_num_threads()
    header = cpu_header(threads, command or " ".join(["moesim", *sys.argv[1:]]))
    header.update(sweep="quick" if quick else "full", model=model)
    rotate = rotate_bytes or 2 * int(header["last_level_cache_bytes"])
    rows = tuple(rows or (QUICK_ROWS if quick else FULL_ROWS))
    sizes = tuple(copy_sizes or (QUICK_COPY if quick else FULL_COPY))
    jobs: list[tuple[Any, ...]] = [("expert", d, r) for d in dtypes for r in rows]
    jobs += [("copy", b, th) for b in sizes for th in sorted({1, threads})]
    expert_rows: list[dict[str, Any]] = []
    copy_rows: list[dict[str, Any]] = []
    bench: CpuExpertBench | None = None
    for kind, a, b in progress(jobs):
        if kind == "copy":
            bench = None  # the weight copies are no longer needed
            t = measure_copy(a, b, max(3, repeats // 2))
            copy_rows.append({"bytes": float(a), "threads": b, "device": "cpu", **_cols(t),
                              "bytes_moved": 2.0 * a, "gbytes_per_s": a / t.seconds_median / 1e9})
            continue
        if bench is None or bench.dtype != a:
            bench = None  # free the previous dtype's copies before allocating the next
            bench = CpuExpertBench(hidden, ffn, a, rotate_bytes=rotate)
            header[f"rotated_weight_bytes_{a}"] = bench.rotated_bytes
        t = bench.measure(b, repeats)
        flops = 2.0 * 3 * hidden * ffn * b
        expert_rows.append({"rows": b, "hidden": hidden, "ffn": ffn, "dtype": a, "impl": "torch",
                            "device": "cpu", **_cols(t), "flops": flops,
                            "tflops_per_s": flops / t.seconds_median / 1e12})
    header["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    header["duration_s"] = round(time.perf_counter() - started, 1)
    out.mkdir(parents=True, exist_ok=True)
    write_table(out / "cpu_expert.csv", "cpu_expert", header, expert_rows)
    write_table(out / "host_copy.csv", "host_copy", header, copy_rows)
    return {"header": header, "cpu_expert": expert_rows, "host_copy": copy_rows}


def _cols(t: Timing) -> dict[str, Any]:
    return {"seconds_median": t.seconds_median, "seconds_p10": t.seconds_p10, "seconds_p90": t.seconds_p90,
            "repeats": t.repeats, "method": "wall"}
