"""The Plan type: validity rules (invariant 5), loads, memory check (invariant 2), file round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.errors import UserError
from moesim.plans.plan import CachePlan, Plan
from moesim.specs import load_cluster, load_model
from moesim.vocab import CachePolicy, MissMode, Prefetch


@pytest.fixture(scope="module")
def model():
    return load_model("deepseek-v2-lite")


def plan_of(model, placement: np.ndarray, **kw) -> Plan:
    devices = tuple(f"n0.gpu{g}" for g in range(placement.shape[1]))
    return Plan(planner="test", model=model.name, devices=devices, moe_layers=model.moe_layers,
                num_experts=model.num_experts, placement=placement, **kw)


def contiguous(model, gpus: int = 8, extra: int = 0) -> np.ndarray:
    per = model.num_experts // gpus
    rows = np.arange(model.num_experts).reshape(gpus, per)
    if extra:
        rows = np.concatenate([rows, np.full((gpus, extra), -1)], axis=1)
    return np.broadcast_to(rows, (model.num_moe_layers, *rows.shape)).astype(np.int32).copy()


def test_contiguous_plan_is_valid_and_loads_split_evenly(model) -> None:
    p = contiguous(model)
    p[:, 0, -1] = -1  # free one slot of GPU 0, give its expert to GPU 1's spare slot
    p = np.concatenate([p, np.full((*p.shape[:2], 1), -1, np.int32)], axis=2)
    p[:, 1, -1] = 7
    p[:, 2, -1] = 0  # a second replica of expert 0
    plan = plan_of(model, p)
    plan.validate(model)
    counts = plan.replica_counts()
    assert counts[:, 0].tolist() == [2] * model.num_moe_layers and counts.sum(axis=1).tolist() == [65] * 26
    load = np.zeros((model.num_moe_layers, model.num_experts))
    load[:, 0] = 10.0
    dev = plan.device_load(load)
    assert dev[0, 0] == 5.0 and dev[0, 2] == 5.0 and dev.sum() == 10.0 * model.num_moe_layers
    assert plan.imbalance(load)[0] == pytest.approx(5.0 / (10.0 / 8))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.__setitem__((3, 0, -1), 5), "device n0.gpu0 holds two copies of expert 5"),
        (lambda p: p.__setitem__((3, 0, 0), -1), "expert 0 has no replica"),
        (lambda p: p.__setitem__((0, 0, 0), 64), r"expert ids must lie in \[-1, 64\)"),
    ],
)
def test_invalid_placements_are_refused_with_one_line(model, edit, message) -> None:
    p = contiguous(model, extra=1)
    edit(p)
    with pytest.raises(UserError, match=message) as err:
        plan_of(model, p).validate(model, file="plan.yaml")
    assert str(err.value).startswith("plan.yaml: placement: ") and "\n" not in str(err.value)


def test_memory_check_names_device_need_and_capacity(model) -> None:
    cluster = load_cluster("rtx4090-workstation")
    huge = load_model("mixtral-8x22b")
    p = np.arange(8, dtype=np.int32).reshape(1, 1, 8).repeat(huge.num_moe_layers, axis=0)
    plan = Plan(planner="t", model=huge.name, devices=("n0.gpu0",), moe_layers=huge.moe_layers,
                num_experts=8, placement=p)
    need = (r"n0.gpu0 needs [\d.]+ GB \([\d.]+ GB for expert weights, 604\.0 MB per bf16 expert\) "
            r"but has 25\.76")
    with pytest.raises(UserError, match=need):
        plan.validate(huge, cluster)


def test_cache_plans_are_checked(model) -> None:
    L = model.num_moe_layers
    good = plan_of(model, contiguous(model), cache=CachePlan(policy="lru", capacity_experts=(8,) * L))
    good.validate(model)
    with pytest.raises(UserError, match="between top-k"):
        plan_of(model, contiguous(model), cache=CachePlan("lru", capacity_experts=(2,) * L)).validate(model)
    with pytest.raises(UserError, match="one cache size per MoE layer"):
        plan_of(model, contiguous(model), cache=CachePlan("lfu", capacity_experts=(8,))).validate(model)
    bad_static = CachePlan(policy="static", resident=((1, 1),) + ((),) * (L - 1))
    with pytest.raises(UserError, match="distinct expert ids"):
        plan_of(model, contiguous(model), cache=bad_static).validate(model)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_through_a_file(model, tmp_path: Path, suffix: str) -> None:
    cache = CachePlan(policy="static", resident=((0, 1),) * model.num_moe_layers, miss="cpu")
    plan = plan_of(model, contiguous(model, extra=1), cache=cache, gap=0.01,
                   params={"slots": np.int64(9), "asked": MissMode.CPU}, predicted={"step_time_s": 1e-3})
    path = tmp_path / f"plan{suffix}"
    plan.save(path)
    back = Plan.load(path)
    assert np.array_equal(back.placement, plan.placement) and back.cache == plan.cache
    assert back.cache.miss is MissMode.CPU and back.params["asked"] == "cpu"
    assert back.gap == 0.01 and back.params["slots"] == 9
    back.validate(model)


def test_legacy_execution_field(model, tmp_path: Path) -> None:
    """Plan files from before the per-expert ``execution`` table was dropped: all-gpu still loads,
    anything else is refused with the field named (it never had an effect)."""
    d = plan_of(model, contiguous(model)).to_dict()
    L, E = model.num_moe_layers, model.num_experts
    assert Plan.from_dict({**d, "execution": [["gpu"] * E] * L}).num_experts == E
    with pytest.raises(UserError, match=r"cache\.miss") as err:
        Plan.from_dict({**d, "execution": [["gpu"] * (E - 1) + ["cpu"]] * L}, file="old.yaml")
    assert err.value.field == "execution" and "old.yaml" in str(err.value)


def test_cache_plan_words_become_members() -> None:
    cp = CachePlan("lru", capacity_experts=(2,), prefetch="predictor")
    assert cp.policy is CachePolicy.LRU and cp.prefetch is Prefetch.PREDICTOR and cp.miss is MissMode.FETCH
    with pytest.raises(UserError, match="expected one of none, lru"):
        CachePlan("fifo")


_PLAN = ("{planner: x, model: m, devices: [a], num_experts: 2, slots_per_device: 2, layers: [{layer: 1, "
         "slots: [[0, 1]]}]}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[1, 2]", "expected a mapping at the top level"),
        ("planner: x\n", "layers: missing field"),
        ("schema: other/v9\n", "schema: expected schema 'moesim-plan/v1'"),
        ("{planner: x, model: m, devices: [a], num_experts: 2, slots_per_device: 2, layers: [{layer: 1, "
         "slots: [[0]]}]}", r"layers\[0\]\.slots: expected 1 lists of 2 integers"),
        ("a: [", "expected valid YAML, got a syntax error"),
        ("a: !!timestamp x", "not a valid !!timestamp value"),
        ("[" * 20000, "levels of YAML/JSON nesting exceed the limit of 64"),
        (_PLAN.replace("layer: 1,", "layer: abc,"),
         r"layers\[0\]\.layer: expected a whole number, got 'abc'"),
        (_PLAN.replace("}]}", "}], cache: [1, 2]}"), r"cache: expected a mapping"),
        (_PLAN.replace("}]}", "}], cache: {policy: lru, capacity_experts: 3}}"),
         r"cache\.capacity_experts: expected a list, got 3"),
        (_PLAN.replace("}]}", "}], params: [1]}"), r"params: expected a mapping, got \[1\]"),
        (_PLAN.replace("[[0, 1]]", "[[0, 70000000000]]"),
         r"layers\[0\]\.slots: expected 1 lists of 2 integers"),
        (_PLAN.replace("[[0, 1]]", "[[0, true]]"), r"layers\[0\]\.slots: expected 1 lists of 2 integers"),
        (_PLAN.replace("num_experts: 2", "num_experts: 100000000000"),
         "num_experts: 100,000,000,000 experts"),
    ],
)
def test_bad_plan_files_give_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as err:
        Plan.load(path)
    assert str(err.value).startswith(str(path))
