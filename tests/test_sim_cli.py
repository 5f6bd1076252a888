"""``moesim simulate``: the issue's done-when command, outputs (--out, --timeline, --json), errors."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from moesim.cli import main
from tests.conftest import shared_trace

MIXTRAL_TRACE = "mixtral-8x7b-instruct-vllm/mixtral_gsm8k_humaneval_decode.npz"


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_done_when_hit_rate_equals_trace_stats(capsys, tmp_path):
    """The issue's command reports the hit rate of ``moesim trace stats``. Mixtral's bf16 experts (3 per
    layer = 33.82 GB, + 3.21 GB of attention, embedding and router weights) do not fit the 24 GB RTX 4090,
    so the command is refused by the memory invariant; with the FP8 weights the trace was served with, it
    runs and agrees."""
    trace = str(shared_trace(MIXTRAL_TRACE))
    base = ["simulate", "--hw", "rtx4090-workstation", "--trace", trace, "--batch", "1", "--cache", "lru",
            "--cache-size", "3", "--json"]
    code, _out, err = _run(capsys, [*base, "--model", "mixtral-8x7b"])
    assert code == 2 and err.count("\n") == 1
    assert "n0.gpu0" in err and "needs 37.0" in err and "33.82 GB for its expert cache" in err
    assert "has 25.76 GB" in err and "--weight-dtype" in err
    code, out, _ = _run(capsys, [*base, "--model", "mixtral-8x7b", "--weight-dtype", "fp8"])
    assert code == 0
    flag = json.loads(out)
    spec = tmp_path / "mixtral-fp8.yaml"
    spec.write_text("extends: mixtral-8x7b\nname: mixtral-8x7b-fp8\nweight_dtype: fp8\n")
    code, out, _ = _run(capsys, [*base, "--model", str(spec)])
    assert code == 0
    sim = json.loads(out)
    code, out, _ = _run(capsys, ["trace", "stats", trace, "--cache-sizes", "3", "--json"])
    assert code == 0
    stats = json.loads(out)
    assert sim["cache_hit_rate"] == stats["cache_hit_rate"]["lru"]["3"] == flag["cache_hit_rate"]


def test_json_fields_and_outputs(capsys, tmp_path):
    timeline, table, parquet = tmp_path / "t.json", tmp_path / "r.csv", tmp_path / "r.parquet"
    argv = ["simulate", "--hw", "h100x8", "--model", "mixtral-8x7b", "--trace", "mixtral-8x7b-synth",
            "--batch", "32", "--steps", "3", "--json", "--timeline", str(timeline), "--out", str(table)]
    code, out, _ = _run(capsys, argv)
    assert code == 0
    s = json.loads(out)
    for key in ("simulated_seconds", "timing", "tokens", "tokens_per_s", "cache_hit_rate", "per_device",
                "per_link", "step_latency_s"):
        assert key in s
    assert s["cache_hit_rate"] is None and s["tokens"] == 96 and set(s["timing"]) == {"wall_seconds"}
    assert set(s["per_device"][0]) >= {"id", "busy_s", "utilization", "peak_memory_bytes"}
    assert set(s["per_link"][0]) == {"src", "dst", "bytes"}
    assert set(s["step_latency_s"]) >= {"p50", "p90", "p99"}
    frame = pd.read_csv(table)
    assert len(frame) == 3 * 32 * 8
    assert frame.groupby("step")["tokens"].sum().tolist() == [32 * 2 * 32] * 3
    doc = json.loads(timeline.read_text())
    names = {e["args"]["name"] for e in doc["traceEvents"] if e.get("name") == "thread_name"}
    assert {f"n0.gpu{i}" for i in range(8)} <= names
    assert any("->" in n for n in names)  # link tracks
    spans = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert spans and all(e["dur"] >= 0 and e["ts"] >= 0 for e in spans)
    code, _, _ = _run(capsys, [*argv[:-2], "--out", str(parquet)])
    assert code == 0
    back = pd.read_parquet(parquet)
    back["device"] = back["device"].astype(str)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)


def test_same_seed_same_json(capsys):
    argv = ["simulate", "--hw", "h100x8", "--model", "mixtral-8x7b", "--trace", "mixtral-8x7b-synth",
            "--batch", "8", "--steps", "5", "--seed", "7", "--json"]
    runs = []
    for _ in range(2):
        code, out, _ = _run(capsys, argv)
        assert code == 0
        d = json.loads(out)
        d.pop("timing")
        runs.append(json.dumps(d, sort_keys=True))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("extra, field", [
    (["--cache-size", "0"], "cache-size"),
    (["--gpu-memory", "lots"], "--gpu-memory"),
    (["--out", "x.txt", "--cache", "static", "--cache-size", "1"], "--out"),
    (["--miss", "pim", "--cache", "lru", "--cache-size", "2", "--weight-dtype", "fp8"], "miss"),
    (["--cache", "lru", "--cache-size", "1"], "--cache-size"),
])
def test_bad_input_is_one_line(capsys, extra, field):
    argv = ["simulate", "--hw", "rtx4090-workstation", "--model", "mixtral-8x7b", "--trace",
            "mixtral-8x7b-synth", "--steps", "2", *extra]
    code, _, err = _run(capsys, argv)
    assert code == 2 and err.startswith("moesim: error:") and err.count("\n") == 1
    assert f"{field}:" in err


def test_check_invariants_flag(capsys):
    argv = ["simulate", "--hw", "rtx4090-workstation", "--model", "mixtral-8x7b", "--weight-dtype", "fp8",
            "--trace", "mixtral-8x7b-synth", "--steps", "4", "--cache", "lru", "--cache-size", "2", "--miss",
            "cpu", "--json"]
    code, out, _ = _run(capsys, [*argv, "--check-invariants"])
    checked = json.loads(out)["invariants_checked"]
    assert code == 0 and checked == ["token_conservation", "memory", "causality"]
    code, out, _ = _run(capsys, argv)
    assert code == 0 and "invariants_checked" not in json.loads(out)
