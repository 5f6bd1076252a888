"""Timeline slices: overlapped micro-batches with their real durations, bytes on fetch slices."""

from __future__ import annotations

import itertools
import json

import pytest

from moesim.sim import SimConfig, simulate
from moesim.specs import load_cluster, load_model
from moesim.traces import RoutingTrace


def _events(result, tmp_path) -> list[dict]:
    path = tmp_path / "t.json"
    result.write_timeline(path)
    events = json.loads(path.read_text())["traceEvents"]
    tracks = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    return [{**e, "track": tracks[e["tid"]]} for e in events if e["ph"] == "X"]


@pytest.mark.parametrize(("overlap", "n"), [("layer", 2), ("chunked", 4)])
def test_overlapped_micro_batches_have_durations_and_bytes(tmp_path, overlap, n):
    model, cluster = load_model("deepseek-v2-lite"), load_cluster("h100x8")
    trace = RoutingTrace.load("deepseek-v2-lite-synth", model=model).rows(0, 256)
    base = simulate(SimConfig(cluster, model, trace, batch_size=64, steps=2, phase="decode"))
    over = simulate(SimConfig(cluster, model, trace, batch_size=64, steps=2, phase="decode", overlap=overlap))
    plain, ev = _events(base, tmp_path), _events(over, tmp_path)
    for kind in ("dispatch", "combine"):
        slices = [e for e in ev if e["name"].startswith(f"{kind} L1 ")]
        assert slices and all(e["dur"] > 0 for e in slices)  # were all zero-length before
        assert {e["args"]["micro_batch"] for e in slices} == set(range(n))
        whole = [e for e in plain if e["name"] == f"{kind} L1"]
        for step in (0, 1):  # each step's micro-batches carry the layer's bytes between them
            assert sum(e["args"]["bytes"] for e in slices if e["args"]["step"] == step) == pytest.approx(
                sum(e["args"]["bytes"] for e in whole if e["args"]["step"] == step), rel=1e-9)
    experts = [e for e in ev if e["name"].startswith("experts L1 ") and e["track"] == "n0.gpu0"]
    assert len(experts) == 2 * n and all(e["dur"] > 0 for e in experts)
    # on each link the micro-batches queue: one slice ends before the next on the same track starts
    by_track: dict[str, list] = {}
    for e in ev:
        if e["name"].startswith(("dispatch L1 ", "combine L1 ")):
            by_track.setdefault(e["track"], []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-6 for a, b in itertools.pairwise(spans))


def test_fetch_slices_carry_bytes(tmp_path):
    path = tmp_path / "mixtral-fp8.yaml"
    path.write_text("extends: mixtral-8x7b\nname: mixtral-8x7b-fp8\nweight_dtype: fp8\n")
    model = load_model(str(path))
    trace = RoutingTrace.load("mixtral-8x7b-synth", model=model).rows(0, 6)
    cluster = load_cluster("rtx4090-workstation")
    r = simulate(SimConfig(cluster, model, trace, cache_policy="lru", cache_size=2))
    fetches = [e for e in _events(r, tmp_path) if e["name"].startswith("fetch ")]
    assert fetches and all(e["args"]["bytes"] == model.expert_bytes() for e in fetches)
