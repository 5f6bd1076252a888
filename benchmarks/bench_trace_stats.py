"""Benchmark: ``moesim trace stats`` throughput (token x layer per second) and peak memory.

    python benchmarks/bench_trace_stats.py [--shared PATH] [--tokens 10000000] [--skip-large]
    python benchmarks/bench_trace_stats.py --stats-cli [--baseline REV] [--repeat 2]

``--stats-cli``: the issue's target, the whole ``moesim trace stats`` command on the shared trace
(every row, C = 6, 12, 24, all three policies) in CPU seconds of a child process, against the tree
of a baseline commit (``git archive REV moesim`` under /tmp, first on PYTHONPATH) in the same run,
outputs compared. Measured 2026-12-05 (speed2, numba installed, load average 1.5-3.5 from other
jobs): 7.97-8.93 CPU s here against 11.75-12.03 CPU s at ddc1ff0 in the same runs (1.35-1.48x),
outputs equal (consecutive_overlap within 1e-13 relative: now the integer count / K / pairs);
against a49d8c6 after the rebase: 12.86 -> 8.71 CPU s (1.48x), load average 1.2. Of
the 8 s: LFU and Belady caches ~2 s each, local consistency ~1.3 s, LRU ~0.8 s, imports and
loading ~1 s, transition counts and reuse distances 0.2-0.3 s each (2.1 and 2.2 s in numpy).

1. the largest shared real trace (DeepSeek-V2-Lite Puffin prefill, 192,023 tokens x 26 layers x 6):
   all statistics, and the three cache policies at C = 6, 12, 24 over all rows;
2. a synthetic DeepSeek-V3-shaped trace (default 10M tokens x 58 MoE layers x 8 of 256 experts,
   ~9.3 GB of int16) generated here into /tmp in chunks (stored uncompressed, so it is memory-mapped
   on load), then ``trace stats`` on it with the cache simulation on its first 200,000 rows.
   Peak RSS is measured in a fresh child process per run
   (``resource.getrusage(RUSAGE_CHILDREN)``), so one run's memory does not hide another's.

The baseline of each ratio is measured in the same run: the load matrix alone (one bincount pass),
the cheapest statistic every other one builds on.

Measured on the 2-core CI machine (2026-12-05, f-speed, load average 4-8 from other jobs), numba
installed: the whole-trace ``moesim trace stats`` of the V2-Lite trace with --cache-sizes 6,12,24 and
all three policies takes 10.7-11.2 CPU s (9.4-9.6 user + 1.3-1.6 sys; non-cache statistics ~5.5 of
it), against 61.4 CPU s (59.0 user + 2.4 sys) at commit adfe57f; identical JSON output.
The cache simulation alone: LRU 0.6 s, LFU 2.0 s, Belady 1.8 s (compiled), LRU 2.5 s (numpy stack).

Earlier figures (2026-11-23, before the compiled and stack-distance paths):

- DeepSeek-V2-Lite Puffin (192,023 x 26 x 6): load matrix 0.75-1.8 s; all statistics without caches
  12-21 s (0.23-0.41 M token-layers/s, peak RSS 401 MiB); LRU + LFU + Belady at C = 6, 12, 24 over
  all 192,023 rows 106 s idle / 283 s contended (35-95 s per policy, all three sizes at once;
  peak RSS 316 MiB).
- synthetic DeepSeek-V3 (10,000,000 x 58 x 8 of 256, 8.73 GiB stored, memory-mapped): generated in
  628 s (15.9 k tokens/s); load matrix 60 s (9.6 M token-layers/s, peak RSS 324 MiB); all
  statistics without caches 887 s (0.65 M token-layers/s, peak RSS 384 MiB) -- the 2 GB bound holds;
  LRU + LFU + Belady at C = 8, 16, 32 on the first 200,000 rows 652 s (0.018 M token-layers/s,
  ~1 ms per token step for 58 layers x 3 sizes; peak RSS 584 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO.parent / "shared" / "traces" / "deepseek-v2-lite-chat-prefill" / \
    "deepseek_v2_lite_puffin_prefill.npz"

CHILD = r"""
import json, sys, time, resource
from moesim.traces import RoutingTrace
from moesim.traces.stats import trace_stats
from moesim.traces.cache import hit_rates
path, what, sizes, cache_tokens = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), int(sys.argv[4])
t0 = time.perf_counter()
tr = RoutingTrace.load(path)
load_s = time.perf_counter() - t0
t0 = time.perf_counter()
if what == "load_matrix":
    tr.load_matrix(1)
elif what == "stats":
    trace_stats(tr, cache_sizes=[], segment_lengths=(4, 16, 64))
elif what == "cache-steps":  # the per-step numpy reference, for the ratio
    hit_rates(tr, sizes, max_tokens=cache_tokens or None, method="steps")
else:
    hit_rates(tr, sizes, max_tokens=cache_tokens or None)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"what": what, "tokens": tr.num_tokens, "layers": tr.num_layers, "seconds": dt,
                  "load_seconds": load_s, "peak_rss_bytes": peak,
                  "memmap": type(tr.expert_ids).__name__ == "memmap"}))
