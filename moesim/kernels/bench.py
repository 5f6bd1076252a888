"""Microbenchmarks of the MoE kernels and of the copies a simulator needs, on a CUDA GPU.

Method (after triton.testing.do_bench, triton-lang/triton python/triton/testing.py @3fb4e46, and
vLLM's benchmarks/kernels/benchmark_moe.py): warm up (compilation, handles),
then time each repetition with CUDA events, the L2 cache flushed before each (a buffer of at
least 2x L2 zeroed: weights streamed from HBM, as in a real layer whose experts do not all fit
in L2); the median of the repetitions is reported with the 10th and 90th percentiles. Where
launch overhead would dominate (many small kernels), the call is captured in a CUDA graph and
the replays are timed; both are labelled in the ``method`` column. Routing is redrawn for each
repetition (copied into the graph's input buffer outside the timed region), so a run cannot
profit from one lucky expert histogram. Host copies from pageable memory are synchronous with the
host, so they are timed with the host clock around a synchronised copy.

Nothing here runs without a GPU: every entry point calls ``require_cuda``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moesim.errors import UserError


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one measured function."""

    seconds_median: float
    seconds_p10: float
    seconds_p90: float
    repeats: int
    method: str


def require_cuda(device: str = "cuda:0") -> Any:
    """The ``torch.device`` to measure on; UserError when there is no CUDA GPU."""
    import torch

    from moesim.kernels.runtime import interpreter_active

    if interpreter_active():
        raise UserError("TRITON_INTERPRET is set: the Triton interpreter runs kernels on the CPU and its "
                        "timings mean nothing; unset it to measure", field="TRITON_INTERPRET")
    if not torch.cuda.is_available():
        raise UserError("no CUDA GPU available (torch.cuda.is_available() is False); calibration and "
                        "kernel benchmarks need one")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev.type != "cuda" or dev.index >= torch.cuda.device_count():
        raise UserError(f"expected a CUDA device cuda:0..cuda:{torch.cuda.device_count() - 1}, "
                        f"found {device!r}", field="device")
    return dev


def _summary(samples_s: list[float], method: str) -> Timing:
    import numpy as np

    arr = np.asarray(samples_s, dtype=float)
    return Timing(float(np.median(arr)), float(np.percentile(arr, 10)), float(np.percentile(arr, 90)),
                  len(samples_s), method)


class L2Flush:
    """A buffer at least twice the L2 size; ``flush()`` zeroes it, evicting everything cached."""

    def __init__(self, device: Any, min_bytes: int = 256 * 2**20):
        import torch

        l2 = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 0)
        self.buffer = torch.empty(max(min_bytes, 2 * l2) // 4, dtype=torch.int32, device=device)

    def flush(self) -> None:
        self.buffer.zero_()


def time_cuda(fn: Callable[[], Any], device: Any, *, repeats: int = 50, warmup: int = 5,
              flush: L2Flush | None = None, graph: bool = False,
              before_each: Callable[[int], Any] | None = None) -> Timing:
    """Median seconds of ``fn()`` by CUDA events; ``graph`` times replays of a captured CUDA graph.

    ``before_each(i)`` runs before repetition ``i`` outside the timed region (fresh inputs).
    """
    import torch

    torch.cuda.set_device(device)
    for i in range(warmup):
        if before_each:
            before_each(i)
        fn()
    torch.cuda.synchronize(device)
    run = fn
    if graph:
        g = torch.cuda.CUDAGraph()
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            fn()  # one eager call on the capture stream (allocator warm-up)
            with torch.cuda.graph(g, stream=stream):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        run = g.replay
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for i in range(repeats):
        if before_each:
            before_each(warmup + i)
        if flush is not None:
            flush.flush()
        starts[i].record()
        run()
        ends[i].record()
    torch.cuda.synchronize(device)
    samples = [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends, strict=True)]
    method = ("graph" if graph else "events") + ("+l2flush" if flush is not None else "")
    return _summary(samples, method)


