"""Benchmark: does a synthetic trace fitted to a real one drift like it? (issue 14, done-when)

    python benchmarks/bench_drift_synth.py [--shared PATH] [--seeds 4] [--streams NAME,...] [--json]

For each real stream of ``tests/drift_streams.py`` (the shared traces read in place, some of them
concatenated or reordered into subject switches), the generator is fitted twice -- with the drift
model (``moesim.traces.regimes``) and stationary (``drift=False``, the generator before it) -- and
traces of the same length are synthesised with ``--seeds`` seeds. For 8 windows and G GPUs
(8 and 32; 4 and 8 for Mixtral's 8 experts) a greedy plan made on window w is measured on w + 1:
the real trace's next-window imbalance is compared with the synthetic traces' mean, as the
relative error of its excess over 1 ((synthetic - real) / (real - 1)); |error| <= 0.2 is the
issue's criterion. TV between consecutive windows and the noise floor are printed alongside, and
for the shuffled (stationary) stream the number of regimes found.

Measured on the 2-core CI machine (shared, 2026-12-05): every stream within 0.2 at 8 and 32 GPUs
(4 and 8 for Mixtral); the table is in docs/traces.md §7 ("Measured"). The stationary fit misses the
DeepSeek streams by 0.6-0.8 of the excess. Takes about 15 minutes (the Puffin streams' fits are
1-1.5 minutes each).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from moesim.planners.decay import static_plan_imbalance  # noqa: E402
from moesim.traces import RoutingTrace  # noqa: E402
from moesim.traces.drift import window_bounds, window_counts  # noqa: E402
from moesim.traces.synth import generate  # noqa: E402
from moesim.traces.synth_fit import fit_trace  # noqa: E402
from moesim.workflows.drift import drift_stats  # noqa: E402
from tests.drift_streams import STREAMS  # noqa: E402


def synthesise(params, real: RoutingTrace, seed: int) -> RoutingTrace:
    seq, chunks = generate(params, real.num_tokens, seed=seed)
    return RoutingTrace.build(np.concatenate(list(chunks)), num_experts=real.num_experts, seq_id=seq,
                              layer_ids=real.layer_ids)


def next_imbalance(trace: RoutingTrace, gpus: tuple[int, ...], windows: int = 8) -> dict[int, float]:
    counts = window_counts(trace, window_bounds(trace.num_tokens, windows, None))
    return {g: float(static_plan_imbalance(counts, gpus=g, slots=min(trace.num_experts,
                                                                      -(-trace.num_experts // g) + 1),
                                           layer_ids=trace.layer_ids)[0].mean()) for g in gpus}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "traces")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--streams", default=None, help="comma-separated names (default: all)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.shared.is_dir():
        print(f"shared traces not found at {args.shared}; nothing to measure")
        return 0
    names = list(STREAMS) if args.streams is None else [n.strip() for n in args.streams.split(",")]
    rows = []
    for name in names:
        real = STREAMS[name](args.shared)
        gpus = (8, 32) if real.num_experts >= 32 else (4, 8)
        rd = drift_stats(real, gpus=gpus[0])
        r_next = next_imbalance(real, gpus)
        row = {"stream": name, "tokens": real.num_tokens, "real": {"tv": rd["tv_consecutive"],
               "floor": rd["tv_noise_floor"], "next": r_next}}
        for mode in ("drift", "stationary"):
            t0 = time.perf_counter()
            params = fit_trace(real, seed=0, drift=mode == "drift")
            fit_s = time.perf_counter() - t0
            nxt, tv, floor = {g: [] for g in gpus}, [], []
            for seed in range(args.seeds):
                syn = synthesise(params, real, seed)
                d = drift_stats(syn, gpus=gpus[0])
                tv.append(d["tv_consecutive"])
                floor.append(d["tv_noise_floor"])
                for g, v in next_imbalance(syn, gpus).items():
                    nxt[g].append(v)
            mean = {g: float(np.mean(v)) for g, v in nxt.items()}
            row[mode] = {
                "fit_s": fit_s, "tv": float(np.mean(tv)), "floor": float(np.mean(floor)), "next": mean,
                "next_sd": {g: float(np.std(v)) for g, v in nxt.items()},
                "rel_error": {g: (mean[g] - r_next[g]) / (r_next[g] - 1) for g in gpus},
                **({"regimes": params.drift.num_regimes,
                    "request_affinity": params.drift.request_affinity,
                    "locality": float(params.locality)} if params.drift is not None else {}),
            }
        rows.append(row)
        if not args.json:
            _print(row, gpus)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


def _print(row: dict, gpus: tuple[int, ...]) -> None:
    r, d, s = row["real"], row["drift"], row["stationary"]
    print(f"\n{row['stream']} ({row['tokens']} tokens): regimes {d['regimes']}, request affinity "
          f"{d['request_affinity']:.3f}, locality {d['locality']:.3f}; fit {d['fit_s']:.0f} s "
          f"(stationary {s['fit_s']:.0f} s)")
    print(f"  TV consecutive / noise floor: real {r['tv']:.4f} / {r['floor']:.4f}   drift-fit "
          f"{d['tv']:.4f} / {d['floor']:.4f}   stationary-fit {s['tv']:.4f} / {s['floor']:.4f}")
    for g in gpus:
        ok = "ok" if abs(d["rel_error"][g]) <= 0.2 else "MISS"
        print(f"  next-window imbalance, {g:2d} GPUs: real {r['next'][g]:.3f}   drift-fit {d['next'][g]:.3f} "
              f"(sd {d['next_sd'][g]:.3f}, error {d['rel_error'][g]:+.2f} {ok})   stationary-fit "
              f"{s['next'][g]:.3f} (error {s['rel_error'][g]:+.2f})")


if __name__ == "__main__":
    raise SystemExit(main())
