"""``moesim simulate --workload``: the issue's done-when run, the --help examples as written, outputs
and one-line errors."""

from __future__ import annotations

import json
import shlex

import pandas as pd
import pytest

from moesim.cli import main
from moesim.cli.simulate_serving import EXAMPLES


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


BASE = ["simulate", "--hw", "h100x8", "--model", "deepseek-v2-lite", "--trace", "deepseek-v2-lite-synth"]


def test_done_when_poisson_on_h100x8_prints_and_jsons_the_slo_metrics(capsys):
    """Poisson arrivals on h100x8 with DeepSeek-V2-Lite and the shipped trace: TTFT/TPOT percentiles,
    tokens/s and goodput in the text and in --json."""
    argv = [*BASE, "--workload", "chat", "--arrival-rate", "20", "--requests", "80",
            "--slo", "ttft=30ms,tpot=5ms"]
    code, out, _ = _run(capsys, argv)
    assert code == 0
    for word in ("TTFT p50", "TPOT p50", "p99", "tokens/s", "goodput", "routing: stream"):
        assert word in out
    code, out, _ = _run(capsys, [*argv, "--json"])
    assert code == 0
    s = json.loads(out)
    assert s["schema"] == "moesim-simulate/1" and s["mode"] == "serving"
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(s[key]) == {"p50", "p90", "p99", "mean"} and s[key]["p99"] >= s[key]["p50"] > 0
    t = s["throughput"]
    assert t["output_tokens_per_s"] > 0 and t["input_tokens_per_s_per_gpu"] == pytest.approx(
        t["input_tokens_per_s"] / 8)
    g = s["goodput"]
    assert g["slo"] == {"ttft_s": 0.03, "tpot_s": 0.005, "e2e_s": None}
    assert 0 < g["fraction"] <= 1
    assert g["requests_per_s"] == pytest.approx(g["fraction"] * t["requests_per_s"])
    assert s["requests"] == {"sent": 80, "finished": 80, "unfinished": 0, "unfinished_reasons": {}}
    assert s["routing"]["mode"] == "stream" and len(s["series"]["kv_utilization"]) > 0


@pytest.mark.parametrize("example", [e for e in EXAMPLES.replace("\\\n", " ").splitlines() if e.strip()])
def test_help_examples_run_as_written(capsys, tmp_path, monkeypatch, example):
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(example)[1:]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    if "--out" in argv:
        frame = pd.read_csv(tmp_path / "requests.csv")
        assert len(frame) == 40 and {"ttft_s", "tpot_s", "e2e_s", "finished"} <= set(frame.columns)
        events = json.loads((tmp_path / "serve.json").read_text())["traceEvents"]
        assert {e["name"] for e in events if e["ph"] == "X"} >= {"prefill step", "decode step"}
    if "--json" in argv:
        assert json.loads(out)["scheduler"] == "disaggregated"


@pytest.mark.parametrize(("extra", "expected"), [
    (["--batch", "8"], "--batch: --batch does not apply with --workload"),
    (["--cache", "lru"], "--cache: "),
    (["--tp", "2"], "--tp: --tp does not apply with --workload (serving runs attention data-parallel"),
    (["--replan", "periodic"], "--replan: --replan does not apply with --workload (re-placement is modelled"),
    (["--arrival-rate", "5", "--concurrency", "3"], "give one of --arrival-rate and --concurrency"),
    (["--arrival-rate", "0"], "--arrival-rate: expected a finite number greater than 0"),
    (["--slo", "ttft"], "--slo: expected ttft=..."),
    (["--prefill-gpus", "2"], "--prefill-gpus: only the disaggregated scheduler"),
    (["--scheduler", "disaggregated", "--prefill-gpus", "8"], "--prefill-gpus: expected 1 to 7 prefill GPUs"),
    (["--token-budget", "0"], "--token-budget: expected a whole number from 1 to"),
    (["--gpu-memory-utilization", "1.5"], "--gpu-memory-utilization: expected a fraction in (0, 1]"),
    (["--gpu-memory-utilization", "0.01"], "no memory left for a KV cache"),
])
def test_bad_serving_flags_exit_2_with_one_line(capsys, extra, expected):
    code, _, err = _run(capsys, [*BASE, "--workload", "chat", "--requests", "3", *extra])
    assert code == 2 and err.count("\n") == 1 and expected in err, err


def test_bad_workload_file_exits_2(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("arrivals: {kind: poisson, rate_per_s: fast}\n")
    code, _, err = _run(capsys, [*BASE, "--workload", str(bad)])
    assert code == 2 and err.count("\n") == 1 and f"{bad}: arrivals.rate_per_s: expected a number" in err


def test_serve_curve_runs_each_rate_on_the_same_requests():
    from moesim.workflows import serve_curve

    runs = serve_curve([2.0, 200.0], hw="h100x8", model="deepseek-v2-lite", trace="deepseek-v2-lite-synth",
                       workload="chat", requests=20)
    slow, fast = (r.summary() for r in runs)
    assert [r.config.workload.arrivals.rate_per_s for r in runs] == [2.0, 200.0]
    assert slow["input_tokens"] == fast["input_tokens"]  # same prompts, sent faster
    assert fast["throughput"]["requests_per_s"] > 5 * slow["throughput"]["requests_per_s"]