def time_host(fn: Callable[[], Any], device: Any, *, repeats: int = 20, warmup: int = 3) -> Timing:
    """Median wall seconds of ``fn()`` followed by a device synchronisation (blocking copies)."""
    import torch

    for _ in range(warmup):
        fn()
        torch.cuda.synchronize(device)
    samples = []
    for _ in range(repeats):
        torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        samples.append(time.perf_counter() - t0)
    return _summary(samples, "host-clock")


# ---- MoE operands ------------------------------------------------------------------------------

def random_routing(tokens: int, num_experts: int, top_k: int, *, generator: Any,
                   device: Any) -> tuple[Any, Any]:
    """``top_k`` distinct experts per token, uniformly at random; softmax weights."""
    import torch

    scores = torch.rand(tokens, num_experts, generator=generator, device="cpu")
    ids = scores.topk(top_k, dim=1).indices.to(torch.int32)
    weights = torch.softmax(torch.randn(tokens, top_k, generator=generator), dim=1)
    return ids.to(device), weights.to(device)


def moe_weights(num_experts: int, hidden: int, ffn: int, dtype: Any, device: Any,
                seed: int = 0) -> tuple[Any, Any]:
    """Random expert weights ``w1 [E, 2F, H]``, ``w2 [E, H, F]`` (never zeros: they run faster)."""
    import torch

    g = torch.Generator(device=device).manual_seed(seed)
    w1 = torch.randn(num_experts, 2 * ffn, hidden, device=device, dtype=dtype, generator=g) / hidden**0.5
    w2 = torch.randn(num_experts, hidden, ffn, device=device, dtype=dtype, generator=g) / ffn**0.5
    return w1, w2


def moe_flops_bytes(tokens: int, active_experts: float, top_k: int, hidden: int, ffn: int,
                    elem_bytes: int) -> tuple[float, float]:
    """FLOPs (2 per multiply-add, three matrices) and the fewest HBM bytes of one routed-expert call:
    each active expert's weights once, tokens in and out once."""
    flops = 6.0 * tokens * top_k * hidden * ffn
    nbytes = (3.0 * active_experts * hidden * ffn + 2.0 * tokens * hidden) * elem_bytes
    return flops, nbytes


