"""Exports load in (re-implementations of) the engines' own checks with the flags moesim prints.

``_sglang_load`` re-implements what SGLang's ``ExpertLocationMetadata`` does with a placement file
(``python/sglang/srt/eplb/expert_location.py``: physical experts = logical + redundant, divisible by
the EP size; the map used as given) plus the mismatches that SGLang lets through silently (issue 16):
a map wider than the slots it allocates, a map read with another EP size, a model without expert
location support. ``_vllm_ascend_load`` re-implements ``expert_file_to_tensor`` + ``init_eplb_config``
and the "EPLB local expert capacity mismatch" check of ``vllm_ascend/ops/fused_moe/routed_experts.py``.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import UserError
from moesim.plans.export import (
    export_for_engines,
    export_sglang,
    export_sglang_logical_count,
    export_vllm_ascend,
)
from moesim.plans.plan import Plan
from moesim.specs import load_model

SGLANG_NO_EXPERT_LOCATION = ("mixtral", "phi", "olmoe", "switch")


def _flags(path) -> tuple[dict[str, str], dict[str, str | bool]]:
    """Environment and flags of a ``.flags.txt`` file (the one non-comment line)."""
    text = Path(f"{path}.flags.txt").read_text()
    line = next(x for x in text.splitlines() if x and not x.startswith("#"))
    words = shlex.split(line)
    env = dict(w.split("=", 1) for w in words if "=" in w and not w.startswith("--"))
    words = [w for w in words if not ("=" in w and not w.startswith("--"))]
    flags: dict[str, str | bool] = {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else None
            flags[w] = nxt if nxt is not None and not nxt.startswith("--") else True
    return env, flags


def _sglang_load(path, model, flags: dict, slots_per_rank: int) -> None:
    """Raise AssertionError where SGLang would fail, misplace or misroute (see the module doc);
    ``slots_per_rank`` is what the plan put on each device."""
    assert not any(k in model.name for k in SGLANG_NO_EXPERT_LOCATION), "no expert-location config: asserts"
    data = json.loads(Path(path).read_text())
    ep = int(flags.get("--ep-size", 1))
    redundant = int(flags.get("--ep-num-redundant-experts", 0))
    physical = model.num_experts + redundant
    assert physical % ep == 0, "num_physical_experts % ep_size"
    assert flags.get("--init-expert-location") == str(path.resolve())
    m = np.array(data["physical_to_logical_map"])
    assert m.shape[0] == model.num_layers, "one row per hidden layer"
    assert m.shape[1] == physical, f"map width {m.shape[1]} != allocated physical experts {physical}"
    assert m.shape[1] % ep == 0 and m.shape[1] // ep == slots_per_rank, "per-rank slots differ from the plan"
    assert m.min() >= 0 and m.max() < model.num_experts
    for layer in model.moe_layers:
        assert len(set(m[layer].tolist())) == model.num_experts, "every logical expert has a slot"
    if flags.get("--ep-dispatch-algorithm", "static") == "static":
        assert flags.get("--moe-a2a-backend", "none") != "none", "static dispatch needs an all-to-all backend"


def _vllm_ascend_load(path, model, env: dict, flags: dict) -> None:
    assert env.get("VLLM_USE_V2_MODEL_RUNNER") == "0", "static expert maps are Model Runner V1 only"
    assert flags.get("--enable-expert-parallel") is True
    config = json.loads(flags["--additional-config"])["eplb_config"]
    assert config["expert_map_path"] == str(path.resolve())
    ep = int(flags["--tensor-parallel-size"]) * int(flags.get("--data-parallel-size", 1))
    configured = config.get("num_redundant_experts", 0)
    assert (model.num_experts + configured) % ep == 0
    data = json.loads(Path(path).read_text())
    assert data["moe_layer_count"] == model.num_moe_layers
    for layer_id in range(data["moe_layer_count"]):  # expert_file_to_tensor(expert_map_path, layer_id)
        devices = data["layer_list"][layer_id]["device_list"]
        physical_count = sum(len(d["device_expert"]) for d in devices)
        placement = np.array([d["device_expert"] for d in devices])  # torch.tensor: rectangular
        assert len(devices) == ep, "indexed by EP rank: device_count must be the EP size"
        n_redundant = physical_count - model.num_experts
        allocated_local = (model.num_experts + configured) // ep
        expected_local = (model.num_experts + n_redundant) // ep
        assert allocated_local == expected_local, "EPLB local expert capacity mismatch"
        for rank in range(ep):  # expert_map[local_placement] = arange: a duplicate would be overwritten
            assert len(set(placement[rank].tolist())) == placement.shape[1]


def _plan(model, G: int, S: int, seed: int = 0) -> Plan:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in model.moe_layers:
        perm = rng.permutation(model.num_experts)
        rows.append(np.concatenate([perm, perm[: G * S - model.num_experts]]).reshape(G, S))
    return Plan(planner="test", model=model.name, devices=tuple(f"n{g // 8}.gpu{g % 8}" for g in range(G)),
                moe_layers=tuple(model.moe_layers), num_experts=model.num_experts,
                placement=np.stack(rows).astype(np.int32))


@pytest.fixture(scope="module")
def v3():
    return load_model("deepseek-v3")


def test_sglang_export_loads_with_its_flags_and_mismatches_fail(tmp_path, v3):
    plan = _plan(v3, 32, 9)  # 256 + 32 redundant on EP32, 4 nodes
    path = tmp_path / "loc.json"
    launch = export_sglang(plan, v3, path, ep_size=32, dispatch="local")
    _env, flags = _flags(path)
    assert launch.flags == tuple(shlex.split(launch.command_line()))
    assert flags["--ep-num-redundant-experts"] == "32" and flags["--ep-size"] == "32"
    assert flags["--ep-dispatch-algorithm"] == "static" and flags["--moe-a2a-backend"] == "deepep"
    assert any("--nnodes 4" in n for n in launch.notes)
    _sglang_load(path, v3, flags, 9)
    with pytest.raises(AssertionError, match="allocated physical experts"):  # launched without the flag
        _sglang_load(path, v3, {**flags, "--ep-num-redundant-experts": "0"}, 9)
    with pytest.raises(AssertionError, match="per-rank slots"):  # EP 16: 288 / 16 = 18 slots per rank
        _sglang_load(path, v3, {**flags, "--ep-size": "16"}, 9)
    with pytest.raises(AssertionError, match="all-to-all backend"):
        _sglang_load(path, v3, {k: v for k, v in flags.items() if k != "--moe-a2a-backend"}, 9)
    with pytest.raises(AssertionError, match="expert-location"):
        _sglang_load(path, load_model("mixtral-8x7b"), flags, 9)


def test_moesim_refuses_what_sglang_would_misread(tmp_path, v3):
    plan = _plan(v3, 32, 9)
    with pytest.raises(UserError, match="18 slots per rank"):
        export_sglang(plan, v3, tmp_path / "a.json", ep_size=16)
    with pytest.raises(UserError, match="do not divide by 20"):
        export_sglang(plan, v3, tmp_path / "a.json", ep_size=20)
    for name in ("mixtral-8x7b", "phi-3.5-moe", "olmoe-1b-7b", "switch-base-128"):
        model = load_model(name)
        other = _plan(model, 2, -(-model.num_experts // 2))
        with pytest.raises(UserError, match=r"SGLang cannot load an expert placement") as e:
            export_sglang(other, model, tmp_path / "b.json")
        assert name.split("-")[0].lower()[:5] in str(e.value).lower()
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "b.json").exists()
    mixtral = load_model("mixtral-8x7b")  # vLLM-Ascend can place Mixtral
    export_vllm_ascend(_plan(mixtral, 2, 5), mixtral, tmp_path / "m.json")


def test_vllm_ascend_export_loads_with_its_flags_and_mismatches_fail(tmp_path, v3):
    plan = _plan(v3, 32, 9)
    path = tmp_path / "map.json"
    export_vllm_ascend(plan, v3, path, ep_size=32)
    env, flags = _flags(path)
    _vllm_ascend_load(path, v3, env, flags)
    config = json.loads(flags["--additional-config"])
    config["eplb_config"].pop("num_redundant_experts")  # the documented launch before this fix
    with pytest.raises(AssertionError, match="capacity mismatch"):
        _vllm_ascend_load(path, v3, env, {**flags, "--additional-config": json.dumps(config)})
    with pytest.raises(AssertionError, match="device_count must be the EP size"):
        _vllm_ascend_load(path, v3, env, {**flags, "--tensor-parallel-size": "16"})
    with pytest.raises(AssertionError, match="Model Runner V1"):
        _vllm_ascend_load(path, v3, {}, flags)
    with pytest.raises(UserError, match="wrong devices"):
        export_vllm_ascend(plan, v3, tmp_path / "x.json", ep_size=16)


def test_logical_count_export_feeds_sglang_eplb(tmp_path):
    model = load_model("deepseek-v2-lite")
    rng = np.random.default_rng(0)
    load = rng.integers(0, 50, (3, model.num_moe_layers, model.num_experts))
    path = tmp_path / "lc.json"
    export_sglang_logical_count(load, model, path, ep_size=8, redundant=8)
    data = json.loads(path.read_text())
    assert list(data) == ["logical_count"]
    counts = np.array(data["logical_count"])  # init_by_eplb: [T, layers, logical] summed over T
    assert counts.shape == (3, model.num_layers, model.num_experts)
    assert counts[:, 0].sum() == 0 and np.array_equal(counts[:, 1:], load)
    _env, flags = _flags(path)
    assert flags["--ep-num-redundant-experts"] == "8" and flags["--ep-size"] == "8"
    with pytest.raises(UserError, match="do not divide over --ep-size 7"):
        export_sglang_logical_count(load[0], model, tmp_path / "y.json", ep_size=7, redundant=8)


def test_export_for_engines_checks_all_before_writing(tmp_path, v3):
    plan = _plan(v3, 32, 9)
    with pytest.raises(UserError):
        export_for_engines(plan, v3, sglang=tmp_path / "s.json", vllm_ascend=tmp_path / "v.json", ep_size=8)
    assert not list(tmp_path.iterdir())


def test_cli_plan_prints_the_flags_and_writes_them(tmp_path, capsys):
    out = tmp_path / "loc.json"
    argv = ["plan", "--hw", "h100x8", "--planner", "contiguous", "--export-sglang", str(out),
            "--export-vllm-ascend", str(tmp_path / "map.json"), "--ep-size", "8", "--steps", "2"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "SGLang: launch with --tp-size 8 --ep-size 8 --ep-num-redundant-experts 8" in text
    assert "VLLM_USE_V2_MODEL_RUNNER=0" in text and "num_redundant_experts" in text
    _sglang_load(out, load_model("deepseek-v2-lite"), _flags(out)[1], 9)
    assert main([*argv[:-4], "--ep-size", "16"]) == 2  # --ep-size is --ep's alias
    assert "--ep:" in capsys.readouterr().err
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == "moesim-plan/1"
    assert [x["engine"] for x in doc["engine_launch"]] == ["SGLang", "vLLM-Ascend"]


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_export_mode_follows_umask(tmp_path, mask, mode):
    model = load_model("deepseek-v2-lite")
    old = os.umask(mask)
    try:
        export_sglang(_plan(model, 8, 9), model, tmp_path / "loc.json")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "loc.json").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "loc.json.flags.txt").stat().st_mode) == mode
