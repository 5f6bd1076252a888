"""What a calibration run measures (the sweep) and how its rows become tables.

The sweep is plain data (``Case``: op, shape, impl), planned from the built-in models' MoE
shapes, so it can be inspected and tested without a GPU. ``run_sweep`` hands each case to a
``measure`` function (on a GPU: ``moesim.calibration.gpu_runner.GpuRunner``), collects rows and
writes one table per op after each op finishes, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moesim.calibration.format import OPS, write_table
from moesim.calibration.roofline import kernel_figures, measured_ceilings, summarise
from moesim.io import atomic_write_text
from moesim.resources import builtin_names
from moesim.specs import load_model


@dataclass(frozen=True)
class ModelShape:
    """The MoE numbers of one model that the kernels' speed depends on."""

    name: str
    hidden: int
    ffn: int
    num_experts: int
    top_k: int
    dense_widths: tuple[int, ...] = ()
    """FFN widths of plain GEMMs the model also runs (shared experts, dense layers)."""
    shared_width: int = 0
    """Total FFN width of the shared experts (0: none), run as one SwiGLU MLP."""


QUICK_MODELS = ("mixtral-8x7b", "deepseek-v2-lite", "qwen3-30b-a3b")


def model_shapes(names: Iterable[str] | None = None) -> list[ModelShape]:
    """Shapes of the named models (default: every built-in model), skipping those whose experts are
    not SwiGLU (the kernels implement gated experts only). An unknown name is a UserError."""
    out = []
    for name in list(names) if names is not None else builtin_names("model"):
        m = load_model(name)
        if not m.gated:
            continue
        widths = {w for w in (m.shared_expert_intermediate_size * max(m.num_shared_experts, 1),
                              m.shared_expert_intermediate_size, m.dense_intermediate_size) if w}
        shared = m.shared_expert_intermediate_size * m.num_shared_experts
        out.append(ModelShape(m.name, m.hidden_size, m.expert_intermediate_size, m.num_experts, m.top_k,
                              tuple(sorted(widths)), shared))
    return out


@dataclass(frozen=True)
class Case:
    op: str
    shape: tuple[tuple[str, Any], ...]
    """Sorted (column, value) pairs of the op's shape columns (``impl`` included where the op has it)."""

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.shape)


def _case(op: str, **shape: Any) -> Case:
    return Case(op, tuple(sorted(shape.items())))


@dataclass(frozen=True)
class SweepPlan:
    tokens: tuple[int, ...]
    tokens_per_expert: tuple[int, ...]
    copy_bytes: tuple[int, ...]
    dtypes: tuple[str, ...]
    max_grouped_rows: int = 32768
    baselines: tuple[str, ...] = ("torch_loop", "torch_grouped_mm")
    max_loop_tokens: int = 1024
    extra: dict[str, Any] = field(default_factory=dict)


FULL = SweepPlan(tokens=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
                 tokens_per_expert=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192),
                 copy_bytes=tuple(4**i for i in range(6, 16)), dtypes=("bf16", "fp16"),
                 max_grouped_rows=65536)
QUICK = SweepPlan(tokens=(1, 8, 64, 512, 4096), tokens_per_expert=(1, 8, 64, 512, 2048),
                  copy_bytes=tuple(16**i for i in range(3, 8)), dtypes=("bf16",), max_loop_tokens=64)


def _expert_counts(num_experts: int) -> list[int]:
    counts = {1, num_experts}
    c = 2
    while c < num_experts:
        counts.add(c)
        c *= 2
    return sorted(counts)