def grouped_mm_moe(x: Any, w1: Any, w2: Any, topk_ids: Any, topk_weights: Any) -> Any:
    """The MoE layer through ``torch._grouped_mm`` (CUTLASS grouped GEMM, bf16, SM90+): sort, two
    grouped GEMMs, weighted index_add. Raises where the build or GPU lacks the op."""
    import torch
    import torch.nn.functional as F

    T, K = topk_ids.shape
    E, two_f, _ = w1.shape
    flat = topk_ids.reshape(-1).long()
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=E)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    rows = x[order // K]
    h = torch._grouped_mm(rows, w1.transpose(1, 2), offs=offs)
    a = F.silu(h[:, : two_f // 2]) * h[:, two_f // 2:]
    y = torch._grouped_mm(a, w2.transpose(1, 2), offs=offs)
    y = y * topk_weights.reshape(-1)[order, None].to(y.dtype)
    out = torch.zeros(T, x.shape[1], dtype=torch.float32, device=x.device)
    out.index_add_(0, order // K, y.float())
    return out.to(x.dtype)


class MoECase:
    """Operands of one MoE shape with a pool of routings, for any implementation."""

    def __init__(self, tokens: int, num_experts: int, top_k: int, hidden: int, ffn: int, dtype: Any,
                 device: Any, *, routings: int = 8, seed: int = 0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.x = (torch.randn(tokens, hidden, generator=g) / 2).to(device=device, dtype=dtype)
        self.w1, self.w2 = moe_weights(num_experts, hidden, ffn, dtype, device, seed)
        self.pool = pool = [random_routing(tokens, num_experts, top_k, generator=g, device=device)
                            for _ in range(routings)]
        self.ids = pool[0][0].clone()
        self.weights = pool[0][1].clone()
        self.active_experts = float(sum(int(torch.unique(p[0]).numel()) for p in pool) / len(pool))

    def next_routing(self, i: int) -> None:
        ids, weights = self.pool[i % len(self.pool)]
        self.ids.copy_(ids)
        self.weights.copy_(weights)


def bench_fused_moe(tokens: int, num_experts: int, top_k: int, hidden: int, ffn: int, dtype: str,
                    device: Any, *, impl: str = "triton", repeats: int = 30, configs: Any = None,
                    flush: L2Flush | None = None) -> tuple[Timing, dict[str, Any]]:
    """Time one routed-expert call. ``impl``: ``triton`` (moesim's kernels, graph-replayed),
    ``torch_loop`` (per-expert loop, host-synchronising) or ``torch_grouped_mm``."""
    from moesim.kernels.configs import ConfigTable
    from moesim.kernels.moe_layer import fused_moe
    from moesim.kernels.reference import fused_moe_torch
    from moesim.kernels.runtime import torch_dtype

    dt = torch_dtype(dtype)
    case = MoECase(tokens, num_experts, top_k, hidden, ffn, dt, device)
    config = (configs or ConfigTable()).lookup(tokens, num_experts, top_k, hidden, ffn, dtype)
    fns = {
        "triton": lambda: fused_moe(case.x, case.w1, case.w2, case.ids, case.weights, config=config),
        "torch_loop": lambda: fused_moe_torch(case.x, case.w1, case.w2, case.ids, case.weights),
        "torch_grouped_mm": lambda: grouped_mm_moe(case.x, case.w1, case.w2, case.ids, case.weights),
    }
    if impl not in fns:
        raise UserError(f"expected impl one of {sorted(fns)}, found {impl!r}", field="impl")
    timing = time_cuda(fns[impl], device, repeats=repeats, flush=flush, graph=impl == "triton",
                       before_each=case.next_routing)
    flops, nbytes = moe_flops_bytes(tokens, case.active_experts, top_k, hidden, ffn, dt.itemsize)
    meta = {"config": config.label() if impl == "triton" else "", "flops": flops, "bytes_moved": nbytes}
    return timing, meta


def bench_grouped_gemm(tokens_per_expert: int, num_experts: int, hidden: int, ffn: int, dtype: str,
                       device: Any, *, repeats: int = 30, configs: Any = None,
                       flush: L2Flush | None = None) -> tuple[Timing, dict[str, Any]]:
    """Both expert GEMMs (fused SwiGLU) over rows already grouped by expert, no align or combine."""
    import torch

    from moesim.kernels.align import align_grouped
    from moesim.kernels.configs import ConfigTable
    from moesim.kernels.grouped_gemm import expert_mlp
    from moesim.kernels.runtime import torch_dtype

    dt = torch_dtype(dtype)
    rows = tokens_per_expert * num_experts
    x = (torch.randn(rows, hidden, device=device) / 2).to(dt)
    w1, w2 = moe_weights(num_experts, hidden, ffn, dt, device)
    config = (configs or ConfigTable()).lookup(rows, num_experts, 1, hidden, ffn, dtype)
    counts = torch.full((num_experts,), tokens_per_expert, dtype=torch.int32, device=device)
    align = align_grouped(counts, config.block_m)
    timing = time_cuda(lambda: expert_mlp(x, w1, w2, align, config, top_k=1), device, repeats=repeats,
                       flush=flush, graph=True)
    flops, nbytes = moe_flops_bytes(rows, num_experts, 1, hidden, ffn, dt.itemsize)
    return timing, {"config": config.label(), "flops": flops, "bytes_moved": nbytes}


def bench_gemm(m: int, n: int, k: int, dtype: str, device: Any, *, repeats: int = 30,
               flush: L2Flush | None = None) -> tuple[Timing, dict[str, Any]]:
    import torch

    from moesim.kernels.runtime import torch_dtype

    dt = torch_dtype(dtype)
    a = torch.randn(m, k, device=device).to(dt)
    b = torch.randn(k, n, device=device).to(dt)
    timing = time_cuda(lambda: a @ b, device, repeats=repeats, flush=flush)
    return timing, {"flops": 2.0 * m * n * k, "bytes_moved": float((m * k + k * n + m * n) * dt.itemsize)}


def bench_copy(op: str, nbytes: int, device: Any, *, pinned: bool = True, peer: Any = None,
               repeats: int = 20) -> tuple[Timing, dict[str, Any]]:
    """``hbm_copy`` (device to device on one GPU), ``h2d``, ``d2h`` or ``p2p`` (to ``peer``)."""
    import torch

    n = max(1, int(nbytes))
    src_dev = {"hbm_copy": device, "h2d": "cpu", "d2h": device, "p2p": device}[op]
    dst_dev = {"hbm_copy": device, "h2d": device, "d2h": "cpu", "p2p": peer}[op]
    src = torch.empty(n, dtype=torch.uint8, device=src_dev, pin_memory=pinned and src_dev == "cpu")
    src.fill_(1)
    dst = torch.empty(n, dtype=torch.uint8, device=dst_dev, pin_memory=pinned and dst_dev == "cpu")
    moved = 2.0 * n if op == "hbm_copy" else float(n)  # a device copy reads and writes every byte
    if op in ("h2d", "d2h") and not pinned:
        return time_host(lambda: dst.copy_(src), device, repeats=repeats), {"bytes_moved": moved}
    if op == "p2p":
        def both() -> None:
            dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize(peer)
        return time_host(both, device, repeats=repeats), {"bytes_moved": moved, "src": device.index,
                                                          "dst": torch.device(peer).index}
    timing = time_cuda(lambda: dst.copy_(src, non_blocking=True), device, repeats=repeats)
    return timing, {"bytes_moved": moved}


def bench_align_combine(op: str, tokens: int, num_experts: int, top_k: int, hidden: int, dtype: str,
                        device: Any, *, repeats: int = 30) -> tuple[Timing, dict[str, Any]]:
    """The small kernels around the GEMMs: ``moe_align`` or ``combine``."""
    import torch

    from moesim.kernels.align import moe_align
    from moesim.kernels.combine import moe_combine
    from moesim.kernels.runtime import torch_dtype

    g = torch.Generator().manual_seed(0)
    ids, weights = random_routing(tokens, num_experts, top_k, generator=g, device=device)
    if op == "moe_align":
        timing = time_cuda(lambda: moe_align(ids, num_experts, 16), device, repeats=repeats, graph=True)
        return timing, {"bytes_moved": float(tokens * top_k * 8)}
    dt = torch_dtype(dtype)
    y = torch.randn(tokens * top_k, hidden, device=device).to(dt)
    timing = time_cuda(lambda: moe_combine(y, ids, weights.to(dt), num_experts), device, repeats=repeats,
                       graph=True)
    return timing, {"bytes_moved": float((tokens * top_k + tokens) * hidden * dt.itemsize)}


def tune_configs(tokens_list: list[int], num_experts: int, top_k: int, hidden: int, ffn: int,
                 dtype: str, device: Any, candidates: list[Any], *, table: Any = None,
                 repeats: int = 10) -> Any:
    """Try each candidate ``BlockConfig`` at each token count; keep the fastest in a ConfigTable."""
    import torch

    from moesim.kernels.configs import ConfigTable, shape_key
    from moesim.kernels.moe_layer import fused_moe
    from moesim.kernels.runtime import torch_dtype

    table = table or ConfigTable(device=torch.cuda.get_device_name(device))
    key = shape_key(num_experts, hidden, ffn, dtype)
    for tokens in tokens_list:
        case = MoECase(tokens, num_experts, top_k, hidden, ffn, torch_dtype(dtype), device)
        best = None
        for cfg in candidates:
            try:
                t = time_cuda(lambda c=cfg, m=case: fused_moe(m.x, m.w1, m.w2, m.ids, m.weights, config=c),
                              device, repeats=repeats, graph=True, before_each=case.next_routing)
            except Exception:  # a config that does not compile (shared memory, registers) is skipped
                continue
            if best is None or t.seconds_median < best[0]:
                best = (t.seconds_median, cfg)
        if best is not None:
            table = table.with_entry(key, tokens, best[1])
    return table
