"""The engines' initial layout with redundant slots (SGLang init_trivial, vLLM's initial map)."""

from __future__ import annotations

import numpy as np
import pytest

from moesim.errors import UserError
from moesim.planners import BASELINE_PLANNER, PLANNERS, plan
from moesim.planners.base import duplicate_slots
from moesim.planners.engine_default import engine_default_layer
from tests.test_planners_baselines import request, toy_model, zipf_load


@pytest.fixture(scope="module")
def h100x8():
    from moesim.specs import load_cluster

    return load_cluster("h100x8")


def test_physical_slot_p_holds_p_mod_e_in_rank_blocks():
    # DeepSeek-V2-Lite shape: 64 experts on 8 GPUs with one redundant slot each (72 physical)
    layer = engine_default_layer(64, 8, 9)
    assert layer[0].tolist() == list(range(9))
    assert layer[6].tolist() == list(range(54, 63))
    assert layer[7].tolist() == [63, 0, 1, 2, 3, 4, 5, 6, 7]  # the redundant copies land on the last rank
    assert layer.ravel().tolist() == [p % 64 for p in range(72)]
    # the SGLang docstring's example shape: 4 logical, 6 physical on 3 ranks -> [0, 1 | 2, 3 | 0, 1]
    assert engine_default_layer(4, 3, 2).tolist() == [[0, 1], [2, 3], [0, 1]]


def test_differs_from_contiguous_with_redundant_slots_and_equals_it_without(h100x8):
    m = toy_model(E=16)
    load = zipf_load(3, 16, 1.0, tokens=2048, topk=2)
    eng = plan("engine-default", request(h100x8, m, 3, load, gpus=8))
    con = plan("contiguous", request(h100x8, m, 3, load, gpus=8))
    assert not np.array_equal(eng.placement, con.placement)
    assert eng.placement[0, 0].tolist() == [0, 1, 2] and eng.placement[0, 5].tolist() == [15, 0, 1]
    no_spare = [plan(n, request(h100x8, m, 2, load, gpus=8)).placement
                for n in ("engine-default", "contiguous")]
    assert np.array_equal(*no_spare)


def test_is_load_agnostic_valid_and_the_baseline(h100x8):
    m = toy_model(E=16)
    a = plan("engine-default", request(h100x8, m, 4, zipf_load(3, 16, 1.2, seed=1), gpus=8))
    b = plan("engine-default", request(h100x8, m, 4, zipf_load(3, 16, 0.5, seed=2), gpus=8))
    assert np.array_equal(a.placement, b.placement)
    a.validate(m, h100x8)
    assert duplicate_slots(a.placement) == 0
    assert (a.replica_counts() >= 1).all()
    assert BASELINE_PLANNER == "engine-default" and BASELINE_PLANNER in PLANNERS


def test_rejects_more_slots_than_experts(h100x8):
    m = toy_model(E=16)
    with pytest.raises(UserError, match="slots per GPU exceed"):
        plan("engine-default", request(h100x8, m, 17, np.ones((3, 16)), gpus=8))