def plan_cases(shapes: Iterable[ModelShape], plan: SweepPlan, *, gpu_count: int = 1,
               memory_bytes: float | None = None, grouped_mm: bool = True) -> list[Case]:
    """Every case of a run, grouped by op. Shapes whose weights would not fit in 60% of
    ``memory_bytes`` are left out (their time comes from the roofline)."""
    shapes = list(shapes)
    cases: list[Case] = []
    baselines = [b for b in plan.baselines if grouped_mm or b != "torch_grouped_mm"]

    def fits(s: ModelShape, dtype: str) -> bool:
        elem = 4 if dtype == "fp32" else 2
        return memory_bytes is None or 3 * s.num_experts * s.hidden * s.ffn * elem < 0.6 * memory_bytes

    for s in shapes:
        for dtype in plan.dtypes:
            if not fits(s, dtype):
                continue
            base = {"num_experts": s.num_experts, "top_k": s.top_k, "hidden": s.hidden, "ffn": s.ffn,
                    "dtype": dtype}
            for t in plan.tokens:
                cases.append(_case("fused_moe", tokens=t, impl="triton", **base))
                for b in baselines if dtype == "bf16" else ():
                    if b != "torch_loop" or t <= plan.max_loop_tokens:
                        cases.append(_case("fused_moe", tokens=t, impl=b, **base))
    for s in shapes:
        for dtype in plan.dtypes:
            for e in _expert_counts(s.num_experts):
                for tpe in plan.tokens_per_expert:
                    if tpe * e <= plan.max_grouped_rows:
                        cases.append(_case("grouped_gemm", tokens_per_expert=float(tpe), num_experts=e,
                                           hidden=s.hidden, ffn=s.ffn, dtype=dtype, impl="triton"))
    gemms = sorted({(2 * w, s.hidden) for s in shapes for w in (s.ffn, *s.dense_widths)}
                   | {(s.hidden, w) for s in shapes for w in (s.ffn, *s.dense_widths)}
                   | {(s.num_experts, s.hidden) for s in shapes})  # the router's gate GEMM
    for dtype in plan.dtypes:
        for n, k in gemms:
            for m in plan.tokens:
                cases.append(_case("gemm", m=m, n=n, k=k, dtype=dtype, impl="torch"))
    for ek in sorted({(s.num_experts, s.top_k) for s in shapes}):
        for t in plan.tokens:
            cases.append(_case("moe_align", tokens=t, num_experts=ek[0], top_k=ek[1]))
    for dtype in plan.dtypes:
        for kh in sorted({(s.top_k, s.hidden) for s in shapes}):
            for t in plan.tokens:
                cases.append(_case("combine", tokens=t, top_k=kh[0], hidden=kh[1], dtype=dtype))
    for b in plan.copy_bytes:
        cases.append(_case("hbm_copy", bytes=float(b)))
    for op in ("h2d", "d2h"):
        for pinned in (True, False):
            for b in plan.copy_bytes:
                cases.append(_case(op, bytes=float(b), pinned=pinned))
    if gpu_count > 1:
        for b in plan.copy_bytes:
            cases.append(_case("p2p", bytes=float(b)))
    return cases


Measure = Callable[[Case], tuple[Any, dict[str, Any]]]
"""Returns (a Timing with seconds_median/p10/p90, repeats, method; extra columns such as flops)."""


def run_sweep(cases: list[Case], measure: Measure, out_dir: str | Path, header: Mapping[str, Any], *,
              device: str, progress: Callable[[Iterable[Case]], Iterable[Case]] = lambda c: c,
              ) -> dict[str, list[dict[str, Any]]]:
    """Measure every case, write ``<op>.csv`` tables as each op completes, then ``figures.json``.

    A case that fails (out of memory, an op the GPU lacks such as ``torch._grouped_mm`` before
    SM90) is recorded in ``skipped.json`` with its reason and the run goes on.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[dict[str, Any]]] = {}
    skipped: list[dict[str, Any]] = []
    order = sorted(range(len(cases)), key=lambda i: (list(OPS).index(cases[i].op), i))
    written: set[str] = set()
    current: str | None = None
    for i in progress([cases[j] for j in order]):
        if current is not None and i.op != current:
            _write(out, current, header, rows.get(current, []))
            written.add(current)
        current = i.op
        try:
            timing, extra = measure(i)
        except Exception as e:  # recorded, not fatal: one bad shape must not lose a whole run
            skipped.append({"op": i.op, **i.params, "reason": f"{type(e).__name__}: {e}"[:300]})
            continue
        rows.setdefault(i.op, []).append({
            **i.params, "device": device, "seconds_median": timing.seconds_median,
            "seconds_p10": timing.seconds_p10, "seconds_p90": timing.seconds_p90, "repeats": timing.repeats,
            "method": timing.method, **extra})
    if current is not None:
        _write(out, current, header, rows.get(current, []))
    figures = kernel_figures(rows, str(header.get("gpu", "")))
    report = {"gpu": header.get("gpu"), "measured_ceilings": measured_ceilings(rows),
              "summary": summarise(figures), "figures": figures}
    atomic_write_text(out / "figures.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(out / "skipped.json", json.dumps(skipped, indent=1, default=str) + "\n")
    return rows


def _write(out: Path, op: str, header: Mapping[str, Any], rows: list[dict[str, Any]]) -> None:
    if rows:
        write_table(out / f"{op}.csv", op, header, rows)


def compare_impls(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per fused_moe shape: Triton time and its speed-up over each torch baseline measured beside it."""
    by_shape: dict[tuple, dict[str, float]] = {}
    for r in rows:
        key = (r["num_experts"], r["top_k"], r["hidden"], r["ffn"], r["dtype"], r["tokens"])
        by_shape.setdefault(key, {})[r.get("impl", "triton")] = float(r["seconds_median"])
    out = []
    for (e, k, h, f, dtype, t), times in sorted(by_shape.items()):
        if "triton" not in times:
            continue
        rec: dict[str, Any] = {"num_experts": e, "top_k": k, "hidden": h, "ffn": f, "dtype": dtype,
                               "tokens": t, "triton_s": times["triton"]}
        for impl, secs in times.items():
            if impl != "triton":
                rec[f"speedup_vs_{impl}"] = secs / times["triton"] if times["triton"] > 0 else None
        out.append(rec)
    return out
