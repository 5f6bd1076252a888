"""Benchmark: does online re-placement beat a static plan once migration is paid? (issue 14, done-when)

    python benchmarks/bench_replan.py [--shared PATH] [--streams NAME,...] [--hw h100x8] [--json]

For each stream -- a synthetic DeepSeek-V2-Lite decode stream whose hot experts move half-way
(``tests/replan_streams.py``), and the shared DeepSeek-V2-Lite Puffin trace as recorded, with its code
prompts first then the others (a subject switch), and shuffled (stationary control), read in place
from ``tests/drift_streams.py`` -- the first 20% of the tokens plan the initial placement (EPLB) and
the rest is replayed (``moesim.workflows.replan_search.choose_replan``) under ``static``, the SGLang
default (every 1000 steps on the last 1000), ``periodic``, ``drift`` and ``hedged`` with an interval of
1/8 of the stream, migration blocking (and ``periodic`` overlapped). Printed per candidate: realised
imbalance (max/mean GPU tokens per step, mean over steps), mean step time with migration stalls,
the imbalance of the tokens summed over windows of the interval's length (the issue's "next-window
imbalance", as served), re-plans, bytes moved, stall time, and the step-time ratio static / candidate
(> 1: faster than static).
Simulated figures are deterministic; the wall time of each stream is printed for information only.
The figures of 2026-12-05 are in docs/replan.md "Measured" (about 5 minutes on the shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from moesim.sim.replan_results import layer_imbalance  # noqa: E402
from moesim.workflows.replan import ReplanOptions  # noqa: E402
from moesim.workflows.replan_search import ReplanSearch, choose_replan  # noqa: E402
from tests.drift_streams import puffin, puffin_code_then_text, puffin_shuffled  # noqa: E402
from tests.replan_streams import switching_trace  # noqa: E402

SHARED = REPO.parent / "shared" / "traces"
STREAMS = {
    "synthetic switch": (lambda root: switching_trace(4096 * 60, seed=1), 4096),
    "deepseek puffin (as recorded)": (puffin, 2048),
    "deepseek code | text prompts": (puffin_code_then_text, 2048),
    "deepseek puffin shuffled (stationary)": (puffin_shuffled, 2048),
}


def candidates(steps: int, migration_s: str = "blocking") -> dict[str, ReplanOptions]:
    n = max(1, steps // 8)
    base = ReplanOptions(policy="static", planner="eplb", migration=migration_s)
    return {
        "static": base,
        "sglang-default": replace(base, policy="periodic", interval_steps=1000, window_steps=1000),
        f"periodic n={n}": replace(base, policy="periodic", interval_steps=n, window_steps=n),
        f"periodic n={n} overlapped": replace(base, policy="periodic", interval_steps=n, window_steps=n,
                                              migration="overlapped"),
        f"periodic n={n} moves=min": replace(base, policy="periodic", interval_steps=n, window_steps=n,
                                             moves="min"),
        f"drift n={n} t=0.1": replace(base, policy="drift", interval_steps=n, window_steps=n, threshold=0.1),
        f"drift n={n} t=0.05 overlapped": replace(base, policy="drift", interval_steps=n, window_steps=n,
                                                  threshold=0.05, migration="overlapped"),
        f"hedged n={n}": replace(base, policy="hedged", interval_steps=n, window_steps=4 * n),
    }


def window_imbalance(tokens: np.ndarray, steps: int) -> float:
    """Realised imbalance of the tokens summed over consecutive windows of ``steps`` steps (the issue's
    "next-window imbalance" as served), mean over windows and MoE layers."""
    per = [np.nanmean(layer_imbalance(tokens[a:a + steps].sum(axis=0)))
           for a in range(0, tokens.shape[0], steps)]
    return float(np.mean(per))


def run_stream(name: str, hw: str, root: Path) -> dict:
    make, batch_tokens = STREAMS[name]
    trace = make(root)
    req = ReplanSearch(hw=hw, model="deepseek-v2-lite", trace=trace, batch_tokens=batch_tokens)
    probe = choose_replan(req, candidates={"static": ReplanOptions(policy="static")})
    t0 = time.perf_counter()
    choice = choose_replan(req, candidates=candidates(probe.stream_steps))
    wall = time.perf_counter() - t0
    static = choice.candidates["static"]
    n = max(1, choice.stream_steps // 8)
    rows = {label: {**c.as_dict(), "static_over_candidate": static.step_time_s / c.step_time_s,
                    "window_imbalance": window_imbalance(choice.runs[label].gpu_tokens, n)}
            for label, c in choice.candidates.items()}
    return {"stream": name, "tokens": trace.num_tokens, "steps": choice.stream_steps, "phase": choice.phase,
            "batch": choice.batch, "gpus": choice.gpus, "wall_s": wall, "candidates": rows}


def print_stream(r: dict) -> None:
    print(f"\n{r['stream']}: {r['tokens']} tokens, stream of {r['steps']} {r['phase']} steps of {r['batch']} "
          f"on {r['gpus']} GPUs (wall {r['wall_s']:.0f} s)")
    print(f"  {'candidate':<30}{'imbalance':>10}{'window imb':>11}{'step ms':>9}{'re-plans':>9}"
          f"{'GB moved':>9}{'stall ms':>9}{'static/cand':>12}")
    for label, c in r["candidates"].items():
        print(f"  {label:<30}{c['imbalance']:>10.4f}{c['window_imbalance']:>11.4f}"
              f"{c['step_time_s'] * 1e3:>9.3f}{c['rebalances']:>9}"
              f"{c['migration_bytes'] / 1e9:>9.1f}{c['stall_s'] * 1e3:>9.2f}"
              f"{c['static_over_candidate']:>12.4f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--streams", default=",".join(STREAMS))
    ap.add_argument("--hw", default="h100x8")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = []
    for name in [s for s in args.streams.split(",") if s]:
        if name.startswith("deepseek") and not (args.shared / "deepseek-v2-lite-chat-prefill").is_dir():
            print(f"skipping {name}: shared traces not found at {args.shared}", file=sys.stderr)
            continue
        r = run_stream(name, args.hw, args.shared)
        out.append(r)
        if not args.json:
            print_stream(r)
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
