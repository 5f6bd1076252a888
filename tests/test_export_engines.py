"""Engine exports: SGLang physical_to_logical_map and the vLLM-Ascend expert map."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.errors import UserError
from moesim.plans.export import read_sglang, read_vllm_ascend, write_sglang, write_vllm_ascend
from moesim.plans.plan import Plan
from moesim.specs import load_model


def _plan(model, placement: np.ndarray, devices: int | None = None) -> Plan:
    G = placement.shape[1] if devices is None else devices
    return Plan(planner="test", model=model.name, devices=tuple(f"n0.gpu{g}" for g in range(G)),
                moe_layers=tuple(model.moe_layers), num_experts=model.num_experts,
                placement=placement.astype(np.int32))


def _rotated(model, G: int, S: int, seed: int = 0) -> np.ndarray:
    """Each layer: a random permutation of the experts plus redundant copies, no duplicate per device."""
    rng = np.random.default_rng(seed)
    E, L = model.num_experts, model.num_moe_layers
    out = np.empty((L, G, S), dtype=np.int64)
    for layer in range(L):
        perm = rng.permutation(E)
        phys = np.concatenate([perm, perm[: G * S - E]])  # redundant copies land S slots or more apart
        out[layer] = phys.reshape(G, S)
    return out


@pytest.fixture(scope="module")
def v3():
    return load_model("deepseek-v3")


def test_sglang_deepseek_v3_rows_and_dense_padding(tmp_path, v3):
    # 256 logical + 32 redundant on EP32, 9 per GPU: DeepSeek-V3's prefill unit (deepseek-ai/open-infra-index
    # 202502OpenSourceWeek/day_6_one_more_thing_deepseekV3R1_inference_system_overview.md)
    G, S = 32, 9
    placement = _rotated(v3, G, S)
    plan = _plan(v3, placement)
    path = tmp_path / "loc.json"
    write_sglang(plan, v3, path)
    data = json.loads(path.read_text())
    assert list(data) == ["physical_to_logical_map"]
    rows = data["physical_to_logical_map"]
    assert len(rows) == 61  # num_hidden_layers, not the 58 MoE layers
    assert all(len(r) == G * S for r in rows)
    trivial = [p % 256 for p in range(G * S)]
    for layer in range(3):  # DeepSeek-V3's dense layers
        assert rows[layer] == trivial
    # physical slot p sits on GPU p // S
    i = v3.moe_layers.index(10)
    assert rows[10][5 * S + 3] == placement[i, 5, 3]
    assert rows[v3.moe_layers[-1]] == placement[-1].reshape(-1).tolist()


def test_sglang_round_trip(tmp_path, v3):
    plan = _plan(v3, _rotated(v3, 8, 36, seed=3))
    path = tmp_path / "loc.json"
    write_sglang(plan, v3, path)
    back = read_sglang(path, v3, plan.devices)
    assert back.devices == plan.devices
    np.testing.assert_array_equal(back.placement, plan.placement)
    back.validate(v3)


def test_vllm_ascend_deepseek_v3_exact_format(tmp_path, v3):
    G, S = 32, 9
    placement = _rotated(v3, G, S, seed=1)
    plan = _plan(v3, placement)
    path = tmp_path / "map.json"
    write_vllm_ascend(plan, v3, path)
    data = json.loads(path.read_text())
    assert list(data) == ["moe_layer_count", "layer_list"]
    assert data["moe_layer_count"] == 58
    assert len(data["layer_list"]) == 58
    first = data["layer_list"][0]
    assert list(first) == ["layer_id", "device_count", "device_list"]
    assert first["layer_id"] == 0 and first["device_count"] == G
    assert [d["device_id"] for d in first["device_list"]] == list(range(G))
    assert list(first["device_list"][0]) == ["device_id", "device_expert"]
    assert data["layer_list"][57]["device_list"][31]["device_expert"] == placement[57, 31].tolist()
    back = read_vllm_ascend(path, v3, plan.devices)
    np.testing.assert_array_equal(back.placement, plan.placement)
    # redundant count as vLLM-Ascend derives it: slots * device_count - num_experts
    assert S * first["device_count"] - v3.num_experts == 32


@settings(max_examples=25, deadline=None)
@given(G=st.sampled_from([1, 2, 4, 8]), extra=st.integers(0, 3), seed=st.integers(0, 10_000))
def test_round_trips_property(tmp_path_factory, G, extra, seed):
    model = load_model("gpt-oss-20b")
    S = -(-model.num_experts // G) + extra
    S = min(S, model.num_experts, 2 * model.num_experts // G)  # at most one redundant copy each
    placement = _rotated(model, G, S, seed=seed)
    plan = _plan(model, placement)
    d = tmp_path_factory.mktemp("rt")
    write_sglang(plan, model, d / "s.json")
    write_vllm_ascend(plan, model, d / "v.json")
    for back in (read_sglang(d / "s.json", model, plan.devices), read_vllm_ascend(d / "v.json", model, G)):
        np.testing.assert_array_equal(back.placement, plan.placement)


def test_refuses_empty_slot(tmp_path, v3):
    placement = _rotated(v3, 32, 9)
    placement[4, 7, 8] = -1
    # keep every expert replicated so the empty slot is the only fault
    plan = _plan(v3, placement)
    for write in (write_sglang, write_vllm_ascend):
        with pytest.raises(UserError, match="slot 8 is empty"):
            write(plan, v3, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_refuses_unequal_slots(tmp_path):
    model = load_model("mixtral-8x7b")
    placement = np.tile(np.array([[0, 1, 2, 3, 4], [5, 6, 7, -1, -1]]), (model.num_moe_layers, 1, 1))
    with pytest.raises(UserError, match="unequal slots per device"):
        write_vllm_ascend(_plan(model, placement), model, tmp_path / "v.json")


def test_refuses_duplicates_for_vllm_ascend_only(tmp_path):
    model = load_model("gpt-oss-20b")
    placement = np.tile(np.array([[*range(16), 0], [*range(16, 32), 16]]), (model.num_moe_layers, 1, 1))
    plan = _plan(model, placement)
    with pytest.raises(UserError, match="holds expert 0 twice"):
        write_vllm_ascend(plan, model, tmp_path / "v.json")
    write_sglang(plan, model, tmp_path / "s.json")  # SGLang loads it (the copy wastes a slot)
    back = read_sglang(tmp_path / "s.json", model, 2)
    np.testing.assert_array_equal(back.placement, placement)


def test_refuses_missing_expert_and_wrong_model(tmp_path, v3):
    model = load_model("gpt-oss-20b")
    placement = np.tile(np.array([[*range(16)], [*range(16, 31), 30]]), (model.num_moe_layers, 1, 1))
    with pytest.raises(UserError, match="expert 31 has no replica"):
        write_sglang(_plan(model, placement), model, tmp_path / "s.json")
    good = _plan(model, np.tile(np.arange(32).reshape(2, 16), (model.num_moe_layers, 1, 1)))
    with pytest.raises(UserError, match="experts"):
        write_sglang(good, v3, tmp_path / "s.json")


def test_readers_refuse_bad_files(tmp_path, v3):
    model = load_model("mixtral-8x7b")
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"logical_count": [[1] * 8] * 32}))
    with pytest.raises(UserError, match="logical_count file holds loads"):
        read_sglang(p, model, 2)
    p.write_text(json.dumps({"physical_to_logical_map": [list(range(8))] * 31}))
    with pytest.raises(UserError, match="expected 32 rows"):
        read_sglang(p, model, 2)
    p.write_text(json.dumps({"physical_to_logical_map": [list(range(8))] * 32}))
    with pytest.raises(UserError, match="divide evenly over 3"):
        read_sglang(p, model, 3)
    p.write_text("{not json")
    with pytest.raises(UserError, match="cannot read as JSON"):
        read_vllm_ascend(p, model)
    p.write_text(json.dumps({"moe_layer_count": 58, "layer_list": []}))
    with pytest.raises(UserError, match="expected 32"):
        read_vllm_ascend(p, model)
    with pytest.raises(UserError, match="no such file"):
        read_sglang(tmp_path / "missing.json", model, 2)


def test_sglang_reads_torch_file(tmp_path):
    torch = pytest.importorskip("torch")
    model = load_model("mixtral-8x7b")
    rows = torch.tensor([[7, 6, 5, 4, 3, 2, 1, 0]] * 32, dtype=torch.int32)
    torch.save({"physical_to_logical_map": rows}, tmp_path / "loc.pt")
    plan = read_sglang(tmp_path / "loc.pt", model, 2)
    assert plan.placement[0].tolist() == [[7, 6, 5, 4], [3, 2, 1, 0]]
