"""Issue 17's bad inputs, each through the real CLI in a subprocess capped at 500 MiB and 5 CPU seconds.

Every case must exit 2 with one line on stderr naming what was wrong (no traceback, no output file
left behind), or, where the input is legal, exit 0. ``RLIMIT_AS`` makes a memory bomb that slipped
through a MemoryError (a failed case), ``RLIMIT_CPU`` a hang a SIGXCPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import robust_inputs as ri

MEMORY_BYTES = 500 * 2**20
CPU_SECONDS = 5

RUNNER = f"""
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({MEMORY_BYTES}, {MEMORY_BYTES}))
resource.setrlimit(resource.RLIMIT_CPU, ({CPU_SECONDS}, {CPU_SECONDS} + 1))
for name in sys.argv[1].split(","):
    if name:
        sys.modules[name] = None  # as if the package were not installed
from moesim.cli import main
code = main(sys.argv[2:])
usage = resource.getrusage(resource.RUSAGE_SELF)
# VmHWM: this process's peak RSS since exec (ru_maxrss may carry the parent's from before the exec)
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(f"@@ {{hwm}} {{usage.ru_utime + usage.ru_stime}}", file=sys.stderr)
sys.exit(code)
"""


@dataclass
class Case:
    id: str
    argv: list[str]
    expect: list[str] = field(default_factory=list)
    """Fragments the one error line must contain ([] and code 0: accepted)."""
    code: int = 2
    hide: str = ""
    """Comma-separated packages to hide (``torch``)."""
    no_output: str | None = None
    """A file the failed command must not have written."""


def build_inputs(d: Path) -> None:
    """Every bad file the cases read, in ``d``."""
    ri.zip_bomb(d)
    ri.forged_header(d, "forged.npz", "expert_ids", (10**12, 32, 2), compressed=False)
    ri.forged_header(d, "forged-member.npz", "seq_id", (10**12,), compressed=True)
    ri.patched_zip(d, "deflate64.npz", method=9)
    ri.patched_zip(d, "encrypted.npz", flags=0x1)
    ri.trace_npz(d, "experts-1e11.npz", meta={"num_experts": 100_000_000_000})
    ri.trace_npz(d, "empty.npz", rows=0)
    rec = {"dataset": "d", "problem_id": 1, "layer": 0, "token_idx": 0, "experts": [1, 2]}
    ri.write(d, "token-1e12.jsonl", json.dumps({**rec, "token_idx": 10**12}) + "\n")
    ri.write(d, "layer-70000.jsonl", json.dumps(rec) + "\n" + json.dumps({**rec, "layer": 70000}) + "\n")
    hw = ri.CLUSTER
    for name, old, new in (
        ("zero-flops", "bf16: 989 TFLOP/s", "bf16: 0 TFLOP/s"),
        ("inf-memory", "capacity: 80 GB", "capacity: inf GB"),
        ("overflow-memory", "capacity: 80 GB", "capacity: 1e400 GB"),
        ("inf-bandwidth", "bandwidth: 450 GB/s", "bandwidth: inf GB/s"),
        ("tiny-bandwidth", "bandwidth: 450 GB/s", "bandwidth: 1e-300 GB/s"),
        ("inf-latency", "latency: 1 us", "latency: inf s"),
        ("timestamp", "source: test\nnode", "source: !!timestamp x\nnode"),
        ("count-1e7", "count: 2", "count: 10000000"),
    ):
        ri.write(d, f"{name}.yaml", hw.replace(old, new))
    ri.write(d, "no-gpu.yaml", ri.CPU_ONLY)
    ri.write(d, "deep.yaml", "[" * 20_000)
    spec = Path(__file__).resolve().parents[1] / "moesim" / "specs" / "models" / "mixtral-8x7b.yaml"
    text = spec.read_text(encoding="utf-8")
    ri.write(d, "layers-1e12.yaml", text.replace("num_layers: 32", "num_layers: 1000000000000"))
    ri.write(d, "layers-1e12-text.yaml", text.replace("num_layers: 32", "num_layers: 1e12"))
    hf = {"model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 2, "intermediate_size": 14336,
          "num_local_experts": 8, "num_experts_per_tok": 2, "num_attention_heads": 0, "vocab_size": 32000}
    ri.write(d, "config.json", json.dumps(hf))
    profile = {"schema": "moesim-synth-profile/v1", "popularity_sorted": [[1.0]]}
    ri.write(d, "profile.json", json.dumps(profile))
    plan = {"planner": "x", "model": "mixtral-8x7b", "devices": ["n0.gpu0"], "num_experts": 8,
            "slots_per_device": 8, "layers": [{"layer": i, "slots": [list(range(8))]} for i in range(32)]}
    ri.write(d, "plan-layer-abc.json", json.dumps(plan).replace('"layer": 3,', '"layer": "abc",'))
    ri.write(d, "plan-cache-list.json", json.dumps({**plan, "cache": [1, 2]}))
    ri.write(d, "dump.pt", "not a torch file")
    (d / "a-folder").mkdir()


SIM = ["simulate", "--hw", "h100x8", "--model", "mixtral-8x7b", "--trace", "mixtral-8x7b-synth",
       "--steps", "2"]
SYNTH = ["trace", "synth", "--model", "mixtral-8x7b", "--tokens", "100", "--out", "s.npz"]
NPZ = "expected stored or deflate"

CASES = [
    # 1. memory bombs
    Case("npz-bomb", ["trace", "info", "bomb.npz"],
         ["inflate to 3,700,000,000 bytes", "MOESIM_MAX_INFLATION"]),
    Case("npz-forged-shape", ["trace", "info", "forged.npz"], ["expert_ids", "1,000,000,000,000 trace rows"]),
    Case("npz-forged-member", ["trace", "info", "forged-member.npz"],
         ["seq_id", "array header claims shape"]),
    Case("meta-num-experts-1e11", ["trace", "stats", "experts-1e11.npz"],
         ["meta_json.num_experts", "100,000,000,000 experts exceed"]),
    Case("jsonl-token-idx-1e12", ["trace", "convert", "token-1e12.jsonl", "o.npz"],
         ["token_idx", "trace rows exceed", "MOESIM_MAX_TRACE_ROWS"], no_output="o.npz"),
    # 2. hangs and unbounded sizes
    Case("synth-seq-len-negative", [*SYNTH, "--seq-len", "-3"], ["--seq-len", "expected a whole number >= 1"],
         no_output="s.npz"),
    Case("hw-nodes-1000", ["hw", "show", "h100x8", "--nodes", "1000"], code=0),
    Case("hw-nodes-100000", ["hw", "show", "h100x8", "--nodes", "100000"], ["--nodes", "MOESIM_MAX_NODES"]),
    Case("device-count-1e7", ["hw", "show", "count-1e7.yaml"],
         ["node.devices.gpu.count", "devices and switches"]),
    Case("num-layers-1e12", ["model", "show", "layers-1e12.yaml"], ["num_layers", "MOESIM_MAX_LAYERS"]),
    Case("num-layers-1e12-text", ["model", "show", "layers-1e12-text.yaml"],
         ["num_layers", "expected a whole number >= 1, got '1e12'"]),
    Case("synth-tokens-1e11", [*SYNTH[:4], "--tokens", "100000000000", "--out", "s.npz"],
         ["--tokens", "MOESIM_MAX_SYNTH_TOKENS"]),
    # 3. impossible hardware
    Case("bf16-zero-flops", ["hw", "validate", "zero-flops.yaml"], ["compute.peak.bf16", "from 1 MFLOP/s"]),
    Case("inf-memory", ["hw", "show", "inf-memory.yaml"], ["memory.capacity", "must be finite"]),
    Case("overflow-memory", ["hw", "show", "overflow-memory.yaml"], ["memory.capacity", "must be finite"]),
    Case("inf-bandwidth", ["hw", "show", "inf-bandwidth.yaml"],
         ["links.my-link.bandwidth", "must be finite"]),
    Case("tiny-bandwidth", ["hw", "show", "tiny-bandwidth.yaml"], ["links.my-link.bandwidth", "from 1 MB/s"]),
    Case("inf-latency", ["hw", "show", "inf-latency.yaml"], ["links.my-link.latency", "must be finite"]),
    # 4. flags without range checks
    Case("plan-batch-size-0", ["plan", "--hw", "h100x8", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    Case("plan-batch-size-negative", ["plan", "--hw", "h100x8", "--batch-size", "-1"], ["--batch-size"]),
    Case("plan-time-limit-nan", ["plan", "--hw", "h100x8", "--time-limit", "nan"],
         ["--time-limit", "finite"]),
    Case("simulate-cache-size-100", [*SIM, "--cache", "lru", "--cache-size", "100"],
         ["--cache-size", "at most the 8 experts"]),
    Case("stats-cache-sizes-100", ["trace", "stats", "mixtral-8x7b-synth", "--cache-sizes", "100"],
         ["--cache-sizes", "number of experts (8)"]),
    Case("stats-cache-tokens-negative", ["trace", "stats", "mixtral-8x7b-synth", "--cache-tokens", "-5"],
         ["--cache-tokens", ">= 0"]),
    Case("stats-segment-lengths-0", ["trace", "stats", "mixtral-8x7b-synth", "--segment-lengths", "0"],
         ["--segment-lengths"]),
    Case("synth-seq-len-0", [*SYNTH, "--seq-len", "0"], ["--seq-len"]),
    Case("synth-report-cache-sizes-1", [*SYNTH, "--report", "--cache-sizes", "1"],
         ["--cache-sizes", "top-k (2)"], no_output="s.npz"),
    # 5. silent corruption
    Case("jsonl-layer-70000", ["trace", "convert", "layer-70000.jsonl", "o.npz"],
         ["layer-70000.jsonl", "layer", "from 0 to 32767", "70000"], no_output="o.npz"),
    # 6. tracebacks where one line is promised
    Case("yaml-timestamp", ["hw", "show", "timestamp.yaml"], ["timestamp.yaml", "!!timestamp 'x'"]),
    Case("yaml-nesting-20000", ["model", "show", "deep.yaml"], ["deep.yaml", "MOESIM_MAX_YAML_DEPTH"]),
    Case("npz-deflate64", ["trace", "info", "deflate64.npz"], ["expert_ids", "deflate64", NPZ]),
    Case("npz-encrypted", ["trace", "info", "encrypted.npz"], ["expert_ids", "encrypted"]),
    Case("plan-layer-abc", [*SIM, "--plan", "plan-layer-abc.json"], ["layers[3].layer", "'abc'"]),
    Case("plan-cache-list", [*SIM, "--plan", "plan-cache-list.json"],
         ["plan-cache-list.json: cache: expected"]),
    Case("synth-profile-missing-keys", [*SYNTH, "--profile", "profile.json"],
         ["profile.json", "consecutive_overlap"]),
    Case("gpu-memory-inf", [*SIM, "--gpu-memory", "inf GiB"], ["--gpu-memory", "must be finite"]),
    Case("gpu-memory-negative", [*SIM, "--gpu-memory", "-5GiB"], ["--gpu-memory", "must not be negative"]),
    Case("synth-seed-negative", [*SYNTH, "--seed", "-1"], ["--seed", ">= 0"]),
    Case("hf-config-zero-heads", ["model", "show", "config.json"], ["num_attention_heads", ">= 1"]),
    Case("plan-gpu-less-cluster", ["plan", "--hw", "no-gpu.yaml"], ["no-gpu.yaml", "no GPU"]),
    Case("simulate-out-folder", [*SIM, "--out", "a-folder"], ["--out", "got a folder"]),
    Case("simulate-timeline-folder", [*SIM, "--timeline", "a-folder"], ["--timeline", "got a folder"]),
    Case("report-out-file", ["report", "--out", "config.json"], ["--out", "got a file"]),
    Case("synth-fit-empty-trace", [*SYNTH, "--fit", "empty.npz"], ["empty.npz", "at least 2 token rows"],
         no_output="s.npz"),
    Case("record-without-torch",
         ["trace", "record", "--model", "MixtralForCausalLM", "--tiny", "--prompts", "hi", "--out", "r.npz"],
         ["pip install torch"], hide="torch", no_output="r.npz"),
    Case("pt-convert-without-torch", ["trace", "convert", "dump.pt", "o.npz", "--format", "sglang-per-token"],
         ["dump.pt", "pip install torch"], hide="torch", no_output="o.npz"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("robust")
    build_inputs(d)
    return d


def run_case(case: Case, folder: Path) -> tuple[int, str, int, float]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    for key in [k for k in env if k.startswith("MOESIM_MAX_")]:
        del env[key]  # the defaults are what is tested
    proc = subprocess.run([sys.executable, "-c", RUNNER, case.hide, *case.argv], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    usage = [ln for ln in lines if ln.startswith("@@ ")]
    max_rss_kib, cpu_s = (int(usage[0].split()[1]), float(usage[0].split()[2])) if usage else (-1, -1.0)
    err = "\n".join(ln for ln in lines if not ln.startswith("@@ "))
    return proc.returncode, err, max_rss_kib, cpu_s


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_case(case: Case, folder: Path) -> None:
    code, err, max_rss_kib, cpu_s = run_case(case, folder)
    killed = f"the command did not finish (killed at {MEMORY_BYTES >> 20} MiB or {CPU_SECONDS} s?)"
    assert max_rss_kib > 0, f"{killed}:\n{err}"
    assert max_rss_kib * 1024 <= MEMORY_BYTES and cpu_s <= CPU_SECONDS
    assert "Traceback" not in err, err
    assert code == case.code, err
    if case.code == 2:
        assert len(err.splitlines()) == 1 and err.startswith("moesim: error: "), err
        for fragment in case.expect:
            assert fragment in err, err
    if case.no_output:
        assert not (folder / case.no_output).exists()
    assert not list(folder.glob(".*.tmp")), "a temporary output file was left behind"
