"""RoutingTrace: v1 round trip, validation, hostile files, memory-mapped members, views."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from moesim.errors import UserError
from moesim.specs import load_model
from moesim.traces import RoutingTrace
from moesim.traces import npz as npz_mod
from moesim.traces.trace import row_chunks
from tests.conftest import shared_trace


def small_trace(n: int = 50, layers: int = 4, k: int = 2, e: int = 8, seed: int = 0) -> RoutingTrace:
    rng = np.random.default_rng(seed)
    ids = np.stack([[rng.choice(e, k, replace=False) for _ in range(layers)] for _ in range(n)])
    seq = np.repeat(np.arange(5), n // 5)
    return RoutingTrace.build(
        ids,
        num_experts=e,
        seq_id=seq,
        phase=1,
        gate_weights=rng.random(ids.shape),
        meta={"model": "test"},
        extras={"step_id": (np.arange(n) // 3).astype(np.int32)},
    )


def write_raw(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)
    return path


def valid_arrays(n: int = 10) -> dict[str, np.ndarray]:
    return {
        "expert_ids": np.zeros((n, 2, 2), np.int16) + np.array([0, 1], np.int16),
        "seq_id": np.zeros(n, np.int32),
        "pos": np.arange(n, dtype=np.int32),
        "phase": np.zeros(n, np.int8),
        "layer_ids": np.array([0, 1], np.int16),
        "meta_json": np.array(json.dumps({"num_experts": 4})),
    }


def test_round_trip_compressed_and_stored(tmp_path):
    t = small_trace()
    for compress in (True, False):
        p = tmp_path / f"t{compress}.npz"
        t.save(p, compress=compress)
        u = RoutingTrace.load(p)
        assert np.array_equal(u.expert_ids, t.expert_ids)
        assert np.allclose(u.gate_weights, t.gate_weights)
        assert np.array_equal(u.seq_id, t.seq_id) and np.array_equal(u.pos, t.pos)
        assert u.meta["model"] == "test" and u.num_experts == 8 and u.top_k == 2
        assert np.array_equal(u.extras["step_id"], t.extras["step_id"])


def test_large_stored_member_is_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(npz_mod, "MMAP_MIN_BYTES", 1024)
    t = small_trace(n=500)
    p = tmp_path / "big.npz"
    t.save(p, compress=False)
    u = RoutingTrace.load(p)
    assert isinstance(u.expert_ids, np.memmap)
    assert np.array_equal(np.asarray(u.expert_ids), t.expert_ids)
    assert np.array_equal(u.load_matrix(3), t.load_matrix(3))


def test_truncated_file_is_rejected(tmp_path, monkeypatch):
    p = tmp_path / "t.npz"
    small_trace().save(p)
    data = p.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        RoutingTrace.load(cut)
    # a stored, memory-mapped member whose data is cut short
    monkeypatch.setattr(npz_mod, "MMAP_MIN_BYTES", 64)
    stored = tmp_path / "stored.npz"
    small_trace(n=500).save(stored, compress=False)
    raw = bytearray(stored.read_bytes())
    info = next(i for i in zipfile.ZipFile(stored).infolist() if i.filename == "expert_ids.npy")
    start = npz_mod._stored_offset(stored, info)
    raw[start + 200 :] = b""
    stored.write_bytes(bytes(raw))
    with pytest.raises(UserError):
        RoutingTrace.load(stored)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("expert_ids", np.zeros((10, 2, 2), np.int32), "int16"),
        ("expert_ids", np.full((10, 2, 2), 4, np.int16), r"\[-1, 4\)"),
        ("expert_ids", np.full((10, 2, 2), -2, np.int16), "expert ids"),
        ("seq_id", np.zeros(9, np.int32), "seq_id"),
        ("phase", np.full(10, 5, np.int8), "phase"),
        ("layer_ids", np.array([1, 1], np.int16), "distinct"),
        ("meta_json", np.array("{not json"), "JSON"),
    ],
)
def test_bad_arrays_are_rejected(tmp_path, key, value, match):
    arrays = valid_arrays()
    arrays[key] = value
    with pytest.raises(UserError, match=match):
        RoutingTrace.load(write_raw(tmp_path / "bad.npz", arrays))


def test_object_array_pickle_is_refused(tmp_path):
    arrays = valid_arrays()
    arrays["evil"] = np.array([{"a": 1}], dtype=object)
    p = tmp_path / "evil.npz"
    np.savez(p, **arrays)  # numpy pickles the object array into the member
    with pytest.raises(UserError, match="pickle"):
        RoutingTrace.load(p)


def test_not_a_zip_and_missing_file(tmp_path):
    p = tmp_path / "x.npz"
    p.write_text("hello")
    with pytest.raises(UserError, match="zip"):
        RoutingTrace.load(p)
    with pytest.raises(UserError, match="no such"):
        RoutingTrace.load(tmp_path / "nope.npz")


def test_validate_against_model(tmp_path):
    mixtral = load_model("mixtral-8x7b")
    dsv2 = load_model("deepseek-v2-lite")
    ids = np.tile(np.array([0, 1], np.int16), (5, 3, 1))
    t = RoutingTrace.build(ids, num_experts=8, layer_ids=np.array([0, 5, 31]))
    t.validate(mixtral)
    with pytest.raises(UserError, match="routed experts"):
        t.validate(dsv2)
    bad = RoutingTrace.build(ids, num_experts=8, layer_ids=np.array([0, 5, 32]))
    with pytest.raises(UserError, match="not MoE layers"):
        bad.validate(mixtral)


def test_views():
    t = small_trace()
    train, ev = t.split(0.8)
    assert train.num_tokens == 40 and ev.num_tokens == 10
    assert np.array_equal(np.concatenate([train.expert_ids, ev.expert_ids]), t.expert_ids)
    lm = t.load_matrix(4)
    assert lm.shape == (4, 4, 8) and lm.sum() == (t.expert_ids >= 0).sum()
    assert np.array_equal(lm.sum(0), t.load_matrix(1)[0])
    batches = list(t.batches(16))
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    steps = list(t.step_batches("step_id"))
    assert sum(len(s) for s in steps) == 50 and all(
        (t.extras["step_id"][s] == t.extras["step_id"][s[0]]).all() for s in steps
    )
    with pytest.raises(UserError, match="no per-row key"):
        list(t.step_batches("step_key"))
    sel = t.select(t.seq_id == 2)
    assert sel.num_tokens == 10 and (sel.seq_id == 2).all() and sel.extras["step_id"].shape == (10,)
    assert t.layers([1, 3]).layer_ids.tolist() == [1, 3]
    assert t.layer_stream(2).shape == (50, 2)
    assert list(row_chunks(10, 4, 8)) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]


def test_every_shared_trace_loads_and_loads_sum(shared_traces):
    for path in sorted(shared_traces.glob("*/*.npz")):
        if "aggregate" in str(path):
            continue
        t = RoutingTrace.load(path)
        assert t.load_matrix(1).sum() == int((np.asarray(t.expert_ids) >= 0).sum())


def test_shared_trace_against_its_model():
    t = RoutingTrace.load(
        shared_trace("deepseek-v2-lite-chat-prefill/deepseek_v2_lite_testset_prefill.npz"),
        model=load_model("deepseek-v2-lite"),
    )
    assert t.layer_ids.tolist() == list(range(1, 27))


def test_shipped_traces_load_by_name():
    for name, model in (
        ("deepseek-v2-lite-synth", "deepseek-v2-lite"),
        ("mixtral-8x7b-synth", "mixtral-8x7b"),
    ):
        t = RoutingTrace.load(name, model=load_model(model))
        assert t.model_name == model and t.meta["synthetic"] is True
        assert t.num_sequences > 1


def test_cli_bad_file_one_line_exit_2(tmp_path, capsys):
    from moesim.cli import main

    p = tmp_path / "t.npz"
    small_trace().save(p)
    cut = tmp_path / "cut.npz"
    cut.write_bytes(p.read_bytes()[:300])
    arrays = valid_arrays()
    arrays["expert_ids"] = np.full((10, 2, 2), 9, np.int16)
    ood = write_raw(tmp_path / "ood.npz", arrays)
    for path in (cut, ood):
        for verb in ("info", "stats"):
            assert main(["trace", verb, str(path)]) == 2
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"moesim: error: {path}") and "\n" not in err
