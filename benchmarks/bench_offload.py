"""Offloaded-simulation speed: CPU seconds of ``moesim simulate`` runs with an expert cache, this
tree against a baseline commit extracted into a temporary folder, in the same run.

    python benchmarks/bench_offload.py [--baseline REV] [--repeat 3] [--only readme]

The baseline (default ``a49d8c6``, main before this change: one SimPy process per fetch, per expert
call and per side run; the figures below were taken against ddc1ff0, the same offloaded path)
is ``git archive REV moesim`` unpacked under /tmp and imported first on ``PYTHONPATH``. Each case
runs in a fresh child process per repeat; the CPU seconds (user + system, from
``RUSAGE_CHILDREN``) include the start-up, so they are what a user waits for. The JSON summaries of
both trees are compared (everything but the wall-clock ``timing``): they must be equal.

Cases: the README's offloading example (Mixtral fp8 on an RTX 4090 workstation, LRU 3 of 8 per
layer, misses on the CPU, 3,000 decode steps), the same with misses fetched over PCIe and a
predictor prefetching the next layer, and DeepSeek-V2-Lite on the eight-GPU L4 server (batch 8,
Belady, ``auto`` misses).

Measured 2026-12-05 on the shared 2-core VM (speed2 branch, load average 1.6-5.8 from other jobs;
CPU seconds, best of 2-3 per tree, same summaries in every run):

    case               baseline ddc1ff0   this tree   ratio
    readme                   9.6-10.7      2.9-3.0    3.27-3.36x
    fetch-predictor         16.1-16.7      4.6-4.8    3.37-3.65x
    l4-belady-auto          11.1-11.7      4.6-5.9    1.97-2.44x

After the rebase on a49d8c6 (the default baseline), load average 1.5, best of 2: readme 10.46 ->
3.16 CPU s (3.30x), fetch-predictor 17.04 -> 5.24 (3.25x), l4-belady-auto 11.63 -> 4.99 (2.33x).

Where the readme case's time went before: one SimPy process per weight copy, expert call and CPU
run (SimPy's queue and event objects), numpy on 1-3 element arrays per call, and the lockstep
expert-call costing the offloaded run never used. Now: lanes on one heap (sim/resources.py), Python
lists per call, costs remembered per token tuple, the predictor per token's experts. The golden test
(tests/test_offload_golden.py) holds 218 runs to the baseline's outputs bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = ["--hw", "rtx4090-workstation", "--model", "mixtral-8x7b", "--weight-dtype", "fp8",
          "--trace", "mixtral-8x7b-synth", "--cache", "lru", "--cache-size", "3", "--miss", "cpu"]
CASES = {
    "readme": README,
    "fetch-predictor": [*README[:-2], "--miss", "fetch", "--prefetch", "predictor"],
    "l4-belady-auto": ["--hw", "l4-server", "--model", "deepseek-v2-lite", "--trace",
                       "deepseek-v2-lite-synth", "--batch", "8", "--cache", "belady", "--cache-size", "6",
                       "--miss", "auto", "--steps", "500"],
}
CHILD = "import sys; from moesim.cli import main; sys.argv = ['moesim', *sys.argv[1:]]; main()"


def run(args: list[str], pythonpath: str | None) -> tuple[float, dict]:
    """CPU seconds of one ``moesim simulate ARGS --json`` in a child, and its summary."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, "-c", CHILD, "simulate", *args, "--json"], check=True,
                         capture_output=True, text=True, cwd=tempfile.gettempdir(), env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = json.loads(out.stdout)
    summary.pop("timing", None)
    return cpu, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="a49d8c6", help="commit of the baseline tree (default a49d8c6)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case and tree; the best is kept")
    ap.add_argument("--only", choices=sorted(CASES), action="append", help="run only these cases")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="moesim-baseline-") as base:
        archive = subprocess.run(["git", "archive", args.baseline, "moesim"], check=True, capture_output=True,
                                 cwd=REPO).stdout
        subprocess.run(["tar", "-x", "-C", base], input=archive, check=True)
        print(f"{'case':18s} {'baseline CPU s':>15s} {'this tree CPU s':>16s} {'ratio':>7s}  same summary")
        for name in args.only or CASES:
            old = [run(CASES[name], base) for _ in range(args.repeat)]
            new = [run(CASES[name], str(REPO)) for _ in range(args.repeat)]
            t_old, t_new = min(c for c, _ in old), min(c for c, _ in new)
            same = all(s == old[0][1] for _, s in old + new)
            print(f"{name:18s} {t_old:15.2f} {t_new:16.2f} {t_old / t_new:6.2f}x  {same}")
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
