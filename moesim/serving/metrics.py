"""What a serving run measured: per-request times, latency percentiles, throughput, goodput, KV use.

Definitions follow the serving engines' benchmark scripts (vllm-project/vllm @0049e29,
``benchmarks/benchmark_serving.py``, ``calculate_metrics``; SGLang's ``python/sglang/bench_serving.py``
@0033168 was adapted from it and defines them the same way), with the simulated clock for theirs:

- TTFT = first token time - send time; E2E = last token time - send time;
- TPOT = (E2E - TTFT) / (output tokens - 1), over requests with more than one output token;
- ITL = the gaps between a request's successive token emissions (a speculative step that accepts
  several tokens emits them together: one gap);
- duration = last finish - first send; request, input, output and total token throughput =
  completed requests (their prompt, output, both tokens) / duration;
- goodput = completed requests meeting every given SLO (TTFT, TPOT, E2E; TPOT 0 for one-token
  outputs) / duration.

docs/serving.md has every field with its unit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moesim.io import write_frame
from moesim.serving.config import Slo
from moesim.sim.recorder import Span
from moesim.sim.results import percentiles
from moesim.sim.timeline import write_timeline

SERIES_POINTS = 200
"""Points of the time series kept in the JSON summary (every step is in :attr:`ServeResult.steps`)."""


@dataclass
class ServeResult:
    """The outcome of :func:`moesim.serving.serve`: plain arrays and a description, no engine state."""

    requests: dict[str, np.ndarray]
    """Per request: ``id``, ``arrival_s``, ``first_token_s``, ``finish_s`` (NaN when it did not),
    ``prompt_tokens``, ``output_tokens``, ``emitted_tokens``, ``prefix_hit_tokens``, ``prefill_s``,
    ``preemptions``, ``finished``."""
    steps: dict[str, np.ndarray]
    """Per step of every instance: ``instance``, ``start_s``, ``dur_s``, ``prefill_tokens``,
    ``decode_tokens``, ``requests``, ``kv_used_blocks``, ``kv_capacity_blocks``, ``in_system``."""
    itl_s: np.ndarray
    info: dict[str, Any]
    slo: Slo
    unfinished: dict[int, str]
    spans: list[Span] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, engine: Any, *, wall_seconds: float) -> ServeResult:
        reqs, cfg = engine.reqs, engine.cfg
        col = {name: np.array([getattr(r, attr) for r in reqs], dtype=dtype) for name, attr, dtype in (
            ("id", "id", np.int64), ("arrival_s", "arrival_s", float), ("first_token_s", "first_s", float),
            ("finish_s", "finish_s", float), ("prompt_tokens", "prompt", np.int64),
            ("output_tokens", "output", np.int64), ("emitted_tokens", "emitted", np.int64),
            ("prefix_hit_tokens", "hit", np.int64), ("prefill_s", "prefill_s", float),
            ("preemptions", "preemptions", np.int64))}
        col["finished"] = np.array([r.status == "done" for r in reqs], dtype=bool)
        steps: dict[str, list[Any]] = {k: [] for k in ("instance", "start_s", "dur_s", "prefill_tokens",
                                                          "decode_tokens", "requests", "kv_used_blocks",
                                                          "kv_capacity_blocks", "in_system",
                                                          "in_system_end")}
        instances = []
        for i, inst in enumerate(engine.instances):
            log = inst.log
            n = len(log.start_s)
            steps["instance"] += [i] * n
            for key in ("start_s", "dur_s", "prefill_tokens", "decode_tokens", "requests", "kv_used_blocks",
                        "in_system", "in_system_end"):
                steps[key] += getattr(log, key)
            steps["kv_capacity_blocks"] += [inst.capacity_blocks()] * n
            instances.append({
                "role": inst.role, "devices": list(inst.devices), "steps": n,
                "busy_s": float(np.sum(log.dur_s)), "token_budget_per_gpu": inst.token_budget,
                "max_seqs_per_gpu": inst.max_seqs, "preemptions": inst.preemptions,
                "kv_capacity_tokens": inst.capacity_blocks() * engine.layout.block_tokens,
                "kv_peak_blocks": int(max((p.peak_blocks for p in inst.pools), default=0)),
                "kv_blocks_left_in_use": inst.used_blocks(),
                "prefill_tokens": int(np.sum(log.prefill_tokens)),
                "decode_tokens": int(np.sum(log.decode_tokens)),
            })
        order = np.argsort(steps["start_s"], kind="stable")
        step_arrays = {k: np.asarray(v)[order] for k, v in steps.items()}
        w = cfg.workload
        info = {
            "cluster": cfg.cluster.name, "nodes": cfg.cluster.nodes, "model": cfg.model.name,
            "gpus": sum(len(i.devices) for i in engine.instances), "scheduler": cfg.scheduler,
            "preemption_mode": cfg.preemption, "kv_block_tokens": cfg.kv_block_tokens,
            "kv_bytes_per_token": engine.layout.bytes_per_token,
            "gpu_memory_utilization": cfg.gpu_memory_utilization,
            "plan": engine.instances[0].pricer.plan.planner, "a2a": cfg.a2a or "auto",
            "routing": {"mode": engine.requests.routing.mode,
                        "description": engine.requests.routing.description},
            "workload": {"name": w.name, "arrivals": w.arrivals.kind, "rate_per_s": w.arrivals.rate_per_s
                         if w.arrivals.kind == "poisson" else None,
                         "concurrency": w.arrivals.concurrency if w.arrivals.kind == "closed-loop" else None,
                         "requests": len(reqs), "prefix_hit_fraction": w.prefix_hit_fraction,
                         "draft_tokens": w.speculative.draft_tokens,
                         "acceptance_rate": w.speculative.acceptance_rate, "seed": w.seed},
            "instances": instances,
            "kv_transfer": {"count": engine.kv_moves, "bytes": engine.kv_moved_bytes},
            "cost_sources": (dict(sorted(engine.cost.sources().items())) if hasattr(engine.cost, "sources")
                             else {}),
        }
        devices = [d for inst in engine.instances for d in inst.devices]
        return cls(col, step_arrays, np.asarray(engine.itl, dtype=float), info, cfg.slo,
                   dict(engine.unfinished), engine.spans, devices, {"wall_seconds": wall_seconds})

    # ------------------------------------------------------------------ per-request metrics
    @property
    def done(self) -> np.ndarray:
        return self.requests["finished"]

    def ttft_s(self) -> np.ndarray:
        r = self.requests
        return (r["first_token_s"] - r["arrival_s"])[self.done]

    def e2e_s(self) -> np.ndarray:
        r = self.requests
        return (r["finish_s"] - r["arrival_s"])[self.done]

    def tpot_all_s(self) -> np.ndarray:
        """TPOT of every finished request, 0 for one-token outputs (what goodput checks)."""
        out = self.requests["output_tokens"][self.done]
        gap = self.e2e_s() - self.ttft_s()
        return np.divide(gap, out - 1, out=np.zeros_like(gap), where=out > 1)

    def tpot_s(self) -> np.ndarray:
        return self.tpot_all_s()[self.requests["output_tokens"][self.done] > 1]

    @property
    def duration_s(self) -> float:
        r = self.requests
        if not self.done.any():
            return 0.0
        return float(np.max(r["finish_s"][self.done]) - np.nanmin(r["arrival_s"]))

    def good(self) -> np.ndarray:
        """[finished] whether each finished request met every SLO given."""
        ok = np.ones(int(self.done.sum()), dtype=bool)
        for limit, values in ((self.slo.ttft_s, self.ttft_s()), (self.slo.tpot_s, self.tpot_all_s()),
                              (self.slo.e2e_s, self.e2e_s())):
            if limit is not None:
                ok &= values <= limit
        return ok

    def in_system_mean(self) -> float:
        """Time-average of the requests in the system, from the engine's queues counted when each step
        starts and ends: the trapezoid between consecutive counts while any instance runs (arrivals
        during a step are counted at its end), 0 while every instance is idle."""
        s = self.steps
        if not len(s["start_s"]) or self.duration_s <= 0:
            return 0.0
        ends = s["start_s"] + s["dur_s"]
        t = np.r_[s["start_s"], ends]
        n = np.r_[s["in_system"], s["in_system_end"]].astype(float)
        order = np.argsort(t, kind="stable")
        t, n = t[order], n[order]
        busy_until = np.maximum.accumulate(np.r_[ends, ends][order])
        running = t[:-1] < busy_until[:-1]
        area = np.where(running, (n[:-1] + n[1:]) / 2 * np.diff(t), 0.0)
        return float(area.sum() / self.duration_s)

    # ------------------------------------------------------------------ outputs
    def summary(self) -> dict[str, Any]:
        """The ``moesim simulate --workload ... --json`` object (docs/serving.md)."""
        r, dur, done = self.requests, self.duration_s, self.done
        n_done = int(done.sum())
        inp, out = int(r["prompt_tokens"][done].sum()), int(r["output_tokens"][done].sum())
        gpus, nodes = self.info["gpus"], self.info["nodes"]

        def rate(x: float) -> float | None:
            return x / dur if dur > 0 else None

        def scaled(x: float | None, by: int) -> float | None:
            return None if x is None else x / by

        tput = {"requests_per_s": rate(n_done), "input_tokens_per_s": rate(inp),
                "output_tokens_per_s": rate(out), "total_tokens_per_s": rate(inp + out)}
        for key in ("input_tokens_per_s", "output_tokens_per_s", "total_tokens_per_s"):
            tput[key.replace("_per_s", "_per_s_per_gpu")] = scaled(tput[key], gpus)
            tput[key.replace("_per_s", "_per_s_per_node")] = scaled(tput[key], nodes)
        good = self.good()
        s = self.steps
        cap = np.maximum(s["kv_capacity_blocks"], 1)
        busy = float(s["dur_s"].sum())
        util = s["kv_used_blocks"] / cap
        tokens = s["prefill_tokens"] + s["decode_tokens"]
        e2e = self.e2e_s()
        return {
            "mode": "serving",
            **{k: v for k, v in self.info.items() if k not in ("instances", "kv_transfer", "cost_sources")},
            "requests": {"sent": int(np.isfinite(r["arrival_s"]).sum()), "finished": n_done,
                         "unfinished": len(self.unfinished),
                         "unfinished_reasons": _reasons(self.unfinished)},
            "duration_s": dur,
            "input_tokens": inp, "output_tokens": out,
            "throughput": tput,
            "ttft_s": percentiles(self.ttft_s()), "tpot_s": percentiles(self.tpot_s()),
            "itl_s": percentiles(self.itl_s), "e2e_s": percentiles(e2e),
            "goodput": {"slo": {"ttft_s": self.slo.ttft_s, "tpot_s": self.slo.tpot_s,
                                "e2e_s": self.slo.e2e_s},
                        "requests_per_s": rate(int(good.sum())) if self.slo.any else None,
                        "fraction": float(good.mean()) if self.slo.any and n_done else None},
            "kv_cache": {"mean_utilization": float((util * s["dur_s"]).sum() / busy) if busy > 0 else 0.0,
                         "peak_utilization": float(util.max(initial=0.0))},
            "batch": {"mean_tokens": float(tokens.mean()) if len(tokens) else 0.0,
                      "max_tokens": int(tokens.max(initial=0)),
                      "mean_requests": float(s["requests"].mean()) if len(tokens) else 0.0},
            "preemptions": int(r["preemptions"].sum()),
            "little": {"mean_in_system": self.in_system_mean(), "throughput_requests_per_s": rate(n_done),
                       "mean_latency_s": float(e2e.mean()) if n_done else None},
            "instances": self.info["instances"],
            "kv_transfer": self.info["kv_transfer"],
            "series": self.series(),
            "cost_sources": self.info["cost_sources"],
            "timing": {k: float(v) for k, v in self.timing.items()},
        }

    def series(self) -> dict[str, list[float]]:
        """KV utilisation and batch size over time, at most :data:`SERIES_POINTS` steps (evenly picked)."""
        s = self.steps
        n = len(s["start_s"])
        idx = np.unique(np.linspace(0, n - 1, SERIES_POINTS).astype(int)) if n else np.zeros(0, dtype=int)
        cap = np.maximum(s["kv_capacity_blocks"][idx], 1)
        return {"time_s": s["start_s"][idx].tolist(), "instance": s["instance"][idx].tolist(),
                "kv_utilization": (s["kv_used_blocks"][idx] / cap).tolist(),
                "batch_tokens": (s["prefill_tokens"][idx] + s["decode_tokens"][idx]).tolist(),
                "batch_requests": s["requests"][idx].tolist()}

    @property
    def frame(self):  # -> pandas.DataFrame (pandas imported lazily)
        """One row per request, with its TTFT, TPOT and E2E (NaN where it did not finish)."""
        import pandas as pd

        r = dict(self.requests)
        r["ttft_s"] = r["first_token_s"] - r["arrival_s"]
        r["e2e_s"] = r["finish_s"] - r["arrival_s"]
        out = r["output_tokens"]
        r["tpot_s"] = np.where(out > 1, (r["e2e_s"] - r["ttft_s"]) / np.maximum(out - 1, 1), np.nan)
        return pd.DataFrame(r)

    @property
    def steps_frame(self):  # -> pandas.DataFrame
        import pandas as pd

        return pd.DataFrame(self.steps)

    def write_frame(self, path: str | Path) -> None:
        """The per-request table as CSV, or Parquet when the name ends in ``.parquet``; atomically."""
        write_frame(self.frame, path)

    def write_timeline(self, path: str | Path) -> None:
        """Perfetto/Chrome trace: one span per step on each GPU (prefill, decode or mixed) and the KV
        transfers of disaggregated serving."""
        write_timeline(sorted(self.spans, key=lambda sp: (sp.track, sp.start_s)), path, self.devices)


def _reasons(unfinished: dict[int, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for reason in unfinished.values():
        key = reason.split(" (")[0]
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))
