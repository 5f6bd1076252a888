"""Workload files and flags: fields, distributions, arrival kinds, one-line errors naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import UserError
from moesim.serving import WorkloadSpec, load_workload, parse_slo
from moesim.serving.requests import arrival_times, draw_lengths, make_requests
from moesim.serving.workload import Lengths, builtin_workloads
from moesim.traces.trace import RoutingTrace


def _write(tmp_path, text: str):
    path = tmp_path / "w.yaml"
    path.write_text(text)
    return path


def test_every_field_read_from_yaml(tmp_path):
    (tmp_path / "pairs.csv").write_text("prompt_tokens,output_tokens\n100,10\n200,20\n")
    spec = load_workload(_write(tmp_path, """
kind: workload
name: mine
arrivals: {kind: poisson, rate_per_s: 12.5, burstiness: 0.5}
prompt_tokens: {kind: lognormal, mean: 900, sigma: 0.4, min: 10, max: 4000}
output_tokens: {kind: uniform, min: 5, max: 50}
lengths_file: pairs.csv
prefix_hit_fraction: 0.25
speculative: {draft_tokens: 3, acceptance_rate: 0.7}
requests: 77
duration_s: 30
seed: 4
"""))
    assert spec.name == "mine" and spec.arrivals.rate_per_s == 12.5 and spec.arrivals.burstiness == 0.5
    assert spec.prompt_tokens == Lengths(kind="lognormal", value=512, mean=900, sigma=0.4, min=10, max=4000)
    assert spec.output_tokens.kind == "uniform" and spec.output_tokens.max == 50
    assert spec.lengths_file == str(tmp_path / "pairs.csv")
    assert (spec.prefix_hit_fraction, spec.speculative.draft_tokens, spec.speculative.acceptance_rate) == (
        0.25, 3, 0.7)
    assert (spec.requests, spec.duration_s, spec.seed) == (77, 30.0, 4)
    trace = RoutingTrace.load("deepseek-v2-lite-synth")
    reqs = make_requests(spec, trace)
    pairs = set(zip(reqs.prompt.tolist(), reqs.output.tolist(), strict=True))
    assert pairs <= {(100, 10), (200, 20)} and len(pairs) == 2
    assert np.all(reqs.hit == np.floor(reqs.prompt * 0.25))


@pytest.mark.parametrize(("text", "field", "expected"), [
    ("arrivals: {kind: sometimes}", "arrivals.kind", "expected one of poisson, closed-loop, timestamps"),
    ("arrivals: {kind: poisson, rate_per_s: -1}", "arrivals.rate_per_s", "expected a number >= 1e-12"),
    ("arrivals: {kind: timestamps}", "arrivals.file", "expected a file of timestamps"),
    ("prompt_tokens: {kind: uniform, min: 10}", "prompt_tokens.max", "a uniform length needs a max"),
    ("prompt_tokens: {kind: uniform, min: 10, max: 5}", "prompt_tokens.max", "min <= max"),
    ("output_tokens: {kind: fixed, value: 0}", "output_tokens.value", "expected a whole number >= 1"),
    ("prefix_hit_fraction: 1.0", "prefix_hit_fraction", "below 1"),
    ("speculative: {draft_tokens: 2, acceptance_rate: 1.5}", "speculative.acceptance_rate", "below 1"),
    ("requests: 0", "requests", "expected a whole number >= 1"),
    ("request: 10", "request", "unknown field"),
    ("kind: hardware", "kind", "expected 'workload'"),
    ("seed: [1]", "seed", "expected a whole number"),
])
def test_bad_fields_are_one_line_errors(tmp_path, text, field, expected):
    path = _write(tmp_path, text + "\n")
    with pytest.raises(UserError) as err:
        load_workload(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: {field}: ") and expected in msg


def test_unknown_name_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="unknown workload 'nope'; built-in: chat"):
        load_workload("nope")
    assert "chat" in builtin_workloads()
    with pytest.raises(UserError, match="expected a YAML mapping"):
        load_workload(_write(tmp_path, "- 1\n"))
    stamps = tmp_path / "t.txt"
    stamps.write_text("0\n2\n1\n")
    spec = WorkloadSpec().with_(requests=3)
    bad = load_workload(_write(tmp_path, f"arrivals: {{kind: timestamps, file: {stamps}}}\nrequests: 3\n"))
    with pytest.raises(UserError, match="non-decreasing"):
        arrival_times(bad, np.random.default_rng(0))
    stamps.write_text("0\nsoon\n")
    with pytest.raises(UserError, match="line 2: expected 1 numbers"):
        arrival_times(bad, np.random.default_rng(0))
    assert spec.requests == 3


def test_flags_override_fields_and_name_the_flag():
    spec = load_workload("chat").with_(arrival_rate=3.0, requests=5, seed=9)
    assert spec.arrivals.kind == "poisson" and spec.arrivals.rate_per_s == 3.0
    assert (spec.requests, spec.seed) == (5, 9)
    assert spec.with_(concurrency=4).arrivals.kind == "closed-loop"
    with pytest.raises(UserError, match=r"^--arrival-rate: expected a rate > 0"):
        spec.with_(arrival_rate=0.0)
    with pytest.raises(UserError, match=r"^--requests: "):
        spec.with_(requests=0)


def test_distributions():
    rng = np.random.default_rng(0)
    x = draw_lengths(Lengths(kind="lognormal", mean=500, sigma=0.5), 200_000, rng)
    assert x.mean() == pytest.approx(500, rel=0.01) and x.min() >= 1
    u = draw_lengths(Lengths(kind="uniform", min=3, max=7), 10_000, rng)
    assert set(u.tolist()) == {3, 4, 5, 6, 7}
    assert np.all(draw_lengths(Lengths(value=42), 5, rng) == 42)
    t = arrival_times(WorkloadSpec(requests=100_000).with_(arrival_rate=8.0), np.random.default_rng(1))
    assert t[0] == 0 and np.diff(t).mean() == pytest.approx(1 / 8, rel=0.02)
    assert np.diff(t).std() == pytest.approx(1 / 8, rel=0.03)  # exponential: std = mean


def test_slo_parsing():
    slo = parse_slo("ttft=200ms,tpot=0.05s,e2e=3000")
    assert (slo.ttft_s, slo.tpot_s, slo.e2e_s) == pytest.approx((0.2, 0.05, 3.0))
    for bad in ("ttft", "latency=3ms", "ttft=-1ms", "tpot=fast"):
        with pytest.raises(UserError, match=r"^--slo: "):
            parse_slo(bad)