"""


def run_child(path: Path, what: str, sizes: list[int], cache_tokens: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), what, json.dumps(sizes), str(cache_tokens)],
                         check=True, capture_output=True, text=True, cwd=REPO)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["children_maxrss_bytes"] = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) * 1024
    return res


def report(name: str, res: dict, rows: int | None = None) -> float:
    rows = rows or res["tokens"]
    rate = rows * res["layers"] / res["seconds"]
    print(f"  {name:<34} {res['seconds']:9.2f} s  {rate / 1e6:9.3f} M token-layers/s  "
          f"peak RSS {res['peak_rss_bytes'] / 2**20:7.0f} MiB  (load {res['load_seconds']:.2f} s, "
          f"memmap {res['memmap']})")
    return rate


def bench(path: Path, label: str, cache_tokens: int, sizes: list[int]) -> None:
    print(f"{label}: {path}")
    base = run_child(path, "load_matrix", sizes, cache_tokens)
    b = report("load matrix (baseline)", base)
    s = report("trace stats (no cache)", run_child(path, "stats", sizes, cache_tokens))
    tokens = base["tokens"] if not cache_tokens else min(base["tokens"], cache_tokens)
    c = report(f"LRU+LFU+Belady, C={sizes}", run_child(path, "cache", sizes, cache_tokens), rows=tokens)
    ref_rows = min(tokens, 10_000)
    r = report(f"same, per-step reference, {ref_rows} rows", run_child(path, "cache-steps", sizes, ref_rows),
               rows=ref_rows)
    print(f"  ratios to the load-matrix baseline: stats {s / b:.3f}x, caches {c / b:.4f}x; "
          f"caches vs the per-step reference: {c / r:.1f}x")


CLI = "import sys; from moesim.cli import main; sys.argv = ['moesim', *sys.argv[1:]]; main()"


def cli_stats(path: Path, pythonpath: str) -> tuple[float, dict]:
    """CPU seconds (user + system, start-up included) of ``moesim trace stats PATH --cache-sizes
    6,12,24 --json`` run from the tree on ``pythonpath``, and its output."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", CLI, "trace", "stats", str(path), "--cache-sizes", "6,12,24",
                          "--json"], check=True, capture_output=True, text=True, cwd=tempfile.gettempdir(),
                         env={**os.environ, "PYTHONPATH": pythonpath})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), json.loads(out.stdout)


def close(a: object, b: object, rel: float = 1e-12) -> bool:
    """Equal JSON, floats within ``rel`` (the integer-count consecutive overlap)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, rel) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (a != a and b != b) or abs(a - b) <= rel * max(abs(a), abs(b))
    return a == b


def bench_cli(path: Path, baseline: str, repeat: int) -> None:
    """The issue's target: the whole CLI command on the shared trace, this tree against ``baseline``."""
    with tempfile.TemporaryDirectory(prefix="moesim-baseline-") as base:
        archive = subprocess.run(["git", "archive", baseline, "moesim"], check=True, capture_output=True,
                                 cwd=REPO).stdout
        subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
        old = [cli_stats(path, base) for _ in range(repeat)]
        new = [cli_stats(path, str(REPO)) for _ in range(repeat)]
    t_old, t_new = min(c for c, _ in old), min(c for c, _ in new)
    same = all(close(o, old[0][1]) for _, o in old + new)
    print(f"moesim trace stats {path.name} --cache-sizes 6,12,24 (all three policies, every row): "
          f"{t_old:.2f} CPU s at {baseline}, {t_new:.2f} CPU s here ({t_old / t_new:.2f}x); "
          f"same output (floats within 1e-12): {same}; load average {os.getloadavg()[0]:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="largest shared trace")
    ap.add_argument("--stats-cli", action="store_true",
                    help="only the CLI command on the shared trace, against --baseline in the same run")
    ap.add_argument("--baseline", default="a49d8c6", help="baseline commit of --stats-cli (default a49d8c6)")
    ap.add_argument("--repeat", type=int, default=2, help="--stats-cli runs per tree (the best is kept)")
    ap.add_argument("--tokens", type=int, default=10_000_000, help="tokens of the synthetic trace")
    ap.add_argument("--skip-large", action="store_true", help="only the shared trace")
    args = ap.parse_args()
    if args.stats_cli:
        if not args.shared.exists():
            print(f"shared trace {args.shared} not found; skipped")
            return 0
        bench_cli(args.shared, args.baseline, args.repeat)
        return 0
    if args.shared.exists():
        bench(args.shared, "shared real trace", 0, [6, 12, 24])
    else:
        print(f"shared trace {args.shared} not found; skipped")
    if args.skip_large:
        return 0
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        out = Path(tmp) / "v3-synth.npz"
        t0 = time.perf_counter()
        cmd = ["trace", "synth", "--model", "deepseek-v3", "--tokens", str(args.tokens), "--seed", "0"]
        subprocess.run([sys.executable, "-m", "moesim", *cmd, "--out", str(out)], check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        gen_s = time.perf_counter() - t0
        size = out.stat().st_size
        print(f"generated {args.tokens:,} tokens of deepseek-v3 (58 x 8 of 256) in {gen_s:.1f} s "
              f"({args.tokens / gen_s / 1e3:.1f} k tokens/s), {size / 2**30:.2f} GiB")
        bench(out, "synthetic deepseek-v3 trace", 200_000, [8, 16, 32])
    return 0


if __name__ == "__main__":
    sys.exit(main())
